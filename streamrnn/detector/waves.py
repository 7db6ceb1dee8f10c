"""Waves: a batch split so that each key appears at most once per wave, in arrival order.

A key's events are stepped one at a time, in the order they arrived, so a batch in which a key
appears ``k`` times needs at least ``k`` recurrent steps. :func:`wave_order` groups the events
into the fewest such waves: the ``i``-th wave holds every key's ``i``-th event of the batch. Each
wave is then one batched gather, step and scatter (:mod:`.engine`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["wave_order"]


def wave_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order events into waves: each row at most once per wave, arrival order kept per row.

    Input: rows (N,) int64. Outputs: order (N,) indices grouped by wave, bounds (W + 1,) offsets.

    >>> order, bounds = wave_order(np.array([5, 7, 5, 5, 7]))
    >>> [order[bounds[i]:bounds[i + 1]].tolist() for i in range(len(bounds) - 1)]
    [[0, 1], [2, 4], [3]]
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    by_row = np.argsort(rows, kind="stable")  # (N,)
    sorted_rows = rows[by_row]  # (N,)
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # (N,)
    rank = np.empty(n, dtype=np.int64)
    rank[by_row] = np.arange(n) - group_start  # occurrence index of each event within its key
    order = np.argsort(rank, kind="stable")  # (N,) by wave, then arrival
    counts = np.bincount(rank)  # (W,)
    bounds = np.concatenate([[0], np.cumsum(counts)])  # (W + 1,)
    return order, bounds
