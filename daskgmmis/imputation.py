"""Imputation of the unobserved population of a truncated catalog (docs/design.md §1.4).

The imputation is a **fixed sample** (sample-average approximation, importance
sampled). Every block task owns, per *source* (each component, and the background),
fixed base variates made once per fit: standard normal position variates ``z`` and
noise variates ``e`` in :data:`GROUPS` independently scrambled Sobol sets. At a
*proposal* ``theta0`` (the parameters when the sample was last drawn) a base point
of component s becomes the true position ``t = mu0_s + L0_s z`` (a background point:
a position in its box) and the noisy position ``y = t + noise(e)``; the selection Ω
is evaluated at ``y`` once per proposal, and candidates with Ω = 1 are dropped for
good (a component mostly unobserved at the proposal is imputed as its whole Gaussian
minus its observed part instead, and its candidates with Ω = 0 are dropped; see
:func:`draw_candidates`). At any parameters a kept candidate of source s stands for

    w_j = n_rows a_s (1 - Ω_j) r_j / m,     r_j = N(t_j | mu_s, V_s) / N(t_j | mu0_s, V0_s)

rows of the unobserved population (``a_s`` its current amplitude, m the points per
source), and enters the M-step as a noise-free row of its own component. No
candidate moves or changes component when the parameters move - only its weight
does - so the imputed statistics, f and N_orig are smooth, deterministic functions
of the parameters, and the EM map is the exact EM of the sample-average likelihood
``sum_i log p(x_i) - N log f_hat``: a plain step never lowers it, and the acceleration
can use the strict acceptance rule. The driver redraws the sample (a new proposal) when
the weights degenerate (effective sample size) or the observed fraction moves far;
near convergence it stays put. Per iteration a candidate costs one Gaussian density
and its moments - no E-step, no callback.

A tally returns the weighted sum, its batch-means variance over the groups (the
Monte-Carlo error of f) and the effective-sample-size sums. Nothing imputed is
materialized outside the block task.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields

import numba
import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import ndtr, ndtri
from scipy.stats import qmc

from .noise import psd_root
from .selection import (evaluate_covar_callback, evaluate_projection_callback,
                        evaluate_selection)
from .stats import SuffStats

LOG_2PI = float(np.log(2.0 * np.pi))

__all__ = ["GROUPS", "MIN_CANDIDATES", "CandidateSet", "ImputeTally", "base_variates",
           "candidate_count", "points_per_set", "draw_candidates", "candidate_set",
           "impute_block", "replicate_set"]

# Independent replicate sets per (block, source): the between-set scatter of the
# observed fraction gives its Monte-Carlo error (batch means). 8 sets give the
# variance estimate 7 degrees of freedom even when the catalog is one block.
GROUPS = 8

# Candidates of a whole fit, at least: spread over the blocks by their rows. The
# Monte-Carlo error of the fixed point relative to N_orig's statistical error does
# not shrink with N, and where N_orig lies on a flat ridge the fit wanders with it:
# measured on a 2-D hard cut at 12,000 rows (benchmarks/mc_error_spread.py, 10 default
# fits), 2^17 candidates: 4 fits ended at maxiter, one wandered to 1.65x the exact
# answer (0.47 nats below it), spread 0.22; 2^19: 1 at maxiter (1.23x); 2^20: all 10
# converged within 0.974-1.013 of the truth (exact answer 0.986), spread 0.013. A
# candidate costs one density and its moments per iteration, so below ~1e6 the floor
# costs a small catalog little; above N ~ 2e5 (at f ~ 0.7) oversampling governs.
MIN_CANDIDATES = 2**20

# The proposal of a component is the component widened by this factor: importance
# weights N(t | mu, V) / N(t | mu0, w^2 V0) then stay bounded while the component
# moves a little, where with w = 1 a sample's estimate of the unobserved mass is
# typically too low away from the proposal (heavy-tailed weights), which anchors a
# slowly converging fit near the proposal.
PROPOSAL_WIDTH = 1.2

# Bytes of base variates a process keeps between iterations (least recently used
# blocks are dropped first; a dropped block is rebuilt bit for bit when needed).
CACHE_BYTES = 512 * 2**20


@dataclass
class ImputeTally:
    """Sums over the candidates of one or more blocks.

    Attributes
    ----------
    weight : float
        ``sum_j w_j``: the blocks' estimate of ``rows * (1 - f)``, in rows.
    weight_var : float
        Estimated Monte-Carlo variance of ``weight`` (rows squared), from the
        scatter between the :data:`GROUPS` independent sets of each block.
    n : int
        Candidates made (at the proposal).
    rows : int
        Observed rows the candidates stand for.
    ess : ndarray, shape (4, n_sources)
        Per source: ``sum u_j``, ``sum u_j**2`` of the importance weights
        ``u_j = v_j r_j`` (``v_j`` the candidate's factor, ``1 - Ω_j`` or, for a
        complemented source, ``-Ω_j``), and the same at the proposal (``r_j = 1``).
    seen : int
        Candidates made with Ω > 0: none means the model has no mass where the
        catalog could be observed, whatever the weights' Monte-Carlo error.
    """

    weight: float = 0.0
    weight_var: float = 0.0
    n: int = 0
    rows: int = 0
    ess: np.ndarray | float = 0.0
    seen: int = 0

    def __add__(self, other: "ImputeTally") -> "ImputeTally":
        return ImputeTally(*(getattr(self, f.name) + getattr(other, f.name)
                             for f in fields(self)))

    @property
    def ess_ratio(self) -> float:
        """Smallest effective sample size of a source's weights over the same at the
        proposal (1 at the proposal itself)."""
        ess = np.asarray(self.ess, dtype=np.float64)
        if ess.ndim != 2:
            return 1.0
        s, s2, s0, s02 = ess
        live = (s2 > 0) & (s0 > 0)
        if not live.any():
            return 1.0
        return float(np.min((s[live] ** 2 / s2[live]) / (s0[live] ** 2 / s02[live])))


def candidate_count(n_rows: int, oversampling: float, observed_fraction: float,
                    n_total: int | None = None) -> int:
    """Candidates a block of ``n_rows`` observed rows makes.

    ``oversampling`` is the number of *unobserved* candidates per estimated
    unobserved row: a block makes ``oversampling * n_rows / f`` candidates, of
    which ``(1 - f)`` are unobserved on average, while its share of the
    unobserved population is ``n_rows (1 - f) / f``. The Monte-Carlo variance of
    the imputed statistics is then about ``1 / oversampling`` times the Poisson
    variance of the unobserved population itself: it scales with the unobserved
    fraction, not with N. With ``n_total`` (rows of the whole catalog) the block
    also makes at least its share ``n_rows / n_total`` of :data:`MIN_CANDIDATES`.

    Parameters
    ----------
    n_rows : int
        Observed rows in the block.
    oversampling : float
        Monte-Carlo precision knob (> 0).
    observed_fraction : float
        Estimate of f, clipped to [1e-3, 1].
    n_total : int, optional
        Observed rows of the catalog.

    Returns
    -------
    int
    """
    f = min(max(observed_fraction, 1e-3), 1.0)
    m = oversampling * n_rows / f
    if n_total:
        m = max(m, MIN_CANDIDATES * n_rows / n_total)
    return int(np.ceil(m))


def points_per_set(m: int, n_sources: int) -> int:
    """Base points per (source, group) set for at least ``m`` candidates in a block.

    A power of 2: the first ``2**k`` points of a scrambled Sobol sequence form a
    net, whose error falls much faster than that of a prefix of another length.
    Measured (cut4d of benchmarks/truncation_accuracy.py, seed 2, N_orig's shift of
    the sample-average maximum from the exact one, rms over 8 imputation seeds):
    43,691 points per set 29 %, 32,768 (fewer points) 0.99 % with the control
    variate of :func:`draw_candidates` (1.8 % at 43,691), 65,536 0.49 %.
    """
    if m <= 0:
        return 0
    n = int(np.ceil(m / (max(n_sources, 1) * GROUPS)))
    return 1 << max(n - 1, 0).bit_length()


_cache: OrderedDict = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()


def _make_variates(seed: np.random.SeedSequence, block: int, n_sources: int, n: int, D: int,
                   noisy: bool):
    d = 2 * D if noisy else D
    pts = np.empty((n_sources, GROUPS * n, d))
    for s in range(n_sources):
        for g in range(GROUPS):
            key = tuple(seed.spawn_key) + (int(block), s, g)
            rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=key))
            sobol = qmc.Sobol(d=d, scramble=True, seed=rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # balance warning, n != 2**k
                pts[s, g * n:(g + 1) * n] = sobol.random(n)
    z = ndtri(np.clip(pts, 1e-15, 1 - 1e-15))
    return (np.ascontiguousarray(z[..., :D]),
            np.ascontiguousarray(z[..., D:]) if noisy else None)


def base_variates(seed: np.random.SeedSequence, block: int, n_sources: int, n: int, D: int,
                  noisy: bool):
    """The block's fixed base variates, made once per fit (cached per process).

    Scrambled Sobol points (randomized quasi-Monte Carlo) mapped to normals: the
    integrands are smooth except at selection edges, so the error falls faster
    than 1/sqrt(m). Set ``g`` of source ``s`` is keyed by ``(seed, block, s, g)``:
    the sets are independent randomizations (for the batch-means error) and do
    not depend on the number of workers or on the iteration.

    Parameters
    ----------
    seed : SeedSequence
        The fit's imputation seed.
    block : int
        Index of the block task.
    n_sources : int
        Components (+ 1 with a background).
    n : int
        Points per (source, group) set.
    D : int
        Features.
    noisy : bool
        Also make noise variates.

    Returns
    -------
    z : ndarray, shape (n_sources, GROUPS * n, D)
        Standard normal position variates; rows ``g*n:(g+1)*n`` are set ``g``.
    e : ndarray of the same shape, or None
        Standard normal noise variates.
    """
    global _cache_bytes
    key = (str(seed.entropy), tuple(seed.spawn_key), int(block), n_sources, n, D, noisy)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    out = _make_variates(seed, block, n_sources, n, D, noisy)
    size = sum(a.nbytes for a in out if a is not None)
    for a in out:
        if a is not None:
            a.setflags(write=False)       # shared between iterations: never modified
    with _cache_lock:
        if key not in _cache and size <= CACHE_BYTES:
            _cache[key] = out
            _cache_bytes += size
            while _cache_bytes > CACHE_BYTES:
                _, old = _cache.popitem(last=False)
                _cache_bytes -= sum(a.nbytes for a in old if a is not None)
    return out


@dataclass
class CandidateSet:
    """A block's fixed sample under one proposal: the candidates with Ω < 1.

    Attributes
    ----------
    t : ndarray, shape (m_kept, D)
        True (noise-free) positions, grouped by source (ascending).
    unobs : ndarray, shape (m_kept,)
        The candidate's factor of its weight: ``1 - Ω`` at the noisy position (in
        (0, 1]) for a source imputed directly, ``-Ω`` (in [-1, 0)) for a source
        imputed as its whole Gaussian minus its observed part (``complement``).
    log_q : ndarray, shape (m_kept,)
        Log-density of the candidate's own source at the proposal, at ``t``.
    source : ndarray, shape (m_kept,)
        Source of each candidate: component index, or K for the background.
    group : ndarray, shape (m_kept,)
        Replicate set of each candidate (0 .. GROUPS - 1).
    per_source : int
        Candidates made per source, kept or not.
    seen : int
        Candidates made with Ω > 0 (kept or not).
    complement : ndarray of bool, shape (n_sources,)
        Per source: imputed as the whole component (its exact Gaussian moments)
        minus its observed candidates (see :func:`draw_candidates`).
    """

    t: np.ndarray
    unobs: np.ndarray
    log_q: np.ndarray
    source: np.ndarray
    group: np.ndarray
    per_source: int
    seen: int = 0
    complement: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.t, self.unobs, self.log_q, self.source, self.group))


def _add_noise(y, e, covar_callback):
    kind, noise = evaluate_covar_callback(covar_callback, y)
    if kind == "shared":
        return y + e @ np.linalg.cholesky(noise).T
    if kind == "diag":
        return y + e * np.sqrt(noise)
    try:
        return y + np.einsum("nij,nj->ni", np.linalg.cholesky(noise), e)
    except np.linalg.LinAlgError:
        # PSD noise may be singular: eigen-factor instead of Cholesky
        return y + np.einsum("nij,nj->ni", psd_root(noise), e)


def _log_gauss(t: np.ndarray, mean: np.ndarray, L: np.ndarray) -> np.ndarray:
    """log N(t | mean, L L^T) for rows t (n, D), L lower Cholesky (D, D)."""
    # the (D, D) triangular inverse once, then one row-major product: a triangular
    # solve with n right-hand sides copies them into column order and is ~10x slower
    Linv = solve_triangular(L, np.eye(L.shape[0]), lower=True)
    z = (t - mean) @ Linv.T
    return (-0.5 * np.einsum("ij,ij->i", z, z) - np.log(np.diag(L)).sum()
            - 0.5 * t.shape[1] * LOG_2PI)


def _observed(t: np.ndarray, n_comp: int, bg: np.ndarray | None, projection,
              d: int) -> np.ndarray:
    """Noise-free observed positions (m, d): ``R t`` of the components' points (the
    first ``n_comp`` rows of ``t``), then the background's points ``bg`` as they are."""
    tc = t[:n_comp]
    R = (evaluate_projection_callback(projection, tc, d) if callable(projection)
         else projection)
    yc = tc @ R.T if R.ndim == 2 else np.einsum("mij,mj->mi", R, tc)
    return yc if bg is None else np.concatenate([yc, bg])


