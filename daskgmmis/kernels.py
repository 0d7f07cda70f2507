"""Pure block math of the E-step: no dask in here.

Everything in this module works on numpy blocks of rows and returns numpy arrays.
The EM driver (:mod:`daskgmmis.em`) and the model (:mod:`daskgmmis.model`) call it
inside block tasks.

Notation (docs/design.md §1.1-1.2): row ``i`` observes ``x_i = R_i v_i + e_i`` (a
projection; ``R_i = I`` without one) on its observed entries ``o``; ``P_i = R_i[o]``
(the rows ``o`` of the identity for missing features: one code path). For component
``k``, ``T_ik = P_i V_k P_i^T + S_i[o,o]``, ``r_ik = x_i[o] - P_i mu_k``,
``u_ik = T_ik^-1 r_ik``. A block accumulates, per component and weighted by the
responsibility ``q_ik`` (times an optional row weight),

* ``A_k = sum q``
* ``U_k = sum q P^T u`` (embedded into D dimensions, zero on missing ones)
* ``WP_k = sum q P^T (u u^T - T^-1) P`` (embedded likewise)

and converts them with the component's own ``V_k`` into moments centred on the
current mean ``mu_k``:

* ``M1_k = sum q (b - mu) = V U``
* ``M2_k = sum q ((b - mu)(b - mu)^T + B) = A V + V WP V``

where ``b``/``B`` are the posterior mean/covariance of the error-free value.
Centring on the current mean keeps the M-step free of catastrophic cancellation.

Two numba kernels do the per-row work:

* :func:`_shared_kernel` - ``T_k`` is the same for every row of a missingness
  pattern (no noise, or one shared noise matrix). It works on transposed tiles so
  that the loops over rows vectorize (SIMD), accumulating the whitened moments
  ``Z1 = sum q z``, ``Z2 = sum q z z^T`` with ``z = L^-1 r``.
* :func:`_rowcov_tiled` - per-row noise (diagonal or full): one factorization
  ``T_ik = L D L^T`` per (row, component), as extreme deconvolution needs, one
  component over a tile of rows at a time so that the loops over rows vectorize;
  float32 rows are factored in float32 (moments in float64; ``_ROWCOV_FLOAT32``).
  :func:`_rowcov_kernel` is the scalar per-(row, component) kernel it replaced,
  kept for ``benchmarks/bench_em.py`` to measure against (``_ROWCOV_TILED``).

The per-row posteriors (:func:`posterior_block`: responsibilities, ``b_ik``,
``B_ik``) are the same algebra, batched in numpy; :mod:`daskgmmis.posterior`
builds its graphs on them, :meth:`daskgmmis.GMM.condition` calls them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from scipy.special import logsumexp

from ._plain_kernels import SHARED_KERNELS
from .errors import NumericalError
from .noise import NOISE_KINDS, Noise, as_noise, kind_of

__all__ = [
    "NOISE_KINDS",
    "noise_kind_of",
    "missing_patterns",
    "cholesky_lower",
    "chi2_cut_for",
    "BlockMoments",
    "estep_block",
    "log_density_block",
]

LOG_2PI = math.log(2.0 * math.pi)

# Rows per tile in the shared-covariance kernel: (K, D, TILE) float64 scratch must
# stay in L2 for K up to a few hundred.
_TILE = 128

# Rows sharing T_k with d <= 8 observed features go through the kernels unrolled over
# d (daskgmmis/_plain_kernels.py, generated): their whitened residuals stay in
# registers. Rows per tile: the (K, tile) log-densities of a tile stay in L2.
_UNROLLED_TILE = 512


def noise_kind_of(covar, n_rows: int | None, D: int, *, warn_ambiguous: bool = False) -> str:
    """Classify a noise covariance argument by shape.

    Parameters and the reading of ambiguous shapes as in
    :meth:`daskgmmis.noise.Noise.of`, of which this is the kind alone (a thin
    wrapper of :func:`daskgmmis.noise.kind_of`; nothing is converted or computed).

    Returns
    -------
    str
        One of ``"none"``, ``"shared"``, ``"diag"``, ``"full"``.
    """
    return kind_of(covar, n_rows, D, warn_ambiguous=warn_ambiguous, stacklevel=5)


def missing_patterns(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Group the rows of a block by which features are observed.

    Parameters
    ----------
    x : ndarray, shape (n, D)
        Block of rows, NaN marking a missing feature.

    Returns
    -------
    list of (obs, rows)
        ``obs`` is a boolean ``(D,)`` mask of observed features, ``rows`` the
        integer indices of the rows with that pattern, or ``None`` for "all rows"
        (the common complete-data case: no gather). Patterns with no observed
        feature are omitted.
    """
    n, D = x.shape
    # NaN propagates through a sum, so a sum that is not NaN proves the block complete
    # (one pass, no (n, D) masks, 1-D: ~0.3 ms per 125000 x 5 block rather than 0.65;
    # a NaN from inf - inf only takes the long way)
    if not np.isnan(np.sum(x.ravel())):
        return [(np.ones(D, dtype=bool), None)]
    observed = ~np.isnan(x)
    if observed.all():
        return [(np.ones(D, dtype=bool), None)]
    if D <= 62:
        codes = observed.astype(np.int64) @ (np.int64(1) << np.arange(D, dtype=np.int64))
        uniq, inverse = np.unique(codes, return_inverse=True)
        masks = ((uniq[:, None] >> np.arange(D)) & 1).astype(bool)
    else:
        masks, inverse = np.unique(observed, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(masks) + 1))
    out = []
    for p, mask in enumerate(masks):
        if not mask.any():
            continue
        out.append((mask, order[bounds[p]:bounds[p + 1]]))
    return out


def cholesky_lower(mats: np.ndarray, what: str = "covariance", *,
                   rows_global=None) -> np.ndarray:
    """Batched lower Cholesky factor with an error that names the failing matrix.

    Parameters
    ----------
    mats : ndarray, shape (K, d, d), or (n, K, d, d) with ``rows_global``
        Symmetric positive-definite matrices.
    what : str
        Name used in the error message.
    rows_global : callable, optional
        For per-row matrices (n, K, d, d): local row index -> global row index, so
        the message names the row and the component.

    Returns
    -------
    ndarray, same shape as ``mats``

    Raises
    ------
    NumericalError
        If a matrix is not positive definite (its index is named).
    """
    try:
        return np.linalg.cholesky(mats)
    except np.linalg.LinAlgError:
        if rows_global is not None:
            # error path only: find the culprit to name it
            for i in range(mats.shape[0]):
                for k in range(mats.shape[1]):
                    try:
                        np.linalg.cholesky(mats[i, k])
                    except np.linalg.LinAlgError:
                        raise NumericalError(
                            f"row {rows_global(i)}: component {k} covariance + noise "
                            f"covariance is not positive definite; check that the row's "
                            f"noise covariance is symmetric positive semi-definite.") from None
            raise
        for k in range(mats.shape[0]):
            try:
                np.linalg.cholesky(mats[k])
            except np.linalg.LinAlgError:
                raise NumericalError(
                    f"{what} {k} is not positive definite (smallest eigenvalue "
                    f"{np.linalg.eigvalsh(mats[k]).min():.3g}); increase the "
                    f"regularization w or check the input covariances."
                ) from None
        raise


