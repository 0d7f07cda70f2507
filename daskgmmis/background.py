"""Uniform background component over an axis-aligned box (the footprint).

With per-row noise the background density at an observed row is the box
convolved with the row's noise (its diagonal part), as in pyGMMis; missing
features are marginalized (the density is over the observed dimensions only).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from .errors import InputError, InputTypeError

__all__ = ["Background"]


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

    def log_density(self, coords: np.ndarray, noise_var: np.ndarray | None = None
                    ) -> np.ndarray:
        """Log of the (noise-convolved) background density, without the amplitude.

        Parameters
        ----------
        coords : ndarray, shape (n, D)
            NaN marks a missing feature (marginalized).
        noise_var : ndarray, shape (n, D) or (D,), optional
            Noise variances (the diagonal of the noise covariance).

        Returns
        -------
        ndarray, shape (n,)
            ``-inf`` where the density is zero.
        """
        x = np.asarray(coords, dtype=np.float64)
        width = self.upper - self.lower
        observed = ~np.isnan(x)
        if noise_var is None:
            inside = (x >= self.lower) & (x <= self.upper)
            frac = np.where(inside, 1.0, 0.0)
        else:
            sigma = np.sqrt(np.broadcast_to(np.asarray(noise_var, dtype=np.float64),
                                            x.shape))
            with np.errstate(divide="ignore", invalid="ignore"):
                hi = ndtr((self.upper - x) / sigma)
                lo = ndtr((self.lower - x) / sigma)
            frac = hi - lo
            exact = sigma == 0
            if exact.any():
                frac = np.where(exact, ((x >= self.lower) & (x <= self.upper)) * 1.0, frac)
        with np.errstate(divide="ignore"):
            per_dim = np.log(np.where(observed, frac, 1.0)) - np.log(width) * observed
        return per_dim.sum(axis=1)

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
