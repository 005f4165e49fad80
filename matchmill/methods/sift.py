"""SIFT keypoints and descriptors (OpenCV), optionally RootSIFT-normalised, and the classical
chain preset ``sift`` (SIFT -> mutual nearest neighbours -> no refinement)."""

from __future__ import annotations

import cv2
import numpy as np

from .base import Method


class SiftExtractor(Method):
    """OpenCV SIFT on a grayscale image.

    Output keypoints are in the pixels of the image it was given (OpenCV convention).
    """

    default_conf = {
        "max_keypoints": 2048,  # keep the strongest N by detector response; 0 = all
        "contrast_threshold": 0.02,  # OpenCV contrastThreshold; lower finds more keypoints
        "edge_threshold": 10,  # OpenCV edgeThreshold
        "n_octave_layers": 3,  # OpenCV nOctaveLayers
        "rootsift": True,  # Hellinger-normalise descriptors (Arandjelovic & Zisserman 2012)
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"edge_threshold": "> 0", "n_octave_layers": ">= 1"}

    def __init__(self, conf: dict | None = None):
        super().__init__(conf)
        self.sift = cv2.SIFT_create(
            nfeatures=0,
            nOctaveLayers=int(self.conf["n_octave_layers"]),
            contrastThreshold=float(self.conf["contrast_threshold"]),
            edgeThreshold=float(self.conf["edge_threshold"]),
        )

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detect and describe.

        Args:
            image: (H, W, 3) uint8 RGB or (H, W) uint8 gray.

        Returns:
            ``keypoints`` (N, 2) float32 x, y; ``descriptors`` (N, 128) float32 (unit L2 norm);
            ``scores`` (N,) float32 detector responses; ``scales`` (N,) float32 sizes.
        """
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None or len(kps) == 0:
            return {
                "keypoints": np.zeros((0, 2), np.float32),
                "descriptors": np.zeros((0, 128), np.float32),
                "scores": np.zeros((0,), np.float32),
                "scales": np.zeros((0,), np.float32),
            }
        responses = np.array([k.response for k in kps], np.float32)
        # OpenCV finds keypoints in parallel, so their order varies between runs: sort by a full
        # key (response, then position, size, angle) so that outputs are reproducible.
        attrs = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float64)
        order = np.lexsort((attrs[:, 3], attrs[:, 2], attrs[:, 1], attrs[:, 0], -responses))
        limit = int(self.conf["max_keypoints"])
        if limit > 0:
            order = order[:limit]
        pts = np.array([kps[i].pt for i in order], np.float32).reshape(-1, 2)
        desc = desc[order].astype(np.float32)
        if self.conf["rootsift"]:
            desc = desc / (np.abs(desc).sum(axis=1, keepdims=True) + 1e-8)
            desc = np.sqrt(desc)
        desc = desc / (np.linalg.norm(desc, axis=1, keepdims=True) + 1e-8)
        return {
            "keypoints": pts,
            "descriptors": desc,
            "scores": responses[order],
            "scales": np.array([kps[i].size for i in order], np.float32),
        }


#: Chain presets of this family (collected by :mod:`matchmill.methods.presets`).
PRESETS = {
    # classical baseline: OpenCV SIFT -> mutual nearest neighbours -> no refinement
    "sift": {"extract.method": "sift", "propose.method": "mnn", "refine.method": "identity"},
}
