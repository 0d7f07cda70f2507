"""Neighborhood speed-up on a fragmented catalog, measured in one run.

K compact, well-separated components in D=3; the catalog is written in
spatial (Morton) order. Reports the median time per EM iteration with
``cutoff=5`` and with ``cutoff=None`` (their ratio), the converged mean
log-likelihood of both, and the per-iteration time with cutoff for several K
at fixed N.

Run: python benchmarks/bench_neighborhoods.py [--rows N] [--K 500] [--scaling 50,500,2000]
"""

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np

import daskgmmis as dg


def fragmented(K, N, D=3, seed=0):
    rng = np.random.default_rng(seed)
    t = dg.GMM(K, D)
    t.amp = rng.dirichlet(np.full(K, 10.0))
    # a lattice of well-separated centres with jitter: compact and disjoint
    side = int(np.ceil(K ** (1 / D)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * D, indexing="ij"), -1).reshape(-1, D)
    t.mean = grid[rng.permutation(len(grid))[:K]] * 10.0 + rng.uniform(-1, 1, size=(K, D))
    t.covar = np.array([np.eye(D) * rng.uniform(0.5, 1.5) for _ in range(K)])
    return t, t.draw(N, rng=rng)


def per_iter(g, cat, iters, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(g.copy(), cat, init_method="none", maxiter=iters, tol=0, **kw)
    return statistics.median(res.seconds_per_iter[1:]), res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--K", type=int, default=500)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--scaling", default="50,500,2000")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        truth, X = fragmented(args.K, args.rows)
        start = truth.copy()
        start.mean = start.mean + 0.2
        t0 = time.perf_counter()
        cat = dg.write_catalog(f"{tmp}/frag.zarr", X, order="spatial")
        print(f"catalog N={args.rows} K={args.K} written in spatial order in "
              f"{time.perf_counter() - t0:.1f} s ({cat.data.numblocks[0]} blocks)")
        t_cut, _ = per_iter(start, cat, args.iters + 1, cutoff=5.0)
        t_all, _ = per_iter(start, cat, args.iters + 1)
        print(f"per iteration: cutoff=5 {t_cut:.3f} s, cutoff=None {t_all:.3f} s, "
              f"speed-up {t_all / t_cut:.1f}x")
        g_cut, g_all = start.copy(), start.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r_cut = dg.fit(g_cut, cat, init_method="none", tol=1e-4, cutoff=5.0)
            r_all = dg.fit(g_all, cat, init_method="none", tol=1e-4)
        print(f"converged mean logL: cutoff=5 {r_cut.logL:.6f} ({r_cut.n_iter} it), "
              f"cutoff=None {r_all.logL:.6f} ({r_all.n_iter} it), "
              f"difference {abs(r_cut.logL - r_all.logL):.2e} per row")
        for K in [int(k) for k in args.scaling.split(",")]:
            t, Xk = fragmented(K, args.rows, seed=K)
            catk = dg.write_catalog(f"{tmp}/frag{K}.zarr", Xk, order="spatial")
            tk, _ = per_iter(t, catk, args.iters + 1, cutoff=5.0)
            print(f"K={K}: {tk:.3f} s per iteration with cutoff=5")


if __name__ == "__main__":
    main()
