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

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field

import dask
import numpy as np

from . import kernels
from .background import Background, log_background
from .blocks import compute as _compute
from .blocks import tree_reduce
from .catalog import Catalog, as_dask_input, as_dask_projection, as_dask_weights, open_catalog
from .memory import check_candidates, memory_pairs, packed_size, plan_fit
from .timelimit import time_limited
from .errors import (CallbackError, ConvergenceWarning, DeadComponentWarning, InputError,
                     InputTypeError, NumericalError, PrecisionWarning,
                     adopt_sklearn_warnings)
from .imputation import (GROUPS, candidate_count, candidate_set, impute_block,
                         points_per_set, replicate_set)
from .selection import check_picklable, evaluate_selection
from .init import init_kmeans, init_minmax, init_random
from .model import GMM, Theta
from .neighborhoods import ReachTest, block_box, chi2_cuts, estep_neighborhoods
from .noise import SharedNoise, noise_block, noise_class
from .acceleration import (OVERRELAX_START, anderson, distance, feature_scale,
                           fixed_point_shift, leaving_saddle, next_overrelax, overrelaxed,
                           pack, unpack)
from .checkpoint import EMState, load_checkpoint, save_checkpoint
from .cluster import cluster_memory
from .mstep import mstep, parse_frozen
from .options import FitOptions, callable_name, option_fields
from .progress import progress_display
from .stats import DataSummary, SuffStats, sum_stats
from .stepwise import RunningStats, block_groups, step_size
from .validation import (check_background, check_data_block, check_model_params,
                         check_projection_block, check_regularization)

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
        Whether the fit ended within ``tol`` of EM's fixed point (the likelihood
        still to gain below ``tol``) before ``maxiter``.
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
        E-steps, the probes of Newton points on a ridge included (the first pass,
        validation, summary and the Monte-Carlo error's probes not counted).
    stepwise_history : list of float
        Mean log-likelihood per row of every stepwise group (empty without
        ``stepwise``).
    mc_error : dict or None
        Monte-Carlo standard errors due to the imputation: ``"logL"`` (of the mean
        logL per row, from the batch-means error of the observed fraction f at the
        final parameters over independent replicate sets of candidates) and
        ``"N_orig"`` (of the fitted N_orig as the fixed point of the imputed EM: how
        far each replicate set's map would move the fixed point, ``(I - J)^-1`` of
        its one-step change with EM's Jacobian probed column by column, plus how far
        the fit stopped short of that fixed point; docs/design.md §1.4; measured
        1.1-1.3x below the spread over 10 ``rng`` seeds on pyGMMis's demo geometry
        and hard 2-D and 4-D cuts). Both 0 without a selection; None with
        ``estimate_mc_error=False``.
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
    mc_error: dict | None = field(default_factory=lambda: {"logL": 0.0, "N_orig": 0.0})
    # (final EMState, fingerprint): what a warm start continues from (:func:`_continuation`)
    _end: tuple | None = field(default=None, repr=False, compare=False)


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
    n_total: int = 0
    proposal: Theta | None = None          # the imputation sample's parameters
    proposal_background: Background | None = None
    sample_key: tuple = ()                 # caches the sample in the block tasks
    # how an unobserved row is observed: None, a shared (d, D) R or projection_callback
    candidate_projection: object = None
    data_dim: int = 0                      # d, the data's features


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


def _summary_task(x, noise, kind, shared, row_offset, weight=None, proj=None):
    """First pass over a block: validation fused with the data summary."""
    x = np.asarray(x)
    total_weight = x.shape[0] if weight is None else float(np.asarray(weight).sum())
    check_data_block(x, row_offset)
    nz = noise_block(kind, noise, shared)
    nz.validate(x, row_offset)
    proj_sum = 0.0
    if proj is not None:
        proj = check_projection_block(proj, x, row_offset)
        proj_sum = float(np.nansum(proj if proj.ndim == 2
                                   else np.where(np.isnan(x)[:, :, None], 0.0, proj)))
    observed = ~np.isnan(x)
    max_var = nz.max_variance(observed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(x, axis=0).astype(np.float64)
        hi = np.nanmax(x, axis=0).astype(np.float64)
    return DataSummary(x.shape[0], observed.sum(axis=0), lo, hi,
                       np.nansum(x, axis=0, dtype=np.float64), max_var, total_weight,
                       proj_sum)


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


def _estep_task(x, noise, params: _IterParams, row_offset, block, comps=None, weight=None,
                proj=None):
    """One block's E-step: (observed SuffStats, imputed SuffStats or None, tally or None).

    ``comps``: components that may reach the block (neighborhoods); None for all.
    ``weight``: per-row weights (n,), or None for weight 1: a row of weight w counts
    as w rows in every sum, ``n`` included. ``proj``: the rows' projection, shared
    (d, D) or per row (n, d, D) (checked in the first pass), or None.
    """
    x = np.asarray(x)
    noise = _block_noise(noise, params.kind, params.shared_noise)
    weight = None if weight is None else np.asarray(weight, dtype=np.float64)
    proj = None if proj is None else np.asarray(proj, dtype=np.float64)
    log_bg = log_background(params.background, x, noise, params.kind)
    if params.cutoff is None:
        row_logl, n_out, mom = kernels.estep_block(
            x, noise, params.kind, params.amp, params.mean, params.covar, log_bg=log_bg,
            weight=weight, row_offset=row_offset, projection=proj)
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
    cset = _block_candidates(params, int(x.shape[0]), block)
    # the imputed mass is in the units of the rows' weights (n)
    imputed, tally = impute_block(cset, n, params.amp, params.mean, params.covar,
                                  params.background)
    return observed, imputed, tally


def _block_candidates(params: _IterParams, n_rows: int, block: int):
    """The block's fixed imputation sample (cached per process; see candidate_set)."""
    D = params.mean.shape[1]
    n_sources = params.amp.shape[0] + (params.background is not None)
    n_set = points_per_set(candidate_count(n_rows, params.oversampling,
                                           params.observed_fraction, params.n_total), n_sources)
    check_candidates(n_set * n_sources * GROUPS, D, params.covar_callback is not None,
                     params.oversampling, n_rows)
    p0 = params.proposal
    return candidate_set(params.sample_key, n_set, p0.mean, p0.covar,
                         params.proposal_background, params.sel_callback,
                         params.covar_callback, params.seed, block,
                         params.candidate_projection, params.data_dim)


def _replicate_task(params: _IterParams, n_rows: int, block: int, weight=None, at=None):
    """A block's imputation by replicate set (the fixed point's Monte-Carlo error).

    ``at`` None: per replicate set, the imputed statistics and tally at ``params``
    from that set alone - a tuple of GROUPS (SuffStats, ImputeTally). Otherwise
    ``at`` is a list of (amp, mean, covar, background): the whole sample's tally at
    each of them - a tuple of ImputeTally.
    """
    cset = _block_candidates(params, n_rows, block)
    n = n_rows if weight is None else float(np.asarray(weight, dtype=np.float64).sum())
    if at is None:
        return tuple(impute_block(replicate_set(cset, g), n, params.amp, params.mean,
                                  params.covar, params.background) for g in range(GROUPS))
    return tuple(impute_block(cset, n, *theta)[1] for theta in at)


def _overlap_task(x, noise, params: _IterParams, weight=None, proj=None):
    """Responsibility overlap of a block: sum_i w_i q_ik q_il, shape (K, K)."""
    x = np.asarray(x)
    noise = _block_noise(noise, params.kind, params.shared_noise)
    log_bg = log_background(params.background, x, noise, params.kind)
    post = kernels.posterior_block(x, noise, params.kind, params.amp, params.mean, params.covar,
                                   log_bg, covariances=False,
                                   projection=None if proj is None else np.asarray(proj))
    q = post.resp if post.resp_bg is None else post.resp * (1 - post.resp_bg)[:, None]
    rows = np.isfinite(q).all(axis=1)
    if weight is None:
        return q[rows].T @ q[rows]
    w = np.asarray(weight, dtype=np.float64)[rows]
    return q[rows].T @ (w[:, None] * q[rows])


# ---------------------------------------------------------------------- plan


class _Plan:
    """Static per-fit description of the data as delayed blocks."""

    def __init__(self, x, noise, kind, weights=None, projection=None):
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
        # the projection: None, one shared (d, D) matrix in every task, or its blocks
        self.projection = projection
        self.proj_blocks = (list(projection.to_delayed().ravel())
                            if projection is not None and projection.ndim == 3
                            else [projection] * len(self.x_blocks))
        self.offsets = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]]).astype(int).tolist()
        self.nbytes = int(x.nbytes + (self.noise.nbytes if self.noise is not None else 0))

    def summary_graph(self):
        parts = [dask.delayed(_summary_task, pure=True)(xb, nb, self.kind, self.shared, off, wb,
                                                        pb)
                 for xb, nb, off, wb, pb in zip(self.x_blocks, self.noise_blocks, self.offsets,
                                                self.weight_blocks, self.proj_blocks)]
        return tree_reduce(parts, sum_stats)

    def overlap_graph(self, params: _IterParams):
        """Summed responsibility overlaps (K, K) for split-and-merge (one pass)."""
        p = dask.delayed(params, pure=True)
        parts = [dask.delayed(_overlap_task, pure=True)(xb, nb, p, wb, pb)
                 for xb, nb, wb, pb in zip(self.x_blocks, self.noise_blocks, self.weight_blocks,
                                           self.proj_blocks)]
        return tree_reduce(parts, sum_stats)

    def replicate_graph(self, params: _IterParams, at=None):
        """Imputation by replicate set, or tallies at the parameters ``at``
        (:func:`_replicate_task`), summed over the blocks (one pass, no rows read)."""
        p = dask.delayed(params, pure=True)
        parts = [dask.delayed(_replicate_task, pure=True)(p, int(n_rows), b, wb, at)
                 for b, (n_rows, wb) in enumerate(zip(self.x.chunks[0], self.weight_blocks))]
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
                     self.weight_blocks[b], self.proj_blocks[b]) for b in visit]
        return tree_reduce(parts, sum_stats)


