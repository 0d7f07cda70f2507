"""The EM driver: the only place that builds dask graphs for a fit.

One fit is

1. a first pass over the data (one ``compute``): validation fused with the data
   summary used by the initialization and the neighborhoods;
2. the initialization (:mod:`daskgmmis.init`);
3. EM iterations, each one small graph - a block task per row chunk returning a
   :class:`~daskgmmis.stats.SuffStats`, a fixed-fan-in tree reduction - and exactly
   one ``compute``; the M-step runs on the driver on K x D x D numbers.

The parameters enter each iteration's graph once, wrapped in ``dask.delayed``; the
graph has the same size at every iteration and no futures are carried across
iterations (persisted data aside).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import dask
import numpy as np

from . import kernels
from .background import Background
from .catalog import as_dask_input
from .errors import (CallbackError, ConvergenceWarning, DeadComponentWarning, InputError,
                     InputTypeError, NumericalError)
from .imputation import candidate_count, impute_block
from .selection import check_picklable, evaluate_selection
from .init import INIT_METHODS, DataSummary, init_minmax, init_random
from .model import GMM, _log_background
from .stats import SuffStats, sum_stats
from .validation import as_index_array, check_data_block, check_model_params, check_noise_block

__all__ = ["fit", "FitResult", "mstep"]

log = logging.getLogger("daskgmmis")

SPLIT_EVERY = 8


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    logL : float
        Mean log-likelihood per observed row of the returned parameters.
    n_iter : int
        Number of M-steps performed.
    converged : bool
        Whether ``|delta logL| < tol`` was reached before ``maxiter``.
    history : list of float
        Mean log-likelihood per observed row at every E-step.
    N_orig : float
        Estimated size of the population before selection (N without selection).
    N : int
        Number of observed rows used.
    n_outside : int
        Rows outside every component's neighborhood at the final E-step.
    bg_amp : float or None
        Fitted background amplitude.
    seconds : float
        Wall-clock time of the fit.
    """

    logL: float
    n_iter: int
    converged: bool
    history: list
    N_orig: float
    N: int
    n_outside: int = 0
    bg_amp: float | None = None
    seconds: float = 0.0
    seconds_per_iter: list = field(default_factory=list)


@dataclass
class _IterParams:
    """Everything a block task needs for one iteration (wrapped once in dask.delayed)."""

    amp: np.ndarray
    mean: np.ndarray
    covar: np.ndarray
    kind: str
    shared_noise: np.ndarray | None
    background: Background | None
    cutoff: float | None
    sel_callback: object = None
    covar_callback: object = None
    seed: np.random.SeedSequence | None = None
    oversampling: float = 0.0
    observed_fraction: float = 1.0


class _ConstantCovar:
    """Picklable covar_callback returning one shared (D, D) noise matrix."""

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, dtype=np.float64)

    def __call__(self, coords):
        return self.matrix


# ------------------------------------------------------------------ block tasks
# Module-level functions so that workers import them by reference.


def _block_noise(noise, params_kind, shared):
    if params_kind == "shared":
        return shared
    return None if noise is None else np.asarray(noise)


