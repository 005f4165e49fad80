"""Scoring of mined pairs against ground truth (matchmill/evaluation/benchmarks/mining.py), on a hand-made truth."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.evaluation.benchmarks.mining import SceneTruth, all_positives, classify, family_groups, score_mining


def truth() -> dict[str, SceneTruth]:
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    overlap = np.array([[1.0, 0.5, 0.4, 0.0],
                        [0.5, 1.0, 0.05, 0.2],
                        [0.4, 0.05, 1.0, 0.6],
                        [0.0, 0.2, 0.6, 1.0]])
    shared = np.array([[9, 5, 0, 0],  # a-b linked in SfM; everything else is not
                       [5, 9, 0, 0],
                       [0, 0, 9, 0],
                       [0, 0, 0, 9]])
    return {"s": SceneTruth(names, overlap, shared), "t": SceneTruth(names, overlap, shared)}


def test_positives_are_unlinked_pairs_with_enough_overlap():
    pos = all_positives(truth(), tau=0.3)
    assert pos == {f"{s}/a.jpg|{s}/c.jpg" for s in "st"} | {f"{s}/c.jpg|{s}/d.jpg" for s in "st"}


@pytest.mark.parametrize("pair, kind", [
    ("s/a.jpg|s/c.jpg", "positive"),
    ("s/a.jpg|s/b.jpg", "sfm linked"),
    ("s/b.jpg|s/c.jpg", "low overlap"),
    ("s/a.jpg|s/d.jpg", "no overlap"),
    ("s/a.jpg|t/a.jpg", "other scene"),
])
def test_classify(pair, kind):
    assert classify(pair, truth(), tau=0.3) == kind


def test_score_mining_precision_recall_and_retrieval_baseline():
    t = truth()
    candidates = ["s/a.jpg|s/c.jpg", "s/b.jpg|s/c.jpg", "s/a.jpg|t/a.jpg", "t/c.jpg|t/d.jpg"]
    accepted = ["s/a.jpg|s/c.jpg", "s/a.jpg|t/a.jpg"]
    s = score_mining(candidates, accepted, t, tau=0.3)
    assert s["positives"] == 4 and s["candidate_positives"] == 2
    assert s["precision"] == 0.5 and s["recall"] == 0.25 and s["candidate_recall"] == 0.5
    assert s["false_positives"] == {"other scene": 1}
    assert s["same_scene_candidates"] == 3
    assert s["candidate_overlap"] == pytest.approx((0.4 + 0.05 + 0.6) / 3)
    assert s["allowed_overlap"] == pytest.approx((0.4 + 0.0 + 0.05 + 0.2 + 0.6) / 5)
    empty = score_mining([], [], t, tau=0.3)
    assert np.isnan(empty["precision"]) and empty["recall"] == 0.0


def test_family_groups_are_contiguous_halves():
    assert family_groups(6, 2) == [0, 0, 0, 1, 1, 1]
    assert family_groups(5, 1) == [0] * 5