# --------------------------------------------------------------------------- numba


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _scaled_sum(e, inv_s, q, n):  # pragma: no cover - compiled
    """q[:n] = e[:n] * inv_s[:n] (responsibilities of a tile); returns their sum."""
    acc = 0.0
    for i in range(n):
        qi = e[i] * inv_s[i]
        q[i] = qi
        acc += qi
    return acc


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _shared_kernel(xt, mu, L, Ldiag_inv, logc, log_bg, weight, chi2_cut, accumulate,
                   row_logl, A, Z1, Z2, bg_acc):  # pragma: no cover - compiled
    """E-step for rows sharing T_k = L_k L_k^T; see module docstring.

    xt (d, n) transposed observed values; mu (K, d); L (K, d, d) lower factors;
    Ldiag_inv (K, d) reciprocals of their diagonals; logc (K,) = log amp - log
    normalization; log_bg (n,) or (0,); weight (n,) or (0,). Writes row_logl (n,)
    and adds to A (K,), Z1 (K, d), Z2 (K, d, d) (lower triangle), bg_acc (1,).
    Returns the number of rows outside every neighborhood (zero density).
    """
    d, n = xt.shape
    K = mu.shape[0]
    has_bg = log_bg.shape[0] > 0
    has_w = weight.shape[0] > 0
    z = np.empty((K, d, _TILE))
    lp = np.empty((K, _TILE))
    m = np.empty(_TILE)
    off = np.empty(_TILE)
    s = np.empty(_TILE)
    inv_s = np.empty(_TILE)
    ebg = np.empty(_TILE)
    q = np.empty(_TILE)
    n_out = 0
    for start in range(0, n, _TILE):
        nb = min(_TILE, n - start)
        for k in range(K):
            for i in range(nb):
                m[i] = 0.0
            for j in range(d):
                muj = mu[k, j]
                for i in range(nb):
                    z[k, j, i] = xt[j, start + i] - muj
                for l in range(j):
                    c = L[k, j, l]
                    for i in range(nb):
                        z[k, j, i] -= c * z[k, l, i]
                inv = Ldiag_inv[k, j]
                for i in range(nb):
                    v = z[k, j, i] * inv
                    z[k, j, i] = v
                    m[i] += v * v
            lc = logc[k]
            for i in range(nb):
                if m[i] <= chi2_cut:
                    lp[k, i] = lc - 0.5 * m[i]
                else:
                    lp[k, i] = -np.inf
        # log-sum-exp over components (and background)
        for i in range(nb):
            off[i] = log_bg[start + i] if has_bg else -np.inf
        for k in range(K):
            for i in range(nb):
                if lp[k, i] > off[i]:
                    off[i] = lp[k, i]
        for i in range(nb):
            if off[i] == -np.inf:
                off[i] = 0.0
            s[i] = 0.0
        for k in range(K):
            for i in range(nb):
                e = math.exp(lp[k, i] - off[i])
                lp[k, i] = e
                s[i] += e
        if has_bg:
            for i in range(nb):
                e = math.exp(log_bg[start + i] - off[i])
                ebg[i] = e
                s[i] += e
        for i in range(nb):
            if s[i] > 0.0:
                row_logl[start + i] = off[i] + math.log(s[i])
                inv_s[i] = 1.0 / s[i]
                if has_w:
                    inv_s[i] *= weight[start + i]
            else:
                row_logl[start + i] = -np.inf
                inv_s[i] = 0.0
                n_out += 1
        if not accumulate:
            continue
        if has_bg:
            bg_acc[0] += _scaled_sum(ebg, inv_s, q, nb)
        for k in range(K):
            acc = _scaled_sum(lp[k], inv_s, q, nb)
            if acc == 0.0:
                continue
            A[k] += acc
            for j in range(d):
                acc = 0.0
                for i in range(nb):
                    acc += q[i] * z[k, j, i]
                Z1[k, j] += acc
                for l in range(j + 1):
                    acc = 0.0
                    for i in range(nb):
                        acc += q[i] * z[k, j, i] * z[k, l, i]
                    Z2[k, j, l] += acc
    return n_out


@numba.njit(nogil=True, cache=True)
def _rowcov_kernel(x, S_full, S_diag, is_diag, V, mu, logamp, log_bg, weight, chi2_cut,
                   accumulate, row_logl, A, U, WP, bg_acc):  # pragma: no cover - compiled
    """E-step with per-row noise: T_ik = V_k + S_i factored per (row, component).

    x (n, d); S_full (n, d, d) or S_diag (n, d) (the other one empty); V (K, d, d);
    mu (K, d); logamp (K,). Writes row_logl and adds to A (K,), U (K, d),
    WP (K, d, d) (lower triangle), bg_acc (1,).
    Returns (n_outside, failing_row) with failing_row = -1 when every T_ik was
    positive definite.
    """
    n, d = x.shape
    K = mu.shape[0]
    has_bg = log_bg.shape[0] > 0
    has_w = weight.shape[0] > 0
    Ls = np.empty((K, d, d))
    zs = np.empty((K, d))
    lp = np.empty(K)
    u = np.empty(d)
    Li = np.zeros((d, d))
    c0 = -0.5 * d * LOG_2PI
    n_out = 0
    for i in range(n):
        for k in range(K):
            Lk = Ls[k]
            for a in range(d):
                for b in range(a + 1):
                    if is_diag:
                        t = V[k, a, b] + (S_diag[i, a] if a == b else 0.0)
                    else:
                        t = V[k, a, b] + S_full[i, a, b]
                    Lk[a, b] = t
            logdet = 0.0
            for a in range(d):
                for b in range(a + 1):
                    t = Lk[a, b]
                    for c in range(b):
                        t -= Lk[a, c] * Lk[b, c]
                    if a == b:
                        if not t > 0.0:
                            return n_out, i
                        t = math.sqrt(t)
                        Lk[a, a] = t
                        logdet += math.log(t)
                    else:
                        Lk[a, b] = t / Lk[b, b]
            mah = 0.0
            for a in range(d):
                t = x[i, a] - mu[k, a]
                for c in range(a):
                    t -= Lk[a, c] * zs[k, c]
                t /= Lk[a, a]
                zs[k, a] = t
                mah += t * t
            if mah <= chi2_cut:
                lp[k] = logamp[k] + c0 - logdet - 0.5 * mah
            else:
                lp[k] = -np.inf
        off = log_bg[i] if has_bg else -np.inf
        for k in range(K):
            if lp[k] > off:
                off = lp[k]
        if off == -np.inf:
            row_logl[i] = -np.inf
            n_out += 1
            continue
        tot = 0.0
        for k in range(K):
            e = math.exp(lp[k] - off)
            lp[k] = e
            tot += e
        ebg = 0.0
        if has_bg:
            ebg = math.exp(log_bg[i] - off)
            tot += ebg
        row_logl[i] = off + math.log(tot)
        if not accumulate:
            continue
        scale = 1.0 / tot
        if has_w:
            scale *= weight[i]
        bg_acc[0] += ebg * scale
        for k in range(K):
            qk = lp[k] * scale
            if qk == 0.0:
                continue
            Lk = Ls[k]
            # u = L^-T z
            for a in range(d - 1, -1, -1):
                t = zs[k, a]
                for c in range(a + 1, d):
                    t -= Lk[c, a] * u[c]
                u[a] = t / Lk[a, a]
            A[k] += qk
            for a in range(d):
                U[k, a] += qk * u[a]
            # Li = L^-1 (lower); T^-1 = Li^T Li
            for col in range(d):
                for a in range(col, d):
                    t = 1.0 if a == col else 0.0
                    for c in range(col, a):
                        t -= Lk[a, c] * Li[c, col]
                    Li[a, col] = t / Lk[a, a]
            for a in range(d):
                for b in range(a + 1):
                    t = 0.0
                    for c in range(a, d):
                        t += Li[c, a] * Li[c, b]
                    WP[k, a, b] += qk * (u[a] * u[b] - t)
    return n_out, -1