def _summary_task(x, noise, kind, shared, row_offset):
    """First pass over a block: validation fused with the data summary."""
    x = np.asarray(x)
    check_data_block(x, row_offset)
    D = x.shape[1]
    if kind in ("diag", "full"):
        noise = np.asarray(noise)
        check_noise_block(noise, kind, x, row_offset)
        var = noise if kind == "diag" else np.diagonal(noise, axis1=1, axis2=2)
        max_var = np.nanmax(np.where(np.isnan(x), np.nan, var), axis=0, initial=0.0)
    elif kind == "shared":
        max_var = np.diag(shared).copy()
    else:
        max_var = np.zeros(D)
    observed = ~np.isnan(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(x, axis=0).astype(np.float64)
        hi = np.nanmax(x, axis=0).astype(np.float64)
    return DataSummary(x.shape[0], observed.sum(axis=0), lo, hi,
                       np.nansum(x, axis=0, dtype=np.float64), max_var)


def _selection_log(sel_callback, x, row_offset):
    """log Ω at observed rows; Ω = 0 there is a contradiction, reported with rows."""
    omega = evaluate_selection(sel_callback, x, where="sel_callback (observed rows)")
    zero = omega <= 0
    if zero.any():
        rows = (np.flatnonzero(zero)[:5] + row_offset).tolist()
        raise CallbackError(
            f"sel_callback: returned 0 for {int(zero.sum())} observed rows (first: rows "
            f"{rows}, e.g. at {x[zero][0].tolist()}); an observed row must have a selection "
            f"probability > 0. Check the selection function against the catalog.")
    return np.log(omega)


def _estep_task(x, noise, params: _IterParams, row_offset, block):
    """One block's E-step: (observed SuffStats, imputed SuffStats or None, tally or None)."""
    x = np.asarray(x)
    noise = _block_noise(noise, params.kind, params.shared_noise)
    log_bg = _log_background(params.background, x, noise, params.kind)
    row_logl, n_out, mom = kernels.estep_block(
        x, noise, params.kind, params.amp, params.mean, params.covar, log_bg=log_bg,
        cutoff=params.cutoff, row_offset=row_offset)
    finite = np.isfinite(row_logl)
    logl = float(row_logl[finite].sum())
    if params.sel_callback is None:
        return (SuffStats(mom.A, mom.M1, mom.M2, mom.bg, logl, int(x.shape[0]), int(n_out)),
                None, None)
    logl += float(_selection_log(params.sel_callback, x, row_offset)[finite].sum())
    observed = SuffStats(mom.A, mom.M1, mom.M2, mom.bg, logl, int(x.shape[0]), int(n_out))
    m = candidate_count(x.shape[0], params.oversampling, params.observed_fraction)
    imputed, tally = impute_block(m, params.amp, params.mean, params.covar, params.background,
                                  params.sel_callback, params.covar_callback, params.seed,
                                  block, params.cutoff)
    return observed, imputed, tally


def _tree_sum(parts, split_every=SPLIT_EVERY):
    """Fixed-shape tree reduction of delayed records (deterministic order)."""
    parts = list(parts)
    while len(parts) > 1:
        parts = [dask.delayed(sum_stats, pure=True)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    return parts[0]


# ---------------------------------------------------------------------- plan


class _Plan:
    """Static per-fit description of the data as delayed blocks."""

    def __init__(self, x, noise, kind):
        self.N, self.D = (int(s) for s in x.shape)
        self.kind = kind
        self.shared = noise if kind == "shared" else None
        self.x = x
        self.noise = noise if kind in ("diag", "full") else None
        self.x_blocks = list(x.to_delayed().ravel())
        self.noise_blocks = (list(self.noise.to_delayed().ravel()) if self.noise is not None
                             else [None] * len(self.x_blocks))
        self.offsets = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).astype(int).tolist()
        self.nbytes = int(x.nbytes + (self.noise.nbytes if self.noise is not None else 0))

    def summary_graph(self):
        parts = [dask.delayed(_summary_task, pure=True)(xb, nb, self.kind, self.shared, off)
                 for xb, nb, off in zip(self.x_blocks, self.noise_blocks, self.offsets)]
        return _tree_sum(parts)

    def iteration_graph(self, params: _IterParams):
        """The graph of one E-step: block tasks and their tree reduction."""
        p = dask.delayed(params, pure=True)
        parts = [dask.delayed(_estep_task, pure=True)(xb, nb, p, off, b)
                 for b, (xb, nb, off) in enumerate(zip(self.x_blocks, self.noise_blocks,
                                                       self.offsets))]
        return _tree_sum(parts)


def _resolve_client(client):
    if client is not None:
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _compute(obj, client):
    if client is not None:
        return client.compute(obj, sync=True)
    return dask.compute(obj, scheduler="threads")[0]


def _memory_budget(client) -> float:
    """Bytes of memory the data may occupy if persisted."""
    if client is not None:
        # recent distributed lists only a few workers unless asked for all
        kwargs = {"n_workers": -1} if _accepts_n_workers(client) else {}
        workers = client.scheduler_info(**kwargs)["workers"].values()
        return 0.5 * sum(w.get("memory_limit", 0) or 0 for w in workers)
    import psutil
    return 0.25 * psutil.virtual_memory().available


def _accepts_n_workers(client) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _maybe_persist(x, noise, kind, persist, client):
    """Persist the data once when it fits in memory (or when told); else stream."""
    nbytes = x.nbytes + (noise.nbytes if kind in ("diag", "full") else 0)
    if persist is None:
        persist = nbytes <= _memory_budget(client)
    if not persist:
        log.info("streaming %.3g GB from storage every iteration", nbytes / 1e9)
        return x, noise
    arrays = [x] + ([noise] if kind in ("diag", "full") else [])
    if client is not None:
        persisted = client.persist(arrays)
    else:
        persisted = dask.persist(*arrays, scheduler="threads")
    x = persisted[0]
    if kind in ("diag", "full"):
        noise = persisted[1]
    return x, noise


def _quantize_fraction(f: float) -> float:
    """Round f down to a power of 2**(1/4) so candidate counts settle as f converges."""
    f = min(max(f, 1e-3), 1.0)
    return float(2.0 ** (math.floor(4 * math.log2(f)) / 4))


def _root_seed(rng) -> np.random.SeedSequence:
    if isinstance(rng, np.random.SeedSequence):
        return rng
    if isinstance(rng, np.random.Generator):
        return np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist())
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.SeedSequence(rng)
    raise InputTypeError(f"rng: expected None, an int seed, a numpy Generator or a "
                         f"SeedSequence; found {type(rng).__name__}.")


