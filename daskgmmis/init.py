"""Initializations of the mixture parameters from a data summary.

``random`` and ``minmax`` follow pyGMMis (volume-filling spheres) but read only the
first-pass summary of the data plus K sampled rows, so they never gather a catalog.
Missing features of sampled rows are filled by uniform draws inside the data's
range (no zero-filling bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from .errors import InputError

__all__ = ["DataSummary", "INIT_METHODS", "sphere_scale", "init_minmax", "init_random"]

INIT_METHODS = ("random", "minmax", "kmeans", "none")


@dataclass
class DataSummary:
    """Per-feature summary of a catalog, gathered in the first pass.

    Attributes
    ----------
    n : int
        Rows.
    n_obs : ndarray, shape (D,)
        Observed (non-NaN) entries per feature.
    lo, hi : ndarray, shape (D,)
        Smallest / largest observed value per feature (NaN where none observed).
    total : ndarray, shape (D,)
        Sum of observed values per feature.
    max_noise_var : ndarray, shape (D,)
        Largest noise variance per feature (0 without noise).
    """

    n: int
    n_obs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    total: np.ndarray
    max_noise_var: np.ndarray

    def __add__(self, other: "DataSummary") -> "DataSummary":
        return DataSummary(self.n + other.n, self.n_obs + other.n_obs,
                           np.fmin(self.lo, other.lo), np.fmax(self.hi, other.hi),
                           self.total + other.total,
                           np.fmax(self.max_noise_var, other.max_noise_var))


def sphere_scale(lo: np.ndarray, hi: np.ndarray, K: int) -> float:
    """Radius s of K equal D-spheres whose volume fills the data's bounding box.

    Parameters
    ----------
    lo, hi : ndarray, shape (D,)
    K : int

    Returns
    -------
    float
        ``s = (V / K * Gamma(D/2 + 1))^(1/D) / sqrt(pi)``, data units.
    """
    D = lo.shape[0]
    width = np.where(hi > lo, hi - lo, 1.0)
    log_vol = np.log(width).sum()
    return float(np.exp((log_vol - np.log(K) + gammaln(D / 2 + 1)) / D) / np.sqrt(np.pi))


def _check_summary(summary: DataSummary) -> None:
    if (summary.n_obs == 0).any():
        j = int(np.flatnonzero(summary.n_obs == 0)[0])
        raise InputError(f"data: feature {j} is missing (NaN) in every row; expected at least "
                         f"one observed value per feature.")


def init_minmax(K: int, summary: DataSummary, rng: np.random.Generator):
    """Means uniform in the bounding box, covariances ``s^2 I`` (pyGMMis ``minmax``).

    Returns
    -------
    amp (K,), mean (K, D), covar (K, D, D)
    """
    _check_summary(summary)
    D = summary.lo.shape[0]
    mean = summary.lo + (summary.hi - summary.lo) * rng.random((K, D))
    s = sphere_scale(summary.lo, summary.hi, K)
    return np.full(K, 1.0 / K), mean, np.broadcast_to(s**2 * np.eye(D), (K, D, D)).copy()


def init_random(K: int, summary: DataSummary, rows: np.ndarray, rng: np.random.Generator):
    """Means at K random rows plus ``N(0, s^2 I)`` jitter, covariances ``s^2 I``.

    Parameters
    ----------
    K : int
    summary : DataSummary
    rows : ndarray, shape (K, D)
        The sampled rows (NaN = missing: filled uniformly inside the data range).
    rng : Generator

    Returns
    -------
    amp (K,), mean (K, D), covar (K, D, D)
    """
    _check_summary(summary)
    D = summary.lo.shape[0]
    rows = np.array(rows, dtype=np.float64)
    fill = summary.lo + (summary.hi - summary.lo) * rng.random((K, D))
    rows = np.where(np.isnan(rows), fill, rows)
    s = sphere_scale(summary.lo, summary.hi, K)
    mean = rows + s * rng.standard_normal((K, D))
    return np.full(K, 1.0 / K), mean, np.broadcast_to(s**2 * np.eye(D), (K, D, D)).copy()
