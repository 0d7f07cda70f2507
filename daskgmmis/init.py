"""Initializations of the mixture parameters: random, minmax, kmeans.

``random`` and ``minmax`` follow pyGMMis (``initFromDataAtRandom`` /
``initFromDataMinMax``: amplitudes 1/K, spheres of radius s such that K of them
fill the volume of the data's bounding box) but read only the first-pass summary
of the data plus K sampled rows, so they never gather a catalog. Missing features
of sampled rows are filled by uniform draws inside the data's range (no
zero-filling bias). A feature of zero width counts as width 1 in the volume
(pyGMMis would give s = 0, a singular start).

``kmeans`` (:func:`init_kmeans`) runs k-means|| seeding and Lloyd iterations as
map-reduces over the row blocks; unlike pyGMMis's ``initFromKMeans`` it divides
the cluster scatter by the cluster count (not by N), handles missing features,
and is seeded by ``rng``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import dask
import numpy as np
from scipy.spatial import cKDTree
from scipy.special import gammaln

from .blocks import compute, tree_reduce
from .errors import InputError
from .kernels import missing_patterns
from .stats import DataSummary

__all__ = ["DataSummary", "INIT_METHODS", "sphere_scale", "init_minmax", "init_random",
           "init_kmeans"]

log = logging.getLogger("daskgmmis")

INIT_METHODS = ("random", "minmax", "kmeans", "none")


def sphere_scale(lo: np.ndarray, hi: np.ndarray, K: int) -> float:
    """Radius s of K equal D-spheres whose volume fills the data's bounding box.

    Parameters
    ----------
    lo, hi : ndarray, shape (D,)
    K : int

    Returns
    -------
    float
        ``s = (V / K * Gamma(D/2 + 1))^(1/D) / sqrt(pi)``, data units.
    """
    D = lo.shape[0]
    width = np.where(hi > lo, hi - lo, 1.0)
    log_vol = np.log(width).sum()
    return float(np.exp((log_vol - np.log(K) + gammaln(D / 2 + 1)) / D) / np.sqrt(np.pi))


def _check_summary(summary: DataSummary) -> None:
    if (summary.n_obs == 0).any():
        j = int(np.flatnonzero(summary.n_obs == 0)[0])
        raise InputError(f"data: feature {j} is missing (NaN) in every row; expected at least "
                         f"one observed value per feature.")


def init_minmax(K: int, summary: DataSummary, rng: np.random.Generator):
    """Means uniform in the bounding box, covariances ``s^2 I`` (pyGMMis ``minmax``).

    Returns
    -------
    amp (K,), mean (K, D), covar (K, D, D)
    """
    _check_summary(summary)
    D = summary.lo.shape[0]
    mean = summary.lo + (summary.hi - summary.lo) * rng.random((K, D))
    s = sphere_scale(summary.lo, summary.hi, K)
    return np.full(K, 1.0 / K), mean, np.broadcast_to(s**2 * np.eye(D), (K, D, D)).copy()


def init_random(K: int, summary: DataSummary, rows: np.ndarray, rng: np.random.Generator):
    """Means at K random rows plus ``N(0, s^2 I)`` jitter, covariances ``s^2 I``.

    Parameters
    ----------
    K : int
    summary : DataSummary
    rows : ndarray, shape (K, D)
        The sampled rows (NaN = missing: filled uniformly inside the data range).
    rng : Generator

    Returns
    -------
    amp (K,), mean (K, D), covar (K, D, D)
    """
    _check_summary(summary)
    D = summary.lo.shape[0]
    rows = np.array(rows, dtype=np.float64)
    fill = summary.lo + (summary.hi - summary.lo) * rng.random((K, D))
    rows = np.where(np.isnan(rows), fill, rows)
    s = sphere_scale(summary.lo, summary.hi, K)
    mean = rows + s * rng.standard_normal((K, D))
    return np.full(K, 1.0 / K), mean, np.broadcast_to(s**2 * np.eye(D), (K, D, D)).copy()


# ---------------------------------------------------------------------- k-means
#
# k-means|| (Bahmani et al. 2012) seeding and Lloyd iterations, each one map-reduce
# over the row blocks of the (persisted or on-disk) dask array. Block tasks are
# module-level functions so that distributed workers import them by reference;
# every random draw inside a task comes from a stream keyed by (seed, pass, block),
# and records are combined by a fixed tree, so the result depends on the seed and
# the chunking only, never on the number of workers or the order tasks finish.
#
# Missing features: distances use the observed features only, scaled by D/|o| so
# that rows with fewer observed features do not look closer (the assignment of a
# row - an argmin over centres - is unaffected by the factor; sampling weights and
# farthest-row choices are). Sums are per feature with per-feature counts;
# nothing is zero-filled.

_MIN_SCALE_FRACTION = 1e-12   # a feature whose spread is below this is treated as constant
_COVAR_FLOOR = 1e-6           # eigenvalue floor of the covariances, in units of each
                              # feature's variance: a (1e-3 sigma)^2 floor keeps them PD


@dataclass
class _Sample:
    """Top-ell weighted sample of rows (Efraimidis-Spirakis keys) plus pass totals.

    Attributes
    ----------
    key : ndarray, shape (m,)
        ``log(u) / w`` keys (larger is better), m <= ell.
    index : ndarray of int64, shape (m,)
        Global row indices (tie-breaker, keeps the choice deterministic).
    rows : ndarray, shape (m, D)
        The sampled rows, data units (NaN = missing).
    phi : float
        Sum of the sampling weights (the k-means|| cost of the current centres).
    moments : ndarray, shape (3, D) or None
        Per-feature count, sum and sum of squares of ``x - shift`` (first pass only).
    ell : int
        Sample size kept when records merge.
    """

    key: np.ndarray
    index: np.ndarray
    rows: np.ndarray
    phi: float
    moments: np.ndarray | None
    ell: int


def _merge_samples(*parts: _Sample) -> _Sample:
    ell = parts[0].ell
    key = np.concatenate([p.key for p in parts])
    index = np.concatenate([p.index for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    # largest keys first; equal keys broken by the global row index
    keep = np.lexsort((index, -key))[:ell]
    moments = None if parts[0].moments is None else sum(p.moments for p in parts)
    return _Sample(key[keep], index[keep], rows[keep], float(sum(p.phi for p in parts)),
                   moments, ell)


@dataclass
class _LloydStats:
    """Per-cluster sums of one assignment pass, in centred data units.

    Rows ``u = x - shift`` are centred on the data mean and deviations are taken
    from the pass's centres ``c`` so the sums need no large cancellations.

    Attributes
    ----------
    n : ndarray, shape (K,)
        Rows assigned.
    count : ndarray, shape (K, D)
        Observed entries per feature.
    s1 : ndarray, shape (K, D)
        Sum of ``u_j - c_j`` over rows observing feature j.
    cost : float
        Sum of the rows' squared (D/|o|-scaled) distances to their centre.
    far_d2 : ndarray, shape (K,)
        Largest squared distance of a row to its centre (-1 for an empty cluster).
    far_index : ndarray of int64, shape (K,)
        Global index of that row (ties: the lowest index).
    far_row : ndarray, shape (K, D)
        That row, centred (NaN = missing).
    pair_count, pair_s1, s2 : ndarray, shape (K, D, D) or None
        Scatter pass only: rows observing both j and l; sum over those rows of
        ``u_j - c_j`` (``pair_s1[k, j, l]``); sum of ``(u_j - c_j)(u_l - c_l)``.
    """

    n: np.ndarray
    count: np.ndarray
    s1: np.ndarray
    cost: float
    far_d2: np.ndarray
    far_index: np.ndarray
    far_row: np.ndarray
    pair_count: np.ndarray | None = None
    pair_s1: np.ndarray | None = None
    s2: np.ndarray | None = None


def _merge_lloyd(*parts: _LloydStats) -> _LloydStats:
    out = parts[0]
    far_d2, far_index, far_row = out.far_d2.copy(), out.far_index.copy(), out.far_row.copy()
    for p in parts[1:]:
        # strictly larger, or equal with a lower row index: independent of grouping
        better = (p.far_d2 > far_d2) | ((p.far_d2 == far_d2) & (p.far_index < far_index))
        far_d2[better], far_index[better] = p.far_d2[better], p.far_index[better]
        far_row[better] = p.far_row[better]

    def total(name):
        first = getattr(out, name)
        return None if first is None else sum(getattr(p, name) for p in parts)

    return _LloydStats(total("n"), total("count"), total("s1"), float(sum(p.cost for p in parts)),
                       far_d2, far_index, far_row, total("pair_count"), total("pair_s1"),
                       total("s2"))


def _centred(x, shift: np.ndarray) -> np.ndarray:
    # centring on the data mean keeps squared distances and sums accurate for data
    # far from the origin
    return np.asarray(x, dtype=np.float64) - shift


def _nearest(z: np.ndarray, centres: np.ndarray):
    """Nearest centre of every row on its observed features.

    Parameters
    ----------
    z : ndarray, shape (n, D)
        Rows, NaN = missing.
    centres : ndarray, shape (m, D)
        Complete centres.

    Returns
    -------
    label : ndarray of int64, shape (n,)
        Index of the nearest centre; -1 for rows with no observed feature.
    d2 : ndarray, shape (n,)
        Squared distance on the observed features times ``D / |o|``; 0 for rows
        with no observed feature.
    """
    n, D = z.shape
    label = np.full(n, -1, dtype=np.int64)
    d2 = np.zeros(n)
    for obs, rows in missing_patterns(z):
        z_o = z if rows is None else z[np.ix_(rows, obs)]
        # k-d trees beat brute force from a handful of centres on (measured
        # 4-20x at m = 40..240, D = 3..20); deterministic for given inputs
        dist, idx = cKDTree(centres[:, obs]).query(z_o)
        factor = D / float(obs.sum())
        if rows is None:
            label[:], d2[:] = idx, factor * dist**2
        else:
            label[rows], d2[rows] = idx, factor * dist**2
    return label, d2


def _sample_task(x, row_offset: int, block: int, pass_index: int, entropy, shift, centres,
                 ell: int) -> _Sample:
    """One block's share of a k-means|| round.

    Rows are weighted by their squared distance to the nearest current centre
    (uniformly when ``centres`` is None, the first round) and the block keeps its
    ``ell`` largest Efraimidis-Spirakis keys ``log(u)/w``: the global top ``ell``
    of these keys is a weighted sample without replacement, obtained in one pass.
    """
    z = _centred(x, shift)
    n = z.shape[0]
    observed = ~np.isnan(z)
    usable = observed.any(axis=1)
    if centres is None:
        w = usable.astype(np.float64)
        zc = np.where(observed, z, 0.0)
        moments = np.stack([observed.sum(axis=0), zc.sum(axis=0), (zc**2).sum(axis=0)])
    else:
        w = _nearest(z, centres)[1]
        moments = None
    stream = np.random.default_rng(np.random.SeedSequence(entropy,
                                                          spawn_key=(0, pass_index, block)))
    e = stream.standard_exponential(n)
    with np.errstate(divide="ignore"):
        key = np.where(w > 0, -e / np.where(w > 0, w, 1.0), -np.inf)
    finite = np.flatnonzero(np.isfinite(key))
    top = finite[np.lexsort((finite, -key[finite]))[:ell]]
    rows = np.asarray(x, dtype=np.float64)[top]
    return _Sample(key[top], top.astype(np.int64) + row_offset, rows, float(w.sum()), moments,
                   ell)


def _lloyd_task(x, row_offset: int, shift, centres, scatter: bool) -> _LloydStats:
    """One block's assignment pass: per-cluster counts, sums (and scatter)."""
    z = _centred(x, shift)
    K, D = centres.shape
    label, d2 = _nearest(z, centres)
    use = label >= 0
    lab = label[use]
    zu, d2u = z[use], d2[use]
    observed = ~np.isnan(zu)
    mask = observed.astype(np.float64)
    dev = np.where(observed, zu - centres[lab], 0.0)
    n = np.bincount(lab, minlength=K).astype(np.float64)
    count = np.stack([np.bincount(lab, mask[:, j], K) for j in range(D)], axis=1)
    s1 = np.stack([np.bincount(lab, dev[:, j], K) for j in range(D)], axis=1)
    far_d2 = np.full(K, -1.0)
    np.maximum.at(far_d2, lab, d2u)
    # the first (lowest-index) row reaching its cluster's maximum
    at_max = np.flatnonzero(d2u == far_d2[lab])
    clusters, first = np.unique(lab[at_max], return_index=True)
    far_index = np.full(K, np.iinfo(np.int64).max, dtype=np.int64)
    far_row = np.full((K, D), np.nan)
    local = np.flatnonzero(use)[at_max[first]]
    far_index[clusters] = local + row_offset
    far_row[clusters] = z[local]
    stats = _LloydStats(n, count, s1, float(d2u.sum()), far_d2, far_index, far_row)
    if scatter:
        pc, ps1, s2 = (np.zeros((K, D, D)) for _ in range(3))
        for j in range(D):
            for l in range(j, D):
                both = mask[:, j] * mask[:, l]
                pc[:, j, l] = pc[:, l, j] = np.bincount(lab, both, K)
                s2[:, j, l] = s2[:, l, j] = np.bincount(lab, dev[:, j] * dev[:, l], K)
                ps1[:, j, l] = np.bincount(lab, dev[:, j] * mask[:, l], K)
                ps1[:, l, j] = np.bincount(lab, dev[:, l] * mask[:, j], K)
        stats.pair_count, stats.pair_s1, stats.s2 = pc, ps1, s2
    return stats


