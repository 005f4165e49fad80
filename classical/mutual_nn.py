"""Mutual nearest-neighbour matching of descriptor sets, with an optional ratio test."""

from __future__ import annotations

import numpy as np
import torch


class MutualNNMatcher:
    """Match two sets of L2-normalised descriptors by mutual nearest neighbour."""

    default_conf = {
        "ratio": 0.0,  # Lowe ratio test on distances (e.g. 0.8); 0 disables it
        "min_similarity": -1.0,  # drop matches whose cosine similarity is below this
        "chunk": 4096,  # rows of the similarity matrix computed at once (bounds memory)
    }

    def __init__(self, conf: dict):
        self.conf = {**self.default_conf, **conf}

    def __call__(self, desc0: np.ndarray, desc1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match.

        Args:
            desc0: (N0, D) float descriptors of image 0.
            desc1: (N1, D) float descriptors of image 1.

        Returns:
            ``pairs`` (M, 2) int64 indices (i0, i1) and ``scores`` (M,) float32 cosine similarity.
        """
        if desc0.ndim != 2 or desc1.ndim != 2 or desc0.shape[1] != desc1.shape[1]:
            raise ValueError(f"descriptor shapes do not match: {desc0.shape} vs {desc1.shape}")
        if len(desc0) == 0 or len(desc1) < 2 and self.conf["ratio"] > 0 or len(desc1) == 0:
            return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
        d0 = torch.from_numpy(np.ascontiguousarray(desc0, dtype=np.float32))
        d1 = torch.from_numpy(np.ascontiguousarray(desc1, dtype=np.float32))
        nn01, sim01, second01 = self._best_two(d0, d1)
        nn10, _, _ = self._best_two(d1, d0)
        idx0 = torch.arange(len(d0))
        keep = nn10[nn01] == idx0
        keep &= sim01 >= float(self.conf["min_similarity"])
        ratio = float(self.conf["ratio"])
        if ratio > 0:
            # distances of unit vectors: d = sqrt(2 - 2 s)
            dist1 = torch.sqrt(torch.clamp(2 - 2 * sim01, min=0))
            dist2 = torch.sqrt(torch.clamp(2 - 2 * second01, min=0))
            keep &= dist1 <= ratio * dist2
        pairs = torch.stack([idx0[keep], nn01[keep]], dim=1)
        return pairs.numpy().astype(np.int64), sim01[keep].numpy().astype(np.float32)

    def _best_two(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each row of ``a``: index of the most similar row of ``b``, its and the runner-up's similarity."""
        chunk = int(self.conf["chunk"])
        idx, best, second = [], [], []
        k = min(2, len(b))
        for start in range(0, len(a), chunk):
            sim = a[start : start + chunk] @ b.T
            top = torch.topk(sim, k=k, dim=1)
            idx.append(top.indices[:, 0])
            best.append(top.values[:, 0])
            second.append(top.values[:, 1] if k > 1 else torch.full_like(top.values[:, 0], -1.0))
        return torch.cat(idx), torch.cat(best), torch.cat(second)
