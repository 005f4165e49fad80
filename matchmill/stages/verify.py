"""Verify stage: per pair, robust geometry (pydegensac H or F) and per-pair errors against ground truth.

Per pair: exact duplicate matches are dropped (:func:`matchmill.geometry.duplicates.unique_matches`;
the row keeps the de-duplicated ``matches`` / ``scores`` and counts the rest in ``num_duplicates``),
the model is fitted, and the row is ``verified`` when a model was found with at least
``min_inliers`` inliers (COLMAP's two-view geometry rule). An unverified row keeps its matches,
inliers and errors; the metrics, the exports and ``viz`` treat it as a pair without a model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from matchmill.geometry.duplicates import unique_matches
from matchmill.geometry.pair_metrics import (
    DEFAULT_PAIR_METRICS_CONF,
    PAIR_METRICS_BOUNDS,
    evaluate_pair,
    has_homography_gt,
)
from matchmill.geometry.robust import find_fundamental, find_homography
from matchmill.manifests.columns import as_matches
from matchmill.manifests.schemas import VERIFIED

from .feature_store import FeatureStore
from .rows import Row, process_rows
from .threads import limit_threads

#: The verify section's keys (besides the execution keys). The robust-estimation and pose keys are
#: defined once, with their comments, in ``matchmill/geometry/pair_metrics.py``.
STAGE_DEFAULTS = {
    "geometry": "auto",  # auto (H when the pair has H ground truth, else F) | homography | fundamental
    "min_inliers": 15,  # verified = a model with at least this many inliers (COLMAP's min_num_inliers, 15)
    **DEFAULT_PAIR_METRICS_CONF,
}
#: Bounds of its numbers; the robust-estimation ones are defined with the keys in
#: ``matchmill/geometry/pair_metrics.py``.
STAGE_BOUNDS = {"min_inliers": ">= 0", **PAIR_METRICS_BOUNDS}


def choose_model(row, geometry: str) -> str:
    """``auto`` picks a homography for pairs with H ground truth, else a fundamental matrix."""
    if geometry != "auto":
        return geometry
    return "homography" if row.get("H_0to1") is not None else "fundamental"


class VerifyActor:
    def __init__(self, conf: dict, run_url: str | None = None, config_hash: str = ""):
        self.conf = conf["verify"]
        limit_threads(self.conf["num_cpus"])
        self.run_url = run_url
        self._features = None  # the extract manifest, read on the first pair that needs an image size

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_rows(batch, self.verify_one, VERIFIED, stage="verify", key="pair_id")

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of an original image from the extract manifest (read once per actor)."""
        if self.run_url is None:
            return None
        if self._features is None:
            self._features = FeatureStore(self.run_url)
        return self._features.image_size(image_id)

    def verify_one(self, row: Row) -> dict:
        size0 = self.image_size(row["image0"]) if has_homography_gt(row) else None
        return verify_pair(self.conf, as_matches(row.get("matches")), row.get("scores"), size0, None, row=row)


def verify_pair(conf: dict, matches: np.ndarray, scores: np.ndarray | None = None,
                size0: tuple[int, int] | None = None, size1: tuple[int, int] | None = None,
                row: Mapping[str, Any] | None = None) -> dict:
    """The VERIFIED fields of one pair: duplicates dropped, robust model, inliers, the ``verified``
    flag and errors against ground truth.

    The verify stage calls it per row and ``matchmill.match`` per pair (one code path).

    Args:
        conf: the job's ``verify`` section (:data:`STAGE_DEFAULTS` plus execution keys).
        matches: (N, 4) x0 y0 x1 y1 in original pixels (the stages pass the stored float32
            values as float64).
        scores: (N,) match scores or None; among exact duplicate matches the best-scored one is
            kept (the first on a tie); the estimation does not use them.
        size0, size1: (width, height) of the original images, or None; ``size0`` is used by the
            homography metrics (corner error) when the row has H ground truth.
        row: the pair row with its ground truth (``K0``, ``K1``, ``T_0to1``, ``H_0to1``), or None
            for a pair without any: ``geometry: auto`` then fits a fundamental matrix and the
            error columns are None.

    Returns:
        ``matches`` (M, 4) float32 and ``scores`` (M,) float32 (None when not given): the input
        without its exact duplicates, in input order, M <= N; ``num_matches`` M;
        ``num_duplicates`` N - M; ``model`` ("homography" | "fundamental"), ``num_inliers``,
        ``inliers`` (M,) bool, ``H_est`` / ``F_est`` (9,) float64 row-major or None;
        ``verified`` (a model with ``num_inliers >= conf["min_inliers"]``); the METRIC_COLUMNS of
        :func:`~matchmill.geometry.pair_metrics.evaluate_pair` (computed for every pair, verified
        or not: the aggregate decides what an unverified pair counts as); and ``seconds`` (the
        de-duplication's and the estimation's).
    """
    del size1  # part of the per-row contract; the estimation does not use it
    row = {} if row is None else row
    start = time.perf_counter()
    matches = np.asarray(matches, np.float64).reshape(-1, 4)
    keep = unique_matches(matches, scores)
    num_duplicates = len(matches) - len(keep)
    matches = matches[keep]
    scores = None if scores is None else np.asarray(scores, np.float32).reshape(-1)[keep]
    k0, k1 = matches[:, :2], matches[:, 2:]
    model = choose_model(row, conf["geometry"])
    H = F = None
    if model == "homography":
        H, inliers = find_homography(k0, k1, conf["h_threshold"], conf["h_confidence"], conf["max_iters"],
                                     seed=conf["ransac_seed"])
    else:
        F, inliers = find_fundamental(k0, k1, conf["f_threshold"], conf["confidence"], conf["max_iters"],
                                      seed=conf["ransac_seed"])
    seconds = time.perf_counter() - start
    num_inliers = int(np.count_nonzero(inliers))
    metric_conf = {k: conf[k] for k in DEFAULT_PAIR_METRICS_CONF if k in conf}  # the section's other keys are the stage's
    metrics = evaluate_pair(k0, k1, inliers, row, metric_conf, H_est=H, F_est=F, image0_size=size0)
    return {
        "matches": matches.astype(np.float32),
        "scores": scores,
        "num_matches": len(matches),
        "num_duplicates": num_duplicates,
        "model": model,
        "num_inliers": num_inliers,
        "inliers": np.asarray(inliers, bool),
        "H_est": None if H is None else np.asarray(H, np.float64).ravel(),
        "F_est": None if F is None else np.asarray(F, np.float64).ravel(),
        "verified": is_verified(H if H is not None else F, num_inliers, conf["min_inliers"]),
        **metrics,
        "seconds": seconds,
    }


def is_verified(model: np.ndarray | None, num_inliers: int, min_inliers: int) -> bool:
    """COLMAP's two-view rule: a model was estimated and it has at least ``min_inliers`` inliers."""
    return model is not None and int(num_inliers) >= int(min_inliers)