class _KMeansPasses:
    """Graph building and computing of the k-means passes over one plan."""

    def __init__(self, plan, client):
        self.plan = plan
        self.client = client

    def compute(self, graph):
        return compute(graph, self.client)

    def sample(self, pass_index, entropy, shift, centres, ell) -> _Sample:
        shift_d = dask.delayed(shift, pure=True)
        centres_d = None if centres is None else dask.delayed(centres, pure=True)
        parts = [dask.delayed(_sample_task, pure=True)(xb, off, b, pass_index, entropy,
                                                       shift_d, centres_d, ell)
                 for b, (xb, off) in enumerate(zip(self.plan.x_blocks, self.plan.offsets))]
        return self.compute(tree_reduce(parts, _merge_samples))

    def lloyd(self, shift, centres, scatter=False) -> _LloydStats:
        shift_d = dask.delayed(shift, pure=True)
        centres_d = dask.delayed(centres, pure=True)
        parts = [dask.delayed(_lloyd_task, pure=True)(xb, off, shift_d, centres_d, scatter)
                 for xb, off in zip(self.plan.x_blocks, self.plan.offsets)]
        return self.compute(tree_reduce(parts, _merge_lloyd))


def _weighted_choice(stream: np.random.Generator, weights: np.ndarray, size=None):
    """Indices drawn with probability proportional to ``weights`` (with replacement)."""
    cum = np.cumsum(weights)
    u = stream.random(size) * cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(weights) - 1)


