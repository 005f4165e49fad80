"""Refine stage: per pair, proposals -> refined matches (identity on the classical path)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.manifests.columns import as_matches
from matchmill.manifests.schemas import MATCHES

from matchmill.methods.base import Features, Refiner
from matchmill.methods.registry import build_method

from .feature_store import FeatureStore
from .propose import check_matches
from .rows import Row, process_rows
from .threads import limit_threads

#: The refine section's own keys (besides the execution keys and the method's ``default_conf``).
STAGE_DEFAULTS = {
    "method": "identity",  # registered refiner or plugin module:Class (see matchmill/methods/registry.py)
}


class RefineActor:
    def __init__(self, conf: dict, run_url: str, config_hash: str = ""):
        section = conf["refine"]
        limit_threads(section["num_cpus"])
        self.refiner = build_method("refine", section)
        self.features = None
        if self.refiner.needs_features:
            self.features = FeatureStore(run_url, cache_bytes=int(section["feature_cache_mb"] * 2**20))

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.refiner.identity:  # matches and scores pass through as Arrow, untouched
            return process_rows(batch, lambda row: {"seconds": 0.0}, MATCHES, stage="refine", key="pair_id")
        return process_rows(batch, self.refine_one, MATCHES, stage="refine", key="pair_id")

    def refine_one(self, row: Row) -> dict:
        matches = as_matches(row.get("matches")).astype(np.float32)
        scores = np.asarray(row.get("scores", ()), np.float32).reshape(-1)
        feats0 = feats1 = None
        if self.features is not None:
            feats0, feats1 = self.features.get(row["image0"]), self.features.get(row["image1"])
        start = time.perf_counter()
        matches, scores = refine_pair(self.refiner, matches, scores, feats0, feats1)
        seconds = time.perf_counter() - start
        return {"num_matches": len(matches), "matches": matches, "scores": scores, "seconds": seconds}


def refine_pair(refiner: Refiner, matches: np.ndarray, scores: np.ndarray, feats0: Features | None = None,
                feats1: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refined matches of one pair: (N, 4) proposals and (N,) scores in, (M, 4) and (M,) out, shapes
    checked (the same code path for the actors and :func:`matchmill.match`). An identity refiner is
    not called; ``feats0``/``feats1`` are passed when the refiner ``needs_features``.

    Raises:
        ValueError: the refiner needs features and none were given, or broke the shape contract.
    """
    if refiner.identity:
        return matches, scores
    if refiner.needs_features:
        if feats0 is None or feats1 is None:
            raise ValueError(f"refine: {type(refiner).__name__} needs both images' features")
        matches, scores = refiner(matches, scores, feats0=feats0, feats1=feats1)
    else:
        matches, scores = refiner(matches, scores)
    matches, scores = np.asarray(matches), np.asarray(scores)
    check_matches(matches, scores, "refine")
    return matches, scores
