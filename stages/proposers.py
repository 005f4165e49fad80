"""Proposal methods over stored features. Each returns (matches (N, 4) x0 y0 x1 y1, scores (N,))."""

from __future__ import annotations

import numpy as np

from matchmill.classical.mutual_nn import MutualNNMatcher


class MutualNNProposer:
    """Mutual nearest neighbours between the keypoint descriptors of both images."""

    default_conf = dict(MutualNNMatcher.default_conf)
    conf_bounds = dict(MutualNNMatcher.conf_bounds)

    def __init__(self, conf: dict):
        self.matcher = MutualNNMatcher(conf)

    def __call__(self, feats0: dict[str, np.ndarray], feats1: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for name, feats in (("image0", feats0), ("image1", feats1)):
            if "descriptors" not in feats or "keypoints" not in feats:
                raise ValueError(f"{name}: features have no keypoint descriptors (extractor is dense-only?)")
        pairs, scores = self.matcher(feats0["descriptors"], feats1["descriptors"])
        matches = np.concatenate([feats0["keypoints"][pairs[:, 0]], feats1["keypoints"][pairs[:, 1]]], axis=1)
        return matches.astype(np.float32).reshape(-1, 4), scores.astype(np.float32)