def _kmeanspp(points: np.ndarray, weights: np.ndarray, K: int, stream: np.random.Generator):
    """Greedy weighted k-means++ (Arthur & Vassilvitskii 2007; 2 + ln K trials per pick).

    Parameters
    ----------
    points : ndarray, shape (m, D)
        Complete candidate centres.
    weights : ndarray, shape (m,)
        Positive weights (rows represented by each candidate).
    K : int
    stream : Generator

    Returns
    -------
    ndarray, shape (K, D)
        Chosen centres. When fewer than K candidates are distinct the remaining
        picks are weighted duplicates; Lloyd's empty-cluster rule re-seeds them.
    """
    trials = 2 + int(np.log(K))
    # O(K m) distance updates dominate at large K: a k-d tree restricts each trial
    # to the points it can improve, those within sqrt(max d2) of it (exact: a point
    # farther away is closer to an already chosen centre)
    tree = cKDTree(points)
    chosen = [int(_weighted_choice(stream, weights))]
    d2 = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, K):
        potential = weights * d2
        if not potential.sum() > 0:
            chosen.append(int(_weighted_choice(stream, weights)))
            continue
        radius = np.sqrt(d2.max()) * (1.0 + 1e-12)
        best = None
        for c in _weighted_choice(stream, potential, trials):
            near = np.asarray(tree.query_ball_point(points[c], radius), dtype=np.int64)
            new = np.minimum(d2[near], ((points[near] - points[c]) ** 2).sum(axis=1))
            gain = float(weights[near] @ (d2[near] - new))
            if best is None or gain > best[0]:
                best = (gain, int(c), near, new)
        _, c, near, new = best
        chosen.append(c)
        d2[near] = new
    return points[chosen].copy()