def _parse_frozen(frozen, K):
    """{"amp": idx, "mean": idx, "covar": idx} with sorted index arrays."""
    out = {"amp": np.empty(0, int), "mean": np.empty(0, int), "covar": np.empty(0, int)}
    if frozen is None:
        return out
    if isinstance(frozen, dict):
        unknown = set(frozen) - set(out)
        if unknown:
            raise InputError(f"frozen: unknown keys {sorted(unknown)}; expected a subset of "
                             f"'amp', 'mean', 'covar'.")
        for key, idx in frozen.items():
            out[key] = as_index_array(idx, K, f"frozen[{key!r}]")
        return out
    idx = as_index_array(frozen, K, "frozen")
    return {key: idx for key in out}


# -------------------------------------------------------------------- M-step


def mstep(stats: SuffStats, amp, mean, covar, *, w: float = 0.0, frozen=None,
          background: Background | None = None, N_total: float | None = None,
          min_weight: float = 1e-9):
    """Update the mixture parameters from summed sufficient statistics.

    Parameters
    ----------
    stats : SuffStats
        Sums over observed (and imputed) rows, centred on ``mean``.
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
        Current parameters.
    w : float
        Regularization: ``w**2`` is added to every covariance's diagonal (data
        units); a floor that does not grow with the number of (imputed) rows.
    frozen : dict, optional
        Parsed frozen indices (see :func:`fit`).
    background : Background, optional
        Its ``amp`` is updated (within bounds) when ``adjust_amp``.
    N_total : float, optional
        Total weight of the rows (observed + imputed); default ``stats.n``.
    min_weight : float
        Components with ``A_k < min_weight * N_total`` are dead: their mean and
        covariance are kept and a :class:`DeadComponentWarning` is issued.

    Returns
    -------
    amp, mean, covar : new arrays
    bg_amp : float or None
    dead : ndarray of int
        Indices of dead components.
    """
    K, D = mean.shape
    frozen = frozen or _parse_frozen(None, K)
    N_total = float(stats.n if N_total is None else N_total)
    A = stats.A
    dead = np.flatnonzero(A < min_weight * N_total)
    alive = np.setdiff1d(np.arange(K), dead)
    new_mean = mean.copy()
    new_covar = covar.copy()
    safeA = np.where(A > 0, A, 1.0)
    shift = stats.M1 / safeA[:, None]
    scatter = stats.M2 / safeA[:, None, None] - shift[:, :, None] * shift[:, None, :]
    cand_covar = 0.5 * (scatter + np.swapaxes(scatter, 1, 2)) + (w**2) * np.eye(D)
    upd_mean = np.setdiff1d(alive, frozen["mean"])
    upd_covar = np.setdiff1d(alive, frozen["covar"])
    new_mean[upd_mean] = mean[upd_mean] + shift[upd_mean]
    for k in upd_covar:
        try:
            np.linalg.cholesky(cand_covar[k])
        except np.linalg.LinAlgError:
            dead = np.union1d(dead, [k])
            continue
        new_covar[k] = cand_covar[k]
    if dead.size:
        warnings.warn(f"components {dead.tolist()} received (almost) no responsibility or "
                      f"collapsed to a singular covariance; their mean and covariance were "
                      f"kept. Use fewer components, a regularization w > 0, or another "
                      f"initialization.", DeadComponentWarning, stacklevel=3)
    bg_amp = None
    if background is not None:
        bg_amp = background.amp
        if background.adjust_amp:
            bg_amp = float(np.clip(stats.bg / N_total, background.amp_min, background.amp_max))
    new_amp = np.asarray(amp, dtype=np.float64).copy()
    fixed = frozen["amp"]
    free = np.setdiff1d(np.arange(K), fixed)
    remainder = 1.0 - new_amp[fixed].sum() - (bg_amp or 0.0)
    if remainder < -1e-12:
        raise InputError(f"frozen['amp']: frozen amplitudes ({new_amp[fixed].sum():.6g}) plus "
                         f"the background amplitude ({bg_amp or 0.0:.6g}) exceed 1.")
    if free.size:
        total_free = A[free].sum()
        if total_free > 0:
            new_amp[free] = max(remainder, 0.0) * A[free] / total_free
        else:
            new_amp[free] = max(remainder, 0.0) / free.size
    return new_amp, new_mean, new_covar, bg_amp, dead


