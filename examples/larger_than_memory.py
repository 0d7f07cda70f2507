"""A fit streamed from a Zarr catalog larger than the cluster's memory.

The catalog is generated batch by batch and appended to Zarr with
:class:`daskgmmis.ingest.CatalogWriter`, so it is never held in memory whole,
not even here. The fit then runs on a LocalCluster whose workers' memory limits
add up to less than the catalog: :func:`daskgmmis.fit` sees that the data do not
fit, does not persist them, and reads every row chunk from storage at each
iteration, with a bounded memory per worker. The workers' peak resident memory
is printed next to the catalog size.

Run: python examples/larger_than_memory.py [--rows N] [--workers W]
                                           [--memory-limit BYTES] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import warnings

import numpy as np
from dask.utils import format_bytes

import daskgmmis as dg
from daskgmmis.catalog import default_row_chunk
from daskgmmis.cluster import client_context, cluster_memory, worker_peak_memory
from daskgmmis.ingest import CatalogWriter


def truth_model(D: int = 4) -> dg.GMM:
    g = dg.GMM(3, D)
    g.amp = np.array([0.5, 0.3, 0.2])
    g.mean = np.array([np.zeros(D), np.full(D, 4.0), np.r_[-4.0, np.full(D - 1, 2.0)]])
    g.covar = np.stack([np.eye(D), 0.5 * np.eye(D) + 0.2, 0.8 * np.eye(D)])
    return g


def write_big_catalog(path, rows: int, seed: int, batch: int = 1 << 18) -> dg.Catalog:
    """Simulated noisy catalog written in batches (bounded memory)."""
    truth = truth_model()
    D = truth.D
    seeds = np.random.SeedSequence(seed).spawn(-(-rows // batch))
    with CatalogWriter(path, [f"f{j}" for j in range(D)], "diag", overwrite=True,
                       chunk_rows=default_row_chunk(rows, D, "diag")) as writer:
        for start, s in zip(range(0, rows, batch), seeds):
            rng = np.random.default_rng(s)
            n = min(batch, rows - start)
            var = rng.uniform(0.05, 0.5, size=(n, D))
            x = truth.draw(n, rng=rng) + rng.standard_normal((n, D)) * np.sqrt(var)
            writer.append(x, var)
    return writer.catalog


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--workers", type=int, default=2,
                    help="LocalCluster workers; 0 runs on dask's threaded scheduler")
    ap.add_argument("--memory-limit", default=None,
                    help="per worker (default: a quarter of the catalog size, at least "
                         "400 MB)")
    ap.add_argument("--maxiter", type=int, default=10,
                    help="EM iterations (each reads the whole catalog)")
    ap.add_argument("--out", default=None, help="directory of the catalog (default: a "
                                                "temporary one)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(args.out or tmp, "big.zarr")
        t0 = time.perf_counter()
        cat = write_big_catalog(path, args.rows, args.seed)
        nbytes = int(cat.data.nbytes + cat.covar.nbytes)
        print(f"wrote {cat} ({format_bytes(nbytes)}) in {time.perf_counter() - t0:.1f} s")
        limit = args.memory_limit or max(nbytes // 4, 400 * 2**20)
        ctx = contextlib.nullcontext(None) if args.workers <= 0 else \
            client_context(n_workers=args.workers, threads_per_worker=1, memory_limit=limit)
        with ctx as client:
            if client is not None:
                total = cluster_memory(client)
                print(f"LocalCluster: {args.workers} workers, {format_bytes(total)} of memory "
                      f"limits in all for a {format_bytes(nbytes)} catalog")
                worker_peak_memory(client, reset=True)
            g = dg.GMM(3, cat.shape[1])
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.ConvergenceWarning)
                # persist=False states the intent; the default would decide the same
                # whenever the catalog exceeds half the workers' memory
                res = dg.fit(g, cat, init_method="minmax", rng=args.seed, tol=1e-4,
                             maxiter=args.maxiter, client=client, persist=False)
            seconds = time.perf_counter() - t0
            peak = max(worker_peak_memory(client).values()) if client is not None else None
    truth = truth_model()
    order = [int(np.argmin(((g.mean - m) ** 2).sum(1))) for m in truth.mean]
    err = float(np.abs(g.mean[order] - truth.mean).max())
    print(f"fit: {res.n_iter} iterations in {seconds:.1f} s ({seconds / max(res.n_iter, 1):.2f} "
          f"s each, every row read from Zarr), largest mean error {err:.3f}")
    if peak is not None:
        print(f"peak worker memory {format_bytes(peak)} for a {format_bytes(nbytes)} catalog")
    return {"rows": args.rows, "catalog_bytes": nbytes, "n_iter": res.n_iter,
            "mean_error": err, "peak_worker_bytes": peak}


if __name__ == "__main__":
    main()
