"""Refine stage: per pair, proposals -> refined matches (identity on the classical path)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.manifests.schemas import MATCHES

from .feature_store import FeatureStore
from .propose import check_matches
from .registry import build_method
from .rows import process_rows
from .threads import limit_threads

STAGE_DEFAULTS = {"method": "identity"}  # registered refiner (see stages/registry.py)


class RefineActor:
    def __init__(self, conf: dict, run_url: str):
        limit_threads(conf.get("num_cpus", 1))
        self.refiner = build_method("refine", conf)
        self.features = FeatureStore(run_url) if getattr(self.refiner, "needs_features", False) else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_rows(batch, self.refine_one, MATCHES, stage="refine", key="pair_id")

    def refine_one(self, row: dict) -> dict:
        matches = np.asarray(row["matches"] or [], np.float32).reshape(-1, 4)
        scores = np.asarray(row["scores"] or [], np.float32).reshape(-1)
        extra = {}
        if self.features is not None:
            extra = {"feats0": self.features.get(row["image0"]), "feats1": self.features.get(row["image1"]), "row": row}
        start = time.perf_counter()
        matches, scores = self.refiner(matches, scores, **extra)
        seconds = time.perf_counter() - start
        check_matches(matches, scores, "refine")
        return {"num_matches": len(matches), "matches": matches, "scores": scores, "seconds": seconds}