# Rows per tile of the per-row-noise kernel: long loops over rows amortize the cost of
# starting each vectorized loop (measured at D=5, K=20: 16 rows 1.4x slower than 128),
# as long as the K factors of a tile, K d (d + 2) tile values, stay within ~1 MB of
# cache. See _rowcov_tile.
_RTILE_MAX = 128
_RTILE_MIN = 16
_RTILE_BYTES = 1 << 20
# Private switch for benchmarks/bench_em.py: False runs the scalar kernel it replaced.
_ROWCOV_TILED = True
# Private switch: float32 arithmetic in _rowcov_tiled for float32 rows (1.2-1.5x at
# D=5, K=20 in benchmarks/bench_em.py; log-densities within 1e-4, moments within 1e-5
# relative). Off promotes float32 rows exactly to float64, so a float32 fit equals the
# float64 fit of the same values (tests/test_robustness.py).
_ROWCOV_FLOAT32 = True


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _rowcov_tiled(x, S_full, S_diag, is_diag, V, mu, logamp, log_bg, weight, chi2_cut,
                  accumulate, row_logl, A, U, WP, bg_acc, tile):  # pragma: no cover
    """E-step with per-row noise, one component over a tile of rows at a time.

    Same contract as :func:`_rowcov_kernel` (T_ik = V_k + S_i factored per (row,
    component)), plus ``tile``, the number of rows per tile. The scratch is laid
    out structure-of-arrays, (d, d, tile), so that every innermost loop runs over
    the tile's rows and compiles to SIMD. The last tile is padded with copies of its
    last row (responsibility 0), so every such loop has the same trip count.

    1. Per component: T_ik = L D L^T with unit lower L (no square roots; D_a are the
       squared Cholesky pivots), y = L^-1 r, Mahalanobis distance
       m_ik = sum_a y_a^2 / D_a and det(T_ik) = prod_a D_a.
    2. Responsibilities without a log per (row, component): with
       h_i = min_k m_ik / 2, ``e_ik = amp_k (2 pi)^(-d/2) det(T_ik)^(-1/2)
       exp(h_i - m_ik / 2)`` and ``row_logl_i = log(sum_k e_ik) - h_i``. A row whose
       sum leaves [1e-250, 1e250] (extreme scales, rows outside every
       neighborhood, a background far above the components) is redone by the
       log-sum-exp over per-pivot logs.
    3. Per component with a responsibility in the tile: u = L^-T D^-1 y,
       T^-1 = L^-T D^-1 L^-1, accumulated with u u^T into the lower triangle of WP.

    The noise kind is chosen per matrix entry, outside the loops over rows. The
    arithmetic of the factorization and solves is in the precision of ``x``
    (float32 or float64); responsibilities, row_logl, A, U and WP are float64.
    Returns (n_outside, failing_row) with failing_row = -1 when every T_ik was
    positive definite, else the first row (in row order) with a T_ik that is not.
    """
    n, d = x.shape
    K = mu.shape[0]
    ft = x.dtype
    one = np.ones(1, dtype=ft)[0]
    has_bg = log_bg.shape[0] > 0
    has_w = weight.shape[0] > 0
    TL = tile
    L = np.empty((K, d, d, TL), dtype=ft)         # unit lower L; D on the diagonal
    Dinv = np.empty((K, d, TL), dtype=ft)         # 1 / D
    y = np.empty((K, d, TL), dtype=ft)
    m = np.empty((K, TL))                           # Mahalanobis distance (inf: cut)
    e = np.empty((K, TL))                           # 1 / det T, then unnormalized q
    xt = np.empty((d, TL), dtype=ft)
    St = np.zeros((d, d, TL), dtype=ft)
    Vk = np.empty((d, d), dtype=ft)
    W = np.empty((d, d, TL), dtype=ft)            # L D, row by row
    t = np.empty(TL, dtype=ft)
    mk = np.empty(TL, dtype=ft)
    u = np.empty((d, TL), dtype=ft)
    Li = np.empty((d, d, TL), dtype=ft)
    uq = np.empty((d, TL))
    Lq = np.empty((d, d, TL))
    q = np.empty(TL)
    h = np.empty(TL)
    s = np.empty(TL)
    inv_s = np.empty(TL)
    ebg = np.zeros(TL)
    ampc = np.exp(logamp - 0.5 * d * LOG_2PI)
    n_out = 0
    for start in range(0, n, TL):
        nb = min(TL, n - start)
        # transpose the tile once (every component reads it with unit stride); pad
        # a short tile with its last row, which is positive definite if that row is
        for i in range(TL):
            r = start + min(i, nb - 1)
            for a in range(d):
                xt[a, i] = x[r, a]
            if is_diag:
                for a in range(d):
                    St[a, a, i] = S_diag[r, a]
            else:
                for a in range(d):
                    for b in range(a + 1):
                        St[a, b, i] = S_full[r, a, b]
        bad = 0
        for k in range(K):
            Lk = L[k]
            Dk = Dinv[k]
            yk = y[k]
            ek = e[k]
            for a in range(d):
                for b in range(a + 1):
                    Vk[a, b] = V[k, a, b]
            for i in range(TL):
                ek[i] = 1.0
            for a in range(d):
                for b in range(a + 1):
                    vab = Vk[a, b]
                    if is_diag and a != b:
                        for i in range(TL):
                            t[i] = vab
                    else:
                        for i in range(TL):
                            t[i] = vab + St[a, b, i]
                    for c in range(b):
                        for i in range(TL):
                            t[i] -= W[a, c, i] * Lk[b, c, i]
                    if a == b:
                        for i in range(TL):
                            if not t[i] > 0.0:
                                bad += 1
                        for i in range(TL):
                            ti = t[i]
                            Lk[a, a, i] = ti
                            ri = one / ti
                            Dk[a, i] = ri
                            ek[i] *= ri
                    else:
                        for i in range(TL):
                            W[a, b, i] = t[i]
                            Lk[a, b, i] = t[i] * Dk[b, i]
            for i in range(TL):
                ek[i] = math.sqrt(ek[i])
                mk[i] = 0.0
            for a in range(d):
                mua = mu[k, a]
                for i in range(TL):
                    t[i] = xt[a, i] - mua
                for c in range(a):
                    for i in range(TL):
                        t[i] -= Lk[a, c, i] * yk[c, i]
                for i in range(TL):
                    v = t[i]
                    yk[a, i] = v
                    mk[i] += v * v * Dk[a, i]
            for i in range(TL):
                mi = mk[i]
                m[k, i] = mi if mi <= chi2_cut else np.inf
        if bad:
            # error path: name the first row (in row order) with a failed pivot
            for i in range(nb):
                for k in range(K):
                    for a in range(d):
                        if not L[k, a, a, i] > 0.0:
                            return n_out, start + i
        # responsibilities, scaled by exp(h_i) with h_i = min_k m_ik / 2
        for i in range(TL):
            h[i] = np.inf
        for k in range(K):
            for i in range(TL):
                hm = 0.5 * m[k, i]
                if hm < h[i]:
                    h[i] = hm
        for i in range(TL):
            if h[i] == np.inf:
                h[i] = 0.0
            s[i] = 0.0
        for k in range(K):
            ak = ampc[k]
            for i in range(TL):
                v = ak * e[k, i] * math.exp(h[i] - 0.5 * m[k, i])
                e[k, i] = v
                s[i] += v
        if has_bg:
            for i in range(nb):
                v = math.exp(log_bg[start + i] + h[i])
                ebg[i] = v
                s[i] += v
        for i in range(nb):
            si = s[i]
            if si > 1e-250 and si < 1e250:
                row_logl[start + i] = math.log(si) - h[i]
            else:
                # exact log-sum-exp of the row from per-pivot logs
                off = log_bg[start + i] if has_bg else -np.inf
                for k in range(K):
                    lk = -np.inf
                    if m[k, i] < np.inf:
                        lk = logamp[k] - 0.5 * d * LOG_2PI - 0.5 * m[k, i]
                        for a in range(d):
                            lk -= 0.5 * math.log(L[k, a, a, i])
                    e[k, i] = lk
                    if lk > off:
                        off = lk
                if off == -np.inf:
                    off = 0.0
                si = 0.0
                for k in range(K):
                    v = math.exp(e[k, i] - off)
                    e[k, i] = v
                    si += v
                if has_bg:
                    v = math.exp(log_bg[start + i] - off)
                    ebg[i] = v
                    si += v
                s[i] = si
                row_logl[start + i] = off + math.log(si) if si > 0.0 else -np.inf
        for k in range(K):
            for i in range(nb, TL):                     # padding: may hold inf * 0
                e[k, i] = 0.0
        bg_sum = 0.0                                    # (ebg is 0 without a background)
        for i in range(TL):
            if i < nb and s[i] > 0.0:
                inv_s[i] = 1.0 / s[i]
                if has_w:
                    inv_s[i] *= weight[start + i]
                bg_sum += ebg[i] * inv_s[i]
            else:
                inv_s[i] = 0.0
                if i < nb:
                    n_out += 1
        if not accumulate:
            continue
        bg_acc[0] += bg_sum
        for k in range(K):
            acc = _scaled_sum(e[k], inv_s, q, TL)
            if acc == 0.0:
                continue
            A[k] += acc
            Lk = L[k]
            Dk = Dinv[k]
            yk = y[k]
            # u = L^-T D^-1 y = T^-1 r
            for a in range(d - 1, -1, -1):
                for i in range(TL):
                    t[i] = yk[a, i] * Dk[a, i]
                for c in range(a + 1, d):
                    for i in range(TL):
                        t[i] -= Lk[c, a, i] * u[c, i]
                for i in range(TL):
                    u[a, i] = t[i]
            # Li = L^-1 (unit lower), column by column
            for b in range(d):
                for a in range(b + 1, d):
                    for i in range(TL):
                        t[i] = -Lk[a, b, i]
                    for c in range(b + 1, a):
                        for i in range(TL):
                            t[i] -= Lk[a, c, i] * Li[c, b, i]
                    for i in range(TL):
                        Li[a, b, i] = t[i]
            # q u and q D^-1 L^-1 (rows c >= a of column a): every sum below is then
            # one product per row
            for a in range(d):
                acc = 0.0
                for i in range(TL):
                    v = q[i] * u[a, i]
                    uq[a, i] = v
                    acc += v
                U[k, a] += acc
                for i in range(TL):
                    Lq[a, a, i] = q[i] * Dk[a, i]
                for c in range(a + 1, d):
                    for i in range(TL):
                        Lq[c, a, i] = q[i] * Dk[c, i] * Li[c, a, i]
            # WP_ab += sum_i q (u_a u_b - (T^-1)_ab), b <= a, with
            # (T^-1)_ab = sum_{c >= a} Li_ca D^-1_c Li_cb
            for a in range(d):
                for b in range(a + 1):
                    acc = 0.0
                    for i in range(TL):
                        acc += uq[a, i] * u[b, i]
                    if a == b:
                        for i in range(TL):
                            acc -= Lq[a, a, i]
                    else:
                        for i in range(TL):
                            acc -= Lq[a, a, i] * Li[a, b, i]
                    for c in range(a + 1, d):
                        for i in range(TL):
                            acc -= Lq[c, a, i] * Li[c, b, i]
                    WP[k, a, b] += acc
    return n_out, -1


