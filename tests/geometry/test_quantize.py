"""Localisation quantisation: exact-mean keypoint merging, duplicate removal, shared ids."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.geometry.quantize import cluster_points, quantize_matches, unique_matches


def test_three_points_merge_to_their_exact_mean():
    # each point is < 4 px from the centroid of those before it; a running pairwise average
    # would give (11.5, 11.0), the exact mean is (11.5, 32/3)
    pts = np.array([[10.0, 10.0], [13.0, 10.0], [11.5, 12.0]])
    labels, centres = cluster_points(pts, radius=4.0)
    assert labels.tolist() == [0, 0, 0]
    np.testing.assert_allclose(centres, [[11.5, 32.0 / 3.0]], rtol=1e-12)


def test_points_five_px_apart_stay_separate_and_radius_is_strict():
    labels, centres = cluster_points(np.array([[100.0, 100.0], [105.0, 100.0], [100.0, 104.0]]), radius=4.0)
    assert labels.tolist() == [0, 1, 2]  # 5 px apart, and exactly 4 px (not < 4) apart
    np.testing.assert_allclose(centres, [[100.0, 100.0], [105.0, 100.0], [100.0, 104.0]])


def test_merging_across_grid_cell_borders():
    # 47.5 and 48.5 lie in different 48 px cells; the reference (own cell only) keeps them apart
    labels, centres = cluster_points(np.array([[47.5, 10.0], [48.5, 10.0]]), radius=4.0, cell=48)
    assert labels.tolist() == [0, 0]
    np.testing.assert_allclose(centres, [[48.0, 10.0]])


def test_cluster_points_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 200, (400, 2))
    labels, centres = cluster_points(pts, radius=4.0, cell=48)
    # brute-force reference of the same greedy rule
    sums, counts, ref = [], [], []
    for p in pts:
        if counts:
            c = np.array(sums) / np.array(counts)[:, None]
            d = np.linalg.norm(c - p, axis=1)
            k = int(np.argmin(d))
            if d[k] < 4.0:
                sums[k] = sums[k] + p
                counts[k] += 1
                ref.append(k)
                continue
        sums.append(p.copy())
        counts.append(1)
        ref.append(len(counts) - 1)
    assert labels.tolist() == ref
    np.testing.assert_allclose(centres, np.array(sums) / np.array(counts)[:, None])
    for k in range(len(centres)):  # every centre is the exact mean of its members
        np.testing.assert_allclose(centres[k], pts[labels == k].mean(0))


def test_unique_matches_is_greedy_one_to_one_by_score():
    ids = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [2, 2], [3, 4]])
    scores = np.array([0.5, 0.9, 0.8, 0.3, 0.6, 0.4])
    # 0.9 takes A0 and B1 -> drops [0,0] and [1,1]; [2,2] kept once with its best score 0.6
    assert unique_matches(ids, scores).tolist() == [1, 4, 5]
    assert unique_matches(np.zeros((0, 2)), np.zeros(0)).tolist() == []


def test_quantize_matches_shared_ids_dedup_and_score_filter():
    pair_ab = np.array(
        [
            [10.0, 10.0, 50.0, 50.0],
            [11.0, 10.0, 51.0, 50.0],  # same keypoints as row 0 after merging: a duplicate
            [100.0, 100.0, 80.0, 20.0],
            [200.0, 200.0, 90.0, 90.0],  # dropped by the score filter
        ]
    )
    scores_ab = np.array([0.5, 0.7, 0.9, 0.1])
    pair_ac = np.array([[10.5, 10.0, 5.0, 5.0], [100.0, 101.0, 30.0, 30.0]])
    scores_ac = np.array([0.8, 0.6])
    keypoints, matches, scores = quantize_matches(
        [("A", "B", pair_ab, scores_ab), ("A", "C", pair_ac, scores_ac)], radius=4.0, min_score=0.25
    )
    assert set(keypoints) == {"A", "B", "C"}
    assert all(k.dtype == np.float32 and k.shape[1] == 2 for k in keypoints.values())
    # image A: (10, 10), (11, 10), (10.5, 10) -> one keypoint at their mean; (100, 100), (100, 101) -> one
    np.testing.assert_allclose(keypoints["A"], [[10.5, 10.0], [100.0, 100.5]])
    np.testing.assert_allclose(keypoints["B"], [[50.5, 50.0], [80.0, 20.0]])
    # pair AB: the duplicate (0, 0) keeps its higher score 0.7; the 0.1 match is gone
    assert matches[0].tolist() == [[0, 0], [1, 1]]
    np.testing.assert_allclose(scores[0], [0.7, 0.9])
    # pair AC shares image A's keypoint ids with pair AB
    assert matches[1].tolist() == [[0, 0], [1, 1]]
    np.testing.assert_allclose(scores[1], [0.8, 0.6])
    assert matches[0].dtype == np.int64 and scores[0].dtype == np.float32


def test_quantize_matches_empty_pairs_and_bad_input():
    keypoints, matches, scores = quantize_matches(
        [("A", "B", np.zeros((0, 4)), np.zeros(0)), ("A", "C", np.array([[1.0, 2, 3, 4]]), np.array([0.1]))]
    )
    assert keypoints["A"].shape == (0, 2) and keypoints["C"].shape == (0, 2)
    assert matches[0].shape == (0, 2) and matches[1].shape == (0, 2) and scores[1].shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        quantize_matches([("A", "B", np.zeros((3, 2)), np.zeros(3))])
    with pytest.raises(ValueError, match="scores"):
        quantize_matches([("A", "B", np.zeros((3, 4)), np.zeros(2))])
    with pytest.raises(ValueError, match="cell >= radius"):
        cluster_points(np.zeros((2, 2)), radius=4.0, cell=2.0)