def _weighted_lloyd(points, weights, centres, max_iter, tol):
    """Lloyd iterations on weighted complete points (driver side, small)."""
    K, D = centres.shape
    centres = centres.copy()
    for _ in range(max_iter):
        label, _ = _nearest(points, centres)
        total = np.bincount(label, weights, K)
        sums = np.stack([np.bincount(label, weights * points[:, j], K) for j in range(D)],
                        axis=1)
        new = np.where(total[:, None] > 0, sums / np.where(total > 0, total, 1.0)[:, None],
                       centres)
        shift = float(((new - centres)**2).sum())
        centres = new
        if shift <= tol:
            break
    return centres


def _lloyd_update(centres: np.ndarray, st: _LloydStats):
    """New centres from one pass, with empty clusters re-seeded.

    Rule: clusters that received no row are moved, in index order, to the rows
    farthest from their own centre - one per donor cluster, donors taken by
    decreasing distance (ties: lowest row index) - so two empty clusters never land
    on the same row. Missing features of such a row take its donor's new mean.

    Returns
    -------
    centres : ndarray, shape (K, D)
    n_reseeded : int
    """
    safe = np.where(st.count > 0, st.count, 1.0)
    new = np.where(st.count > 0, centres + st.s1 / safe, centres)
    empty = np.flatnonzero(st.n == 0)
    donors = np.flatnonzero((st.n > 0) & (st.far_d2 > 0))
    donors = donors[np.lexsort((st.far_index[donors], -st.far_d2[donors]))]
    n_reseeded = min(len(empty), len(donors))
    for k, donor in zip(empty[:n_reseeded], donors[:n_reseeded]):
        row = st.far_row[donor]
        new[k] = np.where(np.isnan(row), new[donor], row)
    return new, n_reseeded


