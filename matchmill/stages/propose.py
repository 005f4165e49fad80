"""Propose stage: per pair, candidate matches from the two images' stored features."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.manifests.schemas import PROPOSALS

from matchmill.methods.base import Features, Proposer
from matchmill.methods.registry import build_method

from .feature_store import FeatureStore
from .rows import Row, process_rows
from .threads import limit_threads

#: The propose section's own keys (besides the execution keys and the method's ``default_conf``).
STAGE_DEFAULTS = {
    "method": "mnn",  # registered proposer or plugin module:Class (see matchmill/methods/registry.py)
}


def check_matches(matches: np.ndarray, scores: np.ndarray, where: str) -> None:
    """Shape contract between stages: matches (N, 4), scores (N,)."""
    if matches.ndim != 2 or matches.shape[1] != 4 or scores.shape != (matches.shape[0],):
        raise ValueError(f"{where}: expected matches (N, 4) and scores (N,), got {matches.shape} and {scores.shape}")


class ProposeActor:
    """Ray Data callable class over pair rows."""

    def __init__(self, conf: dict, run_url: str, config_hash: str = ""):
        section = conf["propose"]
        limit_threads(section["num_cpus"])
        self.proposer = build_method("propose", section)
        self.features = FeatureStore(run_url, cache_bytes=int(section["feature_cache_mb"] * 2**20))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_rows(batch, self.propose_one, PROPOSALS, stage="propose", key="pair_id")

    def propose_one(self, row: Row) -> dict:
        feats0 = self.features.get(row["image0"])
        feats1 = self.features.get(row["image1"])
        start = time.perf_counter()
        matches, scores = propose_pair(self.proposer, feats0, feats1)
        seconds = time.perf_counter() - start
        return {"num_matches": len(matches), "matches": matches, "scores": scores, "seconds": seconds}


def propose_pair(proposer: Proposer, feats0: Features, feats1: Features) -> tuple[np.ndarray, np.ndarray]:
    """Candidate matches of one pair: ``matches`` (N, 4) x0 y0 x1 y1 in original pixels and
    ``scores`` (N,), shapes checked (the same code path for the actors and :func:`matchmill.match`).

    Raises:
        ValueError: the proposer broke the shape contract.
    """
    matches, scores = proposer(feats0, feats1)
    matches, scores = np.asarray(matches), np.asarray(scores)
    check_matches(matches, scores, "propose")
    return matches, scores
