"""Independent references for truncated fits: the exact likelihood behind a half-space cut.

Behind a selection ``x[axis] < upper`` the observed fraction of a Gaussian mixture is
closed-form, ``f = sum_k a_k Phi((upper - mu_k[axis]) / sigma_k)``, so the truncated
log-likelihood ``sum_i log p(x_i) - N log f`` of noise-free rows needs no imputation
at all. Maximizing it directly (BFGS over log-amplitude ratios, means and
log-Cholesky factors) gives the maximum-likelihood answer that the imputed EM must
reach, independently of the library's E-step, M-step and Monte-Carlo imputation.
With per-row noise the cut acts on the noisy values and f is a 1-D integral per
component (:func:`halfspace_mle` with ``S`` and ``noise_var``); behind any 2-D
selection of rows with shared noise (pyGMMis's demo geometry) f is a quadrature over
the selected region (:func:`selection_mle`). Used by ``tests/test_defaults.py``,
``tests/test_imputation.py`` and ``benchmarks/truncation_accuracy.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats
from scipy.special import logsumexp

import daskgmmis as dg


def cut_population(D: int = 2) -> dg.GMM:
    """Two components, the dominant one at the origin: the cut ``x0 < 0`` removes ~40 %.

    In ``D > 2`` the extra features are correlated with the first two (fixed draw).
    """
    t = dg.GMM(2, D)
    t.amp = np.array([0.15, 0.85])
    mean = np.zeros((2, D))
    mean[0, :2] = [-5.0, 1.0]
    t.mean = mean
    covar = np.zeros((2, D, D))
    covar[:, :2, :2] = [[[1.0, 0.3], [0.3, 0.8]], [[1.0, 0.5], [0.5, 1.5]]]
    if D > 2:
        A = np.random.default_rng(7).normal(size=(2, D, D)) * 0.3
        covar = covar + A @ np.swapaxes(A, 1, 2)
        covar[:, 2:, 2:] += 0.5 * np.eye(D - 2)
    t.covar = covar
    return t


def three_in_4d() -> dg.GMM:
    """benchmarks/truncation_accuracy.py's ``cut4d`` population: three correlated 4-D
    components; behind ``x0 < 0`` one is seen whole, one cut by 71 %, one by 99 %."""
    g = dg.GMM(3, 4)
    g.amp = np.array([0.3, 0.45, 0.25])
    g.mean = np.zeros((3, 4))
    g.mean[:, :2] = [[-3.0, 0.0], [0.5, 2.0], [2.0, -2.0]]
    A = np.random.default_rng(11).normal(size=(3, 4, 4)) * 0.4
    g.covar = A @ np.swapaxes(A, 1, 2) + 0.6 * np.eye(4)
    return g


def cut_threshold(truth: dg.GMM, removed: float = 0.4) -> float:
    """The x0 threshold that cuts ``removed`` of ``truth``'s population (``x0`` above it):
    benchmarks/truncation_accuracy.py's ``cut_threshold``, the same fixed draw."""
    return float(np.quantile(truth.draw(400_000, rng=99)[:, 0], 1 - removed))


def _unpack(p: np.ndarray, K: int, D: int):
    log_ratio = np.concatenate([[0.0], p[:K - 1]])
    amp = np.exp(log_ratio - logsumexp(log_ratio))
    mean = p[K - 1:K - 1 + K * D].reshape(K, D)
    tri, diag = np.tril_indices(D), np.arange(D)
    L = np.zeros((K, D, D))
    L[:, tri[0], tri[1]] = p[K - 1 + K * D:].reshape(K, -1)
    L[:, diag, diag] = np.exp(L[:, diag, diag])
    return amp, mean, L


def _pack(gmm: dg.GMM) -> np.ndarray:
    K, D = gmm.mean.shape
    L = np.linalg.cholesky(gmm.covar)
    diag = np.arange(D)
    L[:, diag, diag] = np.log(L[:, diag, diag])
    tri = np.tril_indices(D)
    return np.concatenate([np.log(gmm.amp[1:] / gmm.amp[0]), gmm.mean.ravel(),
                           L[:, tri[0], tri[1]].ravel()])