def _resolve_client(client):
    if client is not None:       # checked by FitOptions
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


def _maybe_persist(x, noise, kind, persist, client, weights=None, projection=None):
    """Persist the data once when it fits in memory (or when told); else stream.

    Returns (x, noise, weights, projection).
    """
    per_row = noise_class(kind).per_row
    proj_rows = projection is not None and projection.ndim == 3
    arrays = ([x] + ([noise] if per_row else []) + ([weights] if weights is not None else [])
              + ([projection] if proj_rows else []))
    nbytes = sum(a.nbytes for a in arrays)
    if persist is None:
        persist = nbytes <= _memory_budget(client)
    if not persist:
        log.info("streaming %.3g GB from storage every iteration", nbytes / 1e9)
        return x, noise, weights, projection
    if client is not None:
        persisted = list(client.persist(arrays))
    else:
        persisted = list(dask.persist(*arrays, scheduler="threads"))
    x = persisted.pop(0)
    if per_row:
        noise = persisted.pop(0)
    if weights is not None:
        weights = persisted.pop(0)
    if proj_rows:
        projection = persisted.pop(0)
    return x, noise, weights, projection


def _quantize_fraction(f: float) -> float:
    """Round f down to a power of 2**(1/4) so candidate counts settle as f converges."""
    f = min(max(f, 1e-3), 1.0)
    return float(2.0 ** (math.floor(4 * math.log2(f)) / 4))


def _sizing_fraction(current: float, f: float) -> float:
    """The observed fraction that sizes the imputation, updated with hysteresis.

    The candidate counts (and so the fixed sample) change only when the estimate
    ``f`` leaves ``[current / 2**(1/4), current * 2**(1/2)]``: near convergence the
    sample stays put, so the EM map stays one deterministic function, even when
    f sits on a quantization boundary.
    """
    if current * 2.0 ** -0.25 <= f <= current * 2.0 ** 0.5:
        return current
    return _quantize_fraction(f)


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
    f_se: float = 0.0
    ess_ratio: float = 1.0
    observed: SuffStats | None = None      # with a selection: the observed rows' part of total


def _same_theta(a: Theta, b: Theta | None) -> bool:
    return b is not None and (a is b or (
        np.array_equal(a.amp, b.amp) and np.array_equal(a.mean, b.mean)
        and np.array_equal(a.covar, b.covar) and a.bg_amp == b.bg_amp))


class _Evaluator:
    """Runs one E-step (one compute) for a parameter set."""

    def __init__(self, plan, client, cutoff, sel_callback, covar_callback, seed,
                 oversampling, background, boxes=None, candidate_projection=None):
        self.plan, self.client, self.cutoff, self.boxes = plan, client, cutoff, boxes
        self.sel_callback, self.covar_callback = sel_callback, covar_callback
        self.candidate_projection = candidate_projection
        self.seed, self.oversampling, self.background = seed, oversampling, background
        # names this fit's imputation samples in the block tasks' caches (never reused
        # by another fit in the same process); results do not depend on it
        self.token = uuid.uuid4().hex

    def background_at(self, bg_amp):
        if self.background is None:
            return None
        return Background.from_dict({**self.background.to_dict(), "amp": bg_amp})

    def params(self, theta: Theta, f_size: float, proposal: Theta | None = None) -> _IterParams:
        """Block-task parameters.

        ``f_size`` sizes the imputation (see :func:`_sizing_fraction`); ``proposal``
        is the parameters its fixed sample was drawn at.
        """
        plan = self.plan
        key = ()
        if proposal is not None:
            digest = hashlib.blake2b(digest_size=16)
            for a in (proposal.amp, proposal.mean, proposal.covar,
                      [proposal.bg_amp or 0.0, f_size]):
                digest.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
            key = (self.token, digest.hexdigest())
        return _IterParams(theta.amp, theta.mean, theta.covar, plan.kind, plan.shared,
                           self.background_at(theta.bg_amp), self.cutoff, self.sel_callback,
                           self.covar_callback, self.seed, float(self.oversampling),
                           float(f_size), plan.N, proposal,
                           None if proposal is None else self.background_at(proposal.bg_amp),
                           key, self.candidate_projection, plan.D)

    def overlap(self, theta: Theta) -> np.ndarray:
        """(K, K) responsibility overlaps of the observed rows (one compute)."""
        return _compute(self.plan.overlap_graph(self.params(theta, 1.0)), self.client)

    def __call__(self, theta: Theta, f_size: float, proposal: Theta | None = None,
                 blocks=None) -> _Evaluation:
        """One E-step at ``theta``; with a selection, imputed from the sample at ``proposal``.

        ``blocks``: indices of the blocks to visit (stepwise EM: their own N, N_orig
        and imputation, as if those blocks were the catalog); None for all.

        Returns an evaluation with ``f_obs = nan`` when the importance weights are
        degenerate (estimated unobserved fraction >= 1): the caller refreshes the sample.
        """
        return self._finish(theta, proposal,
                            _compute(self._graph(theta, f_size, proposal, blocks), self.client))

    def many(self, thetas: list, f_size: float, proposal: Theta | None = None) -> list:
        """:meth:`__call__` at each of ``thetas`` (the same sample), in one compute."""
        graphs = [self._graph(t, f_size, proposal) for t in thetas]
        return [self._finish(t, proposal, out)
                for t, out in zip(thetas, _compute(graphs, self.client))]

    def _graph(self, theta: Theta, f_size: float, proposal: Theta | None, blocks=None):
        plan = self.plan
        params = self.params(theta, f_size, proposal if self.sel_callback is not None else None)
        comps = None
        if self.cutoff is not None:
            reach = ReachTest(theta.mean, theta.covar).matrix(
                self.boxes, chi2_cuts(self.cutoff, plan.D))
            comps = [np.flatnonzero(r) for r in reach]
        return plan.iteration_graph(params, comps, blocks)

    def _finish(self, theta: Theta, proposal: Theta | None, out) -> _Evaluation:
        stats, imputed, tally = out
        N = stats.n
        logL = stats.logl / N
        if self.sel_callback is None:
            return _Evaluation(logL, float(N), 1.0, stats, int(stats.n_outside))
        f_obs = 1.0 - tally.weight / tally.rows
        if tally.seen == 0 or not f_obs > 0:
            if not _same_theta(theta, proposal):
                # no observed candidate or degenerate weights away from the proposal: redraw
                return _Evaluation(math.nan, math.nan, math.nan, stats, int(stats.n_outside))
            raise CallbackError(f"sel_callback: every one of {tally.n} rows drawn from the "
                                f"model has selection probability 0; the model has no "
                                f"mass where the catalog was observed. Check that "
                                f"sel_callback is > 0 in the catalog's region; with few "
                                f"rows, raise oversampling (more candidates) or use "
                                f"init_method='kmeans'.")
        f_se = math.sqrt(tally.weight_var) / tally.rows
        N_orig = N / f_obs
        logL -= math.log(f_obs)   # likelihood of the truncated (observed) population
        # imputed statistics are in rows of the catalog: N_orig / N per row
        total = stats + imputed.scaled(N_orig / tally.rows)
        return _Evaluation(logL, N_orig, f_obs, total, int(stats.n_outside), f_se,
                           tally.ess_ratio, stats)


# ----------------------------------------------------------------------- fit


# Default tol, as a remaining gain of the *total* log-likelihood (nats): a fit
# stopped that close to its fixed point is within ~0.1 standard error of it along
# any direction (a gap of chi2/2 nats is chi standard errors), whatever N.
_DEFAULT_TOL_NATS = 0.01


