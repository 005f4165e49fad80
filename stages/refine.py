"""Refine stage: per pair, proposals -> refined matches (identity on the classical path)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.manifests.columns import as_matches
from matchmill.manifests.schemas import MATCHES

from .feature_store import FeatureStore
from .propose import check_matches
from .registry import build_method
from .rows import Row, process_rows
from .threads import limit_threads

#: The refine section's own keys (besides the execution keys and the method's ``default_conf``).
STAGE_DEFAULTS = {
    "method": "identity",  # registered refiner (see stages/registry.py)
}


class RefineActor:
    def __init__(self, conf: dict, run_url: str, config_hash: str = ""):
        section = conf["refine"]
        limit_threads(section["num_cpus"])
        self.refiner = build_method("refine", section)
        self.features = None
        if getattr(self.refiner, "needs_features", False):
            self.features = FeatureStore(run_url, cache_bytes=int(section["feature_cache_mb"] * 2**20))

    def __call__(self, batch: pa.Table) -> pa.Table:
        if getattr(self.refiner, "identity", False):  # matches and scores pass through as Arrow, untouched
            return process_rows(batch, lambda row: {"seconds": 0.0}, MATCHES, stage="refine", key="pair_id")
        return process_rows(batch, self.refine_one, MATCHES, stage="refine", key="pair_id")

    def refine_one(self, row: Row) -> dict:
        matches = as_matches(row.get("matches")).astype(np.float32)
        scores = np.asarray(row.get("scores", ()), np.float32).reshape(-1)
        extra = {}
        if self.features is not None:
            extra = {"feats0": self.features.get(row["image0"]), "feats1": self.features.get(row["image1"]), "row": row}
        start = time.perf_counter()
        matches, scores = self.refiner(matches, scores, **extra)
        seconds = time.perf_counter() - start
        check_matches(matches, scores, "refine")
        return {"num_matches": len(matches), "matches": matches, "scores": scores, "seconds": seconds}
