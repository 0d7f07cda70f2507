"""Imputation of the unobserved population of a truncated catalog (docs/design.md §1.4).

Every block task draws its share of candidate rows from the current model (and
background), adds noise from ``covar_callback``, evaluates the selection Ω at the
noisy positions, and returns the candidates' E-step statistics weighted by
``1 - Ω`` together with a tally (sum of Ω, sum of 1 - Ω, count). The driver
turns the tallies into the observed fraction ``f = mean Ω`` and ``N_orig = N / f``
and scales the imputed statistics to a total weight ``N_orig - N``. Nothing
imputed is materialized outside the block task.

Base variates are scrambled Sobol points keyed by (seed, block) and are the same
at every iteration (common random numbers): the EM map is then deterministic, so
convergence can be judged on the likelihood and on ``N_orig``, and a fit does
not depend on the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from . import kernels
from .background import log_background
from .neighborhoods import estep_neighborhoods, spatial_order
from .noise import noise_class
from .selection import evaluate_covar_callback, evaluate_selection
from .stats import SuffStats

__all__ = ["ImputeTally", "candidate_count", "draw_candidates", "impute_block"]

@dataclass
class ImputeTally:
    """Sums over the candidates of one or more blocks.

    Attributes
    ----------
    omega : float
        Sum of the selection probabilities Ω_j of the candidates.
    weight : float
        Sum of ``1 - Ω_j`` (the imputed weight before scaling).
    n : int
        Number of candidates.
    """

    omega: float = 0.0
    weight: float = 0.0
    n: int = 0

    def __add__(self, other: "ImputeTally") -> "ImputeTally":
        return ImputeTally(self.omega + other.omega, self.weight + other.weight,
                           self.n + other.n)


def candidate_count(n_rows: int, oversampling: float, observed_fraction: float) -> int:
    """Candidates a block of ``n_rows`` observed rows draws.

    ``oversampling`` is the number of *unobserved* candidates per estimated
    unobserved row: a block draws ``oversampling * n_rows / f`` candidates, of
    which ``(1 - f)`` are unobserved on average, while its share of the
    unobserved population is ``n_rows (1 - f) / f``. The Monte-Carlo variance of
    the imputed statistics is then ``1 / oversampling`` times the Poisson
    variance of the unobserved population itself: it scales with the unobserved
    fraction, not with N.

    Parameters
    ----------
    n_rows : int
        Observed rows in the block.
    oversampling : float
        Monte-Carlo precision knob (> 0).
    observed_fraction : float
        Current estimate of f, clipped to [1e-3, 1].

    Returns
    -------
    int
    """
    f = min(max(observed_fraction, 1e-3), 1.0)
    return int(np.ceil(oversampling * n_rows / f))


def _base_variates(seed: np.random.SeedSequence, block: int, m: int, D: int):
    """The block's m base variates: (uniform choice (m,), position normals (m, D),
    noise normals (m, D)), the same at every iteration.

    Scrambled Sobol points (randomized quasi-Monte Carlo) instead of pseudo-random
    draws: the integrands are smooth except at selection edges, so the error of the
    imputed statistics falls nearly as 1/m rather than 1/sqrt(m). That matters
    because EM contracts slowly along weakly identified directions of truncated
    fits, which amplifies any error in the imputed statistics into the fixed point.
    Sobol prefixes are nested, so a larger m extends the same point set.
    """
    import warnings

    from scipy.special import ndtri
    from scipy.stats import qmc

    key = tuple(seed.spawn_key) + (block,)
    rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=key))
    sobol = qmc.Sobol(d=2 * D + 1, scramble=True, seed=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance warning for m != 2**k
        pts = sobol.random(m)
    pts = np.clip(pts, 1e-15, 1 - 1e-15)
    return pts[:, 0], ndtri(pts[:, 1:D + 1]), ndtri(pts[:, D + 1:])


def draw_candidates(m: int, amp, mean, covar, background, covar_callback,
                    seed: np.random.SeedSequence, block: int):
    """Draw m noisy candidate rows from the model (+ background).

    Parameters
    ----------
    m : int
        Number of candidates.
    amp, mean, covar : ndarray, shapes (K,), (K, D), (K, D, D)
    background : Background or None
    covar_callback : callable or None
        Noise covariance at the true positions (see ``fit``); ``None``: no noise.
    seed : SeedSequence
        Root of the fit's random streams.
    block : int
        Index of the block task (keys its streams).

    Returns
    -------
    y : ndarray, shape (m, D)
        Noisy positions.
    noise : None or ndarray
        Their noise covariances, shaped per ``kind``.
    kind : str
        Noise kind of the candidates.
    """
    K, D = mean.shape
    u, z, e = _base_variates(seed, block, m, D)
    weights = np.append(np.asarray(amp, dtype=np.float64),
                        background.amp if background is not None else 0.0)
    cdf = np.cumsum(weights)
    choice = np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), K)
    L = np.linalg.cholesky(covar)
    y = np.empty((m, D))
    for k in range(K):
        sel = choice == k
        y[sel] = mean[k] + z[sel] @ L[k].T
    if background is not None:
        sel = choice == K
        # the same normal variates mapped to uniforms keep the streams aligned
        y[sel] = background.lower + (background.upper - background.lower) * ndtr(z[sel])
    if covar_callback is None:
        return y, None, "none"
    kind, noise = evaluate_covar_callback(covar_callback, y)
    if kind == "shared":
        y = y + e @ np.linalg.cholesky(noise).T
    elif kind == "diag":
        y = y + e * np.sqrt(noise)
    else:
        # PSD noise may be singular: eigen-factor instead of Cholesky
        w, Q = np.linalg.eigh(noise)
        y = y + np.einsum("nij,nj->ni", Q, np.sqrt(np.clip(w, 0, None)) * e)
    return y, noise, kind


def impute_block(m: int, amp, mean, covar, background, sel_callback, covar_callback,
                 seed: np.random.SeedSequence, block: int, cutoff=None):
    """Statistics of one block's candidates, weighted by ``1 - Ω``.

    Parameters
    ----------
    m : int
        Number of candidates to draw.
    amp, mean, covar, background, covar_callback, seed, block
        As in :func:`draw_candidates`.
    sel_callback : callable
        Ω(coords (m, D)) -> (m,) in [0, 1].
    cutoff : float, optional
        Neighborhood size (as for observed rows).

    Returns
    -------
    stats : SuffStats
        Unscaled imputed statistics (``logl``/``n`` are zero: candidates are not data).
    tally : ImputeTally
    """
    K, D = mean.shape
    if m == 0:
        return SuffStats.zeros(K, D), ImputeTally()
    y, noise, kind = draw_candidates(m, amp, mean, covar, background, covar_callback,
                                     seed, block)
    omega = evaluate_selection(sel_callback, y, where="sel_callback (imputed candidates)")
    weight = 1.0 - omega
    log_bg = log_background(background, y, noise, kind)
    if cutoff is None:
        _, _, mom = kernels.estep_block(y, noise, kind, amp, mean, covar, log_bg=log_bg,
                                        weight=weight)
    else:
        # candidates spread over the whole model: sort them spatially so that tiles
        # are compact and each touches only the components that reach it
        order = spatial_order(y)
        per_row = noise_class(kind).per_row
        _, _, mom = estep_neighborhoods(
            y[order], noise[order] if per_row else noise, kind, amp, mean, covar,
            cutoff=cutoff, log_bg=None if log_bg is None else log_bg[order],
            weight=weight[order])
    stats = SuffStats(mom.A, mom.M1, mom.M2, mom.bg)
    return stats, ImputeTally(float(omega.sum()), float(weight.sum()), int(m))
