"""Memory plan of a fit: estimate what one block task and the driver need, before the work.

A fit's memory is set by its options, not by the catalog's size: one block task
holds its rows (and their noise), the per-component moments it accumulates
(``K x D x D``), a tile of per-component work (``K x D x 128``) and, under
truncation, its imputed candidates (``oversampling x rows / f``). The driver holds
a few copies of the parameters. :func:`plan_fit` compares these estimates with
the memory one task may use (the workers' memory limit divided by their threads,
or this machine's available memory and address-space limit divided by the
threads of the local scheduler), picks a smaller row chunk when that is enough,
and otherwise refuses with an :class:`~daskgmmis.errors.InputError` naming the
number and the knob to turn (``K``, the chunk size, ``oversampling``, the
workers' memory).

The estimates are upper bounds of the dominant allocations (float64 words):
1.3 to 3.2 times the peaks tracemalloc measured for kernels.estep_block (K up
to 2000, D up to 30, all noise kinds, with missing features); they are meant
to refuse what cannot fit, not to pack memory tightly.
"""

from __future__ import annotations

import math
import os

from .errors import InputError
from .noise import noise_class

__all__ = ["task_bytes", "candidate_bytes", "driver_bytes", "task_memory_limit",
           "machine_memory_limit", "plan_fit", "check_candidates", "MAX_N_INIT",
           "ACCELERATION_PAIRS", "MEMORY_BYTES", "memory_pairs", "packed_size"]

_WORD = 8
# kernels.py works on tiles of this many rows (z: K x d x TILE per tile)
_TILE = 128
# copies of the (K, D, D) moments alive in one E-step task: the accumulators M2
# and their symmetrized copy, the pattern accumulators Z2/WP, the embedding
# temporaries V @ WP @ V^T, the component Choleskys and the shipped covariances
_PARAM_COPIES_TASK = 10
# copies of the parameters in the driver: the current theta, the fallback, the best
# start, the summed moments and the caller's model (the acceleration's pairs apart)
_PARAM_COPIES_DRIVER = 10
# the acceleration's stored pairs, and the arrays and differences mixing them makes
_ACCELERATION_COPIES = 3
# tree reduction: this many block moments are summed at once
_SPLIT_EVERY = 8
# each start of n_init is a full EM run (and a seed object in the driver)
MAX_N_INIT = 10_000
# rows per chunk below which a smaller chunk is not worth choosing: the
# per-task overhead would dominate, and the parameters are the problem
_MIN_ROWS = 256


# Pairs (x, M(x)) of the EM map that the acceleration keeps (daskgmmis.acceleration).
ACCELERATION_PAIRS = 9
# Bytes the stored pairs may take: fewer pairs for a large model, and no mixing (plain
# EM) where even two do not fit - a K = 20,000, D = 50 model is 212 MB packed.
MEMORY_BYTES = 256 * 2**20