def _finalize(centres: np.ndarray, st: _LloydStats, shift, sigma, K: int):
    """Amplitudes, means and covariances (data units) from a scatter pass.

    ``centres`` and ``st`` are in centred units; ``sigma`` (D,) is each feature's
    standard deviation, the unit of the covariance floor.
    """
    D = centres.shape[1]
    safe = np.where(st.count > 0, st.count, 1.0)
    mean = np.where(st.count > 0, centres + st.s1 / safe, centres)
    delta = mean - centres
    # sum over rows observing j and l of (u_j - mean_j)(u_l - mean_l), from the sums
    # about the pass's centres: pairwise deletion, no zero-filling
    S = (st.s2 - st.pair_s1 * delta[:, None, :] - np.swapaxes(st.pair_s1, 1, 2)
         * delta[:, :, None] + st.pair_count * delta[:, :, None] * delta[:, None, :])
    cov = np.where(st.pair_count > 0, S / np.where(st.pair_count > 0, st.pair_count, 1.0), 0.0)
    # in units of each feature's standard deviation from here on
    cov = cov / np.outer(sigma, sigma)
    eye = np.eye(D, dtype=bool)
    # a feature never observed in a cluster: the data's variance
    cov[:, eye] = np.where(st.count > 0, cov[:, eye], 1.0)
    empty = st.n == 0
    # a cluster still empty (fewer distinct rows than K): a sphere holding 1/K of the
    # data's (standardized) volume, as the random/minmax initializations use
    cov[empty] = float(K) ** (-2.0 / D) * np.eye(D)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, _COVAR_FLOOR)
    cov = (evecs * evals[:, None, :]) @ np.swapaxes(evecs, 1, 2)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2)) * np.outer(sigma, sigma)
    weight = np.where(empty, 1.0, st.n)
    amp = weight / weight.sum()
    return amp, shift + mean, cov