@numba.njit(nogil=True, cache=True, inline="always")
def _dot_rows(X, a, Y, b, n):  # pragma: no cover - compiled
    """sum_c X[a, c] Y[b, c] over the first n columns (a row of P times a row)."""
    t = 0.0
    for c in range(n):
        t += X[a, c] * Y[b, c]
    return t


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _gap_kernel(x, R, noise_kind, S_shared, S_diag, S_full, V, mu, logamp, log_bg, weight,
                chi2_by_d, accumulate, row_logl, A, U, WP, bg_acc):  # pragma: no cover
    """E-step of rows each seen through its own projection, one row at a time.

    Row ``i`` observes ``y_i = R_i v_i + e_i`` on its observed (non-NaN) entries
    ``o``; with ``P = R_i[o]`` (d x D) it factors ``T_ik = P V_k P^T + S_i[o, o]``
    itself, and accumulates the statistics *embedded* in the model's D dimensions,
    ``P^T u`` and ``P^T (u u^T - T^-1) P``, so that one product with ``V_k`` per block,
    not per row, maps them to the moments (docs/design.md §1.1-1.2).

    Missing features are the case ``R_i = I``: then ``P`` is the rows ``o`` of the
    identity and is passed as those indices, not as a matrix (``R`` empty): the
    products with ``P`` become the gathers ``V_k[o, o]``, ``mu_k[o]`` and the
    scatters into ``U[:, o]``, ``WP[:, o, o]`` - the same arithmetic without the
    multiplications by 0 and 1. For data where nearly every row has its own
    missingness pattern or its own projection the per-pattern batches of
    :func:`_pattern_estep` would hold one row each.

    x (n, d) with NaN; R (nR, d, D) with nR = n (per row) or 1 (shared), or
    (0, 0, 0): the identity (d = D); noise_kind 0 none, 1 shared S_shared (d, d),
    2 diagonal S_diag (n, d), 3 full S_full (n, d, d) (unused ones empty), on the
    observed entries; V (K, D, D); mu (K, D); chi2_by_d (d + 1,) the neighborhood
    cut per observed count. Writes row_logl (NaN for a row with nothing observed)
    and adds to A (K,), U (K, D), WP (K, D, D) (lower triangle), bg_acc (1,).
    Returns (n_outside, failing_row), failing_row = -1 when every T_ik was
    positive definite.
    """
    n, d = x.shape
    K, D = mu.shape
    has_R = R.shape[0] > 0
    shared_R = R.shape[0] == 1
    has_bg = log_bg.shape[0] > 0
    has_w = weight.shape[0] > 0
    obs = np.empty(d, dtype=np.int64)
    Ls = np.empty((K, d, d))
    zs = np.empty((K, d))
    lp = np.empty(K)
    u = np.empty(d)
    Li = np.zeros((d, d))
    inv = np.empty((K, d))                          # 1 / diag(L_k): multiply, not divide
    P = np.empty((d, D))                            # R_i[o] (projection rows)
    G = np.empty((d, D))                            # P V_k
    Pu = np.empty(D)                                # P^T u
    H = np.empty((d, D))                            # (u u^T - T^-1) P
    mo = np.empty(d)                                # P mu_k
    n_out = 0
    for i in range(n):
        dd = 0
        for a in range(d):
            if not math.isnan(x[i, a]):
                obs[dd] = a
                dd += 1
        if dd == 0:
            row_logl[i] = np.nan
            continue
        if has_R:
            ri = 0 if shared_R else i
            for a in range(dd):
                for c in range(D):
                    P[a, c] = R[ri, obs[a], c]
        chi2_cut = chi2_by_d[dd]
        c0 = -0.5 * dd * LOG_2PI
        for k in range(K):
            Lk = Ls[k]
            # T = P V P^T (lower triangle) and P mu: products for a projection, gathers
            # for rows of the identity; then + S on the observed entries
            if has_R:
                for a in range(dd):
                    for c in range(D):
                        t = 0.0
                        for e in range(D):
                            t += P[a, e] * V[k, e, c]
                        G[a, c] = t
                for a in range(dd):
                    for b in range(a + 1):
                        Lk[a, b] = _dot_rows(G, a, P, b, D)
                    mo[a] = _dot_rows(P, a, mu, k, D)
            else:
                for a in range(dd):
                    oa = obs[a]
                    for b in range(a + 1):
                        Lk[a, b] = V[k, oa, obs[b]]
                    mo[a] = mu[k, oa]
            if noise_kind == 1:
                for a in range(dd):
                    for b in range(a + 1):
                        Lk[a, b] += S_shared[obs[a], obs[b]]
            elif noise_kind == 2:
                for a in range(dd):
                    Lk[a, a] += S_diag[i, obs[a]]
            elif noise_kind == 3:
                for a in range(dd):
                    for b in range(a + 1):
                        Lk[a, b] += S_full[i, obs[a], obs[b]]
            logdet = 0.0
            for a in range(dd):
                for b in range(a + 1):
                    t = Lk[a, b]
                    for c in range(b):
                        t -= Lk[a, c] * Lk[b, c]
                    if a == b:
                        if not t > 0.0:
                            return n_out, i
                        t = math.sqrt(t)
                        Lk[a, a] = t
                        inv[k, a] = 1.0 / t
                        logdet += math.log(t)
                    else:
                        Lk[a, b] = t * inv[k, b]
            mah = 0.0
            for a in range(dd):
                t = x[i, obs[a]] - mo[a]
                for c in range(a):
                    t -= Lk[a, c] * zs[k, c]
                t *= inv[k, a]
                zs[k, a] = t
                mah += t * t
            if mah <= chi2_cut:
                lp[k] = logamp[k] + c0 - logdet - 0.5 * mah
            else:
                lp[k] = -np.inf
        off = log_bg[i] if has_bg else -np.inf
        for k in range(K):
            if lp[k] > off:
                off = lp[k]
        if off == -np.inf:
            row_logl[i] = -np.inf
            n_out += 1
            continue
        tot = 0.0
        for k in range(K):
            e = math.exp(lp[k] - off)
            lp[k] = e
            tot += e
        ebg = 0.0
        if has_bg:
            ebg = math.exp(log_bg[i] - off)
            tot += ebg
        row_logl[i] = off + math.log(tot)
        if not accumulate:
            continue
        scale = 1.0 / tot
        if has_w:
            scale *= weight[i]
        bg_acc[0] += ebg * scale
        for k in range(K):
            qk = lp[k] * scale
            if qk == 0.0:
                continue
            Lk = Ls[k]
            for a in range(dd - 1, -1, -1):         # u = L^-T z
                t = zs[k, a]
                for c in range(a + 1, dd):
                    t -= Lk[c, a] * u[c]
                u[a] = t * inv[k, a]
            A[k] += qk
            for col in range(dd):                   # Li = L^-1 (lower); T^-1 = Li^T Li
                for a in range(col, dd):
                    t = 1.0 if a == col else 0.0
                    for c in range(col, a):
                        t -= Lk[a, c] * Li[c, col]
                    Li[a, col] = t * inv[k, a]
            if not has_R:
                for a in range(dd):
                    U[k, obs[a]] += qk * u[a]
                for a in range(dd):
                    # obs is increasing: (obs[a], obs[b]) with b <= a stays in the lower
                    # triangle
                    for b in range(a + 1):
                        t = 0.0
                        for c in range(a, dd):
                            t += Li[c, a] * Li[c, b]
                        WP[k, obs[a], obs[b]] += qk * (u[a] * u[b] - t)
                continue
            # embedded through P: U += q P^T u, WP += q P^T (u u^T - T^-1) P
            for c in range(D):
                t = 0.0
                for a in range(dd):
                    t += P[a, c] * u[a]
                Pu[c] = t
                U[k, c] += qk * t
            for a in range(dd):
                for c in range(D):
                    H[a, c] = 0.0
            for a in range(dd):
                for b in range(dd):
                    hi, lo = (a, b) if a >= b else (b, a)
                    t = 0.0
                    for c in range(hi, dd):         # (T^-1)_ab = sum_{c >= max} Li_ca Li_cb
                        t += Li[c, hi] * Li[c, lo]
                    mab = u[a] * u[b] - t
                    for c in range(D):
                        H[a, c] += mab * P[b, c]
            for c in range(D):
                for e in range(c + 1):
                    t = 0.0
                    for a in range(dd):
                        t += P[a, c] * H[a, e]
                    WP[k, c, e] += qk * t
    return n_out, -1


