"""Mutual nearest-neighbour matching of descriptor sets, with an optional ratio test: the one
definition (:func:`mutual_nearest`), the matcher of its config and the ``mnn`` proposer."""

from __future__ import annotations

import numpy as np

from .base import Features, Method


def mutual_nearest(desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.0, min_similarity: float = -np.inf,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours by dot-product similarity (cosine for unit descriptors).

    Args:
        desc0: (N0, D) float descriptors of image 0.
        desc1: (N1, D) float descriptors of image 1.
        ratio: Lowe ratio test on distances of unit vectors (e.g. 0.8); 0 disables it.
        min_similarity: drop matches whose similarity is below this.
        chunk: rows of the similarity matrix computed at once (bounds memory).

    Returns:
        ``pairs`` (M, 2) int64 indices (i0, i1), ascending in i0, and ``scores`` (M,) float32
        similarities. Ties between rows go to the lowest i0, between columns to the lowest i1.
    """
    if desc0.ndim != 2 or desc1.ndim != 2 or desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor shapes do not match: {desc0.shape} vs {desc1.shape}")
    if len(desc0) == 0 or len(desc1) < 2 and ratio > 0 or len(desc1) == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
    d0 = np.ascontiguousarray(desc0, dtype=np.float32)
    d1 = np.ascontiguousarray(desc1, dtype=np.float32)
    nn01, sim01, second01, col_best = _best_two(d0, d1, int(chunk))
    idx0 = np.arange(len(d0))
    # mutual: row i's best column j has no better row; ties between rows go to the lowest i
    keep = sim01 >= col_best[nn01]
    first = np.zeros(len(d0), bool)
    _, first_rows = np.unique(nn01[keep], return_index=True)
    first[idx0[keep][first_rows]] = True
    keep &= first
    keep &= sim01 >= float(min_similarity)
    if ratio > 0:
        # distances of unit vectors: d = sqrt(2 - 2 s)
        dist1 = np.sqrt(np.clip(2 - 2 * sim01, 0, None))
        dist2 = np.sqrt(np.clip(2 - 2 * second01, 0, None))
        keep &= dist1 <= float(ratio) * dist2
    pairs = np.stack([idx0[keep], nn01[keep]], axis=1)
    return pairs.astype(np.int64), sim01[keep].astype(np.float32)


class MutualNNMatcher(Method):
    """Match two sets of L2-normalised descriptors by mutual nearest neighbour."""

    default_conf = {
        "ratio": 0.0,  # Lowe ratio test on distances (e.g. 0.8); 0 disables it
        "min_similarity": -1.0,  # drop matches whose cosine similarity is below this
        "chunk": 4096,  # rows of the similarity matrix computed at once (bounds memory)
    }
    conf_bounds = {"ratio": "[0, 1]", "min_similarity": "[-1, 1]", "chunk": ">= 1"}

    def __call__(self, desc0: np.ndarray, desc1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N0, D) and (N1, D) descriptors -> ``pairs`` (M, 2) int64 (i0, i1), ``scores`` (M,) float32
        cosine similarity (see :func:`mutual_nearest`)."""
        return mutual_nearest(desc0, desc1, ratio=float(self.conf["ratio"]),
                              min_similarity=float(self.conf["min_similarity"]), chunk=int(self.conf["chunk"]))


class MutualNNProposer(Method):
    """``mnn``: mutual nearest neighbours between the keypoint descriptors of both images."""

    default_conf = dict(MutualNNMatcher.default_conf)
    conf_bounds = dict(MutualNNMatcher.conf_bounds)

    def __init__(self, conf: dict | None = None):
        super().__init__(conf)
        self.matcher = MutualNNMatcher(self.conf)

    def __call__(self, feats0: Features, feats1: Features) -> tuple[np.ndarray, np.ndarray]:
        """Keypoint features of both images -> ``matches`` (N, 4) x0 y0 x1 y1, ``scores`` (N,)."""
        for name, feats in (("image0", feats0), ("image1", feats1)):
            if "descriptors" not in feats or "keypoints" not in feats:
                raise ValueError(f"{name}: features have no keypoint descriptors (extractor is dense-only?)")
        pairs, scores = self.matcher(feats0["descriptors"], feats1["descriptors"])
        matches = np.concatenate([feats0["keypoints"][pairs[:, 0]], feats1["keypoints"][pairs[:, 1]]], axis=1)
        return matches.astype(np.float32).reshape(-1, 4), scores.astype(np.float32)


def _best_two(a: np.ndarray, b: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the (Na, Nb) similarity matrix, ``chunk`` rows at a time (one matrix product).

    Returns: for each row of ``a`` the index of the most similar row of ``b`` (Na,) (ties: the
    lowest index), its similarity and the runner-up's (Na,) (-1 when ``b`` has one row); for
    each row of ``b`` its best similarity to any row of ``a`` (Nb,).
    """
    n_a = len(a)
    idx = np.empty(n_a, np.int64)
    best = np.empty(n_a, np.float32)
    second = np.full(n_a, -1.0, np.float32)
    col_best = np.full(len(b), -np.inf, np.float32)
    for start in range(0, n_a, chunk):
        sim = a[start: start + chunk] @ b.T  # (n, Nb) float32
        rows = np.arange(len(sim))
        top = sim.argmax(axis=1)
        idx[start: start + len(sim)] = top
        best[start: start + len(sim)] = sim[rows, top]
        np.maximum(col_best, sim.max(axis=0), out=col_best)
        if sim.shape[1] > 1:
            sim[rows, top] = -np.inf
            second[start: start + len(sim)] = sim.max(axis=1)
    return idx, best, second, col_best
