"""Block summaries, component-reach tests and the spatial row order (docs/design.md §1.5).

Pure numpy: no dask in here. The EM driver summarizes every block once (its
:class:`BlockBox`) and, at every iteration, asks :class:`ReachTest` which
components' cutoff ellipsoids can reach the block; a block task then evaluates only
those components. The test is *conservative*: it may keep a component that no row
of the block reaches, never the reverse.

The reach rule
--------------
A row ``x`` with observed features ``o`` and noise ``S`` is inside component k's
neighborhood when ``(x_o - mu_o)^T (V_oo + S_oo)^-1 (x_o - mu_o) <= c(|o|)``, with
``c(d)`` the chi-square(d) quantile of :func:`daskgmmis.kernels.chi2_cut_for`. For a
block we know a box ``[lo, hi]`` holding every observed value, per-feature bounds
``S_jj <= max_var_j`` and a bound ``S_oo <= s_max I`` (Loewner order). Because
``(V + S)^-1 >= (V + s_max I)^-1`` and the one-dimensional marginal never exceeds
the full Mahalanobis distance, each of

* the axis test ``max_j gap_j^2 / (V_jj + max_var_j)``, ``gap_j`` the distance
  from ``mu_j`` to ``[lo_j, hi_j]`` (exact for the ellipsoid's bounding box);
* the sphere test ``|gap|^2 / lambda_max(V_oo + s_max I)``;
* the eigenbasis test ``sum_m dist_m^2 / (lambda_m + s_max)``, ``dist_m`` the
  distance from the projection of ``mu`` onto V's m-th eigenvector to the
  projection of the box (an interval)

is a lower bound of every row's distance; a component is dropped only when the
largest of them exceeds the cut (times ``1 + 1e-9``, and with eigenvalues inflated
by ``64 d eps lambda_max`` so rounding in ``eigh`` cannot break the bound).

Missing features: a row is measured in its observed subspace, where the marginal
ellipsoid is smaller *and* the chi-square cut too. With the block's missingness
patterns known (:func:`block_box` records them), the component reaches the block
when it reaches the box restricted to some pattern's features with that pattern's
cut. Without patterns (:meth:`BlockBox.from_summary`), features missing in some row
of the block are left unconstrained (the test runs on the features observed in
every row) and the cut for the largest number of observed features is used; since
dropping features never increases a Mahalanobis distance and ``c(d)`` grows with
``d``, both rules are conservative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .kernels import BlockMoments, chi2_cut_for, estep_block, fill_outside
from .noise import NoNoise, as_noise, noise_class

__all__ = ["BlockBox", "block_box", "chi2_cuts", "ReachTest", "components_reaching",
           "spatial_order"]

_EPS = np.finfo(np.float64).eps
_RELATIVE_SLACK = 1e-9


# ------------------------------------------------------------------ block summaries


@dataclass
class BlockBox:
    """What the reach test needs to know about one block of rows.

    Attributes
    ----------
    lo, hi : ndarray, shape (D,)
        Smallest / largest observed value per feature (NaN where none is observed).
    max_var : ndarray, shape (D,)
        Upper bound on the noise variance ``S_jj`` of every row observing feature
        j (0 without noise).
    s_max : float
        Upper bound on the largest eigenvalue of every row's noise covariance
        restricted to its observed features.
    partial : ndarray of bool, shape (D,)
        Features missing in at least one row of the block.
    patterns : ndarray of bool, shape (P, D), or None
        The observed-feature masks present in the block (``None``: unknown; the
        reach test then leaves ``partial`` features unconstrained).
    n : int
        Rows in the block.
    """

    lo: np.ndarray
    hi: np.ndarray
    max_var: np.ndarray
    s_max: float
    partial: np.ndarray
    patterns: np.ndarray | None = None
    n: int = 0

    @classmethod
    def from_summary(cls, summary, kind: str, shared: np.ndarray | None = None) -> "BlockBox":
        """Box of a block from its first-pass :class:`~daskgmmis.init.DataSummary`.

        Parameters
        ----------
        summary : DataSummary
            Summary of this block alone (``lo``, ``hi``, ``n``, ``n_obs``,
            ``max_noise_var`` - the diagonal of the noise for full covariances).
        kind : {"none", "shared", "diag", "full"}
            Noise kind.
        shared : ndarray, shape (D, D), optional
            The shared noise matrix (kind ``"shared"``): gives the exact ``s_max``.

        Returns
        -------
        BlockBox
            Without missingness patterns. ``s_max`` is ``max(max_var)`` for
            diagonal noise (exact), ``lambda_max(shared)`` for shared noise and the
            trace bound ``sum(max_var)`` for full per-row noise (``lambda_max <=
            trace`` for a PSD matrix; :func:`block_box` computes a tighter one).
        """
        max_var = np.asarray(summary.max_noise_var, dtype=np.float64)
        s_max = noise_class(kind).eigen_bound(max_var, shared)
        n_obs = np.asarray(summary.n_obs)
        return cls(np.asarray(summary.lo, dtype=np.float64),
                   np.asarray(summary.hi, dtype=np.float64), max_var, s_max,
                   n_obs < summary.n, None, int(summary.n))


def _mask_codes(mask: np.ndarray):
    """Rank of every row's boolean mask among the distinct masks, in code order.

    Parameters
    ----------
    mask : ndarray of bool, shape (N, D)

    Returns
    -------
    masks : ndarray of bool, shape (P, D)
        Distinct masks, sorted by their code ``sum_j mask_j 2^j`` (D <= 62) or
        lexicographically.
    rank : ndarray of int64, shape (N,)
        Index of each row's mask in ``masks``.
    """
    N, D = mask.shape
    if D > 62:
        masks, rank = np.unique(mask, axis=0, return_inverse=True)
        return masks, rank.ravel().astype(np.int64)
    codes = np.zeros(N, dtype=np.int64)
    for j in range(D):     # bit by bit: an integer matmul has no BLAS and is slow
        codes |= mask[:, j].astype(np.int64) << j
    if D <= 20:
        # few possible codes: a histogram instead of a sort
        present = np.flatnonzero(np.bincount(codes, minlength=1 << D))
        lookup = np.zeros(1 << D, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        uniq, rank = present, lookup[codes]
    else:
        uniq, rank = np.unique(codes, return_inverse=True)
    masks = ((uniq[:, None] >> np.arange(D)) & 1).astype(bool)
    return masks, rank.ravel().astype(np.int64)


def _observed_patterns(observed: np.ndarray) -> np.ndarray:
    """Distinct observed-feature masks of a block, shape (P, D), empty rows dropped."""
    if observed.all():
        return np.ones((1, observed.shape[1]), dtype=bool)
    masks = _mask_codes(observed)[0]
    return masks[masks.any(axis=1)]


def block_box(x: np.ndarray, noise=None, kind: str | None = None) -> BlockBox:
    """Summarize a block of rows for the reach test, with its missingness patterns.

    Parameters
    ----------
    x : ndarray, shape (n, D)
        Rows, NaN = missing.
    noise : Noise, None or ndarray
        A :class:`~daskgmmis.noise.Noise`, or its raw array: ``None`` (kind
        ``"none"``), ``(D, D)`` (``"shared"``), ``(n, D)`` diagonal variances
        (``"diag"``) or ``(n, D, D)`` (``"full"``).
    kind : {"none", "shared", "diag", "full"}, optional
        Kind of a raw ``noise`` array (None with a Noise or without noise).

    Returns
    -------
    BlockBox
        ``s_max`` is exact for diagonal and shared noise; for full per-row noise it
        is the largest over rows of ``min(trace, max absolute row sum)`` of the
        observed block (both bound the largest eigenvalue).
    """
    x = np.asarray(x)
    n, D = x.shape
    observed = ~np.isnan(x)
    with np.errstate(all="ignore"):
        lo = np.where(observed.any(axis=0), np.nanmin(np.where(observed, x, np.inf), axis=0),
                      np.nan).astype(np.float64)
        hi = np.where(observed.any(axis=0), np.nanmax(np.where(observed, x, -np.inf), axis=0),
                      np.nan).astype(np.float64)
    nz = NoNoise() if noise is None else as_noise(noise, kind)
    max_var, s_max = nz.max_variance(observed), nz.max_eigenvalue(observed)
    return BlockBox(lo, hi, max_var, s_max, ~observed.all(axis=0), _observed_patterns(observed),
                    n)


def chi2_cuts(cutoff: float | None, D: int) -> np.ndarray:
    """Chi-square cuts for every number of observed features.

    Parameters
    ----------
    cutoff : float or None
        Neighborhood size in 1-D sigmas (``None``: no cut).
    D : int

    Returns
    -------
    ndarray, shape (D + 1,)
        ``cuts[d] = chi2_cut_for(cutoff, d)`` for d >= 1 (``inf`` without a cut);
        ``cuts[0] = 0`` (a row with no observed feature is never used).
    """
    return np.array([0.0] + [chi2_cut_for(cutoff, d) for d in range(1, D + 1)])


# ----------------------------------------------------------------------- reach test


class ReachTest:
    """Conservative reach test of K components against block boxes.

    Build one per iteration (it caches the eigendecompositions of the
    components' covariances per feature subset) and call it per block.

    Parameters
    ----------
    mean : ndarray, shape (K, D)
    covar : ndarray, shape (K, D, D)
        Component covariances (symmetric positive definite).
    """

    def __init__(self, mean: np.ndarray, covar: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.covar = np.asarray(covar, dtype=np.float64)
        self.K, self.D = self.mean.shape
        self._var = np.diagonal(self.covar, axis1=1, axis2=2)
        self._eig: dict[bytes, tuple] = {}

    def _eigen(self, obs: np.ndarray):
        key = obs.tobytes()
        if key not in self._eig:
            idx = np.flatnonzero(obs)
            sub = self.covar[:, idx[:, None], idx[None, :]]
            lam, vec = np.linalg.eigh(0.5 * (sub + np.swapaxes(sub, 1, 2)))
            # eigh is backward stable: vec diag(lam) vec^T = V + dV with |dV| of order
            # d eps lambda_max; inflating every eigenvalue by more than that keeps
            # the bound below the true distance
            top = np.abs(lam).max(axis=1, keepdims=True)
            lam = np.maximum(lam, 0.0) + 64 * len(idx) * _EPS * top
            vec_t = np.ascontiguousarray(np.swapaxes(vec, 1, 2))   # rows: eigenvectors
            self._eig[key] = (lam, vec_t, np.abs(vec_t))
        return self._eig[key]

    def _gap_axis(self, idx, lo, hi, max_var, subset):
        """Per-feature distances from the means to the box, and the axis bound."""
        mu = self.mean[subset][:, idx]
        shrink = 1.0 - 8 * len(idx) * _EPS
        # one subtraction: exact up to relative rounding, which `shrink` absorbs
        gap = np.maximum(np.maximum(lo[idx] - mu, mu - hi[idx]), 0.0) * shrink
        axis = (gap**2 / (self._var[subset][:, idx] + max_var[idx])).max(axis=1)
        return mu, gap, axis

    def lower_bound(self, obs: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    max_var: np.ndarray, s_max: float, subset=None) -> np.ndarray:
        """Lower bound on every row's squared Mahalanobis distance, per component.

        Parameters
        ----------
        obs : ndarray of bool, shape (D,)
            The features the rows are measured on (at least one).
        lo, hi : ndarray, shape (D,)
            Box of the rows' values (entries outside ``obs`` ignored).
        max_var : ndarray, shape (D,)
            Bounds on the noise variances.
        s_max : float
            Bound on the noise covariance's largest eigenvalue.
        subset : ndarray of int, optional
            Components to bound (default all).

        Returns
        -------
        ndarray, shape (K,) or (len(subset),)
            The largest of the axis, sphere and eigenbasis bounds.
        """
        subset = np.arange(self.K) if subset is None else np.asarray(subset)
        idx = np.flatnonzero(obs)
        d = len(idx)
        mu, gap, axis = self._gap_axis(idx, lo, hi, max_var, subset)
        lam, vec_t, absvec_t = (a[subset] for a in self._eigen(obs))
        lam = lam + s_max
        sphere = (gap**2).sum(axis=1) / lam[:, -1]
        lo_o, hi_o = lo[idx], hi[idx]
        centre = 0.5 * (lo_o + hi_o)
        # half-widths grown by the rounding of (lo + hi)/2 and (hi - lo)/2 so the box
        # [centre - half, centre + half] contains [lo, hi]
        half = 0.5 * (hi_o - lo_o) + 2 * _EPS * (np.abs(lo_o) + np.abs(hi_o))
        proj = np.matmul(vec_t, (mu - centre)[:, :, None])[:, :, 0]     # (k, m)
        width = absvec_t @ half
        dist = np.maximum(np.abs(proj) * (1.0 - 8 * d * _EPS) - width * (1.0 + 8 * d * _EPS),
                          0.0)
        eig = (dist**2 / lam).sum(axis=1)
        return np.maximum(np.maximum(axis, sphere), eig)

    def _reach(self, obs: np.ndarray, box: BlockBox, cut: float) -> np.ndarray:
        """Reach for rows measured on ``obs``: the cheap axis test first, the
        eigenbasis bounds only for the components it keeps (few, at large K)."""
        limit = cut * (1.0 + _RELATIVE_SLACK)
        idx = np.flatnonzero(obs)
        axis = self._gap_axis(idx, box.lo, box.hi, box.max_var, slice(None))[2]
        reach = axis <= limit
        keep = np.flatnonzero(reach)
        if keep.size:
            reach[keep] = self.lower_bound(obs, box.lo, box.hi, box.max_var, box.s_max,
                                           keep) <= limit
        return reach

    def __call__(self, box: BlockBox, chi2_cut) -> np.ndarray:
        """Components whose neighborhood may contain a row of the block.

        Parameters
        ----------
        box : BlockBox
        chi2_cut : float or ndarray of shape (D + 1,)
            One squared-distance cut for every row (pass the cut for the largest
            number of observed features, e.g. ``chi2_cut_for(cutoff, D)``), or
            the cut per number of observed features (:func:`chi2_cuts`), which
            must not decrease with the number of features (chi-square quantiles
            do not): without patterns the cut of the largest number is used.

        Returns
        -------
        ndarray of bool, shape (K,)
            False only for components that no row of the block can reach.
        """
        cuts = np.asarray(chi2_cut, dtype=np.float64)
        observed_any = np.isfinite(box.lo) & np.isfinite(box.hi)
        if not observed_any.any():
            # no observed value in the block: no row to reach
            return np.zeros(self.K, dtype=bool)

        def cut_for(d):
            return float(cuts) if cuts.ndim == 0 else float(cuts[d])

        if box.patterns is not None:
            reach = np.zeros(self.K, dtype=bool)
            for obs in box.patterns:
                cut = cut_for(int(obs.sum()))
                if not np.isfinite(cut):
                    return np.ones(self.K, dtype=bool)
                reach |= self._reach(obs, box, cut)
                if reach.all():
                    break
            return reach
        # no pattern information: measure on the features every row observes, with
        # the cut of the largest possible number of observed features
        cut = cut_for(int(observed_any.sum()))
        complete = observed_any & ~np.asarray(box.partial, dtype=bool)
        if not complete.any() or not np.isfinite(cut):
            return np.ones(self.K, dtype=bool)
        return self._reach(complete, box, cut)

    def matrix(self, boxes, chi2_cut) -> np.ndarray:
        """Reach of every component for a sequence of blocks.

        Parameters
        ----------
        boxes : sequence of BlockBox, length B
        chi2_cut : float or ndarray of shape (D + 1,)

        Returns
        -------
        ndarray of bool, shape (B, K)
        """
        return np.stack([self(box, chi2_cut) for box in boxes]) if len(boxes) else \
            np.zeros((0, self.K), dtype=bool)


def components_reaching(lo, hi, max_var, mean, covar, chi2_cut, *, s_max: float | None = None,
                        patterns=None, partial=None) -> np.ndarray:
    """Which components' cutoff ellipsoids can reach a box of rows (conservative).

    Parameters
    ----------
    lo, hi : array_like, shape (D,)
        Box holding every observed value of the rows.
    max_var : array_like, shape (D,)
        Upper bound on each row's noise variance per feature (0: no noise).
    mean : ndarray, shape (K, D)
    covar : ndarray, shape (K, D, D)
    chi2_cut : float or ndarray of shape (D + 1,)
        Squared Mahalanobis cut: one value (use the cut for the largest number of
        observed features) or one per number of observed features.
    s_max : float, optional
        Upper bound on the largest eigenvalue of every row's (observed) noise
        covariance. Default ``max(max_var)``, which is valid for *diagonal* noise
        only; for full noise pass a bound such as the trace bound ``sum(max_var)``.
    patterns : ndarray of bool, shape (P, D), optional
        Observed-feature masks present among the rows.
    partial : ndarray of bool, shape (D,), optional
        Features missing in some row (used when ``patterns`` is None; default
        none missing).

    Returns
    -------
    ndarray of bool, shape (K,)
        True for every component some row in the box (with any admissible noise)
        could be within the cut of; see the module notes for the rule.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    max_var = np.asarray(max_var, dtype=np.float64)
    D = lo.shape[0]
    box = BlockBox(lo, hi, max_var,
                   float(max_var.max(initial=0.0)) if s_max is None else float(s_max),
                   np.zeros(D, dtype=bool) if partial is None else np.asarray(partial, bool),
                   None if patterns is None else np.atleast_2d(np.asarray(patterns, bool)),
                   1)
    return ReachTest(mean, covar)(box, chi2_cut)


# ------------------------------------------------------------------- spatial order

_MAX_BITS = 21      # per feature: 3 x 21 = 63 bits for D = 3


def _spread_table(D: int) -> np.ndarray:
    """Table of 8-bit values with bit i moved to bit i*D (uint64, wrapped)."""
    v = np.arange(256, dtype=np.uint64)
    out = np.zeros(256, dtype=np.uint64)
    for i in range(8):
        if i * D < 64:
            out |= ((v >> np.uint64(i)) & np.uint64(1)) << np.uint64(i * D)
    return out


def spatial_order(x: np.ndarray) -> np.ndarray:
    """Row permutation along a Morton (Z-order) curve of the observed features.

    Rule: rows are grouped by missingness pattern first (complete rows first, then
    patterns by the bit code of their missing features), then ordered by the
    Morton code of their features, each quantized to ``b = min(21, (63 - p) // D)``
    bits over its observed range (``p`` bits rank the patterns; a missing value
    takes cell 0, constant inside a pattern, so the curve runs over the observed
    features). Grouping patterns keeps most blocks to one pattern, which the
    pattern-aware reach test exploits. With more than ``63 - p`` features only
    the first ``63 - p`` enter the code. Ties keep the input order (stable sort).

    Parameters
    ----------
    x : ndarray, shape (N, D)
        Rows, NaN = missing.

    Returns
    -------
    ndarray of int64, shape (N,)
        ``x[perm]`` is in curve order.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"x: expected shape (N, D); found {x.shape}.")
    N, D = x.shape
    if N == 0:
        return np.zeros(0, dtype=np.int64)
    missing = np.isnan(x)
    rank = None
    p_bits = 0
    if missing.any():
        masks, rank = _mask_codes(missing)
        rank = rank.astype(np.uint64)
        p_bits = int(np.ceil(np.log2(len(masks)))) if len(masks) > 1 else 0
    n_dims = min(D, 63 - p_bits)
    bits = min(_MAX_BITS, (63 - p_bits) // n_dims)
    table = _spread_table(n_dims)
    cells_max = float(2**bits)
    key = np.zeros(N, dtype=np.uint64)
    # preallocated buffers, reused for every feature: at 10^7 rows fresh temporaries
    # cost more in first-touch page faults than the arithmetic itself
    scaled = np.empty(N)
    cells = np.empty(N, dtype=np.uint64)
    spread = np.empty(N, dtype=np.uint64)
    for j in range(n_dims):
        col = x[:, j]
        lo, hi = float(np.fmin.reduce(col)), float(np.fmax.reduce(col))
        if not hi > lo:          # constant or never observed: one cell
            continue
        np.subtract(col, lo, out=scaled)
        scaled *= cells_max / (hi - lo)
        np.floor(scaled, out=scaled)
        np.fmax(scaled, 0.0, out=scaled)          # fmax also maps NaN (missing) to cell 0
        np.minimum(scaled, cells_max - 1, out=scaled)
        np.copyto(cells, scaled, casting="unsafe")
        for t in range(0, bits, 8):
            np.right_shift(cells, np.uint64(t), out=spread)
            np.bitwise_and(spread, np.uint64(255), out=spread)
            np.take(table, spread, out=spread)
            np.left_shift(spread, np.uint64(t * n_dims + j), out=spread)
            key |= spread
    if rank is not None and p_bits:
        key |= rank << np.uint64(bits * n_dims)
    return np.argsort(key, kind="stable").astype(np.int64)


# ------------------------------------------------------------- neighborhood E-step

#: Rows per tile of the neighborhood E-step: small enough that consecutive rows of a
#: spatially ordered catalog are compact, large enough that the reach test (about
#: 0.5 ms at K=500) is small next to the tile's E-step.
TILE_ROWS = 4096


def estep_neighborhoods(x: np.ndarray, noise, kind: str | None, amp, mean, covar, *, cutoff: float,
                        comps: np.ndarray | None = None, log_bg=None, weight=None,
                        row_offset: int = 0, tile_rows: int = TILE_ROWS):
    """E-step of a block touching, per tile of rows, only the components that reach it.

    The result equals :func:`daskgmmis.kernels.estep_block` with the same ``cutoff``
    (components outside a row's neighborhood contribute exactly zero there); only
    the work differs.

    Parameters
    ----------
    x, noise, kind, amp, mean, covar, log_bg, weight, row_offset
        As in :func:`daskgmmis.kernels.estep_block`.
    cutoff : float
        Neighborhood size in 1-D-equivalent sigmas.
    comps : ndarray of int, optional
        Components that may reach the block at all (from the driver's block-level
        test); default all.
    tile_rows : int
        Rows per tile.

    Returns
    -------
    row_logl (n,), n_outside, BlockMoments (K components)
    """
    K, D = mean.shape
    noise = as_noise(noise, kind)
    comps = np.arange(K) if comps is None else np.asarray(comps, dtype=np.int64)
    cuts = chi2_cuts(cutoff, D)
    reach_test = ReachTest(mean[comps], covar[comps])
    n = x.shape[0]
    row_logl = np.empty(n)
    A, M1, M2 = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    bg, n_out = 0.0, 0
    for start in range(0, n, tile_rows):
        rows = slice(start, min(start + tile_rows, n))
        xt = x[rows]
        nt = noise.rows(rows)
        local = comps[reach_test(block_box(xt, nt), cuts)]
        lb = None if log_bg is None else log_bg[rows]
        wt = None if weight is None else weight[rows]
        row_logl[rows], n_t, mom = estep_block(
            xt, nt, None, amp[local], mean[local], covar[local], log_bg=lb, weight=wt,
            cutoff=cutoff, row_offset=row_offset + start, exact_outside=False)
        n_out += n_t
        A[local] += mom.A
        M1[local] += mom.M1
        M2[local] += mom.M2
        bg += mom.bg
    fill_outside(row_logl, x, noise, None, amp, mean, covar, log_bg=log_bg,
                 row_offset=row_offset)
    return row_logl, n_out, BlockMoments(A, M1, M2, bg)
