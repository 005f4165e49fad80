"""Exact duplicate matches (matchmill/geometry/duplicates.py): which row of a duplicate group stays."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.geometry.duplicates import unique_matches

ROWS = np.array([
    [1, 2, 3, 4],    # 0  group a
    [1, 2, 3, 4],    # 1  group a
    [5, 6, 7, 8],    # 2  alone
    [-0.0, 0, 1, 1],  # 3 group b (-0.0 == +0.0)
    [0, 0, 1, 1],    # 4  group b
    [1, 2, 3, 4],    # 5  group a
    [1, 2, 9, 9],    # 6  many-to-one with group a (same image-0 point): kept
], np.float32)


def test_without_scores_the_first_of_each_group_stays_in_order():
    assert unique_matches(ROWS).tolist() == [0, 2, 3, 6]


def test_with_scores_the_best_scored_stays_ties_to_the_first():
    scores = [0.1, 0.9, 0.5, 0.2, 0.3, 0.9, 0.0]
    assert unique_matches(ROWS, scores).tolist() == [1, 2, 4, 6]  # rows 1 and 5 tie at 0.9: row 1


def test_nan_scores_never_win_and_float64_input_is_compared_as_stored():
    assert unique_matches(ROWS[:2], [np.nan, 0.0]).tolist() == [1]
    near = np.array([[1.0, 2.0, 3.0, 4.0], [1.0 + 1e-12, 2.0, 3.0, 4.0]])  # one float32 value
    assert unique_matches(near).tolist() == [0]
    assert unique_matches(np.zeros((0, 4))).tolist() == []


def test_is_deterministic_under_row_order_of_distinct_rows():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 50, (200, 4)).astype(np.float32)  # many exact repeats
    scores = rng.random(200)
    keep = unique_matches(base, scores)
    assert len(keep) == len(np.unique(base, axis=0))
    kept = {tuple(r): s for r, s in zip(base[keep], scores[keep])}
    for r, s in zip(base, scores):
        assert kept[tuple(r)] >= s  # the best of each group
    assert np.array_equal(keep, unique_matches(base, scores))


def test_scores_of_another_length_are_refused():
    with pytest.raises(ValueError, match="3 scores for 7 matches"):
        unique_matches(ROWS, [1, 2, 3])
