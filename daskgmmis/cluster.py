"""Which Dask cluster a fit runs on: resolve, connect, size, measure.

:func:`get_client` turns what a user can say on the command line or in a script into
a connected :class:`distributed.Client`, trying in order

1. an explicit address (``tcp://host:8786``, ``tls://...``) or an existing ``Client``;
2. a scheduler file written by ``dask scheduler --scheduler-file F`` (the HPC way);
3. the ``DASK_SCHEDULER_ADDRESS`` environment variable (or dask's
   ``scheduler-address`` configuration key);
4. otherwise a new :class:`distributed.LocalCluster` of worker *processes* sized to
   this machine, with memory limits set so that :func:`daskgmmis.fit` can decide
   between persisting a catalog and streaming it from storage.

Connections are checked with a timeout first, so an unreachable scheduler or a stale
scheduler file fails fast with a :class:`ClusterError` instead of hanging. TLS and
other security settings come from dask's configuration
(``distributed.comm.tls.*``, ``distributed.comm.require-encryption``) unless a
``distributed.security.Security`` object is passed; see ``deploy/README.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dask
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from .errors import (ClusterError, InputError, InputTypeError, SchedulerFileError,  # noqa: F401
                     SchedulerFileNotFoundError)

if TYPE_CHECKING:  # distributed is a dependency, but importing it costs ~0.5 s
    from distributed import Client
    from distributed.security import Security

__all__ = ["get_client", "client_context", "cluster_memory", "worker_peak_memory",
           "dashboard_link",
           "ClusterError", "SchedulerFileError", "SchedulerFileNotFoundError",
           "ENV_ADDRESS", "MEMORY_FRACTION"]

log = logging.getLogger("daskgmmis")

#: Environment variable naming the scheduler to connect to when no address is given.
ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"

#: Fraction of the machine's memory handed to a LocalCluster's workers (split evenly);
#: the rest is left to the fitting process, the scheduler and the operating system.
MEMORY_FRACTION = 0.9


# ------------------------------------------------------------------ resolution


def _read_scheduler_file(path) -> str:
    """The scheduler address stored in a scheduler file, with errors that say why."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise SchedulerFileNotFoundError(
            f"scheduler_file: {path} does not exist; start the scheduler first "
            f"('dask scheduler --scheduler-file {path}') and wait until it has written "
            f"the file, or check the path (it must be on a filesystem shared with the "
            f"scheduler).")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchedulerFileError(
            f"scheduler_file: {path} is not a JSON scheduler file ({type(e).__name__}: "
            f"{e}); expected the file written by 'dask scheduler --scheduler-file'. A "
            f"file being written at this moment reads as empty: retry.") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address:
        raise SchedulerFileError(
            f"scheduler_file: {path} holds no 'address' entry (found keys "
            f"{sorted(info) if isinstance(info, dict) else type(info).__name__}); expected "
            f"the file written by 'dask scheduler --scheduler-file'.")
    return address


def _resolve_address(address, scheduler_file) -> tuple[str | None, str]:
    """(address, where it came from) following the documented order; None: local."""
    if address is not None and scheduler_file is not None:
        raise InputError("get_client: pass either address or scheduler_file, not both.")
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise InputTypeError(f"address: expected a scheduler address such as "
                                 f"'tcp://host:8786' or a distributed.Client; found "
                                 f"{address!r}.")
        return address.strip(), "address"
    if scheduler_file is not None:
        return _read_scheduler_file(scheduler_file), f"scheduler file {scheduler_file}"
    env = os.environ.get(ENV_ADDRESS, "").strip()
    if env:
        return env, f"${ENV_ADDRESS}"
    configured = dask.config.get("scheduler-address", None)
    if configured:
        return str(configured), "dask config 'scheduler-address'"
    return None, "local"


def _probe(address: str, timeout: float, security: "Security") -> None:
    """Open and close one connection to ``address`` (retrying until ``timeout``).

    Done before building a ``Client`` because a Client whose start timed out blocks
    again for twice the timeout when it is garbage-collected.
    """
    from distributed.comm import connect

    async def attempt():
        comm = await connect(address, timeout=timeout,
                             **security.get_connection_args("client"))
        await comm.close()

    # a private thread: the caller may be inside a running event loop (Jupyter)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, attempt()).result()