def init_kmeans(K: int, plan, summary: DataSummary, rng: np.random.Generator, client=None, *,
                rounds: int = 5, oversampling: float = 2.0, max_iter: int = 30,
                tol: float = 1e-4):
    """k-means|| seeding plus Lloyd iterations on the row blocks; no data gather.

    Passes over the data, each one map-reduce over the plan's blocks:

    1. ``rounds + 1`` k-means|| rounds (Bahmani et al. 2012). Round 0 samples
       ``ell = ceil(oversampling * K)`` rows uniformly and measures each feature's
       variance; each later round samples ``ell`` more rows with probability
       proportional to their squared distance to the nearest candidate so far.
       Instead of independent Bernoulli draws with probability ``ell d^2 / phi``
       (which need ``phi`` from an extra pass) a round draws a weighted sample of
       exactly ``ell`` rows without replacement with Efraimidis-Spirakis keys
       (one pass per round, a fixed number of candidates).
    2. One assignment pass weights every candidate by the rows nearest to it and
       moves it to the mean of those rows; weighted greedy k-means++ and
       weighted Lloyd iterations on the driver reduce the candidates (at most
       ``(rounds + 1) * ell``) to K centres.
    3. Lloyd iterations on the data (at most ``max_iter``) until the squared
       centre shifts sum to less than ``tol`` times the mean feature variance
       (scikit-learn's rule); then a final pass gives the per-cluster counts,
       means and scatter.

    Rules (documented behaviour):

    * Distances are Euclidean in data units, as in scikit-learn and pyGMMis
      (features are not standardized: that would shrink the direction along
      which clusters are separated to the spread of the others; put features on
      comparable scales beforehand if their units differ wildly). A row is
      compared on its observed features only, the squared distance scaled by
      ``D / |o|`` so that rows with fewer observed features do not look closer;
      missing values are never filled in data rows. A candidate row's missing
      features sit at the feature mean until step 2 replaces the candidate by
      the mean of the rows it represents.
    * Empty clusters are re-seeded at the rows farthest from their own centre,
      one per donor cluster per pass (see :func:`_lloyd_update`).
    * Means are per-feature averages of the observed values; covariances are the
      cluster scatter divided by the cluster counts, pairwise over rows observing
      both features, with eigenvalues floored at ``1e-6`` in units of each
      feature's variance (positive definite, also for tiny clusters).
    * ``amp = counts / N``. A cluster still empty after re-seeding (the data have
      fewer distinct rows than K) keeps its centre, gets a sphere holding ``1/K``
      of the data's standardized volume and the weight of one row.

    The result depends on ``rng`` and the chunking only (random streams keyed by
    pass and block, fixed-shape reductions), not on the number of workers nor on
    whether the blocks come from memory or from Zarr.

    Parameters
    ----------
    K : int
        Number of components.
    plan : daskgmmis.em._Plan
        The fit's data plan: ``x_blocks`` (delayed (n_b, D) blocks, NaN = missing),
        ``offsets`` (global index of each block's first row), ``D``.
    summary : DataSummary
        First-pass summary (per-feature means for centring).
    rng : numpy.random.Generator
        Seeds every random choice.
    client : distributed.Client, optional
        ``None``: dask's threaded scheduler.
    rounds : int
        k-means|| sampling rounds after the uniform one.
    oversampling : float
        Candidates per round in units of K (``ell / K``).
    max_iter : int
        Maximum Lloyd iterations on the data.
    tol : float
        Convergence threshold, relative to the mean feature variance.

    Returns
    -------
    amp : ndarray, shape (K,)
    mean : ndarray, shape (K, D)
    covar : ndarray, shape (K, D, D)
    """
    _check_summary(summary)
    rng = np.random.default_rng(rng)
    passes = _KMeansPasses(plan, client)
    entropy = [int(v) for v in rng.integers(0, 2**63, size=4)]
    ell = max(1, math.ceil(oversampling * K))
    shift = summary.total / summary.n_obs
    first = passes.sample(0, entropy, shift, None, ell)
    count, s1, s2 = first.moments
    var = np.maximum(s2 / count - (s1 / count) ** 2, 0.0)
    spread = np.maximum(summary.hi - summary.lo, np.abs(shift))
    # a constant feature gets unit scale so the covariance floor stays positive
    sigma = np.where(var > (_MIN_SCALE_FRACTION * spread) ** 2, np.sqrt(var), 1.0)
    tol_abs = tol * float(np.mean(sigma**2))

    def as_centres(rows):
        # candidates' missing features sit at the feature mean (0) until step 2
        return np.nan_to_num(_centred(rows, shift), nan=0.0)

    cand = as_centres(first.rows)
    for r in range(1, rounds + 1):
        drawn = passes.sample(r, entropy, shift, cand, ell)
        log.debug("k-means|| round %d: cost %.6g, %d new candidates", r, drawn.phi,
                  len(drawn.key))
        cand = np.concatenate([cand, as_centres(drawn.rows)])
    st = passes.lloyd(shift, cand)
    keep = st.n > 0
    points = np.where(st.count > 0, cand + st.s1 / np.where(st.count > 0, st.count, 1.0),
                      cand)[keep]
    weights = st.n[keep]
    stream = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(1,)))
    centres = _kmeanspp(points, weights, K, stream)
    centres = _weighted_lloyd(points, weights, centres, max_iter=100, tol=1e-2 * tol_abs)
    centres, n_iter, n_reseeded = _lloyd(passes, shift, centres, max_iter, tol_abs)
    final = passes.lloyd(shift, centres, scatter=True)
    log.info("k-means init: %d candidates, %d Lloyd iterations, %d re-seeded, cost %.6g",
             len(points), n_iter, n_reseeded, final.cost)
    return _finalize(centres, final, shift, sigma, K)


def _lloyd(passes: _KMeansPasses, shift, centres, max_iter: int, tol: float):
    """Lloyd iterations on the data, one map-reduce each.

    Parameters
    ----------
    passes : _KMeansPasses
    shift : ndarray, shape (D,)
        Centring of the data.
    centres : ndarray, shape (K, D)
        Starting centres, centred units.
    max_iter : int
    tol : float
        Stop when the squared centre shifts sum to at most ``tol`` (data units
        squared) and no cluster was re-seeded.

    Returns
    -------
    centres : ndarray, shape (K, D)
        Centred units.
    n_iter : int
    n_reseeded : int
        Total empty-cluster re-seedings.
    """
    n_reseeded = 0
    it = 0
    for it in range(1, max_iter + 1):
        st = passes.lloyd(shift, centres)
        new, reseeded = _lloyd_update(centres, st)
        n_reseeded += reseeded
        moved = float(((new - centres) ** 2).sum())
        centres = new
        if reseeded == 0 and moved <= tol:
            break
    return centres, it, n_reseeded
