"""Stepwise EM against batch EM: passes over the data to reach the batch answer.

A catalog of N rows (D=5, K=20 well-mixed components, per-row diagonal noise) is
written to a Zarr store and fitted twice from the same start (k-means|| with the
same seed): batch EM to a tight tolerance, and ``stepwise=P`` (P stepwise passes,
then batch EM polishing). Reported: the batch fit's final mean logL per row, how
many batch passes it needed to come within 1e-3 of it, and the logL reached after
the stepwise passes alone (evaluated by the first batch E-step, i.e. after P + 1
passes), with wall times. Both runs in the same process, on the same scheduler.

Run: python benchmarks/bench_stepwise.py [--rows 10000000] [--passes 2] [--workers 2]
"""

import argparse
import os
import shutil
import tempfile
import time
import warnings

import dask
import dask.array as da
import numpy as np

import daskgmmis as dg
from bench_em import random_truth


def write_problem(path, N, D, K, chunk, seed=0):
    """A catalog written block by block (never whole in memory)."""
    truth = random_truth(K, D, np.random.default_rng(seed), spread=8.0, shape=0.7)

    def block(b, n):
        r = np.random.default_rng([seed, b])
        x = truth.draw(n, rng=r)
        var = r.uniform(0.1, 1.0, size=(n, D))
        return np.hstack([x + r.normal(size=x.shape) * np.sqrt(var), var])

    sizes = [min(chunk, N - s) for s in range(0, N, chunk)]
    both = da.concatenate([da.from_delayed(dask.delayed(block)(b, n), (n, 2 * D),
                                           dtype=np.float64)
                           for b, n in enumerate(sizes)]).rechunk((chunk, 2 * D))
    return dg.write_catalog(path, both[:, :D], both[:, D:], chunks=chunk)


def passes_to_reach(history, target, tol=1e-3):
    for i, h in enumerate(history):
        if h >= target - tol:
            return i + 1
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--maxiter", type=int, default=300)
    ap.add_argument("--workers", type=int, default=0,
                    help="LocalCluster worker processes (0: the threaded scheduler)")
    ap.add_argument("--dir", default=None, help="where to write the catalog (default: tmp)")
    args = ap.parse_args(argv)
    D, K = 5, 20
    tmp = tempfile.mkdtemp(dir=args.dir)
    client = None
    try:
        if args.workers:
            from distributed import Client, LocalCluster
            client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                         dashboard_address=None))
        t = time.perf_counter()
        cat = write_problem(os.path.join(tmp, "cat.zarr"), args.rows, D, K, args.chunk)
        print(f"catalog: N={args.rows} D={D} diag noise, {cat.data.numblocks[0]} blocks, "
              f"written in {time.perf_counter() - t:.0f} s; cores {os.cpu_count()}")
        opts = dict(rng=1, tol=args.tol, maxiter=args.maxiter, client=client)
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        batch = dg.fit(dg.GMM(K, D), cat, **opts)
        t_batch = time.perf_counter() - t
        final = batch.logL
        need = passes_to_reach(batch.history, final)
        print(f"batch: final mean logL {final:.6f} after {batch.passes:.0f} passes "
              f"({t_batch:.0f} s, {t_batch / batch.passes:.1f} s/pass, converged "
              f"{batch.converged}); within 1e-3 of it after {need} passes")
        t = time.perf_counter()
        alone = dg.fit(dg.GMM(K, D), cat, stepwise=args.passes, **{**opts, "maxiter": 0})
        t_alone = time.perf_counter() - t
        print(f"stepwise={args.passes}: mean logL {alone.logL:.6f} after {alone.passes:.0f} "
              f"passes ({t_alone:.0f} s), {final - alone.logL:.2e} below the batch answer; "
              f"batch EM after {args.passes + 1} passes: "
              f"{final - batch.history[min(args.passes, len(batch.history) - 1)]:.2e} below")
        t = time.perf_counter()
        full = dg.fit(dg.GMM(K, D), cat, stepwise=args.passes, **opts)
        t_full = time.perf_counter() - t
        print(f"stepwise={args.passes} then batch: final mean logL {full.logL:.6f} after "
              f"{full.passes:.0f} passes ({t_full:.0f} s), converged {full.converged}")
    finally:
        if client is not None:
            client.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