def _mc_error(state: EMState, run: "_Run", ev: "_Evaluation") -> dict:
    """Monte-Carlo standard errors of the final logL and N_orig (0 without selection).

    ``logL``: the batch-means error of the observed fraction f at the final
    parameters (the :data:`GROUPS` independent replicate sets of candidates), as
    that of ``logL = ... - log f``. ``N_orig``: the error of the *fixed point*. The
    sample's error enters every EM step - through f and through the imputed
    moments - and EM accumulates it along its slowest directions, where N_orig
    lies on a flat ridge: one plain step is taken from the final parameters with
    each replicate set's imputation alone, the fixed point's shift that step
    implies is found on EM's probed Jacobian (:func:`_replicate_fixed_points`),
    and N_orig (whole sample) at the shifted points gives the error; added in
    quadrature, the error of ``N / f`` evaluated at the final point and the distance
    to the fixed point that the fit stopped short of: the larger of the stopping
    rule's estimate (:func:`_n_orig_to_come`) and N_orig's change to the Newton point
    on the probed Jacobian. Without a usable shift, the replicate steps' spread
    amplified by ``1 / (1 - rho)``, rho the slowest recent contraction rate of a
    plain step. Two passes over the candidates and GROUPS + P E-steps (P packed
    parameters), once per fit.
    """
    if ev is None or ev.f_se == 0 or ev.observed is None:
        return {"logL": 0.0, "N_orig": 0.0}
    # the fallback's rate, capped lower than the stopping rule's; it over-states where
    # EM's slowest rate is not N_orig's (pyGMMis's demo, 10 seeds: 0.28 against a spread
    # of 0.018) - and plain-step ratios are no clean rate there
    rho = min(max(state.rates), 0.999) if len(state.rates) else 0.0
    evaluate, opts = run.evaluate, run.opts
    params = evaluate.params(state.theta, state.f_obs, state.proposal)
    N = ev.observed.n
    se_logl = ev.f_se / ev.f_obs
    se_eval = N * ev.f_se / ev.f_obs**2      # the error of N / f at the final point
    thetas = []
    with warnings.catch_warnings():
        # the replicate steps probe the sample's error; they are not steps of the fit
        warnings.simplefilter("ignore", DeadComponentWarning)
        for imputed, tally in _compute(evaluate.plan.replicate_graph(params), evaluate.client):
            f = 1.0 - tally.weight / tally.rows
            if not f > 0:
                continue
            total = ev.observed + imputed.scaled(N / f / tally.rows)
            theta, dead = mstep(total, state.theta, w=opts.w, frozen=run.frozen,
                                background=opts.background, N_total=N / f)
            if not dead.size:           # a re-seeded component is a jump, not an error
                thetas.append(theta)
    at, linear, newton = _replicate_fixed_points(state, run, ev, thetas)
    n_orig, to_come = [], _n_orig_to_come(state)
    if len(at) >= 3:
        extra = [newton] if newton is not None else []
        tallies = _compute(evaluate.plan.replicate_graph(params, at + extra), evaluate.client)
        f_at = [1.0 - t.weight / t.rows for t in tallies]
        f_newton = f_at.pop() if extra else 0.0
        if f_newton > 0:
            # the stopping rule's distance counts plain steps' contraction, which
            # misses a ridge the mixed points still travel; the linear model with the
            # probed Jacobian sees it. Measured on cut4d of truncation_accuracy.py, 10
            # default fits: the two that stopped shortest (0.9304 and 0.9309 of the
            # truth, the others 0.9338-0.9354) were told 0.0002 and 0.0006 of N_orig
            # by the contraction, 0.0044 and 0.0030 by the Newton point; the first,
            # rerun at tol=1e-8, went on by 0.0055. On cut2d the contraction
            # over-states (up to 0.0009, where two fits rerun at tol=1e-8 moved
            # 0.00006 and 0.00002): the larger of the two is the conservative distance
            to_come = max(to_come, abs(N / f_newton - ev.N_orig))
        n_orig = [N / f for f in f_at if f > 0]
    if len(n_orig) < 3:
        # too few replicate sets say anything: f's own error at the final point
        return {"logL": se_logl, "N_orig": se_eval / (1.0 - rho)}
    if linear:                  # points at the whole sample's scale of error
        se_fixed = math.hypot(float(np.std(n_orig, ddof=1)), se_eval)
        return {"logL": se_logl, "N_orig": math.hypot(se_fixed, to_come)}
    # set g's step carries GROUPS times the variance of the whole sample's step
    se_step = float(np.std(n_orig, ddof=1)) / math.sqrt(len(n_orig))
    return {"logL": se_logl, "N_orig": math.hypot(se_step / (1.0 - rho), se_eval)}


# mc_error probes EM's Jacobian column by column up to this many packed parameters
# (one E-step each: 19 for K=3, D=2; 121 for K=8, D=4), and uses the acceleration's
# secants above; the probes step this far in the packed (unit-free) parameters.
_JACOBIAN_PARAMS = 128
_JACOBIAN_STEP = 1e-4


def _n_orig_to_come(state: EMState) -> float:
    """How far N_orig still is from the fixed point where the fit stopped.

    The stopping rule's own estimate (:func:`_converged`): the last plain step's
    change of N_orig over ``1 - rho``, at least what the last mixed point moved it.
    A fit stops within ``tol`` of its fixed point, not at it; on a flat N_orig ridge
    that distance is as large as the imputation's error (measured, cut4d of
    truncation_accuracy.py: N_orig spread over 10 streams 0.0017 of the truth at the
    default tol, 0.0005 at tol=1e-10), and fits rerun with other seeds scatter by it.
    """
    if len(state.n_orig_history) < 2 or not state.rates:
        return 0.0
    rho = min(max(state.rates[-_RATE_MEMORY:]), _RATE_CAP)
    last = abs(state.n_orig_history[-1] - state.n_orig_history[-2]) / (1.0 - rho)
    # where the acceleration still moves N_orig, the fixed point is at least that far:
    # along a hard cut's ridge plain steps contract at rates far above the cap (their
    # changes of N_orig say nothing) while the mixed points still carry N_orig along.
    # Measured (truncation_accuracy.py cut4d, seed 2): mixed points moved N_orig by
    # 0.3-0.8 % each while the plain-step estimate was 0.07 %; the fit stopped at 0.978
    # of the exact answer, 15 iterations before its fixed point at 1.004
    return max(last, state.mixed_step * abs(state.n_orig_history[-1]))


def _replicate_fixed_points(state: EMState, run: "_Run", ev: "_Evaluation",
                            steps: list) -> tuple[list, bool, tuple | None]:
    """Where each replicate set's EM map would converge, as ``at`` of the replicate graph.

    ``steps`` are one plain step from the final point ``x`` per replicate set,
    ``M_g(x)``; ``d_g = M_g(x) - M(x)`` is how that set moves the map, and the fixed
    point moves by ``(I - J)^-1 d_g``
    (:func:`~daskgmmis.acceleration.fixed_point_shift`). ``J`` is probed where it
    matters: one E-step of the whole sample at each ``x + d_g`` gives
    ``J d_g = M(x + d_g) - M(x)``, and one E-step per packed parameter gives the
    rest of ``J`` (above ``_JACOBIAN_PARAMS`` parameters the acceleration's last
    pairs add their secants instead). The shifts are scaled to the whole sample's
    error (set g's sample is 1/G of it). Returns ``(points, True, newton)``; or, when
    a point leaves the parameter space, ``(steps, False, newton)`` (the steps' spread
    is then amplified by EM's slowest rate). ``newton`` is the whole sample's fixed
    point as the linear model places it, ``x + (I - J)^-1 (M(x) - x)``, in the same
    form, where ``J`` was probed whole (else None). G + P E-steps, once per fit.
    """
    opts = run.opts
    steps_at = [_replicate_point(t, run) for t in steps]
    if len(steps) < 3:
        return steps_at, False, None
    x = state.theta
    image, _ = mstep(ev.total, x, w=opts.w, frozen=run.frozen, background=opts.background,
                     N_total=ev.N_orig)
    scale, at_x, base = _packed(state, x, image)
    d = np.stack([pack(t, scale) - base for t in steps], axis=1)
    probed = at_x.size <= _JACOBIAN_PARAMS
    # with EM's Jacobian column by column where the model is small enough: the slow
    # directions, which the replicate steps excite too little to show, exactly. The
    # acceleration's secants would do for free, but their model of the ridge is
    # unstable (measured, cut4d of truncation_accuracy.py, 10 fits: 0.00001-0.016 of
    # N_orig, against 0.0003-0.0004 with this Jacobian and a spread of 0.0005 over
    # streams)
    dX, dG, _ = _probe_map(state, run, x, scale, base,
                           np.column_stack([d, _JACOBIAN_STEP * np.eye(at_x.size)]) if probed
                           else d)
    if not probed and len(state.memory_x) >= 2:
        # too large a model for the Jacobian: the secants of the fit's last steps
        dX += list(np.diff(np.array(state.memory_x), axis=0))
        dG += list(np.diff(np.array(state.memory_g), axis=0))
    if not dX:
        return steps_at, False, None
    shift = fixed_point_shift(np.array(dX).T, np.array(dG).T,
                              np.column_stack([d, base - at_x]))
    # the fixed point itself, x + (I - J)^-1 (M(x) - x): a Newton step, trusted only
    # on the probed Jacobian (the secants' model of the ridge is the unstable one)
    fixed = unpack(at_x + shift[:, -1], x, scale, run.frozen, opts.background, opts.w)
    newton = _replicate_point(fixed, run) if fixed is not None and probed else None
    # set g's sample is 1/G of the whole: its shift is sqrt(G) times the whole sample's
    # error, and the linear model is asked no further than that error reaches
    shift = shift[:, :-1] / math.sqrt(len(steps))
    points = [unpack(base + shift[:, g], image, scale, run.frozen, opts.background, opts.w)
              for g in range(len(steps))]
    if any(p is None for p in points):
        return steps_at, False, newton
    return [_replicate_point(t, run) for t in points], True, newton


