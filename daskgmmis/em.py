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
import os
import time
import warnings
from dataclasses import dataclass, field

import dask
import numpy as np

from . import kernels
from .background import Background, log_background
from .blocks import compute as _compute
from .blocks import tree_reduce
from .catalog import Catalog, as_dask_input, as_dask_weights, open_catalog
from .memory import check_candidates, plan_fit
from .timelimit import check_timeout, time_limited
from .errors import (CallbackError, ConvergenceWarning, DeadComponentWarning, InputError,
                     InputTypeError, NumericalError)
from .imputation import candidate_count, impute_block
from .selection import check_picklable, evaluate_selection
from .init import INIT_METHODS, init_kmeans, init_minmax, init_random
from .model import GMM, Theta
from .neighborhoods import ReachTest, block_box, chi2_cuts, estep_neighborhoods
from .noise import SharedNoise, noise_block, noise_class
from .acceleration import extrapolate
from .checkpoint import EMState, load_checkpoint, save_checkpoint
from .cluster import cluster_memory
from .mstep import mstep, parse_frozen
from .stats import DataSummary, SuffStats, sum_stats
from .stepwise import DEFAULT_ALPHA, RunningStats, block_groups, step_size
from .validation import (check_background, check_data_block, check_model_params,
                         check_regularization)

__all__ = ["fit", "fit_best", "FitResult", "child_seed"]

log = logging.getLogger("daskgmmis")

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
    N : int or float
        Number of observed rows used (the sum of their weights for weighted rows).
    n_outside : int
        Rows outside every component's neighborhood at the final E-step.
    bg_amp : float or None
        Fitted background amplitude.
    seconds : float
        Wall-clock time of the fit.
    seconds_per_iter : list of float
        Wall-clock time of every batch E-step (and M-step).
    passes : float
        Passes over the data by EM: stepwise passes (``stepwise``) plus batch
        E-steps (the first pass, validation and summary, not counted).
    stepwise_history : list of float
        Mean log-likelihood per row of every stepwise group (empty without
        ``stepwise``).
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
    passes: float = 0.0
    stepwise_history: list = field(default_factory=list)


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
    return noise_block(params_kind, noise, shared)


