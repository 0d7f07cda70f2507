"""Many-pattern missing data: the per-pattern batches against the row-wise kernel.

Random gaps in many features make almost every row its own missingness pattern; the
per-pattern path then makes one batched call per row. Measured in the same run on the
same block, both paths (their results agree to 1e-10, tests/test_kernels.py), plus a
default 10-iteration fit.

Run: .venv/bin/python benchmarks/bench_missing.py [--rows 5000] [--dims 20] [--gaps 0.2]
"""

import argparse
import time
import warnings

import numpy as np

import daskgmmis as dg
from daskgmmis import kernels

from bench_em import gap_problem  # noqa: E402  (same directory)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dims", type=int, default=20)
    ap.add_argument("--gaps", type=float, default=0.2)
    ap.add_argument("-K", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    N, D, K = args.rows, args.dims, args.K
    x, var, truth = gap_problem(N, D, K, args.gaps)
    n_patterns = len(kernels.missing_patterns(x))
    print(f"{len(x)} rows, D={D}, K={K}, {args.gaps:.0%} gaps: {n_patterns} patterns")
    args_ = (x, var, "diag", truth.mean, truth.covar, truth.amp, None, None, None, True, 0)
    kernels._run_patterns(*args_, rowwise=True)          # compile
    times = {}
    for name, rowwise in (("per-pattern", False), ("row-wise", True)):
        best = np.inf
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            kernels._run_patterns(*args_, rowwise=rowwise)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
        print(f"E-step, {name:12s}: {best * 1e3:9.1f} ms  "
              f"({best / (len(x) * K) * 1e9:8.0f} ns per (row, component))")
    print(f"row-wise speed-up: {times['per-pattern'] / times['row-wise']:.1f}x")
    gmm = dg.GMM(K, D)
    gmm.amp, gmm.mean, gmm.covar = truth.amp, truth.mean, truth.covar
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = dg.fit(gmm, x, var, init_method="none", maxiter=10, tol=0.0, rng=0)
    print(f"fit, default path: {res.n_iter} iterations in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