# ----------------------------------------------------------------------- fit


def fit(gmm: GMM, data, covar=None, *, init_method: str = "random", w: float = 0.0,
        cutoff: float | None = None, sel_callback=None, covar_callback=None,
        background: Background | None = None, tol: float = 1e-3, maxiter: int = 1000,
        frozen=None, rng=None, client=None, checkpoint=None, split_n_merge: int = 0,
        oversampling: float = 4.0, persist: bool | None = None) -> FitResult:
    """Fit a Gaussian mixture to a noisy, incomplete catalog with EM.

    Parameters
    ----------
    gmm : GMM
        Model to fit; updated in place. Its K and D set the problem; with
        ``init_method="none"`` its current parameters are the start.
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        Observed rows; NaN marks a missing feature (marginalized exactly).
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise covariances (shared, diagonal variances, full), data units squared.
        Taken from the catalog when ``data`` is one.
    init_method : {"random", "minmax", "kmeans", "none"}
        Initialization (see :mod:`daskgmmis.init`).
    w : float
        Covariance regularization in data units: ``w**2`` added to the diagonal.
    cutoff : float, optional
        Neighborhood size in 1-D-equivalent sigmas; ``None``: every row touches
        every component.
    sel_callback : callable, optional
        Selection function Ω(coords (n, D)) -> (n,) probabilities in [0, 1] (booleans
        accepted) that a row at noisy position ``coords`` is in the catalog. With it
        the fit recovers the population *before* selection by imputing the
        unobserved rows (DESIGN.md §1.4); Ω enters the likelihood, not the
        responsibilities. Must be picklable for a distributed client.
    covar_callback : callable, optional
        Noise covariance of an unobserved row at arbitrary true positions:
        returns (n, D, D), (n, D) diagonal variances, or one (D, D) matrix. Default:
        the shared noise matrix when ``covar`` is one, else no noise.
    oversampling : float
        Monte-Carlo precision of the imputation: candidates drawn per estimated
        unobserved row (see :func:`daskgmmis.imputation.candidate_count`). The
        imputed statistics' Monte-Carlo variance is ``1/oversampling`` of the
        Poisson variance of the unobserved population. Cost: ``oversampling / f``
        candidate E-steps per observed row, f the observed fraction.
    checkpoint, split_n_merge
        See the checkpoint documentation.
    background : Background, optional
        Uniform background fitted jointly; its ``amp`` is updated in place.
    tol : float
        Stop when the mean log-likelihood per row changes by less than ``tol``.
    maxiter : int
        Maximum number of EM iterations (M-steps).
    frozen : dict or sequence of int, optional
        ``{"amp": [...], "mean": [...], "covar": [...]}`` component indices whose
        values are held; a plain sequence freezes all three.
    rng : None, int, Generator or SeedSequence
        Seed of every random choice (initialization, imputation).
    client : distributed.Client, optional
        Default: the active client if any, else dask's local threaded scheduler.
    persist : bool, optional
        Keep the data in (cluster) memory across iterations; default: when it
        fits in half the workers' memory limits (a quarter of free RAM locally).

    Returns
    -------
    FitResult
    """
    t_start = time.perf_counter()
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")
    if init_method not in INIT_METHODS:
        raise InputError(f"init_method: expected one of {INIT_METHODS}; found {init_method!r}.")
    for name, value in (("tol", tol), ("w", w)):
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)
                and value >= 0):
            raise InputError(f"{name}: expected a finite number >= 0; found {value!r}.")
    if not (isinstance(maxiter, (int, np.integer)) and maxiter >= 0):
        raise InputError(f"maxiter: expected an integer >= 0; found {maxiter!r}.")
    if cutoff is not None and not (np.isscalar(cutoff) and cutoff > 0):
        raise InputError(f"cutoff: expected None or a number of sigmas > 0; found {cutoff!r}.")
    if checkpoint is not None or split_n_merge:
        raise NotImplementedError("checkpoint/split_n_merge are not available yet.")
    for name, cb in (("sel_callback", sel_callback), ("covar_callback", covar_callback)):
        if cb is not None and not callable(cb):
            raise InputTypeError(f"{name}: expected a callable taking coords (n, D); found "
                                 f"{type(cb).__name__}.")
    if not (isinstance(oversampling, (int, float, np.floating)) and oversampling > 0
            and math.isfinite(oversampling)):
        raise InputError(f"oversampling: expected a finite number > 0; found {oversampling!r}.")
    K, D = gmm.K, gmm.D
    x, noise, kind = as_dask_input(data, covar)
    if x.shape[1] != D:
        raise InputError(f"data: has D={x.shape[1]} features but gmm has D={D}; build the "
                         f"model with GMM(K, D={x.shape[1]}).")
    if background is not None:
        if not isinstance(background, Background):
            raise InputTypeError(f"background: expected a daskgmmis.Background; found "
                                 f"{type(background).__name__}.")
        if background.D != D:
            raise InputError(f"background: footprint has D={background.D}; data has D={D}.")
    frozen_idx = _parse_frozen(frozen, K)
    if init_method == "none":
        check_model_params(gmm.amp, gmm.mean, gmm.covar)
    seed = _root_seed(rng)
    init_seed, impute_seed = seed.spawn(2)
    init_rng = np.random.default_rng(init_seed)
    client = _resolve_client(client)
    if sel_callback is not None:
        if covar_callback is None and kind == "shared":
            covar_callback = _ConstantCovar(noise)
        elif covar_callback is None and kind in ("diag", "full"):
            warnings.warn("sel_callback without covar_callback: imputed rows get no noise while "
                          "the observed rows have per-row noise; pass covar_callback to model "
                          "the noise of unobserved rows.", UserWarning, stacklevel=2)
        if client is not None:
            check_picklable(sel_callback, "sel_callback")
            if covar_callback is not None:
                check_picklable(covar_callback, "covar_callback")

    x, noise = _maybe_persist(x, noise, kind, persist, client)
    plan = _Plan(x, noise, kind)

    # 1. first pass: validation + summary (one compute)
    summary = _compute(plan.summary_graph(), client)
    n_usable = summary.n
    if K > n_usable:
        raise InputError(f"gmm: K={K} components but only {n_usable} usable rows; use fewer "
                         f"components or more data.")

    # 2. initialization
    if init_method != "none":
        if init_method == "minmax":
            amp, mean, cov = init_minmax(K, summary, init_rng)
        elif init_method == "random":
            idx = init_rng.integers(0, plan.N, size=K)
            order = np.argsort(idx)
            picked = np.asarray(_compute(x[np.sort(idx)], client))
            rows = np.empty_like(picked, dtype=np.float64)
            rows[order] = picked
            amp, mean, cov = init_random(K, summary, rows, init_rng)
        else:
            from .init import init_kmeans
            amp, mean, cov = init_kmeans(K, plan, summary, init_rng, client)
        if background is not None:
            amp = amp * (1.0 - background.amp)
        gmm.amp, gmm.mean, gmm.covar = amp, mean, cov
    amp, mean, cov = (np.array(a, dtype=np.float64) for a in (gmm.amp, gmm.mean, gmm.covar))

    # 3. EM
    history, secs, n_orig_history = [], [], []
    converged = False
    n_iter = 0
    stats = None
    bg = background
    f_obs = 0.5        # observed-fraction guess that sizes the first imputation
    while True:
        t0 = time.perf_counter()
        params = _IterParams(amp, mean, cov, kind, plan.shared, bg, cutoff, sel_callback,
                             covar_callback, impute_seed, float(oversampling),
                             _quantize_fraction(f_obs))
        stats, imputed, tally = _compute(plan.iteration_graph(params), client)
        N = stats.n
        logL = stats.logl / N
        N_orig, total = float(N), stats
        if sel_callback is not None:
            f_obs = tally.omega / tally.n
            if not f_obs > 0:
                raise CallbackError(f"sel_callback: every one of {tally.n} rows drawn from the "
                                    f"model has selection probability 0; the model has no "
                                    f"mass where the catalog was observed.")
            N_orig = N / f_obs
            logL -= math.log(f_obs)   # likelihood of the truncated (observed) population
            if tally.weight > 0:
                total = stats + imputed.scaled((N_orig - N) / tally.weight)
        if not np.isfinite(logL):
            raise NumericalError(f"the mean log-likelihood became {logL} at iteration "
                                 f"{n_iter}; check the data scale or use w > 0.")
        history.append(logL)
        n_orig_history.append(N_orig)
        secs.append(time.perf_counter() - t0)
        log.info("iteration %d: mean logL %.8g (change %.3g), N_orig %.6g, %.3f s", n_iter,
                 logL, logL - history[-2] if len(history) > 1 else float("nan"), N_orig,
                 secs[-1])
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol and (
                abs(n_orig_history[-1] - n_orig_history[-2]) <= tol * N_orig):
            converged = True
            break
        if n_iter >= maxiter:
            break
        amp, mean, cov, bg_amp, _ = mstep(total, amp, mean, cov, w=w, frozen=frozen_idx,
                                          background=bg, N_total=N_orig)
        if bg is not None:
            bg.amp = bg_amp
        n_iter += 1
    if not converged and maxiter > 0:
        warnings.warn(f"EM did not converge in maxiter={maxiter} iterations (last change of "
                      f"the mean logL: {history[-1] - history[-2]:.3g}, tol={tol}).",
                      ConvergenceWarning, stacklevel=2)
    gmm.amp, gmm.mean, gmm.covar = amp, mean, cov
    return FitResult(logL=history[-1], n_iter=n_iter, converged=converged, history=history,
                     N_orig=n_orig_history[-1], N=int(stats.n), n_outside=int(stats.n_outside),
                     bg_amp=None if bg is None else bg.amp,
                     seconds=time.perf_counter() - t_start, seconds_per_iter=secs)