def _connect(address: str, source: str, timeout: float, security, set_as_default: bool,
             wait_for_workers: int) -> "Client":
    from distributed import Client
    from distributed.comm import parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
    except ValueError as e:
        raise InputError(f"address {address!r} (from {source}): {e}; expected e.g. "
                         f"'tcp://host:8786' or 'tls://host:8786'.") from None
    stale = (" The scheduler file may be stale: left by a scheduler that has exited."
             if source.startswith("scheduler file") else "")
    try:
        _probe(address, timeout, security)
        client = Client(address, timeout=timeout, security=security,
                        set_as_default=set_as_default)
    except ValueError as e:   # malformed host or port, found when resolving it
        raise InputError(f"address {address!r} (from {source}): {e}; expected e.g. "
                         f"'tcp://host:8786' or 'tls://host:8786'.") from None
    except (RuntimeError, TypeError) as e:
        # distributed's own checks: "encryption required ... refusing tcp://", or a
        # tls:// address without a TLS context (no CA/certificates configured)
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {address} (from {source}): {e}. The "
            f"address scheme and the TLS settings disagree: a tls:// address needs "
            f"distributed.comm.tls.ca-file and the client's cert/key in dask's "
            f"configuration (or security=...), and with distributed.comm.require-encryption "
            f"a tcp:// address is refused. See deploy/README.md.") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} (from {source}) within "
            f"{timeout:g} s: {e}.{stale} Check that the scheduler runs, that this machine "
            f"can reach its host and port, and that TLS settings match "
            f"(distributed.comm.tls.*); or pass a longer timeout.") from None
    if wait_for_workers > 0:
        try:
            client.wait_for_workers(wait_for_workers, timeout=timeout)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            n = len(client.scheduler_info(**_all_workers(client))["workers"])
            client.close()
            raise ClusterError(
                f"only {n} of {wait_for_workers} workers joined the scheduler at {address} "
                f"(from {source}) within {timeout:g} s; workers may still be queued or "
                f"starting: pass a longer timeout, or fewer wait_for_workers.") from None
    return client


