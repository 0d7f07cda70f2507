"""The records a pass over the row blocks sums: the sufficient statistics of an EM
iteration (:class:`SuffStats`) and the first pass's data summary
(:class:`DataSummary`).

A block task returns one record; records add exactly (float64 sums) so the
cluster can tree-reduce them in any grouping of a fixed tree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = ["DataSummary", "SuffStats", "sum_stats"]


@dataclass
class SuffStats:
    """Per-component sums over rows, centred on the iteration's current means.

    Attributes
    ----------
    A : ndarray, shape (K,)
        Sum of responsibilities ``sum_i q_ik``.
    M1 : ndarray, shape (K, D)
        ``sum_i q_ik (b_ik - mu_k)``, data units.
    M2 : ndarray, shape (K, D, D)
        ``sum_i q_ik ((b_ik - mu_k)(b_ik - mu_k)^T + B_ik)``, data units squared.
    bg : float
        Sum of background responsibilities.
    logl : float
        Sum of per-row log-likelihoods (observed rows only).
    n : int or float
        Number of rows (the sum of their weights for weighted rows).
    n_outside : int
        Rows outside every component's neighborhood (zero model density).
    """

    A: np.ndarray
    M1: np.ndarray
    M2: np.ndarray
    bg: float = 0.0
    logl: float = 0.0
    n: int = 0
    n_outside: int = 0

    @classmethod
    def zeros(cls, K: int, D: int) -> "SuffStats":
        """An empty record for K components in D dimensions."""
        return cls(np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D)))

    def __add__(self, other: "SuffStats") -> "SuffStats":
        return SuffStats(*(getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(self)))

    def scaled(self, factor: float) -> "SuffStats":
        """The record with its weighted sums (A, M1, M2, bg) multiplied by factor."""
        return SuffStats(self.A * factor, self.M1 * factor, self.M2 * factor,
                         self.bg * factor, self.logl, self.n, self.n_outside)


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
    weight : float
        Sum of the per-row weights (``n`` when the rows are unweighted).
    projection_sum : float
        Sum of the projection matrices' entries the rows use (0 without a
        projection): a checkpoint's fingerprint of the projection.
    """

    n: int
    n_obs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    total: np.ndarray
    max_noise_var: np.ndarray
    weight: float = 0.0
    projection_sum: float = 0.0

    def __add__(self, other: "DataSummary") -> "DataSummary":
        return DataSummary(self.n + other.n, self.n_obs + other.n_obs,
                           np.fmin(self.lo, other.lo), np.fmax(self.hi, other.hi),
                           self.total + other.total,
                           np.fmax(self.max_noise_var, other.max_noise_var),
                           self.weight + other.weight,
                           self.projection_sum + other.projection_sum)


def sum_stats(*parts):
    """Sum records (or tuples of records, element-wise); ``None`` entries are skipped."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(sum_stats(*col) for col in zip(*parts))
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = present[0]
    for p in present[1:]:
        total = total + p
    return total