def _summary_task(x, noise, kind, shared, row_offset, weight=None):
    """First pass over a block: validation fused with the data summary."""
    x = np.asarray(x)
    total_weight = x.shape[0] if weight is None else float(np.asarray(weight).sum())
    check_data_block(x, row_offset)
    nz = noise_block(kind, noise, shared)
    nz.validate(x, row_offset)
    observed = ~np.isnan(x)
    max_var = nz.max_variance(observed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(x, axis=0).astype(np.float64)
        hi = np.nanmax(x, axis=0).astype(np.float64)
    return DataSummary(x.shape[0], observed.sum(axis=0), lo, hi,
                       np.nansum(x, axis=0, dtype=np.float64), max_var, total_weight)


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


def _weighted_sum(values: np.ndarray, weight: np.ndarray | None, rows: np.ndarray) -> float:
    """sum of ``weight * values`` over ``rows`` (a row of weight 0 adds nothing, even -inf)."""
    if weight is None:
        return float(values[rows].sum())
    return float(np.dot(weight[rows], values[rows]))


def _estep_task(x, noise, params: _IterParams, row_offset, block, comps=None, weight=None):
    """One block's E-step: (observed SuffStats, imputed SuffStats or None, tally or None).

    ``comps``: components that may reach the block (neighborhoods); None for all.
    ``weight``: per-row weights (n,), or None for weight 1: a row of weight w counts
    as w rows in every sum, ``n`` included.
    """
    x = np.asarray(x)
    noise = _block_noise(noise, params.kind, params.shared_noise)
    weight = None if weight is None else np.asarray(weight, dtype=np.float64)
    log_bg = log_background(params.background, x, noise, params.kind)
    if params.cutoff is None:
        row_logl, n_out, mom = kernels.estep_block(
            x, noise, params.kind, params.amp, params.mean, params.covar, log_bg=log_bg,
            weight=weight, row_offset=row_offset)
    else:
        row_logl, n_out, mom = estep_neighborhoods(
            x, noise, params.kind, params.amp, params.mean, params.covar,
            cutoff=params.cutoff, comps=comps, log_bg=log_bg, weight=weight,
            row_offset=row_offset)
    counted = np.isfinite(row_logl)
    if weight is not None:
        counted &= weight > 0
    logl = _weighted_sum(row_logl, weight, counted)
    n = int(x.shape[0]) if weight is None else float(weight.sum())
    if params.sel_callback is None:
        return SuffStats(mom.A, mom.M1, mom.M2, mom.bg, logl, n, int(n_out)), None, None
    logl += _weighted_sum(_selection_log(params.sel_callback, x, row_offset), weight, counted)
    observed = SuffStats(mom.A, mom.M1, mom.M2, mom.bg, logl, n, int(n_out))
    m = candidate_count(x.shape[0], params.oversampling, params.observed_fraction)
    check_candidates(m, x.shape[1], params.covar_callback is not None, params.oversampling,
                     int(x.shape[0]))
    imputed, tally = impute_block(m, params.amp, params.mean, params.covar, params.background,
                                  params.sel_callback, params.covar_callback, params.seed,
                                  block, params.cutoff)
    return observed, imputed, tally


def _overlap_task(x, noise, params: _IterParams, weight=None):
    """Responsibility overlap of a block: sum_i w_i q_ik q_il, shape (K, K)."""
    x = np.asarray(x)
    noise = _block_noise(noise, params.kind, params.shared_noise)
    log_bg = log_background(params.background, x, noise, params.kind)
    post = kernels.posterior_block(x, noise, params.kind, params.amp, params.mean, params.covar,
                           log_bg, covariances=False)
    q = post.resp if post.resp_bg is None else post.resp * (1 - post.resp_bg)[:, None]
    rows = np.isfinite(q).all(axis=1)
    if weight is None:
        return q[rows].T @ q[rows]
    w = np.asarray(weight, dtype=np.float64)[rows]
    return q[rows].T @ (w[:, None] * q[rows])


# ---------------------------------------------------------------------- plan


class _Plan:
    """Static per-fit description of the data as delayed blocks."""

    def __init__(self, x, noise, kind, weights=None):
        self.N, self.D = (int(s) for s in x.shape)
        self.kind = kind
        nz = noise_class(kind).from_array(noise)
        self.shared = nz.shared_matrix
        self.x = x
        self.noise = nz.row_array
        self.x_blocks = list(x.to_delayed().ravel())
        self.noise_blocks = (list(self.noise.to_delayed().ravel()) if self.noise is not None
                             else [None] * len(self.x_blocks))
        self.weights = weights
        self.weight_blocks = (list(weights.to_delayed().ravel()) if weights is not None
                              else [None] * len(self.x_blocks))
        self.offsets = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).astype(int).tolist()
        self.nbytes = int(x.nbytes + (self.noise.nbytes if self.noise is not None else 0))

    def summary_graph(self):
        parts = [dask.delayed(_summary_task, pure=True)(xb, nb, self.kind, self.shared, off, wb)
                 for xb, nb, off, wb in zip(self.x_blocks, self.noise_blocks, self.offsets,
                                            self.weight_blocks)]
        return tree_reduce(parts, sum_stats)

    def overlap_graph(self, params: _IterParams):
        """Summed responsibility overlaps (K, K) for split-and-merge (one pass)."""
        p = dask.delayed(params, pure=True)
        parts = [dask.delayed(_overlap_task, pure=True)(xb, nb, p, wb)
                 for xb, nb, wb in zip(self.x_blocks, self.noise_blocks, self.weight_blocks)]
        return tree_reduce(parts, sum_stats)

    def box_graph(self):
        """Per-block summaries for the neighborhood reach test (first pass)."""
        return [dask.delayed(block_box, pure=True)(xb, nb if self.shared is None
                                                   else self.shared, self.kind)
                for xb, nb in zip(self.x_blocks, self.noise_blocks)]

    def iteration_graph(self, params: _IterParams, comps=None, blocks=None):
        """The graph of one E-step: block tasks and their tree reduction.

        ``comps``: per block, the components that may reach it (or None).
        ``blocks``: indices of the blocks to visit (stepwise EM); None for all.
        """
        p = dask.delayed(params, pure=True)
        comps = comps if comps is not None else [None] * len(self.x_blocks)
        visit = range(len(self.x_blocks)) if blocks is None else blocks
        parts = [dask.delayed(_estep_task, pure=True)(
                     self.x_blocks[b], self.noise_blocks[b], p, self.offsets[b], b, comps[b],
                     self.weight_blocks[b]) for b in visit]
        return tree_reduce(parts, sum_stats)


def _resolve_client(client):
    if client is not None:
        if not all(hasattr(client, a) for a in ("compute", "persist", "scheduler_info")):
            raise InputTypeError(f"client: expected None or a distributed.Client; found "
                                 f"{type(client).__name__}. Connect with "
                                 f"distributed.Client(address) first.")
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _memory_budget(client) -> float:
    """Bytes of memory the data may occupy if persisted."""
    if client is not None:
        return 0.5 * cluster_memory(client)
    import psutil
    return 0.25 * psutil.virtual_memory().available


def _maybe_persist(x, noise, kind, persist, client, weights=None):
    """Persist the data once when it fits in memory (or when told); else stream.

    Returns (x, noise, weights).
    """
    per_row = noise_class(kind).per_row
    arrays = [x] + ([noise] if per_row else []) + ([weights] if weights is not None else [])
    nbytes = sum(a.nbytes for a in arrays)
    if persist is None:
        persist = nbytes <= _memory_budget(client)
    if not persist:
        log.info("streaming %.3g GB from storage every iteration", nbytes / 1e9)
        return x, noise, weights
    if client is not None:
        persisted = list(client.persist(arrays))
    else:
        persisted = list(dask.persist(*arrays, scheduler="threads"))
    x = persisted.pop(0)
    if per_row:
        noise = persisted.pop(0)
    if weights is not None:
        weights = persisted.pop(0)
    return x, noise, weights


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


def child_seed(root: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    """Child ``i`` of a root seed: the one seed derivation of the package.

    ``SeedSequence(root.entropy, spawn_key=root.spawn_key + (i,))``, keyed
    explicitly: ``SeedSequence.spawn`` would mutate a caller's object, so that the
    same ``rng`` passed twice would give other streams.
    """
    return np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (int(i),))


# ----------------------------------------------------------------- evaluation


@dataclass
class _Evaluation:
    """One E-step's outcome."""

    logL: float
    N_orig: float
    f_obs: float
    total: SuffStats
    n_outside: int


