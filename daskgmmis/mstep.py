"""The M-step: new mixture parameters from summed sufficient statistics (docs/design.md §1.3).

Runs on the driver on K x D x D numbers. Covariances are the scatter about the
*new* mean (about the held mean where the mean is frozen) plus the regularization
``w**2 I``; frozen values are kept bit for bit;
free amplitudes share what frozen ones and the background leave; dead components
are re-seeded, never NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

from .background import Background
from .model import Theta
from .errors import DeadComponentWarning, InputError
from .stats import SuffStats
from .validation import as_index_array

__all__ = ["mstep", "parse_frozen"]


def parse_frozen(frozen, K):
    """Normalize the ``frozen`` argument of :func:`daskgmmis.fit`.

    Parameters
    ----------
    frozen : None, dict or sequence of int
        ``{"amp": [...], "mean": [...], "covar": [...]}`` (any subset of keys), or
        a sequence of component indices freezing all three.
    K : int

    Returns
    -------
    dict of str -> ndarray of int
        Sorted unique indices per parameter (empty arrays when nothing is frozen).
    """
    out = {"amp": np.empty(0, int), "mean": np.empty(0, int), "covar": np.empty(0, int)}
    if frozen is None:
        return out
    if isinstance(frozen, dict):
        unknown = set(frozen) - set(out)
        if unknown:
            raise InputError(f"frozen: unknown keys {sorted(unknown)}; expected a subset of "
                             f"'amp', 'mean', 'covar'.")
        for key, idx in frozen.items():
            out[key] = as_index_array(idx, K, f"frozen[{key!r}]")
        return out
    idx = as_index_array(frozen, K, "frozen")
    return {key: idx for key in out}


def _reseed(k, donor, mean, covar, amp_weight):
    """Move dead component k next to the donor: split the donor along its major axis.

    The donor keeps half its weight and moves half a sigma one way along its
    principal axis; component k takes the other half, the donor's covariance, and
    the mirrored position - the split step of split-and-merge EM.
    """
    lam, vec = np.linalg.eigh(covar[donor])
    step = 0.5 * np.sqrt(lam[-1]) * vec[:, -1]
    mean[k] = mean[donor] + step
    mean[donor] = mean[donor] - step
    covar[k] = covar[donor]
    amp_weight[k] = amp_weight[donor] = 0.5 * amp_weight[donor]


def mstep(stats: SuffStats, theta: Theta, *, w: float = 0.0, frozen=None,
          background: Background | None = None, N_total: float | None = None,
          min_weight: float = 1e-9):
    """Update the mixture parameters from summed sufficient statistics.

    Parameters
    ----------
    stats : SuffStats
        Sums over observed (and imputed) rows, centred on ``theta.mean``.
    theta : Theta
        Current parameters: amp (K,), mean (K, D), covar (K, D, D), bg_amp.
    w : float
        Regularization: ``w**2`` is added to every covariance's diagonal (data
        units); a floor that does not grow with the number of (imputed) rows.
    frozen : dict, optional
        Parsed frozen indices (see :func:`fit`): those values are kept bit for bit.
    background : Background, optional
        Bounds and ``adjust_amp`` of the background amplitude.
    N_total : float, optional
        Total weight of the rows (observed + imputed); default ``stats.n``.
    min_weight : float
        A free component is dead when ``A_k < min_weight * N_total`` or its new
        covariance is not positive definite; it is re-seeded by splitting the
        component with the largest weight along its major axis (see
        :func:`_reseed`), with a :class:`DeadComponentWarning`. Nothing becomes NaN.

    Returns
    -------
    theta : Theta
        New parameters; free amplitudes share ``1 - frozen amplitudes - bg_amp``.
    dead : ndarray of int
        Indices of the re-seeded components.
    """
    amp, mean, covar = theta.amp, theta.mean, theta.covar
    K, D = mean.shape
    frozen = frozen or parse_frozen(None, K)
    N_total = float(stats.n if N_total is None else N_total)
    A = stats.A
    safeA = np.where(A > 0, A, 1.0)
    shift = stats.M1 / safeA[:, None]
    scatter = stats.M2 / safeA[:, None, None] - shift[:, :, None] * shift[:, None, :]
    held = np.asarray(frozen["mean"], dtype=int)
    # A frozen mean is the mean the new covariance must describe the scatter about:
    # the statistics are centred on it, so that scatter is M2 / A with no shift
    # (maximizing the likelihood over the covariance with the mean held).
    scatter[held] = stats.M2[held] / safeA[held, None, None]
    cand_covar = 0.5 * (scatter + np.swapaxes(scatter, 1, 2)) + (w**2) * np.eye(D)
    new_mean, new_covar = mean.copy(), covar.copy()
    weight = A.astype(np.float64).copy()
    dead = []
    for k in range(K):
        ok = A[k] >= min_weight * N_total
        if ok and k not in frozen["covar"]:
            try:
                np.linalg.cholesky(cand_covar[k])
                new_covar[k] = cand_covar[k]
            except np.linalg.LinAlgError:
                ok = False
        if ok and k not in frozen["mean"]:
            new_mean[k] = mean[k] + shift[k]
        if not ok:
            dead.append(k)
    frozen_any = set(frozen["amp"]) | set(frozen["mean"]) | set(frozen["covar"])
    reseeded, stuck = [], []
    for k in dead:
        if k in frozen_any:
            continue   # frozen parameters are never moved; an idle frozen component stays
        donors = [j for j in range(K) if j not in dead and j not in frozen_any]
        if not donors:
            stuck.append(k)
            if A[k] >= min_weight * N_total and k not in frozen["mean"]:
                # only the covariance is singular: the mean is still well defined
                new_mean[k] = mean[k] + shift[k]
            continue
        _reseed(k, max(donors, key=lambda j: weight[j]), new_mean, new_covar, weight)
        reseeded.append(k)
    if stuck:
        # e.g. K=1 on identical rows: nothing to split; keeping the old values is the
        # only finite choice, and it must not pass silently for a fit
        warnings.warn(f"components {stuck} received (almost) no responsibility or collapsed "
                      f"to a singular covariance, and no free component is left to re-seed "
                      f"them from; they keep their previous covariances, which are not a fit. "
                      f"The data may be (nearly) identical rows: use a regularization w > 0.",
                      DeadComponentWarning, stacklevel=3)
    if reseeded:
        warnings.warn(f"components {reseeded} received (almost) no responsibility or collapsed "
                      f"to a singular covariance; each was re-seeded by splitting the heaviest "
                      f"component. Consider fewer components or a regularization w > 0.",
                      DeadComponentWarning, stacklevel=3)
    bg_amp = theta.bg_amp
    if background is not None and background.adjust_amp:
        bg_amp = float(np.clip(stats.bg / N_total, background.amp_min, background.amp_max))
    new_amp = np.asarray(amp, dtype=np.float64).copy()
    fixed = frozen["amp"]
    free = np.setdiff1d(np.arange(K), fixed)
    remainder = 1.0 - new_amp[fixed].sum() - (bg_amp or 0.0)
    if remainder < -1e-12:
        raise InputError(f"frozen['amp']: frozen amplitudes ({new_amp[fixed].sum():.6g}) plus "
                         f"the background amplitude ({bg_amp or 0.0:.6g}) exceed 1.")
    if free.size:
        total_free = weight[free].sum()
        new_amp[free] = (max(remainder, 0.0) * weight[free] / total_free if total_free > 0
                         else max(remainder, 0.0) / free.size)
    return Theta(new_amp, new_mean, new_covar, bg_amp), np.asarray(reseeded, dtype=int)