def memory_pairs(n_packed: int) -> int:
    """Pairs ``(x, M(x))`` kept for a packed parameter vector of ``n_packed`` floats.

    ``ACCELERATION_PAIRS`` within :data:`MEMORY_BYTES`, fewer for a larger model, and 0 (no
    acceleration) where two pairs would exceed it.
    """
    pairs = min(ACCELERATION_PAIRS, MEMORY_BYTES // (16 * n_packed))
    return int(pairs) if pairs >= 2 else 0


def packed_size(K: int, D: int) -> int:
    """Floats of :func:`daskgmmis.acceleration.pack`'s vector for ``K`` components in ``D`` dimensions."""
    return K * (1 + D + D * (D + 1) // 2) + 1


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def param_bytes(K: int, D: int) -> int:
    """Bytes of one copy of the parameters (amp, mean, covar)."""
    return _WORD * K * (1 + D + D * D)


def row_bytes(D: int, kind: str) -> int:
    """Bytes a task holds per row of its block: the values (read, then as float64,
    then the missing-pattern copy) and the noise (and the checks' temporaries)."""
    return _WORD * (4 * D + 2 + noise_class(kind).task_floats(D))


def task_bytes(rows: int, K: int, D: int, kind: str) -> int:
    """Peak bytes of one E-step block task of ``rows`` rows (no imputation).

    Parameters
    ----------
    rows, K, D : int
    kind : {"none", "shared", "diag", "full"}
        Noise kind.
    """
    fixed = _PARAM_COPIES_TASK * param_bytes(K, D) + _WORD * K * (D + 1) * _TILE
    return fixed + rows * row_bytes(D, kind)


def candidate_bytes(m: int, D: int, noisy: bool) -> int:
    """Bytes of ``m`` imputed candidates: Sobol points, variates, the rows, their
    noise (``(m, D, D)`` from a covariance callback) and the E-step's copies."""
    return _WORD * m * (8 * D + 4 + (2 * D * D if noisy else 0))


def driver_bytes(K: int, D: int, n_init: int = 1) -> int:
    """Peak bytes the driver needs for the parameters (and the starts' seeds)."""
    n_packed = packed_size(K, D)
    pairs = _ACCELERATION_COPIES * 2 * _WORD * n_packed * memory_pairs(n_packed)
    return _PARAM_COPIES_DRIVER * param_bytes(K, D) + pairs + 512 * n_init


def machine_memory_limit() -> tuple[int, str]:
    """Memory this process may still allocate: the machine's available memory,
    lowered by an address-space limit (``ulimit -v``) if one is set."""
    import psutil

    limit = int(psutil.virtual_memory().available)
    what = "this machine's available memory"
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            free_as = soft - psutil.Process().memory_info().vms
            if free_as < limit:
                limit, what = max(int(free_as), 0), "this process's address-space limit"
    except (ImportError, OSError, ValueError):   # no resource module (Windows)
        pass
    return limit, what


def task_memory_limit(client=None) -> tuple[int, str]:
    """Memory one block task may use, and where that figure comes from.

    With a distributed client: the smallest ``memory_limit / nthreads`` of its
    workers (a worker without a limit counts as this machine's memory). Without:
    this machine's memory (:func:`machine_memory_limit`) over the threads of
    dask's local scheduler.
    """
    machine, what = machine_memory_limit()
    if client is not None:
        try:
            workers = client.scheduler_info().get("workers", {})
        except Exception:           # a scheduler that does not answer: the fit will say so
            workers = {}
        per_task = []
        for w in workers.values():
            limit = w.get("memory_limit") or machine
            per_task.append(limit / max(int(w.get("nthreads") or 1), 1))
        if per_task:
            return int(min(per_task)), "the workers' memory limit per thread"
    import dask

    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return int(machine / threads), f"{what} over {threads} threads"


def _chunk_rows(x) -> int:
    return int(max(x.chunks[0])) if x.shape[0] else 0


def plan_fit(x, noise, kind: str, K: int, D: int, *, client=None,
             oversampling: float | None = None, n_init: int = 1, limit=None,
             projection_floats: int = 0):
    """Check (and if needed shrink) a fit's memory before its first pass.

    Parameters
    ----------
    x : dask array, shape (N, D)
        The data, row-chunked.
    noise : None, ndarray or dask array
        As returned by :func:`daskgmmis.catalog.as_dask_input`.
    kind : str
        Noise kind.
    K, D : int
    client : distributed.Client, optional
    oversampling : float, optional
        Candidates per row under truncation (None: no imputation). Planned at
        an observed fraction f = 1; each task checks its actual count
        (:func:`check_candidates`).
    n_init : int
    limit : (int, str), optional
        Memory per task and its description (default :func:`task_memory_limit`).
    projection_floats : int
        Numbers per row of a per-row projection (d D; 0 without one): a task holds
        its block, a float64 copy and the kernel's contiguous copy.

    Returns
    -------
    x, noise
        Unchanged, or rechunked to fewer rows per block.

    Raises
    ------
    InputError
        The parameters alone, the driver, ``n_init`` or ``oversampling`` need more
        memory than there is; the message names the estimate and the knob.
    """
    if n_init > MAX_N_INIT:
        raise InputError(f"n_init: {n_init} starts requested; each start is a full EM run, "
                         f"so at most {MAX_N_INIT} are accepted. Use fewer starts.")
    per_task, what = limit if limit is not None else task_memory_limit(client)
    machine, machine_what = machine_memory_limit() if limit is None else limit
    need = driver_bytes(K, D, n_init)
    if need > machine:
        raise InputError(f"gmm: the driver needs about {_gib(need)} for K={K} components in "
                         f"D={D} dimensions (n_init={n_init}), more than {machine_what} "
                         f"({_gib(machine)}); use fewer components (K) or run on a machine "
                         f"with more memory.")
    rows = _chunk_rows(x)
    fixed = task_bytes(0, K, D, kind)
    per_row = row_bytes(D, kind) + 3 * 8 * projection_floats
    noisy = noise_class(kind).noisy
    if oversampling is not None:
        per_row += candidate_bytes(int(math.ceil(oversampling)), D, noisy) if oversampling >= 1 \
            else int(math.ceil(candidate_bytes(1, D, noisy) * oversampling))
    if fixed > per_task:
        raise InputError(f"gmm: one block task needs about {_gib(fixed)} for the moments of "
                         f"K={K} components in D={D} dimensions, before any row, more than "
                         f"the {_gib(per_task)} available per task ({what}); use fewer "
                         f"components (K) or workers with more memory (--memory-limit, fewer "
                         f"threads per worker).")
    if fixed + rows * per_row <= per_task:
        return x, noise
    fit_rows = int((per_task - fixed) // per_row)
    if fit_rows < min(_MIN_ROWS, rows):
        knob = ("oversampling (fewer candidates per row)" if oversampling is not None and
                oversampling * candidate_bytes(1, D, noisy) > row_bytes(D, kind)
                else "the chunk size (chunks= rows)")
        raise InputError(f"memory: a block task of {rows} rows needs about "
                         f"{_gib(fixed + rows * per_row)} (K={K}, D={D}, noise {kind!r}"
                         + (f", oversampling={oversampling:g}" if oversampling is not None
                            else "")
                         + f"), more than the {_gib(per_task)} available per task ({what}), "
                         f"and even {max(fit_rows, 0)} rows would not fit; lower {knob} or K, "
                         f"or give the workers more memory.")
    x = x.rechunk({0: fit_rows})
    if noise_class(kind).per_row:
        noise = noise.rechunk((x.chunks[0],) + tuple((s,) for s in noise.shape[1:]))
    return x, noise


def check_candidates(m: int, D: int, noisy: bool, oversampling: float, rows: int) -> None:
    """Refuse, inside a block task, a candidate count that cannot fit in its memory.

    Called where the count is known (it grows as 1/f when the observed fraction
    f falls), so a fit whose selection turns out tiny stops with a message that
    names ``oversampling`` instead of exhausting the worker.
    """
    need = candidate_bytes(m, D, noisy)
    limit, what = _task_limit_here()
    if need > limit:
        raise InputError(f"oversampling: a block of {rows} rows draws {m} candidates "
                         f"(oversampling={oversampling:g} over the observed fraction), about "
                         f"{_gib(need)}, more than the {_gib(limit)} available per task "
                         f"({what}); lower oversampling or the chunk size, or give the "
                         f"workers more memory.")


def _task_limit_here() -> tuple[int, str]:
    """Memory per task where this runs: inside a distributed worker, its limit per
    thread; elsewhere, as :func:`task_memory_limit` without a client."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return task_memory_limit(None)
    limit = getattr(getattr(w, "memory_manager", None), "memory_limit", None)
    if not limit:
        limit = machine_memory_limit()[0]
    return int(limit / max(w.state.nthreads if hasattr(w, "state") else 1, 1)), \
        "the worker's memory limit per thread"
