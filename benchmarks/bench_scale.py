"""A 10^8-row fit on this machine, and the scheduler's share of a pass as chunks multiply.

Part 1 (``--rows``, default 10^8): a catalog of D=5 float32 values drawn from a K=8
mixture, *without* noise columns, is written to Zarr block by block; a LocalCluster
of ``--workers`` worker processes x 1 thread with ``--memory-limit`` each then fits it
twice, streamed from disk (``persist=False``), from the same start
(``init_method="minmax"``: k-means|| would cost a dozen passes of its own at this
size) to the same ``--tol`` (default 1e-6 per row; the package's default, 0.01 / N,
is 1e-10 per row at 10^8 rows):

* batch EM to convergence (at most ``--batch-iters`` M-steps);
* ``--stepwise`` passes of stepwise EM (default 2), then batch EM polishing to
  convergence.

Reported for each: wall time, passes, convergence, the final mean logL, the passes
after which it came within 1e-3 per row of the batch fit's answer, seconds per
stepwise pass (the sum of its groups', from the log) and per batch pass, rows/s and
MB/s (the catalog's bytes over the time of a pass; the workers' own read counters
too), each worker's peak RSS (kernel high-water mark) against its limit.

Why D=5, K=8, no noise: the two fits must fit in about an hour on two shared cores;
without noise columns a row is 20 bytes (2 GB at 10^8 rows) and the E-step is the
plain-GMM one, so the figures show the streaming, the scheduler and the memory bound
at 10^8 rows; per-row noise multiplies the kernel cost (its throughput is measured by
``bench_outofcore.py``).

Part 2 (``--scaling-rows``, default 10^7): the same kind of catalog written with
10^2 .. 10^4 chunks; time per EM iteration (median of ``--scaling-iters``) on the same
cluster. A fit of the time as ``a + b * n_chunks`` gives the per-chunk scheduler cost
``b`` and the compute rate; both feed the README's sizing table.

Run (from the repository root):

    python benchmarks/bench_scale.py --dir /big/disk            # both parts
    python benchmarks/bench_scale.py --rows 1e7 --skip-scaling  # a quick check

The catalogs are written under ``--dir`` (default: a temporary directory) and removed
at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from bench_em import random_truth
from bench_outofcore import du, read_totals
from daskgmmis.cluster import client_context, cluster_memory, worker_peak_memory

D, K = 5, 8


def _block(i: int, rows: int, seed: int = 0) -> np.ndarray:
    truth = random_truth(K, D, np.random.default_rng(seed), spread=6.0, shape=0.7)
    return truth.draw(rows, rng=np.random.default_rng([seed, i])).astype(np.float32)


def write(path: str, N: int, chunk: int) -> dg.Catalog:
    """Block by block with the threaded scheduler (the driver never holds the catalog)."""
    parts = [da.from_delayed(dask.delayed(_block, pure=True)(i, min(chunk, N - s)),
                             (min(chunk, N - s), D), dtype=np.float32)
             for i, s in enumerate(range(0, N, chunk))]
    with dask.config.set(scheduler="threads"):
        return dg.write_catalog(path, da.concatenate(parts), chunks=chunk)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} cores"


def timed(client, cat, tol=0.0, **kw) -> dict:
    """One fit from the min-max start, with its memory and read figures."""
    worker_peak_memory(client, reset=True)
    io0 = read_totals(client)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(dg.GMM(K, D), cat, client=client, init_method="minmax", rng=0, tol=tol,
                     **{"persist": False, **kw})
    wall = time.perf_counter() - t
    io1 = read_totals(client)
    peak = worker_peak_memory(client)
    return {"result": res, "wall": wall, "peak": max(peak.values()),
            "rchar": io1["rchar"] - io0["rchar"], "read_bytes": io1["read_bytes"] - io0["read_bytes"],
            "load": load()}


def passes_within(history, target: float, within: float = 1e-3) -> int | None:
    """Passes (E-steps) after which the mean logL first came within ``within`` of ``target``."""
    for i, h in enumerate(history):
        if h >= target - within:
            return i + 1
    return None


def part1(client, path: str, N: int, args, limit: float) -> dict:
    t = time.perf_counter()
    if os.path.exists(path):
        cat, t_write = dg.open_catalog(path), float("nan")
        N = cat.shape[0]
    else:
        cat = write(path, N, args.chunk or dg.catalog.default_row_chunk(N, D))
        t_write = time.perf_counter() - t
    nbytes, disk = cat.data.nbytes, du(path)
    print(f"catalog: {N:.3g} rows x D={D} float32, {cat.data.numblocks[0]} blocks of "
          f"{cat.data.chunksize[0]} rows, {nbytes / 1e9:.2f} GB ({disk / 1e9:.2f} GB on "
          f"disk), written in {t_write:.0f} s ({load()})", flush=True)
    out = {"rows": N, "bytes": nbytes, "disk_bytes": disk, "write_seconds": t_write,
           "blocks": cat.data.numblocks[0], "tol": args.tol}
    groups = []

    class Groups(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("stepwise group"):
                groups.append(float(record.getMessage().rsplit(",", 1)[1].split()[0]))

    handler = Groups()
    logging.getLogger("daskgmmis").addHandler(handler)
    logging.getLogger("daskgmmis").setLevel(logging.INFO)
    # the batch fit first: the stepwise fit is judged against its final logL
    runs = ([("batch", 0)] if not args.skip_batch else []) + [(f"stepwise={args.stepwise}",
                                                                args.stepwise)]
    try:
        for name, stepwise in runs:
            groups.clear()
            f = timed(client, cat, tol=args.tol, stepwise=stepwise, maxiter=args.batch_iters)
            res = f["result"]
            batch_times = res.seconds_per_iter[1:] if stepwise else res.seconds_per_iter
            per_pass = statistics.median(batch_times)
            sw_pass = sum(groups) / stepwise if stepwise else float("nan")
            fig = {"wall": f["wall"], "passes": res.passes, "logL": res.logL,
                   "converged": res.converged, "iterations": res.n_iter,
                   "history": res.history, "stepwise_groups": len(groups),
                   "seconds_per_stepwise_pass": sw_pass, "seconds_per_batch_pass": per_pass,
                   "seconds_per_iter": res.seconds_per_iter,
                   "rows_per_s": N / per_pass, "MB_per_s": nbytes / per_pass / 1e6,
                   "worker_read_MB_per_s": f["rchar"] / f["wall"] / 1e6,
                   "device_read_MB_per_s": f["read_bytes"] / f["wall"] / 1e6,
                   "peak_rss": f["peak"], "limit": limit, "load": f["load"]}
            out[name] = fig
            print(f"{name}: wall {f['wall']:.0f} s (incl. the data summary pass), "
                  f"{res.passes:.2f} passes, converged {res.converged} (tol {args.tol:g}), "
                  f"mean logL {res.logL:.7f} (first E-step: {res.history[0]:.7f}); "
                  + (f"stepwise pass {sw_pass:.0f} s ({len(groups)} groups) = "
                     f"{N / sw_pass / 1e6:.2f} M rows/s; " if stepwise else "")
                  + f"batch pass {per_pass:.1f} s (median of {len(batch_times)}) = "
                  f"{N / per_pass / 1e6:.2f} M rows/s = {nbytes / per_pass / 1e6:.0f} MB/s; "
                  f"workers read {fig['worker_read_MB_per_s']:.0f} MB/s "
                  f"({fig['device_read_MB_per_s']:.0f} MB/s from the device); peak worker RSS "
                  f"{f['peak'] / 2**30:.2f} GiB of {limit / 2**30:.2f} GiB ({f['load']})",
                  flush=True)
    finally:
        logging.getLogger("daskgmmis").removeHandler(handler)
    if "batch" in out:
        final = out["batch"]["logL"]
        for name, _ in runs:
            fig = out[name]
            # a stepwise fit's history starts after its stepwise passes (and the summary)
            offset = args.stepwise if name != "batch" else 0
            within = passes_within(fig["history"], final)
            fig["passes_within_1e-3_of_batch"] = None if within is None else within + offset
            print(f"{name}: within 1e-3 per row of the batch fit's final logL after "
                  f"{fig['passes_within_1e-3_of_batch']} passes; final logL "
                  f"{fig['logL'] - final:+.2e} from it", flush=True)
    return out


def _cpu() -> float:
    return time.process_time()


def cpu_times(client) -> tuple:
    """CPU seconds so far of the scheduler, of all workers, and of this (driver) process."""
    return (client.run_on_scheduler(_cpu), sum(client.run(_cpu).values()), time.process_time())


def part2(client, workdir: str, N: int, args) -> dict:
    """Time per iteration against the number of chunks; CPU seconds per iteration of the
    scheduler, the workers and the driver (the load on this shared machine moves the
    wall times; CPU times move much less)."""
    rows = []
    source = None
    if args.in_memory:
        source = da.concatenate([da.from_delayed(dask.delayed(_block, pure=True)(i, 100_000),
                                                 (100_000, D), dtype=np.float32)
                                 for i in range(-(-N // 100_000))])[:N]
    for n_chunks in args.chunk_counts:
        chunk = -(-N // n_chunks)
        if source is not None:
            data = client.persist(source.rechunk((chunk, D)))
            client.wait_for_workers(1)
            client.gather(client.compute(data.sum()))      # persisted before the clock starts
            kw = dict(persist=True)
        else:
            path = os.path.join(workdir, f"scaling-{n_chunks}.zarr")
            data = write(path, N, chunk)
            kw = {}
        c0 = cpu_times(client)
        f = timed(client, data, maxiter=args.scaling_iters, **kw)
        c1 = cpu_times(client)
        res = f["result"]
        per_iter = statistics.median(res.seconds_per_iter[1:])
        # the fit's passes: its E-steps plus the data summary
        n_pass = len(res.seconds_per_iter) + 1
        sched, work, driver = ((c1[i] - c0[i]) / n_pass for i in range(3))
        n_blocks = (data.data if isinstance(data, dg.Catalog) else data).numblocks[0]
        rows.append({"chunks": n_blocks, "chunk_rows": chunk, "seconds_per_iter": per_iter,
                     "scheduler_cpu_per_pass": sched, "worker_cpu_per_pass": work,
                     "driver_cpu_per_pass": driver, "load": f["load"]})
        print(f"N={N:.3g}{' in memory' if source is not None else ''}: {n_blocks:6d} chunks of "
              f"{chunk:8d} rows: {per_iter:.2f} s per iteration; CPU s per pass: scheduler "
              f"{sched:.2f}, workers {work:.2f}, driver {driver:.2f} ({f['load']})", flush=True)
        if source is not None:
            del data
        else:
            shutil.rmtree(path, ignore_errors=True)
    n = np.array([r["chunks"] for r in rows], float)
    fits = {}
    for key in ("seconds_per_iter", "scheduler_cpu_per_pass", "worker_cpu_per_pass",
                "driver_cpu_per_pass"):
        b, a = np.polyfit(n, np.array([r[key] for r in rows]), 1)
        fits[key] = (a, b)
        print(f"fit: {key} = {a:.2f} + {b * 1e3:.3f} ms x chunks", flush=True)
    return {"rows": rows, "fits": fits}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e8)
    ap.add_argument("--chunk", type=int, default=0, help="rows per block (default: the package's)")
    ap.add_argument("--batch-iters", type=int, default=200,
                    help="cap on batch EM M-steps of either fit (default 200)")
    ap.add_argument("--tol", type=float, default=1e-6,
                    help="both fits' tol, mean logL per row (default 1e-6; the package's "
                         "default, 0.01 / N, is 1e-10 per row at 10^8 rows)")
    ap.add_argument("--stepwise", type=int, default=2,
                    help="stepwise passes of the second fit (default 2)")
    ap.add_argument("--skip-batch", action="store_true",
                    help="part 1: only the stepwise fit")
    ap.add_argument("--scaling-rows", type=float, default=1e7)
    ap.add_argument("--chunk-counts", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    ap.add_argument("--scaling-iters", type=int, default=3)
    ap.add_argument("--in-memory", action="store_true",
                    help="part 2 on data persisted in the workers (no Zarr stores written)")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--catalog", default=None,
                    help="part 1's catalog: reused if it exists, else written there (and kept)")
    ap.add_argument("--write-only", action="store_true", help="write --catalog and stop")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.write_only:
        t = time.perf_counter()
        N = int(args.rows)
        cat = write(args.catalog, N, args.chunk or dg.catalog.default_row_chunk(N, D))
        print(f"written {cat.shape[0]:.3g} rows in {time.perf_counter() - t:.0f} s, "
              f"{du(args.catalog) / 1e9:.2f} GB on disk ({load()})")
        return {}
    workdir = tempfile.mkdtemp(prefix="daskgmmis-scale-", dir=args.dir)
    figures = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        with client_context(n_workers=args.workers, threads_per_worker=1,
                            memory_limit=args.memory_limit, dashboard=False) as client:
            limit = cluster_memory(client) / args.workers
            print(f"cluster: {args.workers} workers x 1 thread, {limit / 2**30:.2f} GiB each; "
                  f"{load()}", flush=True)
            if not args.skip_big:
                big = args.catalog or os.path.join(workdir, "big.zarr")
                figures["big"] = part1(client, big, int(args.rows), args, limit)
                if not args.keep and not args.catalog:
                    shutil.rmtree(os.path.join(workdir, "big.zarr"), ignore_errors=True)
            if not args.skip_scaling:
                figures["scaling"] = part2(client, workdir, int(args.scaling_rows), args)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, default=str)
    return figures


if __name__ == "__main__":
    main()
