"""Stepwise (online) EM: a few passes of block-group updates before batch EM polishes.

Batch EM reads the whole catalog for every M-step; on 10^8-10^9 rows most of those
passes re-read what the model has already learned. Stepwise EM (Cappé & Moulines
2009; Liang & Klein 2009) makes an M-step after every *group* of blocks: the
group's sufficient statistics, scaled to the whole catalog, are blended into
running statistics with a decaying step size,

    s_t = (1 - eta_t) s_{t-1} + eta_t (N / N_t) s(group_t; theta_{t-1}),
    eta_t = ((t0 + 1) / (t + t0 + 1)) ** alpha   (eta_0 = 1),   theta_t = M(s_t),

so a pass over G groups makes G M-steps instead of one. The defaults, alpha = 1
and t0 = 20, were chosen by measurement (docs/design.md §1.7): the statistics of
the last ~(t + t0) / (t0 + 1) groups dominate, so the early groups - computed at
poor parameters - are forgotten fast, while the steps stay large (> 1/2 for the
first 20 groups) as long as the parameters are far from the answer. The groups are the blocks
in a seeded random order, one block per worker thread (computed in parallel; no
row is gathered). Truncated fits impute per block exactly as the batch path does
(the group's imputed statistics are scaled to its own N_orig, then to the
catalog's), so everything a batch E-step supports - per-row noise and weights,
missing values, background, frozen parameters, neighborhoods, truncation - is
supported here; :func:`daskgmmis.fit` then finishes with batch EM.

The running statistics are kept centred on one fixed anchor (the data's mean)
rather than on the moving component means, so that blending sums taken about
different means stays exact: re-centring a record on another point is the
parallel-axis identity (:func:`recentre`). This module holds the pure pieces
(numpy only); the loop that computes groups lives in :mod:`daskgmmis.em`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import SuffStats

__all__ = ["DEFAULT_ALPHA", "DEFAULT_T0", "RunningStats", "recentre", "step_size",
           "block_groups"]

#: Exponent of the step-size decay; 0.5 < alpha <= 1 makes the steps' sum diverge
#: and their squares' sum converge (the Robbins-Monro conditions). Measured on
#: 10^6 rows, D=5, K=20, 80 groups a pass, two passes then one batch E-step: alpha=1,
#: t0=20 ended 4e-4 nats/row below the batch answer, (t + 1)**-0.6 (the former
#: default) 3.4e-3, (t + 1)**-0.5 1.6e-3 (docs/design.md §1.7).
DEFAULT_ALPHA = 1.0

#: Offset t0 of the schedule: the lag of statistics computed at earlier parameters
#: costs more than the noise of few groups, so the steps stay large for a while
#: (same problem: t0 = 10, 20, 40 ended 6.5e-4, 4e-4, 8.4e-4 below; at 8 groups a pass,
#: t0 = 20 ended 7.3e-3 below where t0 = 2 ended 1.6e-2 and the former default 1.7e-2).
DEFAULT_T0 = 20.0


def recentre(stats: SuffStats, old_centre: np.ndarray, new_centre: np.ndarray
             ) -> SuffStats:
    """The same sums centred on ``new_centre`` instead of ``old_centre``.

    With ``delta_k = new_k - old_k``: ``M1' = M1 - A delta`` and
    ``M2' = M2 - M1 delta^T - delta M1^T + A delta delta^T`` (parallel axes).

    Parameters
    ----------
    stats : SuffStats
        A (K,), M1 (K, D), M2 (K, D, D) centred on ``old_centre``.
    old_centre, new_centre : ndarray, shape (K, D) or (D,)
        Data units.

    Returns
    -------
    SuffStats
    """
    K, D = stats.M1.shape
    delta = np.broadcast_to(np.asarray(new_centre, float) - np.asarray(old_centre, float),
                            (K, D))
    A = stats.A
    M1 = stats.M1 - A[:, None] * delta
    cross = stats.M1[:, :, None] * delta[:, None, :]
    M2 = (stats.M2 - cross - np.swapaxes(cross, 1, 2)
          + A[:, None, None] * delta[:, :, None] * delta[:, None, :])
    return SuffStats(A.copy(), M1, M2, stats.bg, stats.logl, stats.n, stats.n_outside)


def step_size(t: int, alpha: float = DEFAULT_ALPHA, t0: float = DEFAULT_T0) -> float:
    """Weight of the t-th group's statistics, ``((t0 + 1) / (t + t0 + 1))**alpha``.

    The first (t = 0) is 1: the running statistics start as the first group's.
    """
    return 1.0 if t == 0 else float(((t0 + 1.0) / (t + t0 + 1.0)) ** alpha)



def block_groups(n_blocks: int, group: int, passes: int, rng: np.random.Generator) -> list:
    """Groups of block indices for ``passes`` passes, each pass a fresh random order.

    Parameters
    ----------
    n_blocks : int
        Blocks of the catalog.
    group : int
        Blocks per group (one per worker thread); the last group of a pass may
        be smaller.
    passes : int
    rng : numpy Generator
        Seeds the orders (the same seed gives the same groups).

    Returns
    -------
    list of ndarray of int
        ``passes * ceil(n_blocks / group)`` groups, sorted within each group.
    """
    groups = []
    for _ in range(passes):
        order = rng.permutation(n_blocks)
        groups.extend(np.sort(order[i:i + group]) for i in range(0, n_blocks, group))
    return groups


@dataclass
class RunningStats:
    """Blended sufficient statistics of the whole catalog, centred on ``anchor``.

    Attributes
    ----------
    stats : SuffStats
        A (K,), M1 (K, D), M2 (K, D, D), bg, as for a full pass (observed +
        imputed rows), centred on ``anchor``.
    anchor : ndarray, shape (D,)
        Fixed centre of the sums (data units).
    n_orig : float
        Blended estimate of the population size (N without selection).
    """

    stats: SuffStats
    anchor: np.ndarray
    n_orig: float

    def blend(self, group_stats: SuffStats, centre: np.ndarray, n_orig: float,
              eta: float) -> "RunningStats":
        """``(1 - eta) self + eta group``, the group's sums being centred on ``centre``."""
        new = recentre(group_stats, centre, self.anchor)
        keep = 1.0 - eta
        s = self.stats
        blended = SuffStats(keep * s.A + eta * new.A, keep * s.M1 + eta * new.M1,
                            keep * s.M2 + eta * new.M2, keep * s.bg + eta * new.bg,
                            new.logl, new.n, new.n_outside)
        return RunningStats(blended, self.anchor, keep * self.n_orig + eta * n_orig)

    @classmethod
    def start(cls, group_stats: SuffStats, centre: np.ndarray, anchor: np.ndarray,
              n_orig: float) -> "RunningStats":
        """Running statistics that are the group's own (step size 1)."""
        anchor = np.asarray(anchor, dtype=np.float64)
        return cls(recentre(group_stats, centre, anchor), anchor, float(n_orig))

    def about(self, mean: np.ndarray) -> SuffStats:
        """The running sums centred on the component means (as the M-step takes them)."""
        return recentre(self.stats, self.anchor, mean)