class _Evaluator:
    """Runs one E-step (one compute) for a parameter set."""

    def __init__(self, plan, client, cutoff, sel_callback, covar_callback, seed,
                 oversampling, background, boxes=None):
        self.plan, self.client, self.cutoff, self.boxes = plan, client, cutoff, boxes
        self.sel_callback, self.covar_callback = sel_callback, covar_callback
        self.seed, self.oversampling, self.background = seed, oversampling, background

    def background_at(self, bg_amp):
        if self.background is None:
            return None
        return Background.from_dict({**self.background.to_dict(), "amp": bg_amp})

    def params(self, theta: Theta, f_obs: float) -> _IterParams:
        plan = self.plan
        return _IterParams(theta.amp, theta.mean, theta.covar, plan.kind, plan.shared,
                           self.background_at(theta.bg_amp), self.cutoff, self.sel_callback,
                           self.covar_callback, self.seed, float(self.oversampling),
                           _quantize_fraction(f_obs))

    def overlap(self, theta: Theta) -> np.ndarray:
        """(K, K) responsibility overlaps of the observed rows (one compute)."""
        return _compute(self.plan.overlap_graph(self.params(theta, 1.0)), self.client)

    def __call__(self, theta: Theta, f_obs: float, blocks=None) -> _Evaluation:
        """E-step at ``theta`` over every block, or over ``blocks`` only (its own N,
        N_orig and imputation, as if those blocks were the catalog)."""
        plan = self.plan
        params = self.params(theta, f_obs)
        comps = None
        if self.cutoff is not None:
            reach = ReachTest(theta.mean, theta.covar).matrix(
                self.boxes, chi2_cuts(self.cutoff, plan.D))
            comps = [np.flatnonzero(r) for r in reach]
        stats, imputed, tally = _compute(plan.iteration_graph(params, comps, blocks),
                                         self.client)
        N = stats.n
        logL = stats.logl / N
        N_orig, total = float(N), stats
        if self.sel_callback is not None:
            f_obs = tally.omega / tally.n
            if not f_obs > 0:
                raise CallbackError(f"sel_callback: every one of {tally.n} rows drawn from the "
                                    f"model has selection probability 0; the model has no "
                                    f"mass where the catalog was observed. Check that "
                                    f"sel_callback is > 0 in the catalog's region; with few "
                                    f"rows, raise oversampling (more candidates) or use "
                                    f"init_method='kmeans'.")
            N_orig = N / f_obs
            logL -= math.log(f_obs)   # likelihood of the truncated (observed) population
            if tally.weight > 0:
                total = stats + imputed.scaled((N_orig - N) / tally.weight)
        return _Evaluation(logL, N_orig, f_obs, total, int(stats.n_outside))


# ----------------------------------------------------------------------- fit


