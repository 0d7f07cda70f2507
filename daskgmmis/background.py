"""Uniform background component over an axis-aligned box (the footprint).

With per-row noise the background density at an observed row is the box
convolved with the row's noise: ``P(x + e in box) / volume`` with ``e ~ N(0, S)``,
a Gaussian probability of a rectangle. It factorizes over features when ``S`` is
diagonal; with correlated noise it is computed exactly for the rows near two or
more faces (elsewhere the correlation cannot matter to float64 precision). Missing
features are marginalized (the density is over the observed dimensions only).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from .errors import InputError, InputTypeError
from .noise import as_noise

__all__ = ["Background", "log_background"]

# A row deeper than this many noise sigmas inside both faces of a feature has a
# probability of leaving the box through them below 1e-19 (ndtr(-9)): that feature's
# factor is 1 to float64 precision whatever the correlations.
_DEEP_SIGMAS = 9.0


class Background:
    """Uniform background over ``footprint = (lower, upper)``.

    Parameters
    ----------
    footprint : tuple of array_like, each shape (D,)
        Lower and upper corners of the box, data units; ``upper > lower``.
    amp : float
        Fraction of the population in the background, in ``[amp_min, amp_max]``.
    amp_min, amp_max : float
        Bounds of ``amp`` while fitting.
    adjust_amp : bool
        Whether a fit updates ``amp``; ``False`` holds it.

    Attributes
    ----------
    lower, upper : ndarray, shape (D,)
    D : int
    volume : float
        Volume of the box, data units to the power D.
    """

    def __init__(self, footprint, amp: float = 0.0, *, amp_min: float = 0.0,
                 amp_max: float = 1.0, adjust_amp: bool = True):
        try:
            lower, upper = footprint
        except (TypeError, ValueError):
            raise InputError("footprint: expected a pair (lower, upper) of (D,) arrays; "
                             f"found {footprint!r}.") from None
        corners = []
        for name, corner in (("lower", lower), ("upper", upper)):
            arr = np.atleast_1d(np.asarray(corner))
            if arr.dtype.kind not in "fiu":
                raise InputTypeError(f"footprint: the {name} corner must be numbers; found "
                                     f"{corner!r} (dtype {arr.dtype}).")
            corners.append(arr.astype(np.float64))
        lower, upper = corners
        if lower.ndim != 1 or lower.shape != upper.shape or lower.shape[0] < 1:
            raise InputError(f"footprint: lower and upper must both have shape (D,) with "
                             f"D >= 1; found {lower.shape} and {upper.shape}.")
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
            raise InputError("footprint: expected finite corners; found NaN or Inf.")
        if not np.all(upper > lower):
            j = int(np.argmin(upper - lower))
            raise InputError(f"footprint: expected upper > lower in every dimension; "
                             f"dimension {j} has lower={lower[j]}, upper={upper[j]}.")
        for name, value in (("amp", amp), ("amp_min", amp_min), ("amp_max", amp_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                                 np.floating)):
                raise InputTypeError(f"{name}: expected a number in [0, 1]; found {value!r}.")
        if not isinstance(adjust_amp, (bool, np.bool_)):
            # bool("no") is True: a string would silently mean "adjust"
            raise InputTypeError(f"adjust_amp: expected True or False; found {adjust_amp!r}.")
        if not (0.0 <= amp_min <= amp_max <= 1.0):
            raise InputError(f"amp_min, amp_max: expected 0 <= amp_min <= amp_max <= 1; "
                             f"found {amp_min}, {amp_max}.")
        amp = float(amp)
        if not (amp_min <= amp <= amp_max):
            raise InputError(f"amp: expected a value in [amp_min, amp_max] = "
                             f"[{amp_min}, {amp_max}]; found {amp}.")
        self.lower, self.upper = lower, upper
        self.amp = amp
        self.amp_min, self.amp_max = float(amp_min), float(amp_max)
        self.adjust_amp = bool(adjust_amp)

    @property
    def D(self) -> int:
        return self.lower.shape[0]

    @property
    def volume(self) -> float:
        return float(np.prod(self.upper - self.lower))

    def __repr__(self) -> str:
        return (f"Background(footprint=({self.lower.tolist()}, {self.upper.tolist()}), "
                f"amp={self.amp}, amp_min={self.amp_min}, amp_max={self.amp_max}, "
                f"adjust_amp={self.adjust_amp})")

    def log_density(self, coords: np.ndarray, noise_var: np.ndarray | None = None, *,
                    noise_cov: np.ndarray | None = None) -> np.ndarray:
        """Log of the (noise-convolved) background density, without the amplitude.

        Parameters
        ----------
        coords : ndarray, shape (n, D)
            NaN marks a missing feature (marginalized).
        noise_var : ndarray, shape (n, D) or (D,), optional
            Noise variances of uncorrelated noise.
        noise_cov : ndarray, shape (n, D, D) or (D, D), optional
            Full noise covariances (instead of ``noise_var``); correlations are
            taken into account exactly (see :func:`_rectangle_probability`).

        Returns
        -------
        ndarray, shape (n,)
            ``-inf`` where the density is zero.
        """
        x = np.asarray(coords, dtype=np.float64)
        observed = ~np.isnan(x)
        cov = None
        if noise_cov is not None:
            if noise_var is not None:
                raise InputError("noise_var, noise_cov: give one of them, not both.")
            cov = np.broadcast_to(np.asarray(noise_cov, dtype=np.float64),
                                  x.shape + x.shape[1:])
            noise_var = np.diagonal(cov, axis1=1, axis2=2)
        sigma = (None if noise_var is None else
                 np.sqrt(np.broadcast_to(np.asarray(noise_var, dtype=np.float64), x.shape)))
        log_frac = self._log_fractions(x, sigma, observed)
        out = log_frac.sum(axis=1) - (np.log(self.upper - self.lower) * observed).sum(axis=1)
        if cov is not None:
            self._correlate(x, cov, sigma, observed, log_frac, out)
        return out

    def _log_fractions(self, x, sigma, observed):
        """Per-feature log P(x_j + e_j in [lower_j, upper_j]), 0 where missing."""
        if sigma is None:
            frac = ((x >= self.lower) & (x <= self.upper)) * 1.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = ndtr((self.upper - x) / sigma) - ndtr((self.lower - x) / sigma)
            exact = sigma == 0
            if exact.any():
                frac = np.where(exact, ((x >= self.lower) & (x <= self.upper)) * 1.0, frac)
        with np.errstate(divide="ignore"):
            return np.log(np.where(observed, frac, 1.0))

    def _correlate(self, x, cov, sigma, observed, log_frac, out):
        """Exact values, in place, for rows where the noise correlations matter.

        A feature whose faces are both more than ``_DEEP_SIGMAS`` away contributes a
        factor 1 whatever the correlations; so do rows near the faces of only one
        feature. The others (near faces of two or more observed features with
        correlated noise among them) get the Gaussian rectangle probability over
        those features times the other features' factors.
        """
        with np.errstate(invalid="ignore"):
            deep = (((x - self.lower) > _DEEP_SIGMAS * sigma)
                    & ((self.upper - x) > _DEEP_SIGMAS * sigma))
        # a zero-variance feature is uncorrelated (PSD) and exact as an indicator
        near = observed & ~deep & (sigma > 0)
        log_width = np.log(self.upper - self.lower)
        for i in np.flatnonzero(near.sum(axis=1) >= 2):
            a = np.flatnonzero(near[i])
            S = cov[i][np.ix_(a, a)]
            if not np.any(S - np.diag(np.diag(S))):
                continue   # uncorrelated there: the product is exact already
            p = _rectangle_probability(self.lower[a] - x[i, a], self.upper[a] - x[i, a], S)
            with np.errstate(divide="ignore"):
                out[i] = (np.log(p) + log_frac[i][~near[i]].sum()
                          - log_width[observed[i]].sum())

    def copy(self) -> "Background":
        """An independent copy (a fit updates ``amp`` in place)."""
        return Background.from_dict(self.to_dict())

    def to_dict(self) -> dict:
        """Plain-JSON description (for model files and checkpoints)."""
        return {"lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "amp": self.amp, "amp_min": self.amp_min, "amp_max": self.amp_max,
                "adjust_amp": self.adjust_amp}

    @classmethod
    def from_dict(cls, d: dict) -> "Background":
        """Inverse of :meth:`to_dict`."""
        return cls((d["lower"], d["upper"]), d["amp"], amp_min=d["amp_min"],
                   amp_max=d["amp_max"], adjust_amp=d["adjust_amp"])


def _rectangle_probability(lo: np.ndarray, hi: np.ndarray, S: np.ndarray) -> float:
    """``P(lo <= e <= hi)`` for ``e ~ N(0, S)``, S (d, d) with a positive diagonal.

    Two features (a footprint's corner: the common case) by adaptive quadrature of
    the conditional form ``int phi_1(t) [Phi((hi_2 - m t) / s) - Phi((lo_2 - m t) / s)]
    dt`` to a relative precision of 1e-10, also for probabilities far below 1 (a
    difference of bivariate CDFs would lose them to cancellation). Three or more
    (rows near faces of three features at once) by Genz's quasi-Monte-Carlo
    algorithm (scipy) to an absolute 1e-9 / relative 1e-6, with a fixed stream so
    the value is reproducible.
    """
    # scipy.stats and scipy.integrate cost tens of MB: imported only when a row needs
    # them, not by every worker that imports the package
    from scipy.integrate import quad
    from scipy.stats import multivariate_normal

    d = S.shape[0]
    if d == 1:
        s = math.sqrt(S[0, 0])
        return float(ndtr(hi[0] / s) - ndtr(lo[0] / s))
    if d > 2:
        return float(multivariate_normal.cdf(hi, np.zeros(d), S, lower_limit=lo,
                                                     allow_singular=True, abseps=1e-8,
                                                     releps=1e-6, rng=0))
    s1 = math.sqrt(S[0, 0])
    slope = S[1, 0] / S[0, 0]
    # sd of the second feature given the first; a floor keeps |rho| = 1 finite (a step)
    sc = math.sqrt(max(S[1, 1] - slope * S[0, 1], 1e-300))
    a, b = max(lo[0], -40 * s1), min(hi[0], 40 * s1)
    if not a < b:
        return 0.0
    norm = 1.0 / (s1 * math.sqrt(2 * math.pi))

    def integrand(t):
        return norm * math.exp(-0.5 * (t / s1) ** 2) * (ndtr((hi[1] - slope * t) / sc)
                                                        - ndtr((lo[1] - slope * t) / sc))

    # the conditional window's edges cross 0 there: the integrand turns fastest
    points = sorted(p for p in ((lo[1] / slope, hi[1] / slope) if slope else ()) if a < p < b)
    value, _ = quad(integrand, a, b, epsabs=0.0, epsrel=1e-10, limit=200,
                    points=points or None)
    return max(float(value), 0.0)


def log_background(background: Background | None, x: np.ndarray, noise,
                   kind: str | None = None):
    """``log(amp_bg * U(x))`` per row, noise-convolved, or ``None``.

    Parameters
    ----------
    background : Background or None
        ``None`` or ``amp <= 0``: no background term (returns ``None``).
    x : ndarray, shape (n, D)
    noise : Noise, None or ndarray
        The rows' :class:`~daskgmmis.noise.Noise`, or its raw array for ``kind``:
        ``(D, D)``, ``(n, D)`` or ``(n, D, D)``.
    kind : {"none", "shared", "diag", "full"}, optional
        Kind of a raw ``noise`` array (None with a Noise).

    Returns
    -------
    ndarray, shape (n,), or None
    """
    if background is not None and not isinstance(background, Background):
        raise InputTypeError(f"background: expected a daskgmmis.Background or None; found "
                             f"{type(background).__name__}.")
    if background is None or background.amp <= 0:
        return None
    if background.D != x.shape[1]:
        raise InputError(f"background: footprint has D={background.D}; data has "
                         f"D={x.shape[1]}.")
    density = background.log_density(x, **as_noise(noise, kind).background_kwargs())
    return np.log(background.amp) + density