def _observed_fraction(amp, mean, sd, upper: float, omega=None) -> float:
    """f = P(observed) of the mixture with per-component ``mean``, ``sd`` on the axis.

    ``omega`` None: the cut ``x[axis] < upper``, closed-form. Otherwise the
    probability ``omega(x)`` (vectorized) that a row with true ``x[axis] = x`` is
    observed, integrated against each component by the trapezoid rule over +-12 sd
    (error far below 1e-10 for the smooth integrands used here).
    """
    if omega is None:
        return float((amp * stats.norm.cdf((upper - mean) / sd)).sum())
    f = 0.0
    for a, m, s in zip(amp, mean, sd):
        x = np.linspace(m - 12 * s, m + 12 * s, 4001)
        y = stats.norm.pdf(x, m, s) * omega(x)
        f += a * float(np.sum(0.5 * (y[1:] + y[:-1])) * (x[1] - x[0]))
    return f


def _loglike(p: np.ndarray, X: np.ndarray, axis: int, upper: float, K: int, D: int,
             S=None, noise_var=None, omega=None):
    """(total truncated log-likelihood, observed fraction f) of packed parameters.

    ``S`` (N, D, D): the rows' noise covariances (rows convolved with them); the
    selection then acts on the noisy values, with noise variance ``noise_var(x)``
    along ``axis`` at the true value ``x``. ``omega``: a soft selection on
    ``x[axis]`` instead of the cut (noise-free rows; the constant ``sum log omega(x_i)``
    is left out).
    """
    amp, mean, L = _unpack(p, K, D)
    comp = []
    for k in range(K):
        if S is None:
            z = np.linalg.solve(L[k], (X - mean[k]).T)
            logdet = np.log(np.diag(L[k])).sum()
        else:
            C = np.linalg.cholesky(L[k] @ L[k].T + S)
            z = np.linalg.solve(C, (X - mean[k])[:, :, None])[:, :, 0].T
            logdet = np.log(np.diagonal(C, axis1=1, axis2=2)).sum(axis=1)
        comp.append(np.log(amp[k]) - 0.5 * np.einsum("ij,ij->j", z, z)
                    - logdet - 0.5 * D * np.log(2 * np.pi))
    sd = np.sqrt((L[:, axis, :] ** 2).sum(axis=1))
    if noise_var is not None:
        # the cut acts on the noisy value: seen with probability Phi((upper - x) / sd_noise)
        def omega(x):
            return stats.norm.cdf((upper - x) / np.sqrt(noise_var(x)))
    f = _observed_fraction(amp, mean[:, axis], sd, upper, omega)
    return float(logsumexp(np.array(comp), axis=0).sum() - len(X) * np.log(f)), f


def halfspace_loglike(gmm: dg.GMM, X: np.ndarray, axis: int, upper: float, S=None,
                      noise_var=None) -> float:
    """Exact truncated log-likelihood (total, nats) of ``gmm`` for rows ``X`` (N, D).

    ``S`` (N, D, D) and ``noise_var``: noisy rows, as in :func:`halfspace_mle`.
    """
    K, D = gmm.mean.shape
    return _loglike(_pack(gmm), X, axis, upper, K, D, S, noise_var)[0]


def halfspace_mle(X: np.ndarray, axis: int, upper: float, starts, S=None,
                  noise_var=None) -> tuple[dg.GMM, float]:
    """Exact maximum-likelihood mixture behind the cut ``x[axis] < upper``.

    Parameters
    ----------
    X : ndarray, shape (N, D)
        Observed rows (noise-free unless ``S`` is given).
    starts : iterable of GMM
        Starting points (e.g. the truth and the fit under test); the best optimum
        is returned.
    S : ndarray, shape (N, D, D), optional
        The rows' noise covariances: the model is the deconvolved mixture, and the
        cut acts on the noisy values.
    noise_var : callable, optional
        With ``S``: the noise variance along ``axis`` at a true value, vectorized,
        ``(n,) -> (n,)`` (how the survey's noise grows with the signal).

    Returns
    -------
    (gmm, N_orig)
        The maximum-likelihood mixture and its population size ``N / f``.
    """
    return _maximize(lambda p, K, D: _loglike(p, X, axis, upper, K, D, S, noise_var),
                     starts, len(X))


def axis_selection_loglike(gmm: dg.GMM, X: np.ndarray, axis: int, omega) -> float:
    """Exact truncated log-likelihood (total, nats, up to the constant ``sum log
    omega``) of ``gmm`` for noise-free rows ``X`` (N, D) seen with probability
    ``omega(x[axis])``."""
    K, D = gmm.mean.shape
    return _loglike(_pack(gmm), X, axis, np.inf, K, D, omega=omega)[0]


