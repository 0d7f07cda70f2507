"""Graph helpers shared by every map-reduce over row blocks (docs/design.md §3).

A fit's passes (the first-pass summary, k-means||, the E-steps, the overlaps of
split-and-merge) are all one task per row block and a fixed-shape tree reduction
of the records the tasks return, then one ``compute``. This module holds the one
tree reduction and the one compute; :mod:`daskgmmis.em` and :mod:`daskgmmis.init`
build their block tasks and hand the records here.
"""

from __future__ import annotations

import dask

__all__ = ["SPLIT_EVERY", "tree_reduce", "compute"]

# Fan-in of the reduction tree: small enough that no task gathers many records,
# large enough that the tree stays shallow (log_8 of the number of blocks).
SPLIT_EVERY = 8


def tree_reduce(parts, combine, split_every: int = SPLIT_EVERY):
    """Fixed-shape tree reduction of delayed records (deterministic grouping).

    Parameters
    ----------
    parts : sequence of dask.delayed
        One record per block, in block order.
    combine : callable
        ``combine(*records) -> record``; must be associative for the result not
        to depend on ``split_every``, and picklable (a module-level function).
    split_every : int
        Fan-in of every reduction task.

    Returns
    -------
    dask.delayed
        The combined record. The grouping depends only on ``len(parts)`` and
        ``split_every``, so float sums are bit-reproducible run to run.
    """
    parts = list(parts)
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=True)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    return parts[0]


def compute(obj, client):
    """Compute ``obj`` on ``client`` (a distributed Client) or dask's threads."""
    if client is not None:
        return client.compute(obj, sync=True)
    return dask.compute(obj, scheduler="threads")[0]