def _local_sizing(n_workers: int | None, threads_per_worker: int | None,
                  memory_limit: int | str | None) -> tuple[int, int, int]:
    """(worker processes, threads each, memory limit in bytes each) for this machine.

    Cores are split between processes as distributed does by default (processes,
    not threads, so that one worker's memory can be bounded and its loss tolerated);
    ``MEMORY_FRACTION`` of the machine's memory (cgroup- and rlimit-aware) is split
    evenly between the workers.
    """
    from distributed.deploy.utils import nprocesses_nthreads
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and value >= 1):
            raise InputError(f"{name}: expected a positive integer; found {value!r}.")
    cores = max(1, int(CPU_COUNT or 1))
    if n_workers is None and threads_per_worker is None:
        n_workers, threads_per_worker = nprocesses_nthreads(cores)
    elif n_workers is None:
        n_workers = max(1, cores // threads_per_worker)
    elif threads_per_worker is None:
        threads_per_worker = max(1, cores // n_workers)
    if memory_limit is None:
        limit = int(MEMORY_LIMIT * MEMORY_FRACTION / n_workers)
    else:
        try:
            limit = int(parse_bytes(memory_limit) if isinstance(memory_limit, str)
                        else memory_limit)
        except (ValueError, TypeError):
            raise InputError(f"memory_limit: expected bytes per worker as an integer or a "
                             f"string such as '4GiB'; found {memory_limit!r}.") from None
        if limit <= 0:
            raise InputError(f"memory_limit: expected a positive number of bytes per worker "
                             f"(a fit needs the limits to choose between persisting and "
                             f"streaming); found {memory_limit!r}.")
    return n_workers, threads_per_worker, limit


def _all_workers(client) -> dict:
    """Keyword asking scheduler_info for every worker (recent distributed lists 5 by
    default; older versions have no such argument and list them all)."""
    import inspect
    try:
        params = inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return {}
    return {"n_workers": -1} if "n_workers" in params else {}


def dashboard_link(client) -> str | None:
    """The address of the cluster's dashboard, or None where none is served.

    ``client.dashboard_link`` names the scheduler's HTTP port even when the
    dashboard is off (the port still serves ``/health``); for a LocalCluster of
    this process the link is given only when bokeh, which serves the pages, is
    installed.
    """
    if getattr(client, "cluster", None) is not None and not _dashboard_available():
        return None
    try:
        return client.dashboard_link
    except (KeyError, AttributeError):   # scheduler started without a dashboard
        return None


def _dashboard_address(dashboard) -> str | None:
    if dashboard is True:
        return ":8787"      # distributed moves to a free port, with a warning, if taken
    if dashboard is False or dashboard is None:
        return None
    if isinstance(dashboard, str):
        return dashboard
    raise InputTypeError(f"dashboard: expected True, False or an address such as ':8787'; "
                         f"found {dashboard!r}.")


def _dashboard_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


# -------------------------------------------------------------------- public


def get_client(address: "str | Client | None" = None, scheduler_file: str | os.PathLike | None = None,
               *, n_workers: int | None = None, threads_per_worker: int | None = None,
               memory_limit: int | str | None = None, dashboard: bool | str = True,
               timeout: float | str | None = None, wait_for_workers: int = 0,
               security: "Security | None" = None,
               set_as_default: bool = False) -> "Client":
    """Connect to the Dask cluster a fit should run on, or start a local one.

    Resolution order: ``address``, then ``scheduler_file``, then the
    ``DASK_SCHEDULER_ADDRESS`` environment variable (then dask's
    ``scheduler-address`` configuration), else a new LocalCluster of worker
    processes sized to this machine. The dashboard link is logged on the
    ``"daskgmmis"`` logger (INFO) and is ``client.dashboard_link``.

    The client is a context manager: leaving its ``with`` block (or calling
    ``client.close()``) also stops a LocalCluster started here and its workers; a
    remote cluster outlives it.

    Parameters
    ----------
    address : str or distributed.Client, optional
        Scheduler address (``"tcp://10.0.0.5:8786"``, ``"tls://..."``; a bare
        ``"host:port"`` means TCP). An existing ``Client`` is returned as it is.
    scheduler_file : str or os.PathLike, optional
        JSON file written by ``dask scheduler --scheduler-file F``; it must exist
        when this is called (a batch script waits for it, see ``deploy/hpc``).
    n_workers : int, optional
        LocalCluster only: worker processes. Default: distributed's split of the
        cores (one process per core up to 4 cores).
    threads_per_worker : int, optional
        LocalCluster only: threads per worker process. Default: cores / n_workers.
    memory_limit : int or str, optional
        LocalCluster only: bytes per worker (``"2GiB"`` accepted). Default:
        ``MEMORY_FRACTION`` (0.9) of the machine's memory, cgroup-aware, split
        evenly between the workers. Workers spill at 60-70 %, pause at 80 % and
        are restarted at 95 % of it (distributed's defaults).
    dashboard : bool or str
        LocalCluster only: serve the dashboard (``True``: on port 8787, or a free
        one; a str: that address; ``False``: none). Needs the ``bokeh`` package,
        which the ``dashboard`` extra installs (``pip install 'daskgmmis[dashboard]'``).
    timeout : float or str, optional
        Seconds (or ``"30s"``) to wait for the scheduler to answer and for
        ``wait_for_workers`` workers. Default: dask's
        ``distributed.comm.timeouts.connect`` (30 s).
    wait_for_workers : int
        Remote clusters: return only once this many workers have joined (a fit
        sizes its persist/stream decision on the workers present when it starts).
    security : distributed.security.Security, optional
        TLS settings; default: from dask's configuration.
    set_as_default : bool
        Make the client dask's default scheduler for this process. Off by default:
        pass the client to :func:`daskgmmis.fit` explicitly.

    Returns
    -------
    distributed.Client
        Connected; ``client.cluster`` is the LocalCluster it owns (None for a
        remote scheduler). An existing ``Client`` passed in is returned as it is.

    Raises
    ------
    ClusterError
        The scheduler did not answer within ``timeout`` (wrong address, scheduler
        down, stale scheduler file, firewall, TLS mismatch), or fewer than
        ``wait_for_workers`` workers joined in time.
    SchedulerFileNotFoundError
        ``scheduler_file`` does not exist.
    SchedulerFileError
        ``scheduler_file`` is not a scheduler file (not JSON, no address).
    InputError, InputTypeError
        Malformed address, both ``address`` and ``scheduler_file``, bad sizes.

    Examples
    --------
    >>> with get_client(scheduler_file="~/scheduler.json") as client:   # doctest: +SKIP
    ...     dg.fit(gmm, "s3://bucket/catalog.zarr", client=client)
    """
    from distributed import Client
    from distributed.security import Security

    if isinstance(address, Client):
        if scheduler_file is not None:
            raise InputError("get_client: pass either address or scheduler_file, not both.")
        return address
    if not (isinstance(wait_for_workers, int) and wait_for_workers >= 0):
        raise InputError(f"wait_for_workers: expected an integer >= 0; found "
                         f"{wait_for_workers!r}.")
    timeout_s = parse_timedelta(timeout if timeout is not None
                                else dask.config.get("distributed.comm.timeouts.connect"),
                                default="seconds")
    if not timeout_s or timeout_s <= 0:
        raise InputError(f"timeout: expected a positive number of seconds; found {timeout!r}.")
    target, source = _resolve_address(address, scheduler_file)

    if target is not None:
        local_only = {"n_workers": n_workers, "threads_per_worker": threads_per_worker,
                      "memory_limit": memory_limit}
        given = [k for k, v in local_only.items() if v is not None]
        if given:
            warnings.warn(f"get_client: {', '.join(given)} only size a new LocalCluster and "
                          f"are ignored when connecting to the scheduler at {target} (from "
                          f"{source}).", UserWarning, stacklevel=2)
        client = _connect(target, source, timeout_s,
                          security if security is not None else Security(), set_as_default,
                          wait_for_workers)
        info = client.scheduler_info(**_all_workers(client))
        workers = info.get("workers", {}).values()
        log.info("connected to the Dask scheduler at %s (from %s): %d workers, %d threads, "
                 "%s of worker memory limits; dashboard: %s", target, source, len(workers),
                 sum(w.get("nthreads", 0) for w in workers),
                 format_bytes(cluster_memory(client)),
                 dashboard_link(client) or "none")
        return client

    n, threads, limit = _local_sizing(n_workers, threads_per_worker, memory_limit)
    dash = _dashboard_address(dashboard)
    if dash is not None and not _dashboard_available():
        log.info("no dashboard: the bokeh package is not installed (pip install "
                 "'daskgmmis[dashboard]' installs it)")
        dash = None
    # without a dashboard the scheduler still serves /health and /metrics over HTTP;
    # a free port keeps it off 8787 (and its "port in use" warning)
    no_dash = {} if dash else {"scheduler_kwargs": {"dashboard": False,
                                                    "dashboard_address": ":0"}}
    # Client(**cluster options) starts the LocalCluster itself and so owns it: closing
    # the client (or leaving its with block) stops the workers too
    client = Client(n_workers=n, threads_per_worker=threads, processes=True,
                    memory_limit=limit, dashboard_address=dash, security=security,
                    set_as_default=set_as_default, timeout=timeout_s, **no_dash)
    try:
        client.wait_for_workers(n, timeout=timeout_s)
    except BaseException:
        client.close()
        raise
    log.info("started a LocalCluster at %s: %d worker processes x %d threads, memory "
             "limit %s each; dashboard: %s", client.cluster.scheduler_address, n, threads,
             format_bytes(limit), dashboard_link(client) if dash else "none")
    return client


@contextlib.contextmanager
def client_context(address: "str | Client | None" = None,
                   scheduler_file: str | os.PathLike | None = None,
                   **kwargs) -> "Iterator[Client]":
    """:func:`get_client` as a context manager that cleans up after itself.

    Kept for scripts written against the tuple-returning ``get_client`` of 0.1:
    ``with get_client(...) as client`` is the same. On exit it closes the client it
    created, which stops a LocalCluster started here; a ``Client`` passed in is left
    open, and a remote cluster is never shut down.

    Parameters
    ----------
    address, scheduler_file, **kwargs
        As for :func:`get_client`.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client

    passed_in = isinstance(address, Client)
    client = get_client(address, scheduler_file, **kwargs)
    try:
        yield client
    finally:
        if not passed_in:
            client.close()     # stops a LocalCluster that get_client started


def cluster_memory(client: "Client") -> int:
    """Sum of the workers' memory limits, in bytes.

    Asks the scheduler about *every* worker (recent ``distributed`` lists only a
    few by default). Workers without a limit (``memory_limit`` 0 or None) count as
    0: their memory is unknown, and an unknown budget should make a fit stream
    rather than persist.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    int
        Bytes; 0 when no worker has joined yet.
    """
    workers = client.scheduler_info(**_all_workers(client)).get("workers", {})
    return int(sum(int(w.get("memory_limit") or 0) for w in workers.values()))


def _peak_rss(reset: bool) -> int:
    """This process's peak resident set size in bytes (runs on a worker)."""
    if sys.platform.startswith("linux"):
        with open("/proc/self/status", encoding="ascii") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("VmHWM:"))
        if reset:
            # "5" resets the high-water mark to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        return peak
    if reset:
        raise ClusterError(f"worker_peak_memory(reset=True): resetting the peak RSS needs "
                           f"Linux; the worker runs on {sys.platform}.")
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)   # macOS: bytes


def worker_peak_memory(client: "Client", reset: bool = False) -> dict[str, int]:
    """Peak resident memory of every worker process, in bytes.

    The kernel's high-water mark of each worker's RSS (``VmHWM`` on Linux), so no
    short spike is missed as it would be by sampling. Compare it with the workers'
    memory limits (:func:`cluster_memory`) to check that a streamed fit stayed
    within them.

    Parameters
    ----------
    client : distributed.Client
    reset : bool
        After reading, restart each high-water mark from the current RSS (Linux),
        so that a following call measures only what ran in between.

    Returns
    -------
    dict
        Worker address -> peak RSS in bytes (since the worker started or the last
        reset).
    """
    return client.run(_peak_rss, reset)
