"""Verify stage: per pair, robust geometry (pydegensac H or F) and per-pair errors against ground truth."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.geometry.pair_metrics import evaluate_pair
from matchmill.geometry.robust import find_fundamental, find_homography
from matchmill.manifests.schemas import VERIFIED

from .rows import process_rows
from .threads import limit_threads


def choose_model(row: dict, geometry: str) -> str:
    """``auto`` picks a homography for pairs with H ground truth, else a fundamental matrix."""
    if geometry != "auto":
        return geometry
    return "homography" if row.get("H_0to1") is not None else "fundamental"


class VerifyActor:
    def __init__(self, conf: dict):
        limit_threads(conf.get("num_cpus", 1))
        self.conf = conf

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_rows(batch, self.verify_one, VERIFIED, stage="verify", key="pair_id")

    def verify_one(self, row: dict) -> dict:
        c = self.conf
        matches = np.asarray(row["matches"] or [], np.float64).reshape(-1, 4)
        k0, k1 = matches[:, :2], matches[:, 2:]
        model = choose_model(row, c["geometry"])
        start = time.perf_counter()
        H = F = None
        if model == "homography":
            H, inliers = find_homography(k0, k1, c["h_threshold"], c["h_confidence"], c["max_iters"], seed=c["ransac_seed"])
        else:
            F, inliers = find_fundamental(k0, k1, c["f_threshold"], c["confidence"], c["max_iters"], seed=c["ransac_seed"])
        seconds = time.perf_counter() - start
        metrics = evaluate_pair(k0, k1, inliers, row, c, H_est=H, F_est=F)
        return {
            "model": model,
            "num_inliers": int(np.count_nonzero(inliers)),
            "inliers": np.asarray(inliers, bool),
            "H_est": None if H is None else np.asarray(H, np.float64).ravel(),
            "F_est": None if F is None else np.asarray(F, np.float64).ravel(),
            **metrics,
            "seconds": seconds,
        }
