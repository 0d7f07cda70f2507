"""Stepwise EM against batch EM: passes over the data to reach the batch answer.

A catalog of N rows (D=5, K=20 well-mixed components, per-row diagonal noise) is
written to a Zarr store and fitted from the same start (k-means|| once, seed 1; then
``init_method="none"`` from copies of it): batch EM to a tight tolerance, and
``stepwise=P`` (P stepwise passes, then batch EM polishing). Reported: the batch
fit's final mean logL per row, how many batch passes it needed to come within 1e-3
of it, and the logL reached after the stepwise passes alone (evaluated by the first
batch E-step, i.e. after P + 1 passes), with wall times and the load average. All
runs in the same process, on the same scheduler.

Run: python benchmarks/bench_stepwise.py [--rows 10000000] [--chunk 62500] [--passes 2]
     [--workers 2] [--catalog PATH (reuse; written there if missing)]
"""

import argparse
import json
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


def report_batch(batch):
    final = batch["logL"]
    print(f"batch: final mean logL {final:.6f} after {batch['passes']:.0f} passes "
          f"({batch['seconds']:.0f} s, {batch['seconds'] / batch['passes']:.1f} s/pass, "
          f"converged {batch['converged']}, load {batch['load']:.1f}); within 1e-3 of it "
          f"after {passes_to_reach(batch['history'], final)} passes", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=62_500,
                    help="rows per block (default 62,500: 160 blocks at 10^7 rows, 80 "
                         "groups a pass on 2 threads; stepwise EM wants >= 50)")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--start", default=None,
                    help="the start model: loaded if the file exists, else saved there (so "
                         "that the fits can be run by separate invocations from one start)")
    ap.add_argument("--only", choices=("batch", "stepwise"), default=None,
                    help="run only the batch fit or only the stepwise fits (then the batch "
                         "figures are read from --json, written by a --only batch run)")
    ap.add_argument("--json", default=None, help="batch figures: written, or read with "
                                                 "--only stepwise")
    ap.add_argument("--skip-polish", action="store_true",
                    help="skip the third fit (stepwise then batch EM to convergence)")
    ap.add_argument("--maxiter", type=int, default=300)
    ap.add_argument("--workers", type=int, default=0,
                    help="LocalCluster worker processes (0: the threaded scheduler)")
    ap.add_argument("--dir", default=None, help="where to write the catalog (default: tmp)")
    ap.add_argument("--catalog", default=None,
                    help="catalog path: reused if it exists, else written there and kept")
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
        if args.catalog and os.path.exists(args.catalog):
            cat = dg.open_catalog(args.catalog)
        else:
            cat = write_problem(args.catalog or os.path.join(tmp, "cat.zarr"), args.rows, D, K,
                                args.chunk)
        print(f"catalog: N={cat.shape[0]} D={D} diag noise, {cat.data.numblocks[0]} blocks, "
              f"ready in {time.perf_counter() - t:.0f} s; cores {os.cpu_count()}, load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        warnings.simplefilter("ignore")
        if args.start and os.path.exists(args.start):
            start = dg.GMM.load(args.start)
        else:
            start = dg.GMM(K, D)
            t = time.perf_counter()
            dg.fit(start, cat, rng=1, maxiter=0, client=client)   # k-means|| + one E-step
            print(f"start (k-means||): {time.perf_counter() - t:.0f} s", flush=True)
            if args.start:
                start.save(args.start)
        opts = dict(rng=1, tol=args.tol, maxiter=args.maxiter, client=client,
                    init_method="none")

        def copy():
            g = dg.GMM(K, D)
            g.amp, g.mean, g.covar = start.amp.copy(), start.mean.copy(), start.covar.copy()
            return g

        batch = None
        if args.only != "stepwise":
            t = time.perf_counter()
            fitted = dg.fit(copy(), cat, **opts)
            batch = {"logL": fitted.logL, "history": fitted.history, "passes": fitted.passes,
                     "seconds": time.perf_counter() - t, "converged": fitted.converged,
                     "load": os.getloadavg()[0]}
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(batch, f)
            report_batch(batch)
            if args.only == "batch":
                return
        t = time.perf_counter()
        alone = dg.fit(copy(), cat, stepwise=args.passes, **{**opts, "maxiter": 0})
        t_alone = time.perf_counter() - t
        print(f"stepwise={args.passes}: mean logL {alone.logL:.6f} after {alone.passes:.0f} "
              f"passes ({t_alone:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        if batch is None:
            # the batch fit runs in another invocation: wait for its figures
            while not os.path.exists(args.json):
                time.sleep(10)
            time.sleep(1)
            with open(args.json) as f:
                batch = json.load(f)
            report_batch(batch)
        final = batch["logL"]
        print(f"stepwise={args.passes}: {final - alone.logL:.2e} below the batch answer after "
              f"{alone.passes:.0f} passes; batch EM after {args.passes + 1} passes: "
              f"{final - batch['history'][min(args.passes, len(batch['history']) - 1)]:.2e} "
              f"below", flush=True)
        if args.skip_polish:
            return
        t = time.perf_counter()
        full = dg.fit(copy(), cat, stepwise=args.passes, **opts)
        t_full = time.perf_counter() - t
        print(f"stepwise={args.passes} then batch: final mean logL {full.logL:.6f} after "
              f"{full.passes:.0f} passes ({t_full:.0f} s), converged {full.converged}; load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if client is not None:
            client.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