def _packed(state: EMState, x: Theta, image: Theta) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """``(scale, x, image)`` packed in the acceleration memory's unit (the features'
    spread at ``x`` when the memory is empty) for the Jacobian probes."""
    scale = state.memory_scale if state.memory_scale is not None else feature_scale(x)
    return scale, pack(x, scale), pack(image, scale)


def _probe_map(state: EMState, run: "_Run", x: Theta, scale: np.ndarray, image: np.ndarray,
               directions: np.ndarray) -> tuple[list, list]:
    """EM's map along ``directions`` from ``x``, all in one compute.

    For each column ``v`` of ``directions`` (packed, shape (P, n)) one E-step of the
    whole catalog at ``x + v`` with the fit's imputation sample, and its M-step:
    the pairs ``dX = v``, ``dG = M(x + v) - M(x)`` (``image`` is ``M(x)`` packed).
    Columns that leave the parameter space, or whose step kills a component, give
    no pair. Returns ``(dX, dG, n)``: lists of (P,) arrays, and the E-steps made.
    """
    opts = run.opts
    at_x = pack(x, scale)
    probes = [unpack(at_x + v, x, scale, run.frozen, opts.background, opts.w)
              for v in directions.T]
    probes = [p for p in probes if p is not None]
    dX, dG = [], []
    for probe, ev in zip(probes, run.evaluate.many(probes, state.f_obs, state.proposal)):
        if not ev.f_obs > 0:
            continue
        moved, dead = mstep(ev.total, probe, w=opts.w, frozen=run.frozen,
                            background=opts.background, N_total=ev.N_orig)
        if not dead.size:
            dX.append(pack(probe, scale) - at_x)
            dG.append(pack(moved, scale) - image)
    return dX, dG, len(probes)


def _newton_point(state: EMState, run: "_Run", image: Theta) -> Theta | None:
    """The EM map's fixed point as its probed Jacobian places it, or None.

    ``x + (I - J)^-1 (M(x) - x)`` at ``x = state.theta`` (``image = M(x)``), with
    ``J`` probed column by column (:func:`_probe_map`: one E-step per packed
    parameter inside the parameter space; ``state.newton_probes`` counts them). On
    a ridge where EM contracts at rates of 0.9999 and above, one such step does the
    work of thousands of EM steps; it is judged like any mixed point
    (:func:`_run_em`). None for a model of more than :data:`_JACOBIAN_PARAMS`
    packed parameters, or outside the parameter space.
    """
    x, opts = state.theta, run.opts
    scale, at_x, base = _packed(state, x, image)
    if at_x.size > _JACOBIAN_PARAMS:
        return None
    dX, dG, n = _probe_map(state, run, x, scale, base, _JACOBIAN_STEP * np.eye(at_x.size))
    state.newton_probes += n
    if not dX:
        return None
    shift = fixed_point_shift(np.array(dX).T, np.array(dG).T, base - at_x)
    return unpack(at_x + shift, x, scale, run.frozen, opts.background, opts.w)


def _replicate_point(t: Theta, run: "_Run") -> tuple:
    """``t`` as one entry of the replicate graph's ``at`` (its background included)."""
    return t.amp, t.mean, t.covar, run.evaluate.background_at(t.bg_amp)


def _warn_precision(tol: float, se_n_orig: float, ev: "_Evaluation", N: int) -> None:
    """PrecisionWarning when ``tol`` is far below what the Monte-Carlo error resolves.

    The imputation moves the fixed point along N_orig by ``se_n_orig``; in units of
    N_orig's statistical error ``sigma = sqrt(N (1 - f)) / f`` that is a likelihood gap
    of ``(se_n_orig / sigma)**2 / 2`` nats, ``/ N`` per row. A ``tol`` 100 times below
    it buys nothing: the fit converges to its own sample's fixed point.
    """
    f = ev.f_obs
    sigma = math.sqrt(max(N * (1.0 - f), 1.0)) / f
    resolution = 0.5 * (se_n_orig / sigma) ** 2 / N
    if tol < 0.01 * resolution:
        warnings.warn(f"tol={tol:g} is far below the Monte-Carlo resolution of the "
                      f"imputation (mean logL gap {resolution:.3g} per row; N_orig standard "
                      f"error {se_n_orig:.3g}): the fit converges to its own imputation "
                      f"sample's fixed point. Raise oversampling to move that closer to the "
                      f"maximum-likelihood answer.", PrecisionWarning, stacklevel=3)


_FIT_DOC = """Fit a Gaussian mixture to a noisy, incomplete catalog with EM.

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
    projection : None, array_like or dask array, shape (d, D) or (N, d, D)
        Projection matrices (Bovy's XD ``projection``): row i observes
        ``y_i = R_i v_i + e_i`` of the model's D-dimensional ``v_i``; ``data`` then
        has d <= D columns and ``covar`` is the noise of ``y`` (d x d). One shared
        matrix or one per row; a row seen in fewer dimensions pads ``y_i`` and the
        matching rows of ``R_i`` with NaN (docs/design.md §1.1). Taken from the
        catalog when it carries one. Needs ``init_method="none"`` (the data do not
        live in the model's space) and is not combined with ``cutoff``. A
        ``background`` is then a box of the data's space (d features); with
        ``sel_callback`` the imputed rows are observed through the shared
        projection, or through ``projection_callback`` when it is per row.
    options : FitOptions, optional
        The options below as one validated object (:class:`daskgmmis.FitOptions`);
        keywords given as well replace its values.
{options}

    Returns
    -------
    FitResult
        The best start's result.

    Notes
    -----
    The options are defined once, in :class:`daskgmmis.FitOptions`: this
    signature and the list above are generated from it. With ``n_init`` starts,
    start ``i`` is initialized from :func:`child_seed` ``(root, 1 + i)`` and the
    imputation draws from ``child_seed(root, 0)``, ``root`` the seed of ``rng``.
    Progress is logged on the ``daskgmmis`` logger (events ``restart_start``,
    ``iteration``, ``restart_end`` in the records' ``daskgmmis_event``);
    ``progress=True`` shows it on stderr.
    """


def fit(gmm: GMM, data, covar=None, *, weights=None, projection=None,
        options: FitOptions | None = None, **kwargs) -> FitResult:
    opts = FitOptions.create(options, **kwargs)
    if not opts.progress:      # _fit is called from here: its warnings' stacklevel counts on it
        return _fit(gmm, data, covar, weights, opts, projection)
    with progress_display():
        return _fit(gmm, data, covar, weights, opts, projection)


def continue_fit(gmm: GMM, data, covar=None, *, weights=None, options: FitOptions,
                 previous: FitResult | None = None) -> FitResult:
    """:func:`fit`, continuing the convergence test of ``previous`` (a warm start).

    ``previous`` is the result of a fit that left ``gmm`` as it is now, of the same
    problem (data, noise, weights and problem options: the checkpoint's
    fingerprint). The fit then goes on from that fit's last EM state - its
    recent plain-EM points and contraction rates, its imputation sample - so a
    sequence of short warm-started fits (``max_iter=1``, scikit-learn's habit)
    judges convergence as one long fit would. Otherwise (``previous`` None, another
    problem, or ``gmm`` changed since) it is :func:`fit` from ``gmm``'s parameters.
    ``n_iter`` and ``maxiter`` count this call's M-steps.
    """
    if not options.progress:
        return _fit(gmm, data, covar, weights, options, previous=previous)
    with progress_display():
        return _fit(gmm, data, covar, weights, options, previous=previous)


