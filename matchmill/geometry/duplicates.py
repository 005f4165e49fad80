"""Exact duplicate matches, dropped before RANSAC.

OpenCV's SIFT returns one keypoint per dominant orientation, so one location can carry two or
three keypoints with different descriptors; a matcher then pairs the same two locations several
times (6-8 % of the demo's SIFT matches). Such rows add no information to a robust fit but count
in the match and inlier totals and weigh twice in RANSAC's consensus.

Only *exact* duplicates are dropped: rows whose four coordinates (x0, y0, x1, y1) are equal bit
for bit as float32 (``-0.0`` equals ``+0.0``). Many-to-one matches (one point of image 0 matched
to two different points of image 1, or the reverse) are kept: they are different hypotheses, and
which one is right is RANSAC's call.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unique_matches"]


def unique_matches(matches: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Indices of the matches to keep: one row per distinct (x0, y0, x1, y1), in input order.

    Among equal rows the one with the highest score is kept (ties, and ``scores=None``: the first
    in input order), so the result does not depend on anything but the input. Rows with a NaN
    coordinate are compared by their bits too (equal NaN rows are duplicates of each other).

    Args:
        matches: (N, 4) x0 y0 x1 y1 (any float dtype; compared as float32, the stored precision).
        scores: (N,) match scores, or None.

    Returns:
        (M,) int64 indices into ``matches``, ascending, M <= N; ``N - M`` duplicates were dropped.
    """
    m = np.ascontiguousarray(np.asarray(matches, np.float32).reshape(-1, 4) + np.float32(0.0))  # folds -0.0
    n = len(m)
    if n == 0:
        return np.zeros(0, np.int64)
    if scores is None:
        order = np.arange(n)
    else:
        s = np.asarray(scores, np.float64).reshape(-1)
        if s.shape != (n,):
            raise ValueError(f"unique_matches: {len(s)} scores for {n} matches")
        s = np.where(np.isnan(s), -np.inf, s)  # a NaN score never wins
        order = np.lexsort((np.arange(n), -s))  # best score first, then input order
    keys = m.view(np.dtype((np.void, 16))).reshape(-1)[order]
    _, first = np.unique(keys, return_index=True)  # first occurrence in ``order`` of each key
    return np.sort(order[first]).astype(np.int64)
