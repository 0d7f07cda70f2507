"""Out-of-core throughput: a catalog streamed from Zarr every iteration vs held in memory.

Setup (issue 6): a catalog of ``--rows`` rows (default 10^8) x D=5, float32 values
with per-row diagonal noise variances (float64, as catalogs store them: 60 bytes a
row, 6 GB at 10^8 rows before compression), written to disk; a LocalCluster of 2
worker processes x 1 thread with a 1 GB memory limit each. In one run:

* streamed: ``fit(..., persist=False)`` on the whole catalog, every E-step reading
  every block from Zarr;
* in memory: the same fit on the first ``--subset-rows`` rows (default 10^7),
  persisted in the workers' memory once (``persist=True``).

Reported: rows per second per core per EM iteration (median over iterations after the
first, which includes loading the numba kernels), their ratio (target: streamed
within 2x of in memory), each worker's peak RSS (kernel high-water mark) against its
limit, and the read rate of the workers during the streamed fit (``rchar``: bytes
returned by read calls, page cache included; ``read_bytes``: bytes fetched from the
block device, i.e. not served by the page cache).

Run (from the repository root):

    python benchmarks/bench_outofcore.py                 # 10^8 rows, see below
    python benchmarks/bench_outofcore.py --rows 2e7      # 6 min measured (2 busy cores)

Runtime: five passes over the catalog (validation + 4 E-steps with the default
``--iters 3``) plus writing it. ``--rows 2e7`` (1.2 GB) took 6 min on 2 cores shared
with other jobs (load average ~5); 10^8 rows (6 GB) is ~5x the streamed part, about
15 min on 2 idle cores and twice that on busy ones.

The catalog is written under ``--dir`` (default: a temporary directory, removed at
the end unless ``--keep``); ``--catalog PATH`` reuses one written before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import dask
import dask.array as da
import numpy as np

import daskgmmis as dg
from daskgmmis.catalog import default_row_chunk
from daskgmmis.cluster import client_context, cluster_memory, worker_peak_memory

D = 5


def catalog_block(i: int, rows: int):
    """Block i: two 5-D Gaussian populations observed with per-row diagonal noise."""
    rng = np.random.default_rng([6, i])
    second = rng.random(rows) < 0.4
    v = rng.normal(size=(rows, D)) + 4.0 * second[:, None]
    var = rng.uniform(0.05, 0.3, size=(rows, D))
    x = v + rng.normal(size=(rows, D)) * np.sqrt(var)
    return x.astype(np.float32), var


def write_catalog(path: str, N: int) -> dg.Catalog:
    """Write block by block with the threaded scheduler (bounded memory here)."""
    rows = default_row_chunk(N, D, "diag")
    xs, vs = [], []
    for i, start in enumerate(range(0, N, rows)):
        n = min(rows, N - start)
        block = dask.delayed(catalog_block, nout=2, pure=True)(i, n)
        xs.append(da.from_delayed(block[0], (n, D), dtype=np.float32))
        vs.append(da.from_delayed(block[1], (n, D), dtype=np.float64))
    with dask.config.set(scheduler="threads"):
        return dg.write_catalog(path, da.concatenate(xs), da.concatenate(vs), chunks=rows)


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _io_counters() -> dict:
    """This process's cumulative read counters (runs on a worker; Linux)."""
    out = {}
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                key, value = line.split(":")
                out[key] = int(value)
    except OSError:
        pass
    return out


def read_totals(client) -> dict:
    per_worker = client.run(_io_counters)
    return {k: sum(c.get(k, 0) for c in per_worker.values()) for k in ("rchar", "read_bytes")}


