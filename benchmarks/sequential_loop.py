"""The baseline matchmill is compared with: a sequential loop that handles one pair at a time.

This is how image-matching-toolbox (immatch) evaluates a matcher such as Patch2Pix: for every pair
it loads both images, runs the network on both, matches, refines and estimates the geometry;
nothing is shared between pairs, so an image in k pairs is extracted k times. The loop below calls
exactly the stage code of a matchmill run (the registered method classes, the extract stage's
image loading / resizing / frame bookkeeping, the verify stage's RANSAC and per-pair metrics), in
this process, without Ray and without writing anything, so the two differ only in how the work is
organised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class SequentialResult:
    pairs: int
    extract_calls: int  # two per pair
    seconds: float  # model construction + every pair
    num_matches: dict[str, int] = field(default_factory=dict)  # pair_id -> matches after refinement
    num_inliers: dict[str, int] = field(default_factory=dict)  # pair_id -> RANSAC inliers


def build_method(conf: dict, stage: str):
    """The registered method of ``<stage>.method`` with its own config keys (as the stage actors do)."""
    from matchmill.methods.registry import build_method as build

    return build(stage, conf[stage])


def run_sequential(conf: dict, pairs: pa.Table, threads: int | None = None) -> SequentialResult:
    """Match every pair of ``pairs`` (a PAIRS table) one after the other.

    Args:
        conf: a resolved job config (the same one the matchmill run used).
        pairs: the pairs to match, in order.
        threads: PyTorch / OpenCV threads for the loop (default: all cores, as a plain script gets).
    """
    import os

    import cv2
    import numpy as np
    import torch

    from matchmill.stages.extract import ExtractActor
    from matchmill.stages.propose import propose_pair
    from matchmill.stages.refine import refine_pair
    from matchmill.stages.verify import VerifyActor

    threads = threads or os.cpu_count() or 1
    start = time.perf_counter()
    extractor = ExtractActor(conf, "memory://unused", "sequential")
    proposer = build_method(conf, "propose")
    refiner = build_method(conf, "refine")
    verifier = VerifyActor(conf)
    torch.set_num_threads(threads)  # the stage actors limit themselves to their Ray CPUs; a script does not
    cv2.setNumThreads(threads)

    result = SequentialResult(pairs=pairs.num_rows, extract_calls=0, seconds=0.0)
    for row in pairs.to_pylist():
        feats = []
        for side in ("0", "1"):
            tensors, _ = extractor.compute({"path": row["path" + side], "crop": row["crop" + side]})
            feats.append(tensors)
            result.extract_calls += 1
        matches, scores = propose_pair(proposer, feats[0], feats[1])
        matches, scores = refine_pair(refiner, np.asarray(matches, np.float32).reshape(-1, 4),
                                      np.asarray(scores, np.float32).reshape(-1), feats[0], feats[1])
        verified = verifier.verify_one({**row, "matches": np.asarray(matches).reshape(-1, 4)})
        result.num_matches[row["pair_id"]] = len(matches)
        result.num_inliers[row["pair_id"]] = verified["num_inliers"]
    result.seconds = time.perf_counter() - start
    return result