def fit(gmm: GMM, data, covar=None, *, init_method: str = "kmeans", w: float = 0.0,
        cutoff: float | None = None, sel_callback=None, covar_callback=None,
        background: Background | None = None, tol: float = 1e-3, maxiter: int = 1000,
        frozen=None, rng=None, client=None, checkpoint=None, split_n_merge: int = 0,
        oversampling: float = 4.0, persist: bool | None = None, accelerate: bool = True,
        n_init: int = 1, callback_timeout: float | None = None, weights=None,
        stepwise: int = 0) -> FitResult:
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
    weights : None, array_like or dask array, shape (N,)
        Per-row weights >= 0 (Bovy's XD ``weight``): a row of weight w counts as w
        rows in every sum - an integer weight gives the fit of the row duplicated
        w times, weight 0 leaves the row out. ``logL`` is then the weighted mean,
        and ``N`` and ``N_orig`` are in units of weight. Taken from the catalog
        when it carries weights. The initialization ignores them.
    init_method : {"kmeans", "random", "minmax", "none"}
        Initialization (see :mod:`daskgmmis.init`). The default, k-means|| on the
        data, finds the basin of the right answer where a random start does not:
        on pyGMMis's demo geometry (4,000 rows, noise sd 0.5, ~50 % cut away) it
        gives KL(truth || fit) 0.015-0.038 and N_orig within 6 % over six seeds,
        where random starts gave KL 1.4-2.6 and N_orig up to 8.5x the truth.
    w : float
        Covariance regularization in data units: ``w**2`` added to the diagonal.
    cutoff : float, optional
        Neighborhood size in 1-D-equivalent sigmas; ``None``: every row touches
        every component.
    sel_callback : callable, optional
        Selection function Ω(coords (n, D)) -> (n,) probabilities in [0, 1] (booleans
        accepted) that a row at noisy position ``coords`` is in the catalog. With it
        the fit recovers the population *before* selection by imputing the
        unobserved rows (docs/design.md §1.4); Ω enters the likelihood, not the
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
    split_n_merge : int
        Split-and-merge attempts after EM converges (Ueda et al. 2000, as in Bovy's
        XD and pyGMMis): merge the pair with the largest responsibility overlap,
        split the broadest other component, run a partial EM on those three, then
        a full EM; keep the result only if the likelihood improves by more than
        ``tol``. Each attempt tries the next candidate triple. Needs K >= 3.
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
    accelerate : bool
        SQUAREM extrapolation of the EM map (Varadhan & Roland 2008): the same
        fixed points in far fewer iterations where EM crawls (truncation, heavy
        noise). An extrapolated step is kept only if the likelihood does not
        drop. ``False`` gives textbook EM, step for step.
    n_init : int
        Number of starts (each from its own random stream); the fit with the
        highest final likelihood is kept. At most
        :data:`daskgmmis.memory.MAX_N_INIT`.
    callback_timeout : float, optional
        Seconds one call of ``sel_callback`` or ``covar_callback`` may take;
        past that the fit stops with a ``CallbackError`` naming the callback
        (default: no limit).
    stepwise : int or bool
        Passes of stepwise (online) EM before batch EM (:mod:`daskgmmis.stepwise`):
        blocks in a seeded random order, one block per worker thread per group,
        an M-step after every group on running statistics blended with a decaying
        step size. On large catalogs this reaches the batch answer's neighbourhood
        in a couple of passes where batch EM needs tens; batch EM then polishes
        (and decides convergence). ``0``/``False``: batch EM only; ``True``: 2.
        The group size is fixed at the start (kept on resume).
    checkpoint : str or os.PathLike, optional
        File for the EM state, written atomically after every iteration. If it
        holds a checkpoint of the same problem the fit resumes from it and ends
        bit-identical to an uninterrupted fit; a checkpoint of another problem
        is refused (:class:`~daskgmmis.errors.CheckpointError`).

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
    if cutoff is not None and not (isinstance(cutoff, (int, float, np.integer, np.floating))
                                   and not isinstance(cutoff, bool) and cutoff > 0):
        raise InputError(f"cutoff: expected None or a number of sigmas > 0; found {cutoff!r}.")
    for name, value, allowed in (("persist", persist, "None, True or False"),
                                 ("accelerate", accelerate, "True or False")):
        # a truthy string such as "no" would silently mean True
        if not (isinstance(value, (bool, np.bool_)) or (name == "persist" and value is None)):
            raise InputTypeError(f"{name}: expected {allowed}; found {value!r}.")
    if not (isinstance(split_n_merge, (int, np.integer)) and split_n_merge >= 0):
        raise InputError(f"split_n_merge: expected an integer >= 0; found {split_n_merge!r}.")
    if split_n_merge and gmm.K < 3:
        raise InputError(f"split_n_merge: needs K >= 3 components (merge two, split a third); "
                         f"found K={gmm.K}.")
    for name, cb in (("sel_callback", sel_callback), ("covar_callback", covar_callback)):
        if cb is not None and not callable(cb):
            raise InputTypeError(f"{name}: expected a callable taking coords (n, D); found "
                                 f"{type(cb).__name__}.")
    if not (isinstance(oversampling, (int, float, np.floating)) and oversampling > 0
            and math.isfinite(oversampling)):
        raise InputError(f"oversampling: expected a finite number > 0; found {oversampling!r}.")
    check_timeout(callback_timeout)
    if stepwise is True:
        stepwise = 2
    if isinstance(stepwise, bool):
        stepwise = 0
    if not (isinstance(stepwise, (int, np.integer)) and 0 <= stepwise <= 1000):
        raise InputError(f"stepwise: expected a number of passes from 0 to 1000 (or True/"
                         f"False); found {stepwise!r}.")
    stepwise = int(stepwise)
    K, D = gmm.K, gmm.D
    check_regularization(w)
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    x, noise, kind = as_dask_input(data, covar)
    weights = as_dask_weights(data, weights, x)
    if x.shape[1] != D:
        raise InputError(f"data: has D={x.shape[1]} features but gmm has D={D}; build the "
                         f"model with GMM(K, D={x.shape[1]}).")
    check_background(background, D, "data")
    frozen_idx = parse_frozen(frozen, K)
    if init_method == "none":
        check_model_params(gmm.amp, gmm.mean, gmm.covar)
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise InputError(f"n_init: expected an integer >= 1; found {n_init!r}.")
    if n_init > 1 and (checkpoint is not None or init_method == "none"):
        raise InputError("n_init: multiple starts need an initialization method other than "
                         "'none' and cannot be combined with a checkpoint; use n_init=1.")
    client = _resolve_client(client)
    if sel_callback is not None:
        if covar_callback is None and noise_class(kind) is SharedNoise:
            covar_callback = _ConstantCovar(noise)
        elif covar_callback is None and noise_class(kind).per_row:
            warnings.warn("sel_callback without covar_callback: imputed rows get no noise while "
                          "the observed rows have per-row noise; pass covar_callback to model "
                          "the noise of unobserved rows.", UserWarning, stacklevel=2)
        if client is not None:
            check_picklable(sel_callback, "sel_callback")
            if covar_callback is not None:
                check_picklable(covar_callback, "covar_callback")

    # 0. memory plan: refuse (or shrink the blocks) before the first pass
    x, noise = plan_fit(x, noise, kind, K, D, client=client, n_init=n_init,
                        oversampling=oversampling if sel_callback is not None else None)
    if weights is not None:
        weights = weights.rechunk({0: x.chunks[0]})   # the memory plan may shrink blocks
    x, noise, weights = _maybe_persist(x, noise, kind, persist, client, weights)
    plan = _Plan(x, noise, kind, weights)

    # 1. first pass: validation + summary (+ block boxes for neighborhoods), one compute
    boxes = None
    if cutoff is None:
        summary = _compute(plan.summary_graph(), client)
    else:
        summary, boxes = _compute((plan.summary_graph(), plan.box_graph()), client)
    if K > summary.n:
        raise InputError(f"gmm: K={K} components but only {summary.n} usable rows; use fewer "
                         f"components or more data.")

    # 2. resume, or initialize
    fingerprint = _fingerprint(plan, summary, K, rng, init_method=init_method, w=w,
                               cutoff=cutoff, sel_callback=sel_callback,
                               covar_callback=covar_callback, background=background,
                               frozen=frozen_idx, oversampling=oversampling,
                               accelerate=accelerate, stepwise=stepwise)
    state = load_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    if state is not None:
        seed = np.random.SeedSequence(int(state.seed[0]), spawn_key=tuple(state.seed[1:]))
        log.info("resuming from checkpoint %s at iteration %d", checkpoint, state.n_iter)
    else:
        seed = _root_seed(rng)
    # children keyed explicitly (SeedSequence.spawn would mutate a caller's object)
    impute_seed = child_seed(seed, 0)
    init_seeds = [child_seed(seed, 1 + i) for i in range(n_init)]
    bg_amp0, bg_seeded = _background_start(background)
    evaluate = _Evaluator(plan, client, cutoff,
                          time_limited(sel_callback, callback_timeout, "sel_callback"),
                          time_limited(covar_callback, callback_timeout, "covar_callback"),
                          impute_seed, oversampling, background, boxes)
    run = dict(evaluate=evaluate, tol=tol, maxiter=maxiter, w=w, frozen=frozen_idx,
               background=background, accelerate=accelerate, checkpoint=checkpoint,
               fingerprint=fingerprint)
    # the anchor of the stepwise sums: the data's mean (NaN-free: init checked n_obs)
    stepwise_run = dict(evaluate=evaluate, N_all=float(summary.weight),
                        anchor=np.nan_to_num(summary.total / np.maximum(summary.n_obs, 1)),
                        w=w, frozen=frozen_idx, background=background,
                        checkpoint=checkpoint, fingerprint=fingerprint)

    def em_from(start: EMState):
        if stepwise:
            groups = _stepwise_groups(start, plan, client, stepwise, seed)
            start = _run_stepwise(start, groups, **stepwise_run)
        return _run_em(start, **run)

    # 3. EM, from each start
    if state is not None:
        best = em_from(state)
    else:
        best = None
        for init_seed in init_seeds:
            theta = _initial_theta(gmm, init_method, K, plan, summary, x, client,
                                   np.random.default_rng(init_seed), bg_amp0, bg_seeded)
            seed_list = [str(seed.entropy), *map(int, seed.spawn_key)]
            outcome = em_from(EMState(theta=theta, seed=seed_list))
            if best is None or outcome[0].history[-1] > best[0].history[-1]:
                best = outcome
    state, converged, last = best
    if cutoff is not None and last.n_outside >= summary.n:
        raise InputError(f"cutoff: with cutoff={cutoff:g} sigmas every row is outside every "
                         f"neighborhood ({last.n_outside} of {summary.n} rows), so nothing "
                         f"was fitted; expected a cutoff of a few sigmas (3 to 6).")
    if split_n_merge:
        state, converged, last = _split_and_merge(state, converged, last, split_n_merge, run)
    if not converged and maxiter > 0:
        change = state.history[-1] - state.history[-2] if len(state.history) > 1 else np.nan
        warnings.warn(f"EM did not converge in maxiter={maxiter} iterations (last change of "
                      f"the mean logL: {change:.3g}, tol={tol}).", ConvergenceWarning,
                      stacklevel=2)
    theta = state.theta
    if not noise_class(kind).noisy:
        _warn_singular(theta, summary, frozen_idx["covar"])
    gmm.amp, gmm.mean, gmm.covar = theta.amp, theta.mean, theta.covar
    if isinstance(data, Catalog):
        gmm.columns = list(data.columns)       # the model's features carry their names
    if background is not None:
        background.amp = theta.bg_amp
    return FitResult(logL=state.history[-1], n_iter=state.n_iter, converged=converged,
                     history=list(state.history), N_orig=state.n_orig_history[-1],
                     N=summary.n if weights is None else float(last.total.n),
                     n_outside=last.n_outside, bg_amp=theta.bg_amp,
                     seconds=time.perf_counter() - t_start,
                     seconds_per_iter=list(state.seconds),
                     passes=len(state.history) + (
                         state.sw_steps / -(-len(plan.x_blocks) // state.sw_group)
                         if state.sw_group else 0.0),
                     stepwise_history=list(state.sw_history))


def fit_best(gmm: GMM, data, covar=None, *, n_init: int = 1, rng=None,
             background: Background | None = None, prefit: bool = False,
             **fit_kwargs) -> FitResult:
    """:func:`daskgmmis.fit` from ``n_init`` starts, optionally prefitted without selection.

    Without ``prefit`` this is ``fit(..., n_init=n_init)``. With ``prefit`` and a
    ``sel_callback``, every start is two fits: one *without* the selection (and
    its imputation), then the truncation-aware fit starting from its result
    (``init_method="none"``) - pyGMMis's recipe: the plain fit puts the
    components where the observed rows are and the imputation then extends them
    into the unobserved region, where from a random start the weakly
    constrained unobserved volume can attract runaway components. The start
    with the highest final likelihood is kept.

    Parameters
    ----------
    gmm : GMM
        Model to fit; updated in place with the best start.
    data, covar
        As for :func:`daskgmmis.fit`.
    n_init : int
        Number of starts (>= 1).
    rng : None, int, Generator or SeedSequence
        Root seed. With ``prefit`` and several starts, start ``i`` uses
        :func:`child_seed` ``(root, i)``; one start uses ``rng`` itself, as
        :func:`fit` would.
    background : Background, optional
        Fitted jointly; its ``amp`` is updated in place with the winner's.
    prefit : bool
        Prefit every start without the selection (only with ``sel_callback``).
    **fit_kwargs
        Passed to :func:`daskgmmis.fit` (``init_method``, ``w``, ``cutoff``,
        ``sel_callback``, ``covar_callback``, ``tol``, ``maxiter``, ``frozen``,
        ``client``, ``oversampling``, ``persist``, ``checkpoint``, ...).

    Returns
    -------
    FitResult
        The winning start's result.
    """
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise InputError(f"n_init: expected an integer >= 1; found {n_init!r}.")
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")
    if not (prefit and fit_kwargs.get("sel_callback") is not None):
        return fit(gmm, data, covar, n_init=n_init, rng=rng, background=background,
                   **fit_kwargs)
    if n_init > 1 and fit_kwargs.get("checkpoint") is not None:
        raise InputError("checkpoint: one checkpoint file cannot hold several starts; use "
                         "n_init=1 with a checkpoint.")
    if n_init == 1:
        seeds = [rng]
    else:
        root = _root_seed(rng)
        seeds = [child_seed(root, i) for i in range(n_init)]
    # the imputation's options (and the checkpoint) belong to the truncated fit only
    plain = {k: v for k, v in fit_kwargs.items()
             if k not in ("sel_callback", "covar_callback", "oversampling", "checkpoint")}
    truncated = dict(fit_kwargs, init_method="none")
    best = None
    for seed in seeds:
        g = gmm.copy()
        bg = None if background is None else background.copy()
        fit(g, data, covar, background=bg, rng=seed, **plain)
        result = fit(g, data, covar, background=bg, rng=seed, **truncated)
        if best is None or result.logL > best[0].logL:
            best = (result, g, bg)
    result, g, bg = best
    gmm.amp, gmm.mean, gmm.covar = g.amp, g.mean, g.covar
    if background is not None:
        background.amp = bg.amp
    return result


# A covariance whose extent along some direction is below 1e-7 of the data's range
# (variance ratio 1e-14) is below the resolution of float32 data and, without noise,
# means the component sits on identical rows, a constant feature or exactly
# collinear features: the likelihood is unbounded there and the covariance is the
# rounding noise of the M-step, not a measurement.
_SINGULAR_RATIO = 1e-14


def _warn_singular(theta: Theta, summary, frozen_covar) -> None:
    """Warn (DeadComponentWarning) about numerically singular fitted covariances.

    The check is scale-free per feature: each covariance is standardized by the
    data's range (or magnitude, for a constant feature) before its smallest
    eigenvalue is taken, so that feature units (1e-8 or 1e8) do not matter.
    """
    lo, hi = np.asarray(summary.lo, float), np.asarray(summary.hi, float)
    r = np.maximum(hi - lo, np.maximum(np.abs(lo), np.abs(hi)))
    r = np.where(r > 0, r, 1.0)
    std = theta.covar / np.outer(r, r)
    ev = np.linalg.eigvalsh(0.5 * (std + np.swapaxes(std, 1, 2)))[:, 0]
    bad = [k for k in np.flatnonzero(ev < _SINGULAR_RATIO) if k not in set(frozen_covar)]
    if bad:
        warnings.warn(
            f"components {[int(k) for k in bad]} ended with a numerically singular "
            f"covariance (smallest eigenvalue {ev[bad].min():.3g} of the covariance "
            f"in units of the data's range): they sit on identical rows, a constant feature "
            f"or exactly collinear features, where the likelihood is unbounded. Use a "
            f"regularization w > 0 (a variance floor w**2, data units) or remove the "
            f"duplicates.", DeadComponentWarning, stacklevel=3)


def _merge_split(theta: Theta, i: int, j: int, k: int) -> Theta:
    """Merge components i and j into slot i; split k into slots k and j."""
    amp, mean, covar = theta.amp.copy(), theta.mean.copy(), theta.covar.copy()
    a = amp[i] + amp[j]
    wi, wj = (amp[i] / a, amp[j] / a) if a > 0 else (0.5, 0.5)
    m = wi * mean[i] + wj * mean[j]
    second = (wi * (covar[i] + np.outer(mean[i], mean[i]))
              + wj * (covar[j] + np.outer(mean[j], mean[j])))
    mean[i], covar[i], amp[i] = m, second - np.outer(m, m), a
    lam, vec = np.linalg.eigh(covar[k])
    step = 0.5 * np.sqrt(lam[-1]) * vec[:, -1]
    # the halves sit half a sigma either side, each with the major axis shrunk
    shrunk = covar[k] - 0.75 * lam[-1] * np.outer(vec[:, -1], vec[:, -1])
    mean[j], mean[k] = mean[k] + step, mean[k] - step
    covar[j] = covar[k] = shrunk
    amp[j] = amp[k] = 0.5 * amp[k]
    return Theta(amp, mean, covar, theta.bg_amp)


def _split_and_merge(state, converged, last, attempts, run):
    """Try ``attempts`` split-and-merge moves; keep those that raise the likelihood."""
    evaluate = run["evaluate"]
    tol = run["tol"]
    tried = 0
    while tried < attempts:
        theta = state.theta
        K = theta.amp.shape[0]
        ov = evaluate.overlap(theta)
        norms = np.sqrt(np.clip(np.diag(ov), 1e-300, None))
        J = ov / np.outer(norms, norms)
        pairs = sorted(((J[i, j], i, j) for i in range(K) for j in range(i + 1, K)),
                       reverse=True)
        volume = np.linalg.slogdet(theta.covar)[1]
        candidates = [(i, j, k) for _, i, j in pairs
                      for k in np.argsort(-volume) if k not in (i, j)]
        improved = False
        for i, j, k in candidates:
            if tried >= attempts:
                break
            tried += 1
            start = _merge_split(theta, i, j, int(k))
            others = np.setdiff1d(np.arange(K), [i, j, k])
            partial = {key: np.union1d(run["frozen"][key], others) for key in run["frozen"]}
            seed = list(state.seed)
            p_state, _, _ = _run_em(EMState(theta=start, seed=seed),
                                    **{**run, "frozen": partial, "checkpoint": None,
                                       "maxiter": min(run["maxiter"], 50)})
            f_state, f_conv, f_last = _run_em(
                EMState(theta=p_state.theta, seed=seed, f_obs=p_state.f_obs),
                **{**run, "checkpoint": None})
            log.info("split-and-merge: merge %d+%d, split %d: logL %.8g -> %.8g", i, j, k,
                     state.history[-1], f_state.history[-1])
            if f_state.history[-1] > state.history[-1] + tol:
                f_state.history = state.history + f_state.history
                f_state.n_orig_history = state.n_orig_history + f_state.n_orig_history
                f_state.seconds = state.seconds + f_state.seconds
                f_state.n_iter += state.n_iter
                state, converged, last = f_state, f_conv, f_last
                improved = True
                break
        if not improved:
            break
    return state, converged, last


# Start of a fitted background amplitude given as 0: amp = 0 is a fixed point of EM
# (no row is ever given to the background), so a fit from 0 would never move. 5%
# is small enough not to distort a clean catalog's start and large enough that EM
# reaches a contamination of tens of percent in a few iterations.
_BG_START_AMP = 0.05


def _background_start(background):
    """(starting background amplitude or None, whether it was seeded away from 0)."""
    if background is None:
        return None, False
    amp = float(background.amp)
    if amp == 0.0 and background.adjust_amp and background.amp_max > 0:
        start = min(background.amp_max, max(background.amp_min, _BG_START_AMP))
        log.info("background amp=0 is a fixed point of EM; the fit starts it at %g", start)
        return start, True
    return amp, False


def _initial_theta(gmm, init_method, K, plan, summary, x, client, init_rng, bg_amp,
                   bg_seeded=False):
    """Starting parameters (the model's own for init_method='none').

    The components share ``1 - bg_amp``; the model's own amplitudes (``'none'``) are
    kept as given unless the background start was seeded away from 0 here.
    """
    if init_method == "none":
        amp, mean, cov = gmm.amp, gmm.mean, gmm.covar
    elif init_method == "minmax":
        amp, mean, cov = init_minmax(K, summary, init_rng)
    elif init_method == "random":
        idx = init_rng.integers(0, plan.N, size=K)
        order = np.argsort(idx, kind="stable")
        picked = np.asarray(_compute(x[idx[order]], client), dtype=np.float64)
        rows = np.empty_like(picked)
        rows[order] = picked
        amp, mean, cov = init_random(K, summary, rows, init_rng)
    else:
        amp, mean, cov = init_kmeans(K, plan, summary, init_rng, client)
    amp = np.array(amp, dtype=np.float64)
    if bg_amp is not None and (init_method != "none" or bg_seeded):
        amp = amp * (1.0 - bg_amp)
    return Theta(amp, np.array(mean, dtype=np.float64), np.array(cov, dtype=np.float64), bg_amp)


def _run_em(state: EMState, *, evaluate, tol, maxiter, w, frozen, background, accelerate,
            checkpoint, fingerprint):
    """Iterate EM (optionally SQUAREM-accelerated) from ``state`` until converged.

    Every loop is one E-step (one compute). An extrapolated point is accepted only
    if its likelihood is at least that of the plain iterate it was built from
    (with imputation: of the cycle's start), so without imputation the recorded
    likelihood never decreases.

    Returns
    -------
    (state, converged, last evaluation)
    """
    converged = False
    ev = None
    while True:
        t0 = time.perf_counter()
        ev = evaluate(state.theta, state.f_obs)
        state.f_obs = ev.f_obs
        if state.fallback is not None:
            rejected = not (ev.logL >= state.fallback_logL - 1e-12 * abs(state.fallback_logL))
            if rejected:
                log.debug("extrapolated step rejected (logL %.10g < %.10g)", ev.logL,
                          state.fallback_logL)
                state.theta, state.fallback = state.fallback, None
                continue
            state.fallback = None
        if not np.isfinite(ev.logL):
            raise NumericalError(f"the mean log-likelihood became {ev.logL} at iteration "
                                 f"{state.n_iter}; check the data scale or use w > 0.")
        state.history.append(ev.logL)
        state.n_orig_history.append(ev.N_orig)
        state.seconds.append(time.perf_counter() - t0)
        h = state.history
        log.info("iteration %d: mean logL %.10g (change %.3g), N_orig %.6g, %.3f s",
                 state.n_iter, ev.logL, h[-1] - h[-2] if len(h) > 1 else float("nan"),
                 ev.N_orig, state.seconds[-1])
        if len(h) > 1 and abs(h[-1] - h[-2]) < tol and (
                abs(state.n_orig_history[-1] - state.n_orig_history[-2])
                <= tol * state.n_orig_history[-1]):
            converged = True
            break
        if state.n_iter >= maxiter:
            break
        theta_next, dead = mstep(ev.total, state.theta, w=w, frozen=frozen,
                                 background=background, N_total=ev.N_orig)
        state.n_iter += 1
        if accelerate:
            if dead.size:
                state.cycle = []
            elif state.cycle:
                extrapolated = extrapolate(state.cycle[0], state.theta, theta_next, frozen,
                                            background, w)
                state.cycle = []
                if extrapolated is not None:
                    # Exact likelihoods: never below the plain iterate. With imputation
                    # the likelihood carries Monte-Carlo error larger than EM's gain per
                    # step on flat ridges, so require only the cycle's starting level.
                    exact = evaluate.sel_callback is None
                    state.fallback = theta_next
                    state.fallback_logL = ev.logL if exact else state.history[-2]
                    theta_next = extrapolated
            else:
                state.cycle = [state.theta]
        state.theta = theta_next
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, fingerprint)
    return state, converged, ev


# Child key of the fit's root seed for the stepwise block order: far from the keys of
# the imputation (0) and of the starts (1 .. n_init <= MAX_N_INIT).
_STEPWISE_KEY = 2**32 - 1


def _stepwise_group_size(client) -> int:
    """Blocks per stepwise group: one per worker thread."""
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, os.cpu_count() or 1)