# ------------------------------------------------------------------------- wrappers


@dataclass
class BlockMoments:
    """Moments of one block, centred on the current component means.

    Attributes
    ----------
    A : ndarray, shape (K,)
        Sum of (weighted) responsibilities.
    M1 : ndarray, shape (K, D)
        ``sum q (b - mu)``.
    M2 : ndarray, shape (K, D, D)
        ``sum q ((b - mu)(b - mu)^T + B)``.
    bg : float
        Sum of background responsibilities.
    """

    A: np.ndarray
    M1: np.ndarray
    M2: np.ndarray
    bg: float


def _empty1() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


def _symmetrize_lower(M: np.ndarray) -> np.ndarray:
    """Fill the upper triangle of a stack of lower-triangle accumulators."""
    low = np.tril(M)
    return low + np.swapaxes(np.tril(M, -1), -1, -2)


def chi2_cut_for(cutoff: float | None, d: int) -> float:
    """Squared Mahalanobis radius in d dimensions equivalent to ``cutoff`` 1-D sigmas.

    Parameters
    ----------
    cutoff : float or None
        Neighborhood size in 1-D sigmas; ``None`` or ``inf``: no cut.
    d : int
        Number of (observed) dimensions.

    Returns
    -------
    float
        The chi-square(d) quantile with the probability mass of +-cutoff sigma in
        1-D; ``inf`` for no cut.
    """
    if cutoff is None or not np.isfinite(cutoff):
        return np.inf
    from scipy.special import erfc
    from scipy.stats import chi2

    # tail mass outside +-cutoff in 1-D; isf keeps precision for large cutoffs
    return float(chi2.isf(erfc(cutoff / np.sqrt(2.0)), d))