fit.__doc__ = _FIT_DOC.format(options=FitOptions.numpydoc())
fit.__signature__ = inspect.Signature(
    [inspect.Parameter("gmm", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=GMM),
     inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("covar", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
     inspect.Parameter("weights", inspect.Parameter.KEYWORD_ONLY, default=None),
     inspect.Parameter("projection", inspect.Parameter.KEYWORD_ONLY, default=None),
     inspect.Parameter("options", inspect.Parameter.KEYWORD_ONLY, default=None,
                       annotation="FitOptions | None"),
     *FitOptions.signature_parameters()],
    return_annotation=FitResult)


@dataclass(frozen=True)
class _Run:
    """What one EM run needs: the options, the E-step, and what a phase overrides."""

    opts: FitOptions
    evaluate: "_Evaluator"
    frozen: dict
    fingerprint: dict
    checkpoint: object
    maxiter: int
    tol: float


# Fingerprint entries that describe how a fit started, not the problem it solves.
_START_KEYS = frozenset({"seed", "init_method", "prefit"})


def _continuation(previous: FitResult | None, fingerprint: dict, gmm: GMM,
                  init_method: str) -> EMState | None:
    """The EM state a warm start of ``gmm`` continues from, or None to start afresh.

    Only the same problem (``fingerprint``) from the very parameters ``previous``
    ended at: the convergence test compares likelihoods and steps across the two
    calls. The state's last evaluation is dropped (this call evaluates the same
    parameters again) and its iteration count reset (``maxiter`` is per call).
    """
    if previous is None or previous._end is None or init_method != "none":
        return None
    state, print_ = previous._end
    theta = state.theta
    # how the start was made may differ (a warm start is init_method='none'; a
    # RandomState draws a new seed per call): the state keeps its own seed
    same = {k: v for k, v in print_.items() if k not in _START_KEYS} == \
        {k: v for k, v in fingerprint.items() if k not in _START_KEYS}
    if not same or not (np.array_equal(theta.amp, gmm.amp)
                        and np.array_equal(theta.mean, gmm.mean)
                        and np.array_equal(theta.covar, gmm.covar)):
        return None
    # fresh lists: the previous result's state is never modified
    return dataclasses.replace(state, n_iter=0, history=state.history[-2:-1],
                               n_orig_history=state.n_orig_history[-2:-1],
                               seconds=state.seconds[-2:-1], rates=list(state.rates),
                               sw_history=list(state.sw_history),
                               memory_x=list(state.memory_x), memory_g=list(state.memory_g))


def _check_projection_options(opts: FitOptions, projection) -> object:
    """Refuse the options a projected fit does not support (clear InputError); return
    how an unobserved row is observed: None without a selection, else the
    ``projection_callback`` or the shared (d, D) projection."""
    if opts.init_method != "none":
        raise InputError(f"init_method: with a projection the data are not in the model's "
                         f"space, so init_method={opts.init_method!r} cannot start from them; "
                         f"set the model's starting parameters and pass init_method='none'.")
    if opts.cutoff is not None:
        raise InputError("cutoff: neighborhoods (bounding boxes in the model's space) are not "
                         "supported together with a projection: the rows' positions in the "
                         "model's space are unknown; pass cutoff=None, or fit without "
                         "projection.")
    if opts.sel_callback is None:
        if opts.projection_callback is not None:
            raise InputError("projection_callback: given without sel_callback; it projects "
                             "the imputed rows of a truncated fit, so it needs sel_callback: "
                             "pass sel_callback, or projection_callback=None.")
        return None
    if opts.projection_callback is not None:
        return opts.projection_callback
    if projection.ndim == 3:
        raise InputError("projection_callback: a truncated fit (sel_callback) of rows with "
                         "their own projections must know how an unobserved row would have "
                         "been projected; pass projection_callback (R (n, d, D) at true "
                         "positions (n, D)), or a shared projection (d, D).")
    return projection


def _fit(gmm: GMM, data, covar, weights, opts: FitOptions, projection=None, *,
         previous: FitResult | None = None) -> FitResult:
    t_start = time.perf_counter()
    adopt_sklearn_warnings()     # this fit's warnings: scikit-learn's class if it is loaded
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")
    init_method, n_init, cutoff = opts.init_method, opts.n_init, opts.cutoff
    if opts.split_n_merge and gmm.K < 3:
        raise InputError(f"split_n_merge: needs K >= 3 components (merge two, split a third); "
                         f"found K={gmm.K}.")
    K, D = gmm.K, gmm.D
    check_regularization(opts.w)
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    x, noise, kind = as_dask_input(data, covar)
    weights = as_dask_weights(data, weights, x)
    projection = as_dask_projection(data, projection, x, D)
    if projection is None and x.shape[1] != D:
        raise InputError(f"data: has D={x.shape[1]} features but gmm has D={D}; build the "
                         f"model with GMM(K, D={x.shape[1]}).")
    candidate_projection = None
    if projection is not None:
        candidate_projection = _check_projection_options(opts, projection)
    elif opts.projection_callback is not None:
        raise InputError("projection_callback: given for rows without a projection; it "
                         "projects the imputed rows of a fit with one: pass projection=, or "
                         "projection_callback=None.")
    # a background is uniform over a box of the data's space (d features)
    check_background(opts.background, int(x.shape[1]), "data")
    frozen_idx = parse_frozen(opts.frozen, K)
    if init_method == "none":
        check_model_params(gmm.amp, gmm.mean, gmm.covar)
    if n_init > 1 and (opts.checkpoint is not None or init_method == "none"):
        raise InputError("n_init: multiple starts need an initialization method other than "
                         "'none' and cannot be combined with a checkpoint; use n_init=1.")
    client = _resolve_client(opts.client)
    sel_callback, covar_callback = opts.sel_callback, opts.covar_callback
    if sel_callback is not None:
        if covar_callback is None and noise_class(kind) is SharedNoise:
            covar_callback = _ConstantCovar(noise)
        elif covar_callback is None and noise_class(kind).per_row:
            warnings.warn("sel_callback without covar_callback: imputed rows get no noise while "
                          "the observed rows have per-row noise; pass covar_callback to model "
                          "the noise of unobserved rows.", UserWarning, stacklevel=3)
        if client is not None:
            check_picklable(sel_callback, "sel_callback")
            if covar_callback is not None:
                check_picklable(covar_callback, "covar_callback")
            if opts.projection_callback is not None:
                check_picklable(opts.projection_callback, "projection_callback")

    # 0. memory plan: refuse (or shrink the blocks) before the first pass
    x, noise = plan_fit(x, noise, kind, K, D, client=client, n_init=n_init,
                        oversampling=opts.oversampling if sel_callback is not None else None,
                        projection_floats=(int(np.prod(projection.shape[1:]))
                                           if projection is not None and projection.ndim == 3
                                           else 0))
    if weights is not None:
        weights = weights.rechunk({0: x.chunks[0]})   # the memory plan may shrink blocks
    if projection is not None and projection.ndim == 3:
        projection = projection.rechunk({0: x.chunks[0]})
    x, noise, weights, projection = _maybe_persist(x, noise, kind, opts.persist, client,
                                                   weights, projection)
    plan = _Plan(x, noise, kind, weights, projection)

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
    fingerprint = _fingerprint(plan, summary, K, opts, frozen_idx,
                               isinstance(covar_callback, _ConstantCovar))
    checkpoint = opts.checkpoint
    state = load_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    if state is not None:
        log.info("resuming from checkpoint %s at iteration %d", checkpoint, state.n_iter)
    skip = skip_probes = 0
    if state is None:
        state = _continuation(previous, fingerprint, gmm, init_method)
        # the likelihood before its first point, kept for the convergence test only
        skip = 0 if state is None else len(state.history)
        skip_probes = 0 if state is None else state.newton_probes
    if state is not None:
        # entropy is an int, or a list of ints when the root came from a RandomState
        seed = np.random.SeedSequence(json.loads(state.seed[0]),
                                      spawn_key=tuple(state.seed[1:]))
    else:
        seed = _root_seed(opts.rng)
    # children keyed explicitly (SeedSequence.spawn would mutate a caller's object)
    impute_seed = child_seed(seed, 0)
    init_seeds = [child_seed(seed, 1 + i) for i in range(n_init)]
    bg_amp0, bg_seeded = _background_start(opts.background)
    timeout = opts.callback_timeout
    evaluate = _Evaluator(plan, client, cutoff,
                          time_limited(sel_callback, timeout, "sel_callback"),
                          time_limited(covar_callback, timeout, "covar_callback"),
                          impute_seed, opts.oversampling, opts.background, boxes,
                          time_limited(candidate_projection, timeout, "projection_callback")
                          if callable(candidate_projection) else candidate_projection)
    explicit_tol = opts.tol is not None
    tol = opts.tol if explicit_tol else _DEFAULT_TOL_NATS / summary.n
    run = _Run(opts, evaluate, frozen_idx, fingerprint, checkpoint, opts.maxiter, tol)
    prefit = None
    if opts.prefit and sel_callback is not None:
        # the plain fit of pyGMMis's recipe: no selection, no imputation, no checkpoint
        prefit = dataclasses.replace(run, checkpoint=None, evaluate=_Evaluator(
            plan, client, cutoff, None, None, impute_seed, opts.oversampling,
            opts.background, boxes))

    # the anchor of the stepwise sums: the data's mean (NaN-free: init checked n_obs); a
    # projection's data are not in the model's space: the origin (any fixed point will do)
    anchor = (np.nan_to_num(summary.total / np.maximum(summary.n_obs, 1)) if projection is None
              else np.zeros(D))

    def em_from(start: EMState):
        if opts.stepwise:
            groups = _stepwise_groups(start, plan, client, opts.stepwise, seed)
            start = _run_stepwise(start, groups, run, float(summary.weight), anchor)
        return _run_em(start, run)

    # 3. EM, from each start: the package's one multi-start loop
    if state is not None:
        best = em_from(state)
    else:
        best = None
        seed_list = [str(seed.entropy), *map(int, seed.spawn_key)]
        for i, init_seed in enumerate(init_seeds):
            log.info("restart %d/%d", i + 1, n_init,
                     extra={"daskgmmis_event": "restart_start", "restart": i + 1,
                            "n_init": n_init})
            theta = _initial_theta(gmm, init_method, K, plan, summary, x, client,
                                   np.random.default_rng(init_seed), bg_amp0, bg_seeded)
            if prefit is not None:
                log.info("restart %d/%d: prefit without the selection", i + 1, n_init)
                theta = _run_em(EMState(theta=theta, seed=seed_list), prefit)[0].theta
            outcome = em_from(EMState(theta=theta, seed=seed_list))
            _log_restart_end(i + 1, n_init, outcome)
            if best is None or outcome[0].history[-1] > best[0].history[-1]:
                best = outcome
    state, converged, last = best
    if cutoff is not None and last.n_outside >= summary.n:
        raise InputError(f"cutoff: with cutoff={cutoff:g} sigmas every row is outside every "
                         f"neighborhood ({last.n_outside} of {summary.n} rows), so nothing "
                         f"was fitted; expected a cutoff of a few sigmas (3 to 6).")
    if opts.split_n_merge:
        state, converged, last = _split_and_merge(state, converged, last, opts.split_n_merge,
                                                  run)
    if not converged and opts.maxiter > 0:
        change = state.history[-1] - state.history[-2] if len(state.history) > 1 else np.nan
        warnings.warn(f"EM did not converge in maxiter={opts.maxiter} iterations (last change "
                      f"of the mean logL: {change:.3g}, tol={tol:.3g}).", ConvergenceWarning,
                      stacklevel=3)
    mc_error = None
    if opts.estimate_mc_error:
        t_mc = time.perf_counter()
        mc_error = _mc_error(state, run, last)
        log.info("Monte-Carlo error: logL %.3g, N_orig %.4g (%.2f s)", mc_error["logL"],
                 mc_error["N_orig"], time.perf_counter() - t_mc)
        if explicit_tol and tol > 0 and mc_error["N_orig"] > 0:
            _warn_precision(tol, mc_error["N_orig"], last, summary.n)
    theta = state.theta
    if not noise_class(kind).noisy and projection is None:
        # (the check standardizes by the data's ranges, which a projection's data lack)
        _warn_singular(theta, summary, frozen_idx["covar"])
    gmm.amp, gmm.mean, gmm.covar = theta.amp, theta.mean, theta.covar
    if isinstance(data, Catalog) and projection is None:
        # the model's features carry their names (a projection's columns are y's, not v's)
        gmm.columns = list(data.columns)
    if opts.background is not None:
        opts.background.amp = theta.bg_amp
    result = FitResult(logL=state.history[-1], n_iter=state.n_iter, converged=converged,
                       history=list(state.history[skip:]), N_orig=state.n_orig_history[-1],
                       N=summary.n if weights is None else float(last.total.n),
                       n_outside=last.n_outside, bg_amp=theta.bg_amp,
                       seconds=time.perf_counter() - t_start,
                       seconds_per_iter=list(state.seconds[skip:]),
                       passes=len(state.history) - skip + state.newton_probes - skip_probes + (
                           state.sw_steps / -(-len(plan.x_blocks) // state.sw_group)
                           if state.sw_group else 0.0),
                       stepwise_history=list(state.sw_history), mc_error=mc_error,
                       _end=(state, fingerprint))
    log.info("best of %d: mean logL %.10g after %d iterations (%s)%s", n_init, result.logL,
             result.n_iter, "converged" if converged else "not converged",
             f", N_orig {result.N_orig:.6g}" if sel_callback is not None else "",
             extra={"daskgmmis_event": "fit_end", "n_init": n_init, "logL": result.logL,
                    "n_iter": result.n_iter, "converged": converged,
                    "N_orig": result.N_orig, "seconds": result.seconds})
    return result


def _log_restart_end(i: int, n: int, outcome) -> None:
    """The one-line summary of start ``i`` of ``n`` (a ``restart_end`` event)."""
    state, converged, _ = outcome
    secs = float(sum(state.seconds))
    log.info("restart %d/%d: mean logL %.10g after %d iterations (%s), N_orig %.6g, %.2f s",
             i, n, state.history[-1], state.n_iter,
             "converged" if converged else "not converged", state.n_orig_history[-1], secs,
             extra={"daskgmmis_event": "restart_end", "restart": i, "n_init": n,
                    "logL": state.history[-1], "n_iter": state.n_iter,
                    "converged": converged, "N_orig": state.n_orig_history[-1],
                    "seconds": secs})


def fit_best(gmm: GMM, data, covar=None, *, weights=None, projection=None,
             options: FitOptions | None = None, **fit_kwargs) -> FitResult:
    """:func:`daskgmmis.fit` from ``n_init`` starts, optionally prefitted without selection.

    The same as ``fit(gmm, data, covar, options=options, **fit_kwargs)``: kept
    as the name the
    command line, the demo and earlier code use. The multi-start loop, the
    seeds and ``prefit`` (pyGMMis's recipe: every start is fitted first
    without the selection, then with it from that result) are :func:`fit`'s.

    Parameters
    ----------
    gmm : GMM
        Model to fit; updated in place with the best start.
    data, covar, weights, projection
        As for :func:`daskgmmis.fit`.
    options, **fit_kwargs
        Fit options (:class:`daskgmmis.FitOptions`): ``n_init``, ``rng``,
        ``background``, ``prefit``, ...

    Returns
    -------
    FitResult
        The winning start's result.
    """
    return fit(gmm, data, covar, weights=weights, projection=projection, options=options,
               **fit_kwargs)


fit_best.__signature__ = fit.__signature__


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
    evaluate = run.evaluate
    tol = run.tol
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
            partial = {key: np.union1d(run.frozen[key], others) for key in run.frozen}
            seed = list(state.seed)
            p_state, _, _ = _run_em(EMState(theta=start, seed=seed),
                                    dataclasses.replace(run, frozen=partial, checkpoint=None,
                                                        maxiter=min(run.maxiter, 50)))
            f_state, f_conv, f_last = _run_em(
                EMState(theta=p_state.theta, seed=seed, f_obs=p_state.f_obs),
                dataclasses.replace(run, checkpoint=None))
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


# The convergence test takes the slowest contraction rate of the last _RATE_MEMORY plain
# EM steps, and judges only after _RATE_WINDOW of them. The memory is long: right after
# an accepted extrapolation the steps are dominated by fast directions that decay at
# rates ~0.8, while the slow ridge (rate 0.9995) has not gone - measured on a 2-D cut,
# a 6-step memory stopped a fit 4 % short of its fixed point in N_orig.
_RATE_WINDOW = 6
_RATE_MEMORY = 30
# With an imputed population the N_orig ridge is slower to show in the rates: measured
# with per-row full noise behind a cut (truncation_accuracy.py `full`, seed 3), a fit
# judged after 6 or 12 rates stopped at 25-27 iterations 0.027 nats below the exact
# maximum (KL 0.06 above it); after 20, at 75 iterations 0.001 nats below (KL -0.002).
_RATE_WINDOW_IMPUTING = 20
# Rates are capped here (a step that grew counts as this slow): on the N_orig ridge of a
# hard cut EM contracts at 0.9995-0.9999 (measured, benchmarks/truncation_accuracy.py).
_RATE_CAP = 0.9999
# On a ridge along N_orig (the stopping rule's N_orig test fails while the likelihood
# still to gain is below _NEWTON_GAIN times tol) where EM crawls (the last
# _NEWTON_WINDOW plain-step rates above _NEWTON_RATE; a hard cut's ridge contracts at
# 0.9999 and slower), the next mixed point of a fit with imputation is the Newton
# point on EM's probed Jacobian, at most every _NEWTON_GAP iterations: P E-steps (P
# packed parameters) instead of thousands of EM steps. Anderson's mixing does not
# travel such a ridge: its points lose ~1e-9 nats per row to the ridge's curvature and
# are rejected. Measured (truncation_accuracy.py cut4d, seed 2, tol=1e-6): rng 2 ended
# at maxiter=1000, not converged, at 0.990 of the exact N_orig; with Newton points on
# the ridge as defined with a gain of 1 x tol, it converged in 408 iterations (rng
# 302-304: 522, 437, 401), with 10 x tol in 320 (302-304: 344, 307, 335). Wherever EM
# crawls (no ridge test) it was 223, but pyGMMis's demo (seed 2) then ended 0.025
# above the reference's KL(truth || fit) at the same likelihood (0.0005 nats from the
# exact maximum): a Newton point redraws the sample, and the demo's KL lies along a
# direction the likelihood hardly sees. With 10 x tol demo seeds 1-6 end within
# 0.0067 of the reference's KL.
_NEWTON_GAIN = 10.0
_NEWTON_WINDOW = 5
_NEWTON_RATE = 0.999
_NEWTON_GAP = 10
# The relative change of N_orig still to come must be below this times sqrt(tol): at the
# default tol (0.01 / N) that is 0.1 of N_orig's smallest standard error, 1 / sqrt(N).
# The likelihood test alone would do on an exactly quadratic ridge; measured on a 2-D
# cut, it stopped a fit 0.56 % short in N_orig (1.5x tol short in logL) where the rate
# estimate (0.95) missed the slow direction.
_N_ORIG_TOL = 1.0


def _converged(state: EMState, logL: float, N_orig: float, theta_next: Theta,
               tol: float, window: int = _RATE_WINDOW,
               flat_records: bool = False) -> tuple[bool, bool]:
    """Whether ``state.theta`` is within ``tol`` of the EM map's fixed point, and
    whether only N_orig is still far (the fit is on a ridge along it).

    Judged on a plain EM step: ``state.theta = M(state.plain_from)`` was evaluated
    (likelihood ``logL``) and ``theta_next = M(state.theta)`` computed. EM contracts
    at the rate ``rho = |theta_next - theta| / |theta - plain_from|`` near its fixed
    point, so the likelihood still to gain is ``d / (1 - rho**2)`` of the last gain
    ``d`` (the gap falls as the squared distance; docs/design.md §1.6), with ``rho``
    the slowest rate of the recent plain steps, and the relative change of N_orig
    still to come ``|dN| / (1 - rho) / N_orig``, at least the relative change the
    last accepted mixed point made (``state.mixed_step``). Converged when they are below
    ``tol`` and ``sqrt(tol)``: a fit crawling along a ridge - small steps that
    shrink slowly - has much still to gain and does not stop; one that stops is
    within ``sqrt(2 tol N)`` standard errors of its fixed point along every
    direction, N_orig's included. ``window``: the plain steps' rates needed before
    judging at all. ``flat_records`` (fits with imputation): the last ``window``
    recorded likelihoods must also lie within ``tol`` of one another.

    Returns
    -------
    (converged, ridge) : (bool, bool)
        ``ridge``: N_orig's change to come is above its bound while the likelihood
        still to gain is below :data:`_NEWTON_GAIN` times ``tol``.
    """
    prev = state.plain_from
    if prev is None or len(state.history) < 2:
        return False, False
    step = distance(state.theta, theta_next)
    if step == 0.0:
        return True, False
    before = distance(prev, state.theta)
    # the slowest of the recent rates: a step right after an extrapolation or a
    # redraw mixes fast directions in and alone would under-estimate the rate
    state.rates = state.rates[-(_RATE_MEMORY - 1):] + [step / before if before > 0 else 1.0]
    if len(state.rates) < window:
        return False, False
    rho = min(max(state.rates[-_RATE_MEMORY:]), _RATE_CAP)
    gain = abs(logL - state.history[-2]) / (1.0 - rho**2)
    n_change = _n_orig_to_come(state) / max(abs(N_orig), 1e-300)
    log.debug("distance to the fixed point: rate %.6g, logL gain to come %.3g, N_orig change "
              "to come %.3g", rho, gain, n_change)
    if not n_change < _N_ORIG_TOL * math.sqrt(tol):
        return False, gain < _NEWTON_GAIN * tol
    if not gain < tol:
        return False, False
    if flat_records:
        # the fit has stopped, not merely slowed: its last ``window`` records agree to
        # tol. Measured (tol=1e-6, truncation_accuracy.py soft / full, seeds 1-2):
        # without it fits that converged fast ended with 1.2e-6 - 5.0e-6 between their
        # last 20 records, the approach still in them
        last = state.history[-window:]
        return len(last) >= window and max(last) - min(last) < tol, False
    return True, False


def _run_em(state: EMState, run: _Run):
    """Iterate EM (optionally accelerated) from ``state`` until converged.

    Every loop is one E-step (one compute); a Newton point's Jacobian probes add
    one more compute (P E-steps). A mixed point (Anderson's; an over-relaxed step where EM
    leaves a saddle; the Newton point on an N_orig ridge, :func:`_newton_point`) is
    accepted only if it gains at least what the last step gained (after one
    stabilizing EM step if it does not at once); otherwise the plain iterate is
    kept: the EM map is deterministic (with imputation: a fixed sample), so this
    comparison is exact. Convergence is judged by the estimated distance to the
    fixed point (:func:`_converged`).

    Returns
    -------
    (state, converged, last evaluation)
    """
    evaluate, frozen, maxiter, checkpoint = run.evaluate, run.frozen, run.maxiter, run.checkpoint
    opts, fingerprint, tol = run.opts, run.fingerprint, run.tol
    w, background, accelerate = opts.w, opts.background, opts.accelerate
    converged = False
    ev = None
    imputing = evaluate.sel_callback is not None
    while True:
        t0 = time.perf_counter()
        if imputing and state.proposal is None:
            _refresh(state, state.theta, state.f_obs)
        ev = evaluate(state.theta, state.f_obs, state.proposal)
        if state.fallback is not None:
            # absolute (nats per row): a tolerance relative to |logL| would depend on the
            # units of the features, which shift the logL by a constant
            rejected = not (ev.logL >= state.fallback_logL - 1e-12)
            if rejected and not state.stabilized and np.isfinite(ev.logL) and (
                    not imputing or ev.f_obs > 0):
                # stabilization (as in SQUAREM, Varadhan & Roland 2008): one EM step from
                # the extrapolated point pulls the fast directions back onto a curved
                # ridge and keeps the long step along it; judged again after that step
                theta_s, dead = mstep(ev.total, state.theta, w=w, frozen=frozen,
                                      background=background, N_total=ev.N_orig)
                if not dead.size:
                    # part of the mixed step: n_iter counts the steps kept
                    state.theta, state.stabilized = theta_s, True
                    if checkpoint is not None:
                        save_checkpoint(checkpoint, state, fingerprint)
                    continue
            if state.overrelaxing:
                state.overrelax = next_overrelax(state.overrelax, not rejected)
                state.overrelaxing = False
            if rejected:
                log.debug("extrapolated step rejected (logL %.10g < %.10g)", ev.logL,
                          state.fallback_logL)
                state.theta, state.fallback = state.fallback, None
                state.plain_from = state.fallback_from
                state.mixed_step = 0.0
                continue
            state.fallback = None
            if imputing and ev.f_obs > 0 and state.n_orig_history:
                state.mixed_step = abs(ev.N_orig - state.n_orig_history[-1]) / ev.N_orig
        if imputing and not ev.f_obs > 0:
            # the sample's weights are degenerate here: draw it at these parameters
            log.debug("imputation sample refreshed (degenerate weights)")
            _refresh(state, state.theta, state.f_obs)
            continue
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
        if state.n_iter >= maxiter:
            break
        theta_next, dead = mstep(ev.total, state.theta, w=w, frozen=frozen,
                                 background=background, N_total=ev.N_orig)
        converged, ridge = _converged(state, ev.logL, ev.N_orig, theta_next, tol,
                                      _RATE_WINDOW_IMPUTING if imputing else _RATE_WINDOW,
                                      imputing)
        if converged:
            break
        state.n_iter += 1
        state.plain_from = state.theta
        refresh = imputing and (ev.ess_ratio < _MIN_ESS_RATIO
                                or _moved(state.proposal, theta_next) > _MAX_MOVE
                                or _sizing_fraction(state.f_obs, ev.f_obs) != state.f_obs)
        extrapolated = None
        if accelerate:
            if dead.size or refresh:
                state.mix_next = False
                _forget(state)
            elif imputing and ridge and _crawling(state):
                state.newton_at = state.n_iter
                extrapolated = _newton_point(state, run, theta_next)
                log.debug("Newton point on EM's probed Jacobian%s",
                          "" if extrapolated is not None else ": none")
                state.mix_next = False
                _forget(state)       # the pairs are far behind the point
                if extrapolated is None:
                    state.mixed_step = 0.0
            elif _remember(state, state.theta, theta_next) and state.mix_next:
                # every other plain step is replaced by the mixed point: the plain
                # steps between keep the convergence test's contraction rates
                xs, gs = np.array(state.memory_x), np.array(state.memory_g)
                state.mix_next = False
                # where EM leaves a saddle mixing would lead back onto it: the step is
                # over-relaxed instead (acceleration.next_overrelax). Measured
                # (benchmarks/local_maxima.py, 200,000 rows, K=8, D=4): default starts
                # crept at constant gains of ~7e-7 nats per row and step for 905, 1000+
                # and 1000+ iterations (rng 0, 2, 3), and converge in 249, 245 and 237
                # to the same maximum. Not with imputation: there the path decides
                # where the sample is redrawn, and pyGMMis's demo (seed 2) ended at
                # another sample's fixed point, KL(truth || fit) 0.034 above the
                # reference (0.010 without)
                state.overrelaxing = not imputing and leaving_saddle(xs, gs)
                if state.overrelaxing:
                    extrapolated = overrelaxed(state.theta, theta_next, state.overrelax,
                                               state.memory_scale, frozen, background, w)
                    if extrapolated is None:        # out of the parameter space
                        state.overrelax = OVERRELAX_START
                    else:
                        log.debug("over-relaxed step of %g EM steps", state.overrelax)
                    state.overrelaxing = extrapolated is not None
                else:
                    extrapolated = anderson(xs, gs, theta_next, state.memory_scale, frozen,
                                            background, w)
                if extrapolated is None:
                    state.mixed_step = 0.0
            else:
                state.mix_next = True
        if extrapolated is not None:
            # the map is deterministic (a fixed imputation sample): the mixed point must
            # gain at least what the last step gained. Measured on a 2-D hard cut,
            # accepting any point no worse than x ended fits 0.022-0.032 nats below the
            # exact maximum (0.010 with this rule) and sent a long run from the truth
            # off along the ridge
            state.fallback, state.fallback_from = theta_next, state.theta
            h = state.history
            state.fallback_logL = h[-1] + max(h[-1] - h[-2], 0.0) if len(h) > 1 else h[-1]
            state.stabilized = False
            theta_next = extrapolated
            state.plain_from = None
        state.theta = theta_next
        if refresh:
            # the weights have drifted (or f moved far): a new sample at the next point
            log.debug("imputation sample refreshed (ESS ratio %.3g, f %.4g)", ev.ess_ratio,
                      ev.f_obs)
            _refresh(state, theta_next, _sizing_fraction(state.f_obs, ev.f_obs))
        if checkpoint is not None:
            save_checkpoint(checkpoint, state, fingerprint)
    return state, converged, ev


def _crawling(state: EMState) -> bool:
    """Whether EM crawls along a ridge and a Newton point is due (:func:`_newton_point`).

    The last :data:`_NEWTON_WINDOW` plain steps all contracted at rates above
    :data:`_NEWTON_RATE`, and the last Newton point is :data:`_NEWTON_GAP`
    iterations back.
    """
    rates = state.rates[-_NEWTON_WINDOW:]
    return (len(rates) == _NEWTON_WINDOW and min(rates) > _NEWTON_RATE
            and state.n_iter - state.newton_at >= _NEWTON_GAP)


def _remember(state: EMState, x: Theta, image: Theta) -> bool:
    """Add the pair ``(x, M(x))`` to the acceleration's memory; True when it holds two.

    The memory is packed in the unit of the parameters where it began (a fixed unit:
    the pairs are compared with one another).
    """
    K, D = x.mean.shape
    keep = memory_pairs(packed_size(K, D))
    if not keep:
        return False            # a model too large for the memory: plain EM
    if state.memory_scale is None:
        state.memory_scale = feature_scale(x)
    state.memory_x = state.memory_x[1 - keep:] + [pack(x, state.memory_scale)]
    state.memory_g = state.memory_g[1 - keep:] + [pack(image, state.memory_scale)]
    return len(state.memory_x) >= 2


def _forget(state: EMState) -> None:
    """Empty the acceleration's memory: the EM map changed (a redraw, a dead component),
    or the fit jumped far from its pairs (a Newton point)."""
    state.memory_x, state.memory_g, state.memory_scale = [], [], None


# The imputation sample is redrawn at the current parameters when the effective
# sample size of its importance weights falls below this fraction of the fresh one,
# or when a component has moved by more than _MAX_MOVE from the proposal (see
# _moved): a sample's error grows with the distance from where it was drawn, and on
# a flat likelihood ridge that error would hold the fit near the proposal.
_MIN_ESS_RATIO = 0.5
_MAX_MOVE = 0.2


def _moved(t0: Theta, t1: Theta) -> float:
    """Largest move of a component from ``t0`` to ``t1``, in units of ``t0``'s own width.

    The larger of the whitened shift of the mean ``|L0^-1 (mu1 - mu0)|`` and of the
    change of the whitened covariance ``|L0^-1 V1 L0^-T - I|`` (Frobenius norm).
    """
    L0 = np.linalg.cholesky(t0.covar)
    shift = np.linalg.solve(L0, (t1.mean - t0.mean)[..., None])[..., 0]
    A = np.linalg.solve(L0, t1.covar)
    W = np.linalg.solve(L0, np.swapaxes(A, 1, 2))
    D = t0.mean.shape[1]
    change = np.linalg.norm(W - np.eye(D), axis=(1, 2))
    return float(max(np.linalg.norm(shift, axis=1).max(), change.max()))


def _refresh(state: EMState, theta: Theta, f_size: float) -> None:
    """Draw a new imputation sample at ``theta`` (sized by ``f_size``).

    The EM map changes with the sample, so convergence is judged from here on and
    the acceleration's memory is emptied.
    """
    state.proposal = theta
    state.f_obs = f_size
    # the recent contraction rates are kept: they belong to the problem near its
    # fixed point, and the first steps with a new sample would under-estimate them
    state.mix_next, state.fallback, state.plain_from = False, None, None
    _forget(state)


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


def _run_stepwise(state: EMState, groups: list, run: _Run, N_all: float,
                  anchor: np.ndarray) -> EMState:
    """Stepwise EM over ``groups`` of blocks from ``state`` (resumes at ``state.sw_steps``).

    Every group is one compute over its blocks; its statistics, scaled from the
    group's rows to the catalog's ``N_all``, are blended into the running
    statistics (:class:`~daskgmmis.stepwise.RunningStats`) with the step size of
    :func:`~daskgmmis.stepwise.step_size` and an M-step follows.
    """
    evaluate, opts = run.evaluate, run.opts
    while state.sw_steps < len(groups):
        t_start = time.perf_counter()
        blocks = groups[state.sw_steps]
        # a truncated group is imputed from a sample drawn at the current parameters
        ev = evaluate(state.theta, state.f_obs, state.theta, blocks=blocks)
        n_group = float(ev.total.n)
        state.sw_steps += 1
        if not n_group > 0:
            continue     # every row of the group has weight 0: nothing to learn from
        state.f_obs = _sizing_fraction(state.f_obs, ev.f_obs)
        scale = N_all / n_group
        group_stats, n_orig = ev.total.scaled(scale), ev.N_orig * scale
        if state.sw_running is None or state.sw_restart:
            state.sw_running = RunningStats.start(group_stats, state.theta.mean, anchor, n_orig)
        else:
            state.sw_running = state.sw_running.blend(
                group_stats, state.theta.mean, n_orig,
                step_size(state.sw_steps - 1))
        running = state.sw_running
        state.theta, dead = mstep(running.about(state.theta.mean), state.theta, w=opts.w,
                                  frozen=run.frozen, background=opts.background,
                                  N_total=running.n_orig)
        # a re-seeded component's running sums describe the old one: start afresh
        state.sw_restart = bool(dead.size)
        state.sw_history.append(ev.logL)
        log.info("stepwise group %d/%d (%d blocks): mean logL %.8g, N_orig %.6g, %.3f s",
                 state.sw_steps, len(groups), len(blocks), ev.logL,
                 running.n_orig, time.perf_counter() - t_start)
        if run.checkpoint is not None:
            save_checkpoint(run.checkpoint, state, run.fingerprint)
    return state


def _fingerprint(plan, summary, K, opts: FitOptions, frozen: dict,
                 constant_noise: bool = False) -> dict:
    """JSON description of a fit problem: what a checkpoint must match.

    The data (shape, chunks, summary, shared noise) and every option the table
    marks as part of the problem (:class:`FitOptions`, ``problem=True``):
    floats as hex (bit-exact), callbacks by name, the background without its
    fitted amplitude, ``frozen`` as parsed. ``constant_noise``: the
    covar_callback is the shared noise matrix put there by :func:`fit`.
    """
    hexes = lambda a: [float(v).hex() for v in np.ravel(a)]  # noqa: E731
    fp = {
        "N": plan.N, "D": plan.D, "K": K, "noise": plan.kind,
        "chunks": [int(c) for c in plan.x.chunks[0]],
        "data_summary": {"n": int(summary.n), "n_obs": np.asarray(summary.n_obs).tolist(),
                         "lo": hexes(summary.lo), "hi": hexes(summary.hi),
                         "total": hexes(summary.total),
                         "weight": float(summary.weight).hex()},
        "shared_noise": None if plan.shared is None else hexes(plan.shared),
    }
    if plan.projection is not None:
        fp["projection"] = {"shape": [int(v) for v in plan.projection.shape],
                            "checksum": float(summary.projection_sum).hex()}
    for f in option_fields():
        if not f.metadata["problem"]:
            continue
        value = getattr(opts, f.name)
        if f.name == "frozen":
            fp["frozen"] = {k: v.tolist() for k, v in frozen.items()}
        elif f.name == "rng":
            if value is not None:
                seed = _root_seed(value) if not isinstance(value, np.random.Generator) else None
                fp["seed"] = ("generator" if seed is None else
                              [str(seed.entropy), *map(int, seed.spawn_key)])
        elif f.name == "covar_callback" and constant_noise:
            fp[f.name] = None
        elif isinstance(value, Background):
            fp[f.name] = {k: v for k, v in value.to_dict().items() if k != "amp"}
        elif isinstance(value, (float, np.floating)) or (isinstance(value, (int, np.integer))
                                                         and not isinstance(value, bool)):
            fp[f.name] = float(value).hex()
        elif value is None or isinstance(value, (bool, np.bool_, str)):
            fp[f.name] = None if value is None else (value if isinstance(value, str)
                                                     else bool(value))
        else:
            fp[f.name] = callable_name(value)
    return fp
