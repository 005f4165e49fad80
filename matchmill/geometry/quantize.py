"""Localisation quantisation of pixel matches (Patch2Pix supplementary section 3, spec section 5).

Detector-free matchers regress keypoint positions per pair, so image A's keypoints for pair
(A, B) and for pair (A, C) differ by fractions of a pixel and never co-occur in the
triangulation of an SfM / localisation pipeline (hloc). Quantisation merges each image's
keypoints that lie closer than ``radius`` px into one keypoint at their mean, turning the
matches into keypoint-id pairs shared across pairs.

Algorithm (deterministic; the result depends only on the input order of pairs and matches):

1. Drop matches with score < ``min_score``.
2. Per image, visit its points in input order (pairs in the given order; for each pair its
   matches in order) and cluster them greedily ("leader" clustering):
   a point joins the existing cluster whose CURRENT centroid is nearest, if that centroid is
   strictly closer than ``radius``; otherwise it starts a new cluster. A cluster's centroid is
   always the EXACT MEAN of all its members (running sums / counts), not the reference code's
   pairwise average ``(centre + point) / 2``, which over-weights the latest point.
   Candidate centroids are found with a hash grid of ``cell`` px cells: each cluster is filed
   under the cell of its current centroid and a point searches its own and the 8 neighbouring
   cells. Because ``cell >= radius`` this finds every centroid within ``radius`` (unlike the
   reference, which only looks in the point's own 48 px cell, so two points 1 px apart on a
   cell border never merge). Ties are broken towards the older cluster.
   The centroid moves as members join, so a member can end up slightly farther than
   ``radius`` from the final centroid; pairwise-distance chaining (connected components of
   the ``< radius`` graph) was rejected because dense matches chain into blobs many radii wide.
3. Keypoint ids are cluster ids (in order of creation); coordinates are the final centroids.
4. Per pair, matches become (id_A, id_B) pairs. Duplicates (the same id on either side) are
   removed by greedy one-to-one selection in order of decreasing score (ties: earlier match):
   a match is kept iff neither of its ids was taken by a better match. This is exact and
   single-pass, unlike the reference's "best per id in A intersect best per id in B, twice"
   (which can drop a match whose competitor is itself dropped, and whose second pass
   misaligns scores). Kept matches stay in input order.

Complexity: the clustering is a Python loop over points (a few microseconds per point;
sequential by nature), everything else is vectorised numpy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["cluster_points", "unique_matches", "quantize_matches"]


def cluster_points(points: np.ndarray, radius: float = 4.0, cell: float = 48.0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy leader clustering with exact-mean centroids (see module docstring, step 2).

    Args:
        points: (P, 2) pixel positions (x, y), visited in order.
        radius: merge distance (px); a point joins a centroid strictly closer than this.
        cell: hash-grid cell size (px), must be >= radius (affects speed only).

    Returns:
        labels (P,) int64 cluster id of each point, centres (K, 2) float64 exact member means.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not (radius > 0 and cell >= radius):
        raise ValueError(f"need radius > 0 and cell >= radius, got radius={radius}, cell={cell}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain non-finite values")
    r2 = float(radius) ** 2
    cells = np.floor(pts / float(cell)).astype(np.int64)
    labels = np.empty(len(pts), dtype=np.int64)
    sx: list[float] = []
    sy: list[float] = []
    cnt: list[int] = []
    cx: list[float] = []
    cy: list[float] = []
    home: list[tuple[int, int]] = []
    grid: dict[tuple[int, int], list[int]] = {}
    inv = 1.0 / float(cell)
    for i, ((x, y), (gx, gy)) in enumerate(zip(pts.tolist(), cells.tolist())):
        best, best_d = -1, r2
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                members = grid.get((gx + ox, gy + oy))
                if not members:
                    continue
                for k in members:
                    d = (cx[k] - x) ** 2 + (cy[k] - y) ** 2
                    if d < r2 and (d < best_d or (d == best_d and k < best)):
                        best, best_d = k, d
        if best < 0:
            best = len(cnt)
            sx.append(x)
            sy.append(y)
            cnt.append(1)
            cx.append(x)
            cy.append(y)
            home.append((gx, gy))
            grid.setdefault((gx, gy), []).append(best)
        else:
            sx[best] += x
            sy[best] += y
            cnt[best] += 1
            cx[best] = sx[best] / cnt[best]
            cy[best] = sy[best] / cnt[best]
            new_home = (math.floor(cx[best] * inv), math.floor(cy[best] * inv))
            if new_home != home[best]:
                grid[home[best]].remove(best)
                grid.setdefault(new_home, []).append(best)
                home[best] = new_home
        labels[i] = best
    centres = np.stack([np.asarray(sx), np.asarray(sy)], axis=1) / np.asarray(cnt, dtype=np.float64)[:, None]
    return labels, centres.reshape(-1, 2)


def unique_matches(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of a one-to-one subset of id matches, best scores first (module docstring, step 4).

    Vectorised form of the greedy "sort by score, keep if both ids unused": each round keeps
    the matches that rank first for both of their ids among the remaining ones, then removes
    every remaining match sharing an id with a kept one. This equals the sequential greedy
    result (the top remaining match always survives a round, so it terminates).

    Args:
        ids: (M, 2) int keypoint ids (A, B).
        scores: (M,) scores.

    Returns:
        (K,) int64 sorted indices of the kept matches.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(ids) != len(scores):
        raise ValueError(f"ids (M, 2) and scores (M,) differ in length: {len(ids)} vs {len(scores)}")
    m = len(ids)
    order = np.lexsort((np.arange(m), -scores))  # best score first, ties: earlier first
    ranked = ids[order]  # (M, 2) in rank order
    alive = np.ones(m, dtype=bool)
    keep = np.zeros(m, dtype=bool)
    while alive.any():
        pos = np.flatnonzero(alive)  # rank positions still alive, ascending
        cand = ranked[pos]
        first_a = np.zeros(len(pos), dtype=bool)
        first_b = np.zeros(len(pos), dtype=bool)
        first_a[np.unique(cand[:, 0], return_index=True)[1]] = True
        first_b[np.unique(cand[:, 1], return_index=True)[1]] = True
        won = pos[first_a & first_b]
        keep[won] = True
        taken = np.isin(ranked[:, 0], ranked[won, 0]) | np.isin(ranked[:, 1], ranked[won, 1])
        alive &= ~taken
    return np.sort(order[keep])


def _check_pair(k: int, pair: Any) -> tuple[Hashable, Hashable, np.ndarray, np.ndarray]:
    """Validate one (image_a, image_b, matches (N, 4), scores (N,)) entry."""
    if len(pair) != 4:
        raise ValueError(f"pairs[{k}] must be (image_a_id, image_b_id, matches, scores)")
    a, b, matches, scores = pair
    matches = np.asarray(matches, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if matches.size == 0:
        matches = matches.reshape(0, 4)
    if matches.ndim != 2 or matches.shape[1] != 4:
        raise ValueError(f"pairs[{k}] matches must have shape (N, 4), got {matches.shape}")
    if scores.shape != (len(matches),):
        raise ValueError(f"pairs[{k}] scores must have shape ({len(matches)},), got {scores.shape}")
    if not (np.isfinite(matches).all() and np.isfinite(scores).all()):
        raise ValueError(f"pairs[{k}] has non-finite matches or scores")
    return a, b, matches, scores


def quantize_matches(
    pairs: Sequence[tuple[Hashable, Hashable, np.ndarray, np.ndarray]],
    radius: float = 4.0,
    cell: float = 48.0,
    min_score: float = 0.25,
) -> tuple[dict[Hashable, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Quantise per-pair pixel matches into shared per-image keypoints (module docstring).

    Args:
        pairs: sequence of ``(image_a_id, image_b_id, matches, scores)`` with matches (N, 4)
            ``[xA, yA, xB, yB]`` and scores (N,). Order matters (it is the clustering order);
            the reference processes database pairs before query pairs.
        radius: keypoints closer than this (px) merge (reference: 4).
        cell: hash-grid cell (px, >= radius), a speed knob (reference: 48, used differently).
        min_score: matches with score < min_score are dropped first (reference: 0.25).

    Returns:
        keypoints: image id -> (K, 2) float32 keypoints (every image of ``pairs`` is present,
            possibly with K = 0);
        pair_matches: per pair, (M, 2) int64 ``[id_A, id_B]`` rows into ``keypoints``;
        pair_scores: per pair, (M,) float32 scores of those matches.
    """
    checked = []
    for k, pair in enumerate(pairs):
        a, b, matches, scores = _check_pair(k, pair)
        kept = scores >= min_score
        checked.append((a, b, matches[kept], scores[kept]))

    # per image: the list of (pair index, side) chunks, in pair order
    chunks: dict[Hashable, list[tuple[int, int]]] = {}
    for k, (a, b, _, _) in enumerate(checked):
        chunks.setdefault(a, []).append((k, 0))
        chunks.setdefault(b, []).append((k, 1))

    keypoints: dict[Hashable, np.ndarray] = {}
    side_ids: dict[tuple[int, int], np.ndarray] = {}
    for image, parts in chunks.items():
        pts = [checked[k][2][:, 2 * side : 2 * side + 2] for k, side in parts]
        labels, centres = cluster_points(np.concatenate(pts, axis=0), radius=radius, cell=cell)
        keypoints[image] = centres.astype(np.float32)
        bounds = np.cumsum([0] + [len(p) for p in pts])
        for (k, side), lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            side_ids[(k, side)] = labels[lo:hi]

    pair_matches: list[np.ndarray] = []
    pair_scores: list[np.ndarray] = []
    for k, (_, _, _, scores) in enumerate(checked):
        ids = np.stack([side_ids[(k, 0)], side_ids[(k, 1)]], axis=1).reshape(-1, 2)
        keep = unique_matches(ids, scores)
        pair_matches.append(ids[keep].astype(np.int64))
        pair_scores.append(scores[keep].astype(np.float32))
    return keypoints, pair_matches, pair_scores
