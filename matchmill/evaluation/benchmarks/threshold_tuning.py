"""Match-threshold tuning to a target mean match count (PUMP supplementary, section B).

For fair MMA comparisons the PUMP authors "reject all matches between descriptors d1, d2 such
that d1^T d2 < tau, where tau is a matching threshold tuned to reach the target number of
matches" (the number the keypoint detector's default matching gives). Here the match score of
each method (cosine similarity for MNN, confidence for the dense matchers) plays d1^T d2: a
match is kept when ``score >= tau``.

The mean count over pairs as a function of tau is a step function, so the tuned tau is exact:
pool the scores of all pairs, sort them in decreasing order, and take the one at rank
``ceil(target * num_pairs)``. Failed pairs and pairs without matches stay in the denominator
(they contribute 0 matches), as in the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import pyarrow as pa

from matchmill.manifests.schemas import VERIFIED
from matchmill.stages.verify import VerifyActor


@dataclass(frozen=True)
class TunedThreshold:
    """Result of :func:`tune_threshold`.

    Attributes:
        threshold: tau; keep matches with ``score >= tau`` (``-inf`` = keep everything).
        target_mean: the requested mean number of matches per pair.
        mean_matches: the mean number of matches per pair after thresholding.
        reached: False when even keeping every match stays below the target.
    """

    threshold: float
    target_mean: float
    mean_matches: float
    reached: bool


def _as_scores(scores: Any, i: int) -> np.ndarray:
    """(N,) float64 finite scores of pair ``i`` (None -> empty)."""
    arr = np.zeros(0) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError(f"threshold tuning: pair {i} has non-finite match scores")
    return arr


def tune_threshold(scores_per_pair: Sequence[Any], target_mean: float) -> TunedThreshold:
    """The score threshold tau whose mean kept-match count per pair first reaches ``target_mean``.

    Args:
        scores_per_pair: one (N_i,) array of match scores per pair (None or empty for a failed
            pair or a pair without matches); higher = better.
        target_mean: wanted mean number of matches per pair (> 0).

    Returns:
        The largest tau with ``mean_i #{score_i >= tau} >= target_mean`` (ties at tau may push the
        mean slightly above the target), or tau = -inf with ``reached=False`` when the target is
        above the mean count without any threshold.
    """
    if not (isinstance(target_mean, (int, float)) and math.isfinite(target_mean) and target_mean > 0):
        raise ValueError(f"threshold tuning: target mean match count must be a positive number, got {target_mean!r}")
    per_pair = [_as_scores(s, i) for i, s in enumerate(scores_per_pair)]
    if not per_pair:
        raise ValueError("threshold tuning: no pairs")
    num_pairs = len(per_pair)
    pooled = np.sort(np.concatenate(per_pair))[::-1]
    needed = math.ceil(target_mean * num_pairs - 1e-9)
    if needed > len(pooled):
        return TunedThreshold(-math.inf, float(target_mean), len(pooled) / num_pairs, False)
    tau = float(pooled[needed - 1])
    kept = int(np.count_nonzero(pooled >= tau))
    return TunedThreshold(tau, float(target_mean), kept / num_pairs, True)


def keep_above(matches: Any, scores: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Matches and scores with ``score >= threshold``.

    Args:
        matches: N*4 flat or (N, 4) matches (x0, y0, x1, y1); None = no match.
        scores: (N,) scores aligned with ``matches``.

    Returns:
        ((M, 4) float64 matches, (M,) float64 scores), M <= N.
    """
    m = np.zeros((0, 4)) if matches is None else np.asarray(matches, dtype=np.float64).reshape(-1, 4)
    s = np.zeros(0) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(m) != len(s):
        raise ValueError(f"threshold tuning: {len(m)} matches but {len(s)} scores")
    keep = s >= threshold
    return m[keep], s[keep]


def rescore_verified(verified: pa.Table, threshold: float, verify_conf: dict[str, Any]) -> pa.Table:
    """VERIFIED rows recomputed after dropping the matches scoring below ``threshold``.

    The verify stage's own code (:class:`matchmill.stages.verify.VerifyActor`) re-runs RANSAC and
    the per-pair errors on the kept matches with the same config, so the tuned numbers follow
    exactly the protocol of the untuned ones. Failed rows pass through (still failed); a row
    that fails now becomes a failed row naming the error.

    Args:
        verified: VERIFIED table with ``matches`` (N, 4) and ``scores`` (N) per row.
        threshold: tau from :func:`tune_threshold`.
        verify_conf: the verify section of the run's config.

    Returns:
        VERIFIED table, same rows and order.
    """
    import torch  # lazy: torch, ~2 s, only to restore its thread count; the CLI imports this module

    rows = []
    for row in verified.to_pylist():
        if row.get("status") == "ok":
            matches, scores = keep_above(row.get("matches"), row.get("scores"), threshold)
            row = {**row, "matches": matches.reshape(-1, 4).tolist(), "scores": scores.tolist(), "num_matches": len(matches)}
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=VERIFIED)
    threads = (torch.get_num_threads(), cv2.getNumThreads())
    try:  # the actor pins this process's thread pools to its CPU reservation: undo that after
        return VerifyActor({"verify": verify_conf})(table)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