def _stepwise_groups(state: EMState, plan, client, passes: int, root_seed) -> list:
    """The groups of blocks of the stepwise phase (fixing the group size at the start)."""
    n_blocks = len(plan.x_blocks)
    if state.sw_group == 0:
        state.sw_group = min(_stepwise_group_size(client), n_blocks)
    rng = np.random.default_rng(child_seed(root_seed, _STEPWISE_KEY))
    return block_groups(n_blocks, state.sw_group, passes, rng)


def _run_stepwise(state: EMState, groups: list, *, evaluate, N_all, anchor, w, frozen,
                  background, checkpoint, fingerprint) -> EMState:
    """Stepwise EM over ``groups`` of blocks from ``state`` (resumes at ``state.sw_steps``).

    Every group is one compute over its blocks; its statistics, scaled from the
    group's rows to the catalog's ``N_all``, are blended into the running
    statistics (:class:`~daskgmmis.stepwise.RunningStats`) and an M-step follows.
    """
    while state.sw_steps < len(groups):
        t0 = time.perf_counter()
        ev = evaluate(state.theta, state.f_obs, blocks=groups[state.sw_steps])
        n_group = float(ev.total.n)
        state.sw_steps += 1
        if not n_group > 0:
            continue     # every row of the group has weight 0: nothing to learn from
        state.f_obs = ev.f_obs
        scale = N_all / n_group
        group_stats, n_orig = ev.total.scaled(scale), ev.N_orig * scale
        if state.sw_running is None or state.sw_restart:
            state.sw_running = RunningStats.start(group_stats, state.theta.mean, anchor, n_orig)
        else:
            state.sw_running = state.sw_running.blend(group_stats, state.theta.mean, n_orig,
                                                      step_size(state.sw_steps - 1,
                                                                DEFAULT_ALPHA))
        running = state.sw_running
        state.theta, dead = mstep(running.about(state.theta.mean), state.theta, w=w,
                                  frozen=frozen, background=background,
                                  N_total=running.n_orig)
        # a re-seeded component's running sums describe the old one: start afresh
        state.sw_restart = bool(dead.size)
        state.sw_history.append(ev.logL)
        log.info("stepwise group %d/%d (%d blocks): mean logL %.8g, N_orig %.6g, %.3f s",
                 state.sw_steps, len(groups), len(groups[state.sw_steps - 1]), ev.logL,
                 running.n_orig, time.perf_counter() - t0)
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, fingerprint)
    return state


