"""SQUAREM acceleration of the EM map (Varadhan & Roland 2008, scheme S3).

EM crawls where information is missing (truncation, heavy noise): each step moves
little along weakly identified directions. Three successive EM iterates give a
squared extrapolation along the path; the driver (:mod:`daskgmmis.em`) accepts the
extrapolated point only if its likelihood holds up, and otherwise keeps the plain
EM iterate, so the fixed points are EM's.
"""

from __future__ import annotations

import numpy as np

from .model import Theta

__all__ = ["extrapolate", "distance"]


def _pack(t: Theta, scale: np.ndarray) -> np.ndarray:
    """Parameters as one vector; covariances through their Cholesky factors.

    Means and factors are divided by the per-feature ``scale``: the step length
    mixes them with the unitless amplitudes, so in data units it would depend on
    the units of the features (data times 1e8 would take other steps, and could
    reach another optimum, than the same data in unit scale).
    """
    K, D = t.mean.shape
    tri = np.tril_indices(D)
    L = np.linalg.cholesky(t.covar) / scale[:, None]
    return np.concatenate([t.amp, (t.mean / scale).ravel(), L[:, tri[0], tri[1]].ravel(),
                           [t.bg_amp or 0.0]])


def distance(t0: Theta, t1: Theta) -> float:
    """Length of the step from ``t0`` to ``t1`` in the (unit-free) packed parameters.

    Means and Cholesky factors are in units of ``t0``'s per-feature spread, so the
    length does not depend on the units of the features.
    """
    scale = np.sqrt(np.diagonal(t0.covar, axis1=1, axis2=2).mean(axis=0))
    return float(np.linalg.norm(_pack(t1, scale) - _pack(t0, scale)))


def extrapolate(t0: Theta, t1: Theta, t2: Theta, frozen, background,
                w: float = 0.0) -> Theta | None:
    """SQUAREM step (Varadhan & Roland 2008, scheme S3) from three EM iterates.

    Returns None when the extrapolation is degenerate or leaves the parameter
    space (negative amplitudes, singular covariances, or - with a regularization
    ``w`` - a free covariance below the floor ``w**2 I`` that every M-step keeps);
    the caller then keeps the plain EM iterate ``t2``. Frozen values are restored
    bit for bit.
    """
    K, D = t0.mean.shape
    # per-feature spread of the cycle's start: it follows the data's units
    scale = np.sqrt(np.diagonal(t0.covar, axis1=1, axis2=2).mean(axis=0))
    p0, p1, p2 = _pack(t0, scale), _pack(t1, scale), _pack(t2, scale)
    r = p1 - p0
    v = p2 - 2 * p1 + p0
    nv = np.linalg.norm(v)
    if not nv > 0:
        return None
    alpha = -np.linalg.norm(r) / nv
    if alpha > -1.0:
        return None            # no longer than a plain step: nothing to gain
    p = p0 - 2 * alpha * r + alpha**2 * v
    amp = p[:K]
    mean = p[K:K + K * D].reshape(K, D) * scale
    tri = np.tril_indices(D)
    L = np.zeros((K, D, D))
    L[:, tri[0], tri[1]] = p[K + K * D:-1].reshape(K, -1)
    L *= scale[:, None]
    covar = L @ np.swapaxes(L, 1, 2)
    if not (np.all(np.isfinite(p)) and (amp >= 0).all()):
        return None
    bg_amp = t2.bg_amp
    if background is not None and background.adjust_amp:
        bg_amp = float(np.clip(p[-1], background.amp_min, background.amp_max))
    for k in frozen["amp"]:
        amp[k] = t2.amp[k]
    for k in frozen["mean"]:
        mean[k] = t2.mean[k]
    for k in frozen["covar"]:
        covar[k] = t2.covar[k]
    free = np.setdiff1d(np.arange(K), frozen["amp"])
    remainder = 1.0 - amp[frozen["amp"]].sum() - (bg_amp or 0.0)
    if free.size:
        if not amp[free].sum() > 0:
            return None
        amp[free] *= remainder / amp[free].sum()
    try:
        np.linalg.cholesky(covar)
    except np.linalg.LinAlgError:
        return None
    free_covar = np.setdiff1d(np.arange(K), frozen["covar"])
    if w > 0 and free_covar.size and (
            np.linalg.eigvalsh(covar[free_covar]).min() < w**2 * (1 - 1e-9)):
        return None            # the regularization floor is a promise to the user
    return Theta(amp, mean, covar, bg_amp)


