"""Anderson acceleration of the EM map (Walker & Ni 2011; for EM, Henderson & Varadhan 2019).

EM crawls where information is missing (truncation, heavy noise): each step moves
little along weakly identified directions - on the N_orig ridge of a hard cut EM
contracts at a rate of 0.9995 and more. Anderson mixing keeps the last few pairs
``(x_i, M(x_i))`` of the EM map and extrapolates to the point whose residual
``M(x) - x`` the pairs' secant model puts at zero: it reaches such a ridge's end in
tens of steps where a squared extrapolation from three iterates (SQUAREM) -
limited by the ridge's curvature to steps ~20 plain ones long - needed thousands.
The driver (:mod:`daskgmmis.em`) accepts the extrapolated point only if its
likelihood holds up, and otherwise keeps the plain EM iterate, so the fixed points
are EM's.
"""

from __future__ import annotations

import numpy as np

from .model import Theta

__all__ = ["OVERRELAX_START", "SADDLE_MARGIN", "anderson", "distance", "feature_scale",
           "fixed_point_shift", "leaving_saddle", "next_overrelax", "overrelaxed", "pack",
           "unpack"]

# An eigenvalue of the pairs' secant Jacobian above 1 + SADDLE_MARGIN: no mixing.
SADDLE_MARGIN = 1e-3

# The over-relaxed step's length in EM steps: it starts here, doubles while kept, up to
# OVERRELAX_MAX, and starts again here after a rejection (:func:`next_overrelax`).
OVERRELAX_START = 2.0
OVERRELAX_MAX = 64.0


def feature_scale(t: Theta) -> np.ndarray:
    """Per-feature spread of ``t``'s components, ``(D,)``: the unit of :func:`pack`."""
    return np.sqrt(np.diagonal(t.covar, axis1=1, axis2=2).mean(axis=0))