def _pattern_estep(x_o, noise_o: Noise, P, mean, covar, log_amp, log_bg, weight,
                   cutoff, accumulate, row_logl, first_row):
    """E-step of rows seen through one projection ``P`` (d, D) (``noise_o`` on its d
    observed entries): the rows of one missingness pattern, ``P`` the rows of the
    identity (missing features) or of a shared projection matrix.

    Returns (n_outside, A, U_o, WP_o) with U_o (K, d), WP_o (K, d, d) full-symmetric,
    or (n_outside, None, None, None) without accumulation.
    """
    K = mean.shape[0]
    d = P.shape[0]
    # for rows of the identity the products are exact gathers (every term but one is 0)
    mu_o = np.ascontiguousarray(mean @ P.T)
    V_oo = P @ covar @ P.T
    V_oo = np.ascontiguousarray(0.5 * (V_oo + np.swapaxes(V_oo, 1, 2)))
    A = np.zeros(K)
    bg_acc = np.zeros(1)
    lb = log_bg if log_bg is not None else _empty1()
    w = weight if weight is not None else _empty1()
    chi2_cut = chi2_cut_for(cutoff, d)
    if not noise_o.per_row:
        T = noise_o.add_to(V_oo, x_o.shape[0])
        L = cholesky_lower(T, "component covariance (+ shared noise)")
        Ldiag = np.diagonal(L, axis1=1, axis2=2)
        logc = log_amp - 0.5 * d * LOG_2PI - np.log(Ldiag).sum(axis=1)
        Z1 = np.zeros((K, d))
        Z2 = np.zeros((K, d, d))
        args = (mu_o, np.ascontiguousarray(L), np.ascontiguousarray(1.0 / Ldiag), logc, lb,
                w, chi2_cut, accumulate, row_logl, A, Z1, Z2, bg_acc)
        unrolled = SHARED_KERNELS.get(d)
        # the unrolled kernels transpose the rows tile by tile (a transposed copy of
        # the block here cost them ~0.7 ns per (row, component) at d = 5, K = 20)
        n_out = (_shared_kernel(np.ascontiguousarray(x_o.T), *args) if unrolled is None
                 else unrolled(np.ascontiguousarray(x_o), *args, _UNROLLED_TILE))
        if not accumulate:
            return n_out, None, None, None, 0.0
        Z2 = _symmetrize_lower(Z2)
        # U = L^-T Z1 ; WP = L^-T (Z2 - A I) L^-1, batched over components (one
        # gufunc call each: per-component scipy calls cost more than the math)
        LT = np.swapaxes(L, 1, 2)
        U = np.linalg.solve(LT, Z1[:, :, None])[:, :, 0]
        Y = np.linalg.solve(LT, Z2 - A[:, None, None] * np.eye(d))
        WP = np.swapaxes(np.linalg.solve(LT, np.swapaxes(Y, 1, 2)), 1, 2)
        WP = 0.5 * (WP + np.swapaxes(WP, 1, 2))
        return n_out, A, U, WP, bg_acc[0]
    S_full, S_diag, is_diag = noise_o.rowcov_arrays()
    U = np.zeros((K, d))
    WP = np.zeros((K, d, d))
    if _ROWCOV_TILED:
        # arithmetic in the precision of the rows (float64, or float32 via _run_patterns)
        ft = x_o.dtype
        S_full = np.ascontiguousarray(S_full, ft)
        S_diag = np.ascontiguousarray(S_diag, ft)
        n_out, bad = _rowcov_tiled(
            np.ascontiguousarray(x_o), S_full, S_diag, is_diag, V_oo.astype(ft),
            mu_o.astype(ft), log_amp, lb, w, chi2_cut, accumulate, row_logl, A, U, WP,
            bg_acc, _rowcov_tile(K, d, np.dtype(ft).itemsize))
    else:
        n_out, bad = _rowcov_kernel(
            np.ascontiguousarray(x_o, dtype=np.float64), S_full, S_diag, is_diag, V_oo, mu_o,
            log_amp, lb, w, chi2_cut, accumulate, row_logl, A, U, WP, bg_acc)
    if bad >= 0:
        raise NumericalError(
            f"row {first_row(bad)}: component covariance + noise covariance is not "
            f"positive definite; check that the row's noise covariance is symmetric "
            f"positive semi-definite."
        )
    if not accumulate:
        return n_out, None, None, None, 0.0
    return n_out, A, U, _symmetrize_lower(WP), bg_acc[0]


def _rowcov_tile(K: int, d: int, itemsize: int) -> int:
    """Rows per tile of :func:`_rowcov_tiled`: a power of two in [16, 128]."""
    tile = _RTILE_MAX
    while tile > _RTILE_MIN and K * d * (d + 2) * tile * itemsize > _RTILE_BYTES:
        tile //= 2
    return tile


def _rowcov_float32(x, noise: Noise) -> bool:
    """Whether the per-row kernel runs in float32: float32 rows with per-row noise.

    Unless ``_ROWCOV_FLOAT32`` is off. The noise is then rounded to float32 whatever
    its dtype (catalogs store it in float64): the rows carry float32 precision anyway.
    """
    return _ROWCOV_FLOAT32 and _ROWCOV_TILED and noise.per_row and x.dtype == np.float32


# Many missingness patterns (random gaps): below this many rows per pattern on average,
# and above this many patterns, the rows are processed one by one (_gap_kernel)
# rather than in per-pattern batches, whose per-call cost then dominates.
ROWS_PER_PATTERN_MIN = 32
PATTERNS_MIN = 16


def _run_rowwise(x, noise: Noise, R, mean, covar, log_amp, log_bg, weight, cutoff,
                 accumulate, row_offset):
    """:func:`_run_patterns` row by row: every row through :func:`_gap_kernel`.

    ``R``: None (the identity, missing features as selection indices), a shared
    (d, D) or per-row (n, d, D) projection.
    """
    n, d = x.shape
    K, D = mean.shape
    S_shared, S_diag, S_full = noise.gap_arrays()
    chi2_by_d = np.array([np.inf] + [chi2_cut_for(cutoff, m) for m in range(1, d + 1)])
    if R is None:
        R = np.empty((0, 0, 0))
    elif R.ndim == 2:
        R = R[None]
    row_logl = np.empty(n)
    A, U, WP, bg = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D)), np.zeros(1)
    n_out, bad = _gap_kernel(
        np.ascontiguousarray(x), np.ascontiguousarray(R, dtype=np.float64), noise.code,
        S_shared, S_diag, S_full,
        np.ascontiguousarray(covar, dtype=np.float64),
        np.ascontiguousarray(mean, dtype=np.float64), log_amp,
        _empty1() if log_bg is None else np.ascontiguousarray(log_bg, dtype=np.float64),
        _empty1() if weight is None else np.ascontiguousarray(weight, dtype=np.float64),
        chi2_by_d, accumulate, row_logl, A, U, WP, bg)
    if bad >= 0:
        raise NumericalError(
            f"row {row_offset + int(bad)}: component covariance + noise covariance is not "
            f"positive definite on the row's observed features; check that the row's "
            f"noise covariance is symmetric positive semi-definite.")
    if not accumulate:
        return row_logl, n_out, None
    WP = _symmetrize_lower(WP)
    M1 = np.einsum("kij,kj->ki", covar, U)
    M2 = A[:, None, None] * covar + covar @ WP @ covar
    return row_logl, n_out, BlockMoments(A, M1, 0.5 * (M2 + np.swapaxes(M2, 1, 2)), bg[0])


def _projection_rows(R, obs: np.ndarray, D: int) -> np.ndarray:
    """The (d_o, D) projection of rows observing the entries ``obs`` (bool (d,)).

    ``R`` None (no projection: the rows of the D x D identity, so missing features are
    a selection projection) or a shared (d, D) matrix.
    """
    if R is None:
        return np.eye(D)[obs]
    return np.ascontiguousarray(R[obs])


def _run_patterns(x, noise, kind, mean, covar, amp, log_bg, weight, cutoff,
                  accumulate, row_offset, rowwise: bool | None = None, projection=None):
    """Shared loop of :func:`estep_block` and :func:`log_density_block`.

    Rows are grouped by the projection they are seen through: per missingness
    pattern, the rows of the identity (no projection) or of the shared projection
    matrix. ``rowwise``: process the rows one by one (:func:`_gap_kernel`) rather
    than per group; None chooses by the number of patterns; a per-row projection
    is always row by row.

    float32 rows with per-row noise keep float32 arithmetic in the per-row kernel
    (:data:`_ROWCOV_FLOAT32`; it accumulates in float64); a block whose float32
    factorization fails (a covariance too ill-conditioned for float32) is done
    again in float64, which raises only if that fails too.
    """
    noise = as_noise(noise, kind).as_float64()
    args = (mean, covar, amp, log_bg, weight, cutoff, accumulate, row_offset, rowwise,
            projection)
    if _rowcov_float32(x, noise):
        try:
            return _patterns_loop(x, noise, *args, f32=True)
        except NumericalError:
            pass       # not positive definite in float32: the same block in float64
    return _patterns_loop(np.asarray(x, dtype=np.float64), noise, *args, f32=False)


