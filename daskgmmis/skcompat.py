"""scikit-learn's names and checks for :class:`daskgmmis.GaussianMixture`.

Pure numpy: how scikit-learn's ``GaussianMixture`` parameters map onto the
daskgmmis fit options, the checks of the user-given starting parameters (with
scikit-learn's messages, which its users and its tests look for), and the
precision matrices scikit-learn exposes.

Mapping (documented on the estimator):

* ``reg_covar`` (a variance added to every covariance's diagonal) and ``w``
  (a length: ``w**2`` is added) add up: the variance added is
  ``reg_covar + w**2``, so the fit runs with ``w = sqrt(reg_covar + w**2)``.
* ``max_iter`` is ``maxiter``; ``init_params`` names an ``init_method``
  (:data:`INIT_PARAMS`).
* ``covariance_type`` must be ``"full"``: the engine fits full covariances
  (deconvolution of per-row noise makes the other structures inexact).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError, NumericalError

__all__ = ["INIT_PARAMS", "resolve_regularization", "resolve_maxiter",
           "resolve_init_method", "check_covariance_type", "check_weights", "check_means",
           "covariances_from_precisions", "precision_cholesky"]

# scikit-learn's init_params -> daskgmmis init_method:
# * "kmeans" and "k-means++": daskgmmis's k-means|| (a parallel k-means++ seeding
#   followed by Lloyd iterations) on the data;
# * "random_from_data": components at random rows ("random");
# * "random": scikit-learn draws random responsibilities, i.e. starts spread over
#   the whole data; the nearest daskgmmis start is "minmax" (means uniform in the
#   data's bounding box, broad covariances).
INIT_PARAMS = {"kmeans": "kmeans", "k-means++": "kmeans", "random_from_data": "random",
               "random": "minmax"}


def check_covariance_type(covariance_type) -> None:
    """Only ``"full"`` covariances are fitted."""
    if covariance_type != "full":
        raise InputError(f"covariance_type: only 'full' is supported (the engine fits full "
                         f"covariances, deconvolving per-row noise); found "
                         f"{covariance_type!r}. Use covariance_type='full'.")


def resolve_regularization(w, reg_covar):
    """The fit's ``w`` from the estimator's ``w`` and scikit-learn's ``reg_covar``.

    ``reg_covar`` (variance) and ``w**2`` are both added to the diagonal of every
    covariance; they add up. ``reg_covar=None``: ``w`` alone.
    """
    if reg_covar is None:
        return w
    if isinstance(reg_covar, bool) or not isinstance(reg_covar, (int, float, np.number)) \
            or not math.isfinite(reg_covar) or reg_covar < 0:
        raise InputError(f"reg_covar: expected None or a finite number >= 0 (a variance "
                         f"added to every covariance's diagonal); found {reg_covar!r}.")
    if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not w >= 0:
        return w                   # FitOptions names w in its error
    return math.sqrt(float(reg_covar) + float(w) ** 2)


def resolve_maxiter(maxiter, max_iter, default):
    """``max_iter`` (scikit-learn) or ``maxiter`` (daskgmmis); both given must agree."""
    if max_iter is None:
        return maxiter
    if maxiter != default and maxiter != max_iter:
        raise InputError(f"max_iter={max_iter!r} and maxiter={maxiter!r}: two names for the "
                         f"same option; give one.")
    return max_iter


def resolve_init_method(init_method, init_params, default):
    """``init_params`` (scikit-learn's name, mapped by :data:`INIT_PARAMS`) or
    ``init_method``; both given must agree."""
    if init_params is None:
        return init_method
    if init_params not in INIT_PARAMS:
        raise InputError(f"init_params: expected one of {sorted(INIT_PARAMS)}; found "
                         f"{init_params!r}. daskgmmis's own starts are init_method="
                         f"'kmeans', 'random', 'minmax' or 'none'.")
    mapped = INIT_PARAMS[init_params]
    if init_method != default and init_method != mapped:
        raise InputError(f"init_params={init_params!r} (init_method {mapped!r}) and "
                         f"init_method={init_method!r} disagree; give one.")
    return mapped


def check_weights(weights, K: int) -> np.ndarray:
    """Starting weights: shape (K,), in [0, 1], summing to 1 (scikit-learn's messages)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (K,):
        raise InputError(f"The parameter 'weights' should have the shape of ({K},), but got "
                         f"{w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise InputError(f"The parameter 'weights' should be in the range [0, 1], but got "
                         f"max value {np.max(w):.5f}, min value {np.min(w):.5f}")
    if not np.allclose(np.abs(1.0 - np.sum(w)), 0.0):
        raise InputError(f"The parameter 'weights' should be normalized, but got "
                         f"sum(weights) = {np.sum(w):.5f}")
    return w


def check_means(means, K: int, D: int) -> np.ndarray:
    """Starting means: shape (K, D), finite."""
    m = np.asarray(means, dtype=np.float64)
    if m.shape != (K, D):
        raise InputError(f"The parameter 'means' should have the shape of ({K}, {D}), but "
                         f"got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError("The parameter 'means' should be finite.")
    return m


def _check_spd(mats: np.ndarray, what: str) -> np.ndarray:
    """Cholesky factors of symmetric positive-definite matrices, or an InputError."""
    if not np.all(np.isfinite(mats)) or not np.allclose(mats, np.swapaxes(mats, 1, 2)):
        raise InputError(f"'{what}' should be symmetric, positive-definite")
    try:
        return np.linalg.cholesky(mats)
    except np.linalg.LinAlgError:
        raise InputError(f"'{what}' should be symmetric, positive-definite") from None


def covariances_from_precisions(precisions, K: int, D: int) -> np.ndarray:
    """Covariances (K, D, D) from scikit-learn's ``precisions_init`` (full).

    Inverted through the Cholesky factor of each precision (a solve, not an
    inverse of the matrix itself).
    """
    p = np.asarray(precisions, dtype=np.float64)
    if p.shape != (K, D, D):
        raise InputError(f"The parameter 'full precision' should have the shape of "
                         f"({K}, {D}, {D}), but got {p.shape}")
    L = _check_spd(p, "full precision")
    eye = np.broadcast_to(np.eye(D), p.shape)
    Linv = np.linalg.solve(L, eye)                 # L^{-1}; covariance = L^{-T} L^{-1}
    cov = np.swapaxes(Linv, 1, 2) @ Linv
    return 0.5 * (cov + np.swapaxes(cov, 1, 2))


def check_covariances(covariances, K: int, D: int) -> np.ndarray:
    """Starting covariances: shape (K, D, D), symmetric positive-definite."""
    c = np.asarray(covariances, dtype=np.float64)
    if c.shape != (K, D, D):
        raise InputError(f"The parameter 'covariances' should have the shape of ({K}, {D}, "
                         f"{D}), but got {c.shape}")
    _check_spd(c, "covariances")
    return c


def precision_cholesky(covariances: np.ndarray) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_``: upper factors U with precision = U U^T.

    ``U_k = L_k^{-T}`` for ``covariance_k = L_k L_k^T`` (solves, not inverses).

    Raises
    ------
    NumericalError
        A covariance is not positive-definite.
    """
    cov = np.asarray(covariances, dtype=np.float64)
    D = cov.shape[-1]
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise NumericalError("a fitted covariance is not positive-definite; use a "
                             "regularization (w or reg_covar > 0).") from None
    return np.swapaxes(np.linalg.solve(L, np.broadcast_to(np.eye(D), cov.shape)), 1, 2)