def _callback_name(cb):
    if cb is None:
        return None
    if hasattr(cb, "to_dict"):
        return cb.to_dict()
    return f"{getattr(cb, '__module__', '?')}.{getattr(cb, '__qualname__', type(cb).__name__)}"


def _fingerprint(plan, summary, K, rng, **options) -> dict:
    """JSON description of a fit problem: what a checkpoint must match."""
    hexes = lambda a: [float(v).hex() for v in np.ravel(a)]  # noqa: E731
    fp = {
        "N": plan.N, "D": plan.D, "K": K, "noise": plan.kind,
        "chunks": [int(c) for c in plan.x.chunks[0]],
        "data_summary": {"n": int(summary.n), "n_obs": np.asarray(summary.n_obs).tolist(),
                         "lo": hexes(summary.lo), "hi": hexes(summary.hi),
                         "total": hexes(summary.total),
                         "weight": float(summary.weight).hex()},
        "shared_noise": None if plan.shared is None else hexes(plan.shared),
        "init_method": options["init_method"], "w": float(options["w"]).hex(),
        "cutoff": None if options["cutoff"] is None else float(options["cutoff"]).hex(),
        "sel_callback": _callback_name(options["sel_callback"]),
        "covar_callback": (None if isinstance(options["covar_callback"], _ConstantCovar)
                           else _callback_name(options["covar_callback"])),
        "background": (None if options["background"] is None else
                       {k: v for k, v in options["background"].to_dict().items() if k != "amp"}),
        "frozen": {k: v.tolist() for k, v in options["frozen"].items()},
        "oversampling": float(options["oversampling"]).hex(),
        "accelerate": bool(options["accelerate"]),
        "stepwise": int(options["stepwise"]),
    }
    if rng is not None:
        seed = _root_seed(rng) if not isinstance(rng, np.random.Generator) else None
        fp["seed"] = ("generator" if seed is None else
                      [str(seed.entropy), *map(int, seed.spawn_key)])
    return fp