def _patterns_loop(x, noise: Noise, mean, covar, amp, log_bg, weight, cutoff, accumulate,
                   row_offset, rowwise, projection, *, f32: bool):
    """:func:`_run_patterns`' loop; ``f32``: float32 rows kept for the per-row kernel."""
    n, d = x.shape
    K, D = mean.shape
    R = None if projection is None else np.asarray(projection, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_amp = np.log(np.asarray(amp, dtype=np.float64))
    row_logl = np.empty(n)
    A = np.zeros(K)
    M1 = np.zeros((K, D))
    M2 = np.zeros((K, D, D))
    bg = 0.0
    n_out = 0
    patterns = missing_patterns(x)
    if R is not None and R.ndim == 3:
        rowwise = True
    elif rowwise is None:
        rowwise = (len(patterns) > PATTERNS_MIN
                   and len(patterns) * ROWS_PER_PATTERN_MIN > n)
    if rowwise:
        if f32:
            x = x.astype(np.float64)
        return _run_rowwise(x, noise, R, mean, covar, log_amp, log_bg, weight, cutoff,
                            accumulate, row_offset)
    if not (patterns and patterns[0][1] is None):
        # rows with no observed feature carry no information: NaN, never used
        row_logl[np.isnan(x).all(axis=1)] = np.nan
    for obs, rows in patterns:
        if rows is None:
            x_o, lb, w = x, log_bg, weight
            out = row_logl
        else:
            x_o = x[np.ix_(rows, obs)]
            lb = None if log_bg is None else np.ascontiguousarray(log_bg[rows])
            w = None if weight is None else np.ascontiguousarray(weight[rows])
            out = np.empty(len(rows))
        noise_o = noise.observed(rows, obs)
        P = _projection_rows(R, obs, D)

        def first_row(local, rows=rows):
            return row_offset + int(local if rows is None else rows[local])

        n_o, A_p, U_p, WP_p, bg_p = _pattern_estep(
            x_o, noise_o, P, mean, covar, log_amp, lb, w, cutoff, accumulate,
            out, first_row)
        n_out += n_o
        if rows is not None:
            row_logl[rows] = out
        if not accumulate:
            continue
        # embed into D dims through P^T and apply the component's own V
        # (docs/design.md §1.1-1.2): V P^T U, V P^T WP P V
        VP = covar @ P.T                                 # (K, D, d)
        A += A_p
        M1 += np.einsum("kij,kj->ki", VP, U_p)
        M2 += A_p[:, None, None] * covar + VP @ WP_p @ np.swapaxes(VP, 1, 2)
        bg += bg_p
    return row_logl, n_out, (BlockMoments(A, M1, 0.5 * (M2 + np.swapaxes(M2, 1, 2)), bg)
                             if accumulate else None)


# ------------------------------------------------------------- posterior moments


@dataclass
class PosteriorBlock:
    """Posterior of one block of rows (numpy).

    Attributes
    ----------
    resp : ndarray, shape (n, K)
        Component weights of each row's posterior mixture (each row sums to 1),
        conditional on the row belonging to the Gaussian population.
    resp_bg : ndarray, shape (n,), or None
        Probability that the row belongs to the background (None without one).
    means : ndarray, shape (n, K, D)
        Component posterior means ``b_ik``.
    covars : ndarray, shape (n, K, D, D), or None
        Component posterior covariances ``B_ik`` (None when not requested).
    mean : ndarray, shape (n, D)
        Posterior mean ``sum_k resp_ik b_ik``.
    covar : ndarray, shape (n, D, D), or None
        Posterior covariance ``sum_k resp_ik (B_ik + b_ik b_ik^T) - mean mean^T``
        (None when not requested).
    logL : ndarray, shape (n,)
        Log-likelihood of the row under the noise-convolved model (+ background);
        NaN for rows with no observed feature, as in :meth:`GMM.logL`.
    """

    resp: np.ndarray
    resp_bg: np.ndarray | None
    means: np.ndarray
    covars: np.ndarray | None
    mean: np.ndarray
    covar: np.ndarray | None
    logL: np.ndarray


def _forward_sub(L: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Solve ``L Z = Y`` for lower-triangular L, batched with broadcasting.

    L (..., d, d), Y (..., d, m); the leading dimensions broadcast. The loop runs
    over the d (small) rows, each step vectorized over the whole batch: numpy has
    no batched triangular solve and ``np.linalg.solve`` would LU-factor L again.
    """
    d = L.shape[-1]
    batch = np.broadcast_shapes(L.shape[:-2], Y.shape[:-2])
    Z = np.empty(batch + Y.shape[-2:])
    for a in range(d):
        acc = Y[..., a, :]
        if a:
            acc = acc - (L[..., a:a + 1, :a] @ Z[..., :a, :])[..., 0, :]
        Z[..., a, :] = acc / L[..., a, a][..., None]
    return Z


def _pattern_posterior(x_o, noise_o: Noise, P, log_amp, mean, covar, covariances,
                       rows_global):
    """Per-component log-weights, b and B of rows seen through the projections ``P``.

    ``P`` (1, d, D) shared by the rows (the rows of the identity for one missingness
    pattern, or of a shared projection) or (n, d, D) one per row.
    Returns logp (n, K), b (n, K, D), B (1 or n, K, D, D) or None.
    """
    n, d = x_o.shape
    V_o = P[:, None] @ covar[None]                         # (1|n, K, d, D)
    V_oo = V_o @ np.swapaxes(P, 1, 2)[:, None]             # (1|n, K, d, d)
    V_oo = 0.5 * (V_oo + np.swapaxes(V_oo, -1, -2))
    shared_P = P.shape[0] == 1
    T = noise_o.add_to(V_oo[0] if shared_P else V_oo, n)
    if T.ndim == 3:
        # T_k is the same for every row: factor K matrices, not n K
        L = cholesky_lower(T, "component covariance (+ shared noise)")[None]
    else:
        L = cholesky_lower(T, rows_global=rows_global)     # (n, K, d, d)
    r = x_o[:, None, :] - np.einsum("pdj,kj->pkd", P, mean)   # (n, K, d)
    z = _forward_sub(L, r[..., None])[..., 0]              # (n, K, d)
    G = _forward_sub(L, V_o)                               # (1|n, K, d, D)
    logdet = np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
    logp = log_amp - 0.5 * d * LOG_2PI - logdet - 0.5 * np.einsum("nkd,nkd->nk", z, z)
    Gt = np.swapaxes(G, -1, -2)
    b = mean[None] + (Gt @ z[..., None])[..., 0]
    B = None
    if covariances:
        B = covar[None] - Gt @ G
        B = 0.5 * (B + np.swapaxes(B, -1, -2))
    return logp, b, B


def posterior_block(x: np.ndarray, noise, kind: str | None, amp: np.ndarray, mean: np.ndarray,
                    covar: np.ndarray, log_bg: np.ndarray | None = None, *,
                    covariances: bool = True, row_offset: int = 0,
                    projection: np.ndarray | None = None) -> PosteriorBlock:
    """Posterior of the error-free values of a block of rows (pure numpy).

    Parameters
    ----------
    x : ndarray, shape (n, D)
        Rows; NaN marks a missing feature (marginalized exactly).
    noise : Noise, None or ndarray
        A :class:`~daskgmmis.noise.Noise`, or its raw array: ``None`` (kind
        ``"none"``), shared ``(D, D)``, diagonal variances ``(n, D)`` or full
        ``(n, D, D)``; data units squared.
    kind : {"none", "shared", "diag", "full"} or None
        Noise kind of a raw array (see :func:`noise_kind_of`); with a Noise, None
        or its kind.
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
        Mixture parameters (amplitudes may sum to ``1 - background amp``).
    log_bg : ndarray, shape (n,), optional
        ``log(amp_bg * U(x_i))`` per row (noise-convolved background density).
    covariances : bool
        Compute ``covars``/``covar`` (``False`` skips the ``(n, K, D, D)`` work, e.g.
        for :func:`predict_missing`).
    row_offset : int
        Global index of the first row, for error messages.
    projection : ndarray, shape (d, D) or (n, d, D), optional
        Rows observe ``x_i = R_i v_i + e_i`` of the model's D-dimensional ``v_i``
        (docs/design.md §1.1): one shared ``R`` or one per row; ``x`` and the noise
        then have d columns. NaN rows of ``R_i`` stand where ``x_i`` is NaN
        (fewer projected dimensions for that row). None: ``R = I``.

    Returns
    -------
    PosteriorBlock
        float64 arrays; see its attributes for shapes and meaning.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    K, D = mean.shape
    with np.errstate(divide="ignore"):
        log_amp = np.log(np.asarray(amp, dtype=np.float64))
    noise = as_noise(noise, kind).as_float64()
    logp = np.empty((n, K))
    means = np.empty((n, K, D))
    covars = np.empty((n, K, D, D)) if covariances else None
    covered = np.zeros(n, dtype=bool)
    R = None if projection is None else np.asarray(projection, dtype=np.float64)
    for obs, rows in missing_patterns(x):
        sel = slice(None) if rows is None else rows
        x_o = x if rows is None else x[np.ix_(rows, obs)]
        noise_o = noise.observed(rows, obs)
        if R is not None and R.ndim == 3:
            P = R[sel][:, obs]                             # (n_p, d_o, D) per row
        else:
            P = _projection_rows(R, obs, D)[None]          # (1, d_o, D)

        def rows_global(local, rows=rows):
            return row_offset + int(local if rows is None else rows[local])

        lp, b, B = _pattern_posterior(x_o, noise_o, P, log_amp, mean, covar,
                                      covariances, rows_global)
        logp[sel], means[sel] = lp, b
        if covariances:
            covars[sel] = B
        covered[sel] = True
    empty = ~covered
    if empty.any():
        # no observed feature: the posterior is the prior
        logp[empty], means[empty] = log_amp, mean
        if covariances:
            covars[empty] = covar
    lse = logsumexp(logp, axis=1)
    resp = np.exp(logp - lse[:, None])
    resp_bg = None
    logL = lse
    if log_bg is not None:
        logL = np.logaddexp(lse, log_bg)
        resp_bg = np.exp(log_bg - logL)
    logL = np.where(empty, np.nan, logL)
    post_mean = np.einsum("nk,nkd->nd", resp, means)
    post_covar = None
    if covariances:
        # sum q (B + (b - m)(b - m)^T): same as sum q (B + b b^T) - m m^T, without the
        # cancellation when the components' means are far from the origin
        dev = means - post_mean[:, None, :]
        post_covar = (np.einsum("nk,nkij->nij", resp, covars)
                      + np.einsum("nk,nki,nkj->nij", resp, dev, dev))
        post_covar = 0.5 * (post_covar + np.swapaxes(post_covar, 1, 2))
    return PosteriorBlock(resp, resp_bg, means, covars, post_mean, post_covar, logL)


def estep_block(x: np.ndarray, noise, kind: str | None, amp: np.ndarray, mean: np.ndarray,
                covar: np.ndarray, *, log_bg: np.ndarray | None = None,
                weight: np.ndarray | None = None, cutoff: float | None = None,
                row_offset: int = 0, exact_outside: bool = True,
                projection: np.ndarray | None = None):
    """E-step of one block: per-row log-likelihoods and centred moments.

    Parameters
    ----------
    x : ndarray, shape (n, D)
        Rows (float32 or float64); NaN marks a missing feature, marginalized exactly.
    noise : Noise, None or ndarray
        Noise covariance of the rows: a :class:`~daskgmmis.noise.Noise`, or its raw
        array ``None`` (kind ``"none"``), ``(D, D)`` (``"shared"``), ``(n, D)``
        diagonal variances (``"diag"``) or ``(n, D, D)`` (``"full"``). Same units as
        ``x`` squared.
    kind : str or None
        The noise kind of a raw array, see :data:`NOISE_KINDS`; with a Noise, None
        or its kind.
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
        Mixture parameters (amplitudes of the Gaussian components; they need not
        sum to 1 when a background takes the rest).
    log_bg : ndarray, shape (n,), optional
        Log of (background amplitude x background density) per row.
    weight : ndarray, shape (n,), optional
        Row weights multiplying the responsibilities (imputed candidates).
    cutoff : float or None
        Neighborhood size in 1-D-equivalent sigmas: a row whose squared
        Mahalanobis distance to a component (with ``T_ik``) exceeds the chi-square
        quantile of :func:`chi2_cut_for` gets zero responsibility for it.
    row_offset : int
        Global index of the block's first row, for error messages.
    exact_outside : bool
        With ``cutoff``: give rows outside every neighborhood their exact
        log-density over all components (see :func:`fill_outside`); ``False``
        leaves ``-inf`` there (for a caller that fills them itself).
    projection : ndarray, shape (d, D) or (n, d, D), optional
        Rows observe ``x_i = R_i v_i + e_i`` of the model's D-dimensional ``v_i``
        (docs/design.md §1.1): one shared ``R`` or one per row; ``x`` and the noise
        then have d columns. NaN rows of ``R_i`` stand where ``x_i`` is NaN
        (fewer projected dimensions for that row). None: ``R = I``.

    Returns
    -------
    row_logl : ndarray, shape (n,)
        ``log sum_k amp_k N(x_i | mu_k, T_ik)`` (+ background), over the components
        whose neighborhood holds the row, or over all of them for a row outside
        every neighborhood; NaN for rows with no observed feature.
    n_outside : int
        Number of rows outside every neighborhood (zero responsibilities).
    moments : BlockMoments
        Float64 moments centred on ``mean``.
    """
    noise = as_noise(noise, kind)
    row_logl, n_out, mom = _run_patterns(x, noise, None, mean, covar, amp, log_bg, weight,
                                         cutoff, True, row_offset, projection=projection)
    if cutoff is not None and exact_outside:
        fill_outside(row_logl, x, noise, kind, amp, mean, covar, log_bg=log_bg,
                     row_offset=row_offset, projection=projection)
    return row_logl, n_out, mom


def fill_outside(row_logl: np.ndarray, x: np.ndarray, noise, kind: str | None, amp: np.ndarray,
                 mean: np.ndarray, covar: np.ndarray, *, log_bg: np.ndarray | None = None,
                 row_offset: int = 0, projection: np.ndarray | None = None) -> np.ndarray:
    """Replace the ``-inf`` of rows outside every neighborhood by their log-density.

    The neighborhoods decide which components *update* from a row; the row still
    belongs to the data. Dropping its (very negative) log-density from the sum
    while N counts it would make the mean logL jump up whenever a row leaves the
    last neighborhood, which the stopping rule and the acceleration's acceptance would
    read as progress. So those rows are evaluated exactly, over all components.

    Parameters
    ----------
    row_logl : ndarray, shape (n,)
        Updated in place (and returned).
    x, noise, kind, amp, mean, covar, log_bg, row_offset, projection
        As in :func:`estep_block` (all K components).
    """
    out = np.flatnonzero(np.isneginf(row_logl))
    if out.size:
        if projection is not None and np.ndim(projection) == 3:
            projection = np.asarray(projection)[out]
        row_logl[out] = log_density_block(
            x[out], as_noise(noise, kind).rows(out), kind, amp, mean, covar,
            log_bg=None if log_bg is None else np.asarray(log_bg)[out], row_offset=row_offset,
            projection=projection)
    return row_logl


def log_density_block(x: np.ndarray, noise, kind: str | None, amp: np.ndarray, mean: np.ndarray,
                      covar: np.ndarray, *, log_bg: np.ndarray | None = None,
                      row_offset: int = 0, projection: np.ndarray | None = None) -> np.ndarray:
    """Log-density of each row under the noise-convolved mixture.

    Same parameters as :func:`estep_block`; returns ``row_logl`` of shape ``(n,)``.
    """
    return _run_patterns(x, noise, kind, mean, covar, amp, log_bg, None, None, False,
                         row_offset, projection=projection)[0]