def draw_candidates(n: int, mean0, covar0, background0, sel_callback, covar_callback,
                    seed: np.random.SeedSequence, block: int, projection=None,
                    d: int | None = None) -> CandidateSet:
    """The block's fixed sample at the proposal ``(mean0, covar0, background0)``.

    Every source (component, background) gets ``GROUPS * n`` points from its own
    fixed base variates: ``t = mu0_s + L0_s z`` (the background: uniform in its
    box). Noise from ``covar_callback`` at the noise-free observed position (``t``,
    or ``R t`` with a projection) applied to fixed noise variates gives the noisy
    position, where Ω is evaluated.

    A component whose points are mostly unobserved at the proposal (estimated
    unobserved fraction above 1/2) is imputed as a control variate: its unobserved
    part is the whole Gaussian, whose moments are known exactly at any parameters,
    minus its observed part, estimated from its candidates with Ω > 0 (weight
    factor ``-Ω``); the others from their candidates with Ω < 1 (``1 - Ω``). Either
    way the estimate stays linear in the component's density, so the EM map's fixed
    points stay the stationary points of the sample-average likelihood (the negative
    weights void the guarantee that a plain step never lowers it), and only the side
    with the smaller region is kept. The Monte-Carlo error of the mostly-unobserved
    component's mass - its whole importance-sampled normalization - dominated the
    error of the fixed point along the N_orig ridge: measured (cut4d of
    benchmarks/truncation_accuracy.py, N_orig's shift of the sample-average maximum
    from the exact one, rms over 8 imputation seeds, 43,691 points per set) seed 1
    1.44 % directly, 0.17 % with the complement; seed 2 29 % and 1.8 %.

    Parameters
    ----------
    n : int
        Points per (source, group) set (:func:`points_per_set`).
    mean0, covar0 : ndarray, shapes (K, D), (K, D, D)
        The proposal's components.
    background0 : Background or None
    sel_callback : callable
        Ω(coords (m, d)) -> (m,) in [0, 1], at the noisy positions.
    covar_callback : callable or None
        Noise covariance at the noise-free observed positions; ``None``: no noise.
    seed : SeedSequence
        The fit's imputation seed.
    block : int
        Index of the block task (keys its variates).
    projection : None, ndarray (d, D) or callable, optional
        How an unobserved row is observed (design §1.1): ``None`` in the model's
        space, one shared matrix ``R``, or a ``projection_callback`` giving ``R``
        at the true positions. A background's points are drawn in its box of the
        *data's* space (d dimensions) and have no true position (``t`` = 0).
    d : int, optional
        Dimension of the data's space (with a projection; default ``D``).

    Returns
    -------
    CandidateSet
    """
    K, D = mean0.shape
    S = K + (background0 is not None)
    z, e = base_variates(seed, block, S, n, D, covar_callback is not None)
    L = PROPOSAL_WIDTH * np.linalg.cholesky(covar0)
    m = GROUPS * n
    t = np.empty((S, m, D))
    for s in range(K):
        t[s] = mean0[s] + z[s] @ L[s].T
    bg = None
    if background0 is not None:
        # a background is uniform in its box of the data's space (d <= D dimensions)
        d_bg = background0.D
        bg = background0.lower + (background0.upper - background0.lower) * ndtr(z[K][:, :d_bg])
        t[K] = bg if projection is None else 0.0
    t = t.reshape(-1, D)
    y = t if projection is None else _observed(t, K * m, bg, projection, d or D)
    if covar_callback is not None:
        y = _add_noise(y, e.reshape(-1, D)[:, :y.shape[1]], covar_callback)
    omega = evaluate_selection(sel_callback, y, where="sel_callback (imputed candidates)")
    # the proposal's own importance weights N(t | mu0, V0) / N(t | mu0, w^2 V0) - a
    # function of |z| - estimate each component's unobserved fraction there
    r0 = PROPOSAL_WIDTH ** D * np.exp(-0.5 * (PROPOSAL_WIDTH**2 - 1.0)
                                      * np.einsum("sij,sij->si", z[:K], z[:K]))
    unobserved = ((1.0 - omega[:K * m].reshape(K, m)) * r0).mean(axis=1)
    complement = np.append(unobserved > 0.5, np.zeros(S - K, dtype=bool))
    side = np.repeat(complement, m)
    keep = np.flatnonzero(np.where(side, omega > 0.0, omega < 1.0))
    source = (keep // m).astype(np.int32)
    t = np.ascontiguousarray(t[keep])
    factor = np.where(side[keep], -omega[keep], 1.0 - omega[keep])
    log_q = np.zeros(keep.size)
    for s in range(K):
        rows = source == s
        log_q[rows] = _log_gauss(t[rows], mean0[s], L[s])
    group = ((keep % m) // n).astype(np.int32)
    return CandidateSet(t, factor, log_q, source, group, m, int(np.count_nonzero(omega > 0)),
                        complement)


def replicate_set(cset: CandidateSet, g: int) -> CandidateSet:
    """Replicate set ``g`` of a block's fixed sample, as a sample of its own.

    Its weights are those of a sample of ``per_source / GROUPS`` points per source,
    so :func:`impute_block` on it gives an unbiased estimate of the same sums from
    that set alone (the batch-means replicates of the Monte-Carlo error). Its
    ``seen`` counts only the kept candidates with Ω > 0 (those dropped with Ω = 1
    are not recorded per set).
    """
    rows = cset.group == g
    return CandidateSet(cset.t[rows], cset.unobs[rows], cset.log_q[rows], cset.source[rows],
                        cset.group[rows], cset.per_source // GROUPS,
                        int(np.count_nonzero(cset.unobs[rows] < 1.0)), cset.complement)


_sets: OrderedDict = OrderedDict()
_sets_bytes = 0


def candidate_set(sample_key: tuple, n: int, mean0, covar0, background0, sel_callback,
                  covar_callback, seed: np.random.SeedSequence, block: int, projection=None,
                  d: int | None = None) -> CandidateSet:
    """:func:`draw_candidates`, cached per process under ``sample_key``.

    ``sample_key`` names the fit and its proposal (the driver makes it unique per
    fit and proposal); the callbacks run once per proposal, not once per
    iteration. A set dropped from the cache (least recently used,
    :data:`CACHE_BYTES`) is rebuilt bit for bit.
    """
    global _sets_bytes
    key = (tuple(sample_key), int(block), int(n))
    with _cache_lock:
        hit = _sets.get(key)
        if hit is not None:
            _sets.move_to_end(key)
            return hit
    cset = draw_candidates(n, mean0, covar0, background0, sel_callback, covar_callback, seed,
                           block, projection, d)
    with _cache_lock:
        if key not in _sets and cset.nbytes <= CACHE_BYTES:
            _sets[key] = cset
            _sets_bytes += cset.nbytes
            while _sets_bytes > CACHE_BYTES:
                _, old = _sets.popitem(last=False)
                _sets_bytes -= old.nbytes
    return cset


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _weighted_moments(t, unobs, log_q, group, starts, mean, Linv, log_norm, coef, A, M1, M2,
                      per_group, ess):
    """One pass over a block's candidates (sorted by source; the background's last).

    For candidate j of component s (``starts[s] <= j < starts[s + 1]``):
    ``u = v_j N(t_j | mu_s, V_s) / q_j`` with ``v_j`` its factor (``1 - Ω_j``, or ``-Ω_j``
    for a complemented source) (``Linv`` the inverse Cholesky
    factors, ``log_norm`` the Gaussians' log-normalizations, ``log_q`` the proposal's
    log-density; ``u = 1 - Ω_j`` for the background's) and, with the weight
    ``w = coef[s] u`` and ``d = t_j - mu_s``: ``A[s] += w``, ``M1[s] += w d``,
    ``M2[s] += w d d^T``, ``per_group[group[j]] += w`` and ``ess[:, s] += (u, u**2,
    v_j, v_j**2)``. Fused: the numpy form made a dozen temporaries of every
    candidate (~0.6 us each at D = 4).
    """
    K, D = mean.shape
    d = np.empty(D)
    for s in range(starts.shape[0] - 1):
        c = coef[s]
        if s == K:                  # the background: no moments, r = 1
            for j in range(starts[s], starts[s + 1]):
                v = unobs[j]
                per_group[group[j]] += c * v
                ess[0, s] += v
                ess[1, s] += v * v
                ess[2, s] += v
                ess[3, s] += v * v
            break
        for j in range(starts[s], starts[s + 1]):
            q = 0.0
            for i in range(D):
                d[i] = t[j, i] - mean[s, i]
            for i in range(D):
                z = 0.0
                for k in range(i + 1):
                    z += Linv[s, i, k] * d[k]
                q += z * z
            v = unobs[j]
            u = v * np.exp(log_norm[s] - 0.5 * q - log_q[j])
            w = c * u
            per_group[group[j]] += w
            ess[0, s] += u
            ess[1, s] += u * u
            ess[2, s] += v
            ess[3, s] += v * v
            A[s] += w
            for i in range(D):
                wd = w * d[i]
                M1[s, i] += wd
                for k in range(i + 1):
                    M2[s, i, k] += wd * d[k]
        for i in range(D):
            for k in range(i):
                M2[s, k, i] = M2[s, i, k]


def impute_block(cset: CandidateSet, n_rows: int, amp, mean, covar, background):
    """Imputed statistics of one block at the current parameters.

    Candidate j of source s stands for ``w_j = n_rows a_s (1 - Ω_j) r_j / m`` rows of
    the unobserved population, with ``a_s`` the source's current amplitude (over
    the sum of all amplitudes), ``r_j = N(t_j | mu_s, V_s) / N(t_j | mu0_s, V0_s)``
    its importance weight (1 for the background and at the proposal) and m the
    candidates per source. The sum of the weights estimates ``n_rows (1 - f)``.
    Its source is the candidate's component (a known label): the statistics are
    the weighted moments of the true positions about the current means, so
    ``U(theta) = sum_j c_j p_theta(t_j, s_j)`` is a positive combination of
    complete-data densities and the EM map is the exact EM of the sample-average
    likelihood (it never lowers it).

    Parameters
    ----------
    cset : CandidateSet
        The block's fixed sample.
    n_rows : int
        Observed rows of the block.
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
        Current parameters.
    background : Background or None
        Current background.

    Returns
    -------
    stats : SuffStats
        Imputed statistics in rows (``logl``/``n`` are zero: candidates are not
        data); the driver scales them by ``N_orig / N``.
    tally : ImputeTally
    """
    K, D = mean.shape
    S = K + (background is not None)
    stats = SuffStats.zeros(K, D)
    amps = np.append(np.asarray(amp, dtype=np.float64),
                     background.amp if background is not None else [])
    amps = amps / amps.sum()
    L = np.linalg.cholesky(covar)
    # the (K, D, D) triangular inverses once: each candidate's z is then one product
    Linv = np.linalg.solve(L, np.broadcast_to(np.eye(D), L.shape))
    log_norm = -np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1) - 0.5 * D * LOG_2PI
    starts = np.searchsorted(cset.source, np.arange(S + 1))
    coef = amps * (n_rows / cset.per_source)
    per_group = np.zeros(GROUPS)
    # effective sample size of the weights, per source: the sample is redrawn when the
    # worst source's has fallen (a component moved away from where its points are)
    ess = np.zeros((4, S))
    _weighted_moments(cset.t, cset.unobs, cset.log_q, cset.group, starts,
                      np.asarray(mean, np.float64), Linv, log_norm, coef, stats.A, stats.M1,
                      stats.M2, per_group, ess)
    if background is not None:
        stats.bg = float(coef[K] * ess[0, K])
    if cset.complement is not None and cset.complement.any():
        # a complemented component: its whole Gaussian, exact at the current
        # parameters (moments about its own mean: mass a_s n_rows, no first moment,
        # scatter a_s n_rows V_s), plus its observed candidates' negative weights.
        # The same in every replicate set: it adds to each set's estimate
        whole = np.flatnonzero(cset.complement[:K])
        c0 = coef[whole] * cset.per_source
        stats.A[whole] += c0
        stats.M2[whole] += c0[:, None, None] * np.asarray(covar, np.float64)[whole]
        per_group += c0.sum() / GROUPS
    per_group *= GROUPS
    tally = ImputeTally(float(per_group.sum() / GROUPS), float(per_group.var(ddof=1) / GROUPS),
                        cset.per_source * S, int(n_rows), ess, cset.seen)
    return stats, tally