def timed_fit(client, data, covar, *, persist: bool, iters: int, K: int):
    """Fit and measure: (FitResult, seconds per iteration, peak RSS per worker, reads)."""
    worker_peak_memory(client, reset=True)
    io0 = read_totals(client)
    g = dg.GMM(K, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        res = dg.fit(g, data, covar, client=client, persist=persist, init_method="minmax",
                     maxiter=iters, tol=0.0, rng=0)
    io1 = read_totals(client)
    per_iter = statistics.median(res.seconds_per_iter[1:] or res.seconds_per_iter)
    reads = {k: io1[k] - io0[k] for k in io0}
    return res, per_iter, worker_peak_memory(client), reads


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e8, help="catalog rows (default 1e8)")
    ap.add_argument("--subset-rows", type=float, default=1e7,
                    help="rows of the in-memory comparison (default 1e7)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="1GB", help="per worker (default 1GB)")
    ap.add_argument("-K", type=int, default=5, help="mixture components (default 5)")
    ap.add_argument("--iters", type=int, default=3, help="EM iterations (M-steps) per fit")
    ap.add_argument("--dir", default=None, help="where to write the catalog")
    ap.add_argument("--catalog", default=None, help="reuse this catalog instead of writing")
    ap.add_argument("--keep", action="store_true", help="keep the written catalog")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    N, M = int(args.rows), int(args.subset_rows)
    if M > N:
        ap.error("--subset-rows must not exceed --rows")

    workdir = None
    if args.catalog:
        path = args.catalog
        cat = dg.open_catalog(path)
        N = cat.shape[0]
        t_write = float("nan")
    else:
        workdir = tempfile.mkdtemp(prefix="daskgmmis-bench-", dir=args.dir)
        path = os.path.join(workdir, "catalog.zarr")
        t0 = time.perf_counter()
        cat = write_catalog(path, N)
        t_write = time.perf_counter() - t0
    nbytes = cat.data.nbytes + cat.covar.nbytes
    disk = du(path)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"catalog: {N:.3g} rows x D={D} (float32 values + float64 variances): "
          f"{nbytes / 1e9:.2f} GB in memory, {disk / 1e9:.2f} GB on disk, "
          f"{cat.data.numblocks[0]} blocks; written in {t_write:.1f} s "
          f"({nbytes / 1e6 / t_write:.0f} MB/s)")

    try:
        with client_context(n_workers=args.workers, threads_per_worker=args.threads,
                            memory_limit=args.memory_limit, dashboard=False) as client:
            cores = args.workers * args.threads
            limit = cluster_memory(client) / args.workers
            print(f"cluster: {args.workers} workers x {args.threads} threads, memory limit "
                  f"{limit / 1e9:.2f} GB each (the catalog is {nbytes / (limit * args.workers):.1f}x "
                  f"their total)")
            s_res, s_iter, s_peak, s_io = timed_fit(client, cat, None, persist=False,
                                                    iters=args.iters, K=args.K)
            sub_x, sub_c = cat.data[:M], cat.covar[:M]
            m_res, m_iter, m_peak, _ = timed_fit(client, sub_x, sub_c, persist=True,
                                                 iters=args.iters, K=args.K)
    finally:
        if workdir is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    streamed = N / s_iter / cores
    in_memory = M / m_iter / cores
    figures = {
        "rows": N, "subset_rows": M, "K": args.K, "cores": cores,
        "catalog_bytes": nbytes, "disk_bytes": disk, "write_seconds": t_write,
        "worker_memory_limit": limit,
        "streamed_seconds_per_iter": s_iter, "in_memory_seconds_per_iter": m_iter,
        "streamed_rows_per_s_per_core": streamed, "in_memory_rows_per_s_per_core": in_memory,
        "ratio": in_memory / streamed,
        "streamed_fit_seconds": s_res.seconds, "in_memory_fit_seconds": m_res.seconds,
        "streamed_peak_rss": max(s_peak.values()), "in_memory_peak_rss": max(m_peak.values()),
        "streamed_rchar_per_s": s_io["rchar"] / s_res.seconds,
        "streamed_device_read_per_s": s_io["read_bytes"] / s_res.seconds,
    }
    print(f"streamed : {N:.3g} rows, {s_iter:.2f} s/iter -> {streamed / 1e6:.3f} M rows/s/core; "
          f"fit {s_res.seconds:.1f} s; peak worker RSS {figures['streamed_peak_rss'] / 1e6:.0f} "
          f"MB of {limit / 1e6:.0f} MB")
    print(f"in memory: {M:.3g} rows, {m_iter:.2f} s/iter -> {in_memory / 1e6:.3f} M rows/s/core; "
          f"fit {m_res.seconds:.1f} s; peak worker RSS {figures['in_memory_peak_rss'] / 1e6:.0f} "
          f"MB of {limit / 1e6:.0f} MB")
    figures["load_average_end"] = os.getloadavg()[0]
    print(f"in-memory / streamed throughput: {figures['ratio']:.2f}x (target <= 2x); load "
          f"average now {figures['load_average_end']:.1f} on {os.cpu_count()} cores")
    print(f"streamed reads by the workers: {figures['streamed_rchar_per_s'] / 1e6:.0f} MB/s "
          f"returned by read calls, {figures['streamed_device_read_per_s'] / 1e6:.0f} MB/s "
          f"from the device (the rest came from the page cache)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