def axis_selection_mle(X: np.ndarray, axis: int, omega, starts) -> tuple[dg.GMM, float]:
    """Exact maximum-likelihood mixture of noise-free rows ``X`` (N, D) seen with
    probability ``omega(x[axis])`` (a soft cut; ``omega`` vectorized, ``(n,) -> (n,)``):
    f is a 1-D integral per component. BFGS as :func:`halfspace_mle`; returns
    ``(gmm, N_orig)``."""
    return _maximize(lambda p, K, D: _loglike(p, X, axis, np.inf, K, D, omega=omega),
                     starts, len(X))


def _maximize(loglike, starts, n_rows: int) -> tuple[dg.GMM, float]:
    """BFGS on ``loglike(p, K, D) -> (total logL, f)`` from each start; the best optimum
    as a GMM and its population size ``n_rows / f``."""
    best = None
    for start in starts:
        K, D = start.mean.shape
        res = optimize.minimize(lambda p: -loglike(p, K, D)[0], _pack(start), method="BFGS",
                                options={"gtol": 1e-6, "maxiter": 10_000})
        if best is None or res.fun < best.fun:
            best = res
    amp, mean, L = _unpack(best.x, K, D)
    gmm = dg.GMM(K, D)
    gmm.amp, gmm.mean, gmm.covar = amp, mean, L @ np.swapaxes(L, 1, 2)
    return gmm, n_rows / loglike(best.x, K, D)[1]


def _grid_loglike(p: np.ndarray, X: np.ndarray, S: np.ndarray, grid: np.ndarray,
                  omega_area: np.ndarray, K: int, D: int):
    """(total truncated log-likelihood, f) with shared noise ``S`` and f by quadrature."""
    amp, mean, L = _unpack(p, K, D)
    T = L @ np.swapaxes(L, 1, 2) + S
    comp, dens = [], np.zeros(len(grid))
    for k in range(K):
        C = np.linalg.cholesky(T[k])
        logdet = np.log(np.diag(C)).sum()
        z = np.linalg.solve(C, (X - mean[k]).T)
        comp.append(np.log(amp[k]) - 0.5 * np.einsum("ij,ij->j", z, z) - logdet
                    - 0.5 * D * np.log(2 * np.pi))
        zg = np.linalg.solve(C, (grid - mean[k]).T)
        dens += amp[k] * np.exp(-0.5 * np.einsum("ij,ij->j", zg, zg) - logdet
                                - 0.5 * D * np.log(2 * np.pi))
    f = float(dens @ omega_area)
    return float(logsumexp(np.array(comp), axis=0).sum() - len(X) * np.log(f)), f


def selection_grid(sel_callback, lower, upper, n: int = 600):
    """Midpoints of an ``n x n`` grid over the box [lower, upper] (2-D) and their
    selection probability times the cell area: the quadrature of f for
    :func:`selection_mle` (the selection must be 0 outside the box)."""
    axes = [lo + (np.arange(n) + 0.5) * (hi - lo) / n for lo, hi in zip(lower, upper)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    area = np.prod([(hi - lo) / n for lo, hi in zip(lower, upper)])
    return grid, np.asarray(sel_callback(grid), float) * area


def selection_loglike(gmm: dg.GMM, X: np.ndarray, S: np.ndarray, grid, omega_area) -> float:
    """Exact (to the quadrature) truncated log-likelihood of ``gmm``, total nats."""
    K, D = gmm.mean.shape
    return _grid_loglike(_pack(gmm), X, S, grid, omega_area, K, D)[0]


def selection_mle(X: np.ndarray, S: np.ndarray, grid, omega_area, starts):
    """Maximum-likelihood mixture behind any 2-D selection of rows with shared noise.

    The selection acts on the noisy values, so f = sum_k a_k int N(y; mu_k, V_k + S)
    Omega(y) dy, by the midpoint rule on ``grid`` (:func:`selection_grid`: 600 x 600
    cells over pyGMMis's 10 x 10 box, 0.017 wide against noise of sd 0.5). BFGS as
    :func:`halfspace_mle`. Returns ``(gmm, N_orig)``.
    """
    return _maximize(lambda p, K, D: _grid_loglike(p, X, S, grid, omega_area, K, D), starts,
                     len(X))