def pack(t: Theta, scale: np.ndarray) -> np.ndarray:
    """Parameters as one vector; covariances through their Cholesky factors.

    Means and factors are divided by the per-feature ``scale``: the mixing
    mixes them with the unitless amplitudes, so in data units it would depend on
    the units of the features (data times 1e8 would take other steps, and could
    reach another optimum, than the same data in unit scale). Layout: ``K``
    amplitudes, ``K D`` means, ``K D (D + 1) / 2`` factor entries, the background
    amplitude (0 without one): :func:`daskgmmis.memory.packed_size` floats.
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
    scale = feature_scale(t0)
    return float(np.linalg.norm(pack(t1, scale) - pack(t0, scale)))


def anderson(xs: np.ndarray, gs: np.ndarray, template: Theta, scale: np.ndarray, frozen,
             background, w: float = 0.0) -> Theta | None:
    """Anderson-mixed point (type II) from pairs of the EM map.

    Parameters
    ----------
    xs, gs : ndarray, shape (m, P)
        Packed points ``x_i`` (:func:`pack` with ``scale``) and their EM images
        ``M(x_i)``, oldest first; ``m >= 2``.
    template : Theta
        The newest image ``M(x_m)``: frozen values and a fixed background
        amplitude are taken from it bit for bit.
    scale : ndarray, shape (D,)
        The packing's per-feature unit.
    frozen, background, w
        As in :func:`daskgmmis.mstep.mstep`.

    Returns
    -------
    Theta or None
        ``M(x_m) - dG gamma`` with ``gamma`` the least-squares coefficients that
        make the mixed residual ``F_m - dF gamma`` smallest (``dF``, ``dG`` the
        differences of successive residuals ``F_i = M(x_i) - x_i`` and images).
        None when the pairs are degenerate or the point leaves the parameter
        space (negative amplitudes, singular covariances, or - with a
        regularization ``w`` - a free covariance below the floor ``w**2 I`` that
        every M-step keeps); the caller then keeps the plain EM iterate.
    """
    fs = gs - xs
    dF = np.diff(fs, axis=0).T
    dG = np.diff(gs, axis=0).T
    if not (dF.size and np.all(np.isfinite(dF)) and np.linalg.norm(dF) > 0):
        return None
    if leaving_saddle(xs, gs):
        return None
    gamma = np.linalg.lstsq(dF, fs[-1], rcond=None)[0]
    return unpack(gs[-1] - dG @ gamma, template, scale, frozen, background, w)


def leaving_saddle(xs: np.ndarray, gs: np.ndarray) -> bool:
    """Whether the pairs show EM leaving a saddle.

    EM contracts towards a maximum (the Jacobian's eigenvalues lie in [0, 1)) and
    pushes away from a saddle, while mixing seeks any zero of ``M(x) - x``. The
    pairs' secant model of the Jacobian, ``dG = J dX`` on their span, shows where
    they lead: an eigenvalue above ``1 + SADDLE_MARGIN`` is a saddle that EM is
    leaving, where mixing would jump back onto it (measured: two overlapping blobs
    from a min-max start converged on a saddle).

    Parameters
    ----------
    xs, gs : ndarray, shape (m, P)
        Packed points and their EM images, oldest first; ``m >= 2``.
    """
    dG = np.diff(gs, axis=0).T
    secant = np.linalg.lstsq(np.diff(xs, axis=0).T, dG, rcond=None)[0]
    return bool(np.linalg.eigvals(secant).real.max() > 1.0 + SADDLE_MARGIN)


def overrelaxed(x: Theta, image: Theta, eta: float, scale: np.ndarray, frozen, background,
                w: float = 0.0) -> Theta | None:
    """The over-relaxed EM step ``x + eta (M(x) - x)`` (Salakhutdinov & Roweis 2003).

    Where EM leaves a saddle (:func:`leaving_saddle`) its steps keep their length
    or grow, and a longer step in their direction gains more; the driver keeps it
    only if it gains at least what the plain step gained.

    Parameters
    ----------
    x, image : Theta
        A point and its EM image ``M(x)`` (frozen values are taken from ``image``).
    eta : float
        Step in units of the EM step (1: the EM step itself).
    scale : ndarray, shape (D,)
        The packing's per-feature unit (:func:`pack`).
    frozen, background, w
        As in :func:`daskgmmis.mstep.mstep`.

    Returns
    -------
    Theta or None
        None when the point leaves the parameter space (see :func:`unpack`).
    """
    px, pg = pack(x, scale), pack(image, scale)
    return unpack(px + eta * (pg - px), image, scale, frozen, background, w)


def next_overrelax(eta: float, kept: bool) -> float:
    """The next over-relaxed step's length after one of ``eta`` EM steps was (not) kept."""
    return min(2.0 * eta, OVERRELAX_MAX) if kept else OVERRELAX_START


def fixed_point_shift(dX: np.ndarray, dG: np.ndarray, d: np.ndarray,
                      rcond: float = 1e-6) -> np.ndarray:
    """How far the fixed point moves when the EM map moves by ``d``: ``(I - J)^-1 d``.

    EM's Jacobian ``J`` is known through secant pairs ``dG = J dX`` (differences of
    points and of their EM images): on their span the shift solves ``(I - J) x = d``
    in least squares, as :func:`anderson` does for a residual; the part of ``d``
    that ``dF = dG - dX`` does not span is taken as it is (amplification 1).

    Parameters
    ----------
    dX, dG : ndarray, shape (P, r)
        Differences of packed points and of their EM images.
    d : ndarray, shape (P,) or (P, n)
        Perturbations of the map's image, packed alike.
    rcond : float
        Relative cutoff of ``dF``'s singular values (rounding, not EM, below it).

    Returns
    -------
    ndarray, shape of ``d``
        The fixed point's shift, packed.
    """
    gamma = np.linalg.lstsq(dG - dX, d, rcond=rcond)[0]
    return d - dG @ gamma


def unpack(p: np.ndarray, template: Theta, scale: np.ndarray, frozen, background,
           w: float) -> Theta | None:
    """Parameters from a vector packed by :func:`pack`, or None outside the parameter space.

    Frozen values and a fixed background amplitude are taken from ``template``; the
    free amplitudes are renormalized. ``frozen``, ``background``, ``w`` as in
    :func:`daskgmmis.mstep.mstep`.
    """
    K, D = template.mean.shape
    if not np.all(np.isfinite(p)):
        return None
    amp = p[:K].copy()
    mean = p[K:K + K * D].reshape(K, D) * scale
    tri = np.tril_indices(D)
    L = np.zeros((K, D, D))
    L[:, tri[0], tri[1]] = p[K + K * D:-1].reshape(K, -1)
    L *= scale[:, None]
    covar = L @ np.swapaxes(L, 1, 2)
    if not (amp >= 0).all():
        return None
    bg_amp = template.bg_amp
    if background is not None and background.adjust_amp:
        bg_amp = float(np.clip(p[-1], background.amp_min, background.amp_max))
    for k in frozen["amp"]:
        amp[k] = template.amp[k]
    for k in frozen["mean"]:
        mean[k] = template.mean[k]
    for k in frozen["covar"]:
        covar[k] = template.covar[k]
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
