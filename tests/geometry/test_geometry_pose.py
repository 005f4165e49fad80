"""Relative pose estimation, pose errors, pose AUC and pose aggregation (LoFTR protocol)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from matchmill.config import ConfigError
from matchmill.geometry.epipolar import fundamental_from_pose
from matchmill.geometry.pair_metrics import aggregate_metric_records, aggregate_metrics, evaluate_pair
from matchmill.geometry.pose import (
    estimate_relative_pose,
    normalized_threshold,
    pose_auc,
    pose_from_fundamental,
    relative_pose_error,
)
from matchmill.geometry.robust import find_fundamental

from tests.helpers.paths import SHARED_DATA, needs_shared


def rotation(axis, degrees: float) -> np.ndarray:
    """(3, 3) rotation of ``degrees`` about ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    rvec = axis / np.linalg.norm(axis) * np.deg2rad(degrees)
    return cv2.Rodrigues(rvec)[0]


def pose_matrix(R: np.ndarray, t) -> np.ndarray:
    """(4, 4) from R (3, 3) and t (3,)."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of camera-frame points X (N, 3)."""
    x = X @ K.T
    return x[:, :2] / x[:, 2:]


K0 = np.array([[600.0, 0.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]])
K1 = np.array([[800.0, 0.0, 400.0], [0.0, 790.0, 300.0], [0.0, 0.0, 1.0]])


def synthetic_pair(seed: int, n: int = 300):
    """Noise-free matches of random 3D points seen by two cameras; returns kpts0, kpts1, T_0to1."""
    rng = np.random.default_rng(seed)
    R = rotation(rng.normal(size=3), rng.uniform(5, 25))
    t = rng.normal(size=3)
    t = t / np.linalg.norm(t) * rng.uniform(0.5, 2.0)
    X0 = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(6, 15, n)])
    X1 = X0 @ R.T + t
    keep = X1[:, 2] > 0.5
    return project(K0, X0[keep]), project(K1, X1[keep]), pose_matrix(R, t)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 2, -3)])
def test_rotation_error_of_known_rotation(axis):
    T_gt = pose_matrix(rotation((0.3, -1, 0.2), 40), (1.0, 0.0, 0.0))
    R_est = T_gt[:3, :3] @ rotation(axis, 7.0)
    R_err, t_err = relative_pose_error(T_gt, R_est, T_gt[:3, 3])
    assert R_err == pytest.approx(7.0, abs=1e-6)
    assert t_err == pytest.approx(0.0, abs=1e-6)


def test_translation_sign_flip_is_not_an_error():
    T_gt = pose_matrix(np.eye(3), (0.3, -0.2, 1.0))
    _, t_err = relative_pose_error(T_gt, np.eye(3), -3.0 * T_gt[:3, 3])
    assert t_err == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("angle, expected", [(30.0, 30.0), (90.0, 90.0), (150.0, 30.0), (179.0, 1.0)])
def test_translation_error_is_folded(angle, expected):
    T_gt = pose_matrix(np.eye(3), (1.0, 0.0, 0.0))
    t = rotation((0, 0, 1), angle) @ np.array([1.0, 0.0, 0.0])
    _, t_err = relative_pose_error(T_gt, np.eye(3), t)
    assert t_err == pytest.approx(expected, abs=1e-6)


def test_zero_gt_translation_gives_zero_t_error():
    _, t_err = relative_pose_error(np.eye(4), np.eye(3), np.array([1.0, 0.0, 0.0]))
    assert t_err == 0.0


# ----------------------------------------------------------------------------- AUC


def test_pose_auc_matches_hand_computation():
    # sorted [0, 1, 3, 8, inf], recall [0, .25, .5, .75, 1]
    # @5:  (0.125 + 0.75 + 1.0) / 5             = 0.375
    # @10: (0.125 + 0.75 + 3.125 + 1.5) / 10    = 0.55
    # @20: (0.125 + 0.75 + 3.125 + 9.0) / 20    = 0.65
    aucs = pose_auc([8.0, 1.0, math.inf, 3.0])
    assert set(aucs) == {5.0, 10.0, 20.0}
    assert aucs[5.0] == pytest.approx(0.375)
    assert aucs[10.0] == pytest.approx(0.55)
    assert aucs[20.0] == pytest.approx(0.65)


def test_pose_auc_nan_counts_as_failure_and_perfect_is_one():
    assert pose_auc([8.0, 1.0, math.nan, 3.0]) == pytest.approx(pose_auc([8.0, 1.0, math.inf, 3.0]))
    assert pose_auc([0.0, 0.0], thresholds=(5,)) == {5.0: pytest.approx(1.0)}
    assert pose_auc([math.inf], thresholds=(5,)) == {5.0: 0.0}
    assert pose_auc([], thresholds=(5,)) == {5.0: 0.0}


def test_pose_auc_single_error_is_linear():
    # one pair with error e < thr: recall rises linearly 0 -> 1 over [0, e], then stays 1
    # -> area = e / 2 + (thr - e), auc = 1 - e / (2 thr)
    assert pose_auc([2.0], thresholds=(10,))[10.0] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- estimation


def test_threshold_uses_reference_focal_mean():
    assert normalized_threshold(0.5, K0, K1) == pytest.approx(0.5 / np.mean([600.0, 790.0, 600.0, 790.0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pose_from_noise_free_projections(seed):
    kpts0, kpts1, T_gt = synthetic_pair(seed)
    result = estimate_relative_pose(kpts0, kpts1, K0, K1)
    assert result is not None
    R, t, inliers = result
    assert R.shape == (3, 3) and t.shape == (3,) and inliers.shape == (len(kpts0),)
    assert inliers.dtype == bool and inliers.mean() > 0.95
    R_err, t_err = relative_pose_error(T_gt, R, t)
    assert R_err < 0.1 and t_err < 0.1
    # the sign of t is recovered too (cheirality), not only the direction up to sign
    assert np.dot(t, T_gt[:3, 3]) > 0


def test_pose_with_noise_and_outliers():
    # OpenCV keeps the minimal-sample model (no refit), so even 0.1 px noise costs a few degrees of
    # translation; the point here is that the 20 % outliers are rejected.
    rng = np.random.default_rng(7)
    kpts0, kpts1, T_gt = synthetic_pair(5, n=400)
    kpts0 = kpts0 + rng.normal(scale=0.1, size=kpts0.shape)
    n_out = len(kpts1) // 5
    kpts1 = kpts1.copy()
    kpts1[:n_out] = rng.uniform([0, 0], [800, 600], size=(n_out, 2))
    R, t, inliers = estimate_relative_pose(kpts0, kpts1, K0, K1, threshold_px=1.0)
    R_err, t_err = relative_pose_error(T_gt, R, t)
    assert R_err < 2.0 and t_err < 6.0
    assert inliers[:n_out].mean() < 0.05 and inliers[n_out:].mean() > 0.9


def test_too_few_matches_gives_none():
    kpts0, kpts1, _ = synthetic_pair(0)
    assert estimate_relative_pose(kpts0[:4], kpts1[:4], K0, K1) is None
    assert estimate_relative_pose(np.zeros((0, 2)), np.zeros((0, 2)), K0, K1) is None


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        estimate_relative_pose(np.zeros((10, 2)), np.zeros((9, 2)), K0, K1)


def test_pose_from_exact_fundamental():
    kpts0, kpts1, T_gt = synthetic_pair(3)
    F = fundamental_from_pose(K0, K1, T_gt)
    R, t = pose_from_fundamental(F, kpts0, kpts1, K0, K1)
    assert max(relative_pose_error(T_gt, R, t)) < 1e-3
    assert pose_from_fundamental(np.zeros((3, 3)), kpts0, kpts1, K0, K1) is None
    assert pose_from_fundamental(F, kpts0, kpts1, K0, K1, inliers=np.zeros(len(kpts0), bool)) is None


def test_pose_from_degensac_fundamental():
    kpts0, kpts1, T_gt = synthetic_pair(4)
    F, mask = find_fundamental(kpts0, kpts1)
    assert F is not None and mask.all()
    R, t = pose_from_fundamental(F, kpts0, kpts1, K0, K1, inliers=mask)
    assert max(relative_pose_error(T_gt, R, t)) < 0.1


# ----------------------------------------------------------------------------- per pair + aggregate


def pose_row(T_gt: np.ndarray) -> dict:
    return {
        "pair_id": "a|b",
        "K0": K0.ravel().tolist(),
        "K1": K1.ravel().tolist(),
        "T_0to1": T_gt.ravel().tolist(),
        "H_0to1": None,
        "path0": "/nonexistent/a.png",
    }


def test_evaluate_pair_pose_row():
    kpts0, kpts1, T_gt = synthetic_pair(1)
    out = evaluate_pair(kpts0, kpts1, None, pose_row(T_gt), {})
    assert out["pose_error"] < 0.1 and out["pose_error_fdegensac"] < 0.1
    assert out["pose_error"] == max(out["R_err"], out["t_err"])
    assert out["corner_error"] is None and out["mma"] is None


def test_evaluate_pair_uses_row_fundamental():
    kpts0, kpts1, T_gt = synthetic_pair(1)
    row = pose_row(T_gt) | {"F_est": None}  # null F_est: estimated here
    assert evaluate_pair(kpts0, kpts1, None, row)["pose_error_fdegensac"] < 0.1
    row["F_est"] = np.zeros(9).tolist()  # degenerate F from verify: a failure, not re-estimated
    assert evaluate_pair(kpts0, kpts1, None, row)["pose_error_fdegensac"] == math.inf
    bad_F = fundamental_from_pose(K0, K1, pose_matrix(rotation((0, 1, 0), 30), (1, 0, 0)))
    row["F_est"] = bad_F.ravel().tolist()
    assert evaluate_pair(kpts0, kpts1, None, row)["pose_error_fdegensac"] > 10


def test_evaluate_pair_failures_and_missing_gt():
    _, _, T_gt = synthetic_pair(1)
    out = evaluate_pair(np.zeros((0, 2)), np.zeros((0, 2)), None, pose_row(T_gt))
    assert out["pose_error"] == math.inf and out["pose_error_fdegensac"] == math.inf
    out = evaluate_pair(np.zeros((3, 2)), np.zeros((3, 2)), None, {"K0": None, "T_0to1": None})
    assert all(v is None for v in out.values())
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_pair(np.zeros((0, 2)), np.zeros((0, 2)), None, pose_row(T_gt) | {"K0": [math.nan] * 9})


def test_evaluate_pair_reads_its_keys_and_refuses_unknown_ones():
    kpts0, kpts1, T_gt = synthetic_pair(2)
    metric_conf = {"f_threshold": 1.0, "confidence": 0.9999, "max_iters": 10000, "pose_threshold": 0.5,
                   "pose_confidence": 0.99999}
    assert evaluate_pair(kpts0, kpts1, None, pose_row(T_gt), metric_conf)["pose_error"] < 0.1
    # the strict merge of matchmill.config: a key it does not know (a typo, a stage key) is named
    with pytest.raises(ConfigError, match=r"unknown pair metrics config keys \['geometry', 'pose_treshold'\]"):
        evaluate_pair(kpts0, kpts1, None, pose_row(T_gt), {**metric_conf, "geometry": "auto", "pose_treshold": 1.0})
    # a huge pose threshold lets RANSAC accept any 5-point model: the setting really reaches OpenCV
    rng = np.random.default_rng(0)
    noisy1 = kpts1 + rng.normal(scale=3.0, size=kpts1.shape)
    tight = evaluate_pair(kpts0, noisy1, None, pose_row(T_gt), {"pose_threshold": 1.0})
    loose = evaluate_pair(kpts0, noisy1, None, pose_row(T_gt), {"pose_threshold": 1e4})
    assert loose["pose_error"] != tight["pose_error"]


def test_evaluate_pair_explicit_F_wins_over_row():
    kpts0, kpts1, T_gt = synthetic_pair(2)
    good_F = fundamental_from_pose(K0, K1, T_gt)
    row = pose_row(T_gt) | {"F_est": np.zeros(9).tolist()}
    inliers = np.ones(len(kpts0), bool)
    assert evaluate_pair(kpts0, kpts1, inliers, row, F_est=good_F)["pose_error_fdegensac"] < 1e-3


def verified(pose_error, status="ok", gt=True, n=10):
    return {
        "pair_id": f"p{pose_error}{status}",
        "K0": K0.ravel().tolist() if gt else None,
        "K1": K1.ravel().tolist() if gt else None,
        "T_0to1": np.eye(4).ravel().tolist() if gt else None,
        "H_0to1": None,
        "status": status,
        "num_matches": n,
        "num_inliers": n // 2,
        "pose_error": pose_error,
        "pose_error_fdegensac": pose_error,
    }


def test_aggregate_pose_rows_keep_failures_in_denominator():
    rows = [verified(0.0), verified(math.inf), verified(None, status="failed", n=0)]
    m = aggregate_metrics(rows)
    # errors [0, inf, inf]: sorted [0, 0, inf, inf], recall [0, 1/3, 2/3, 1] -> auc 1/3 at any thr
    for key in ("auc@5", "auc@10", "auc@20", "auc_fdegensac@5", "auc_fdegensac@20"):
        assert m[key] == pytest.approx(1 / 3)
    assert m["num_pairs"] == 3 and m["num_failed"] == 1
    assert m["num_verified"] == 2  # ok rows without a flag count as verified; the failed one does not
    assert m["mean_matches"] == pytest.approx(10) and m["mean_inliers"] == pytest.approx(5)  # over verified pairs
    assert not any(k.startswith(("mma", "homography")) for k in m)


def test_aggregate_failed_row_without_gt_counts_against_present_family():
    rows = [verified(0.0), verified(None, status="failed", gt=False)]
    assert aggregate_metrics(rows)["auc@5"] == pytest.approx(0.5)
    only_orphans = aggregate_metrics([verified(None, status="failed", gt=False)])
    assert "auc@5" not in only_orphans and only_orphans["num_failed"] == 1


def test_aggregate_records_have_counts():
    records = aggregate_metric_records([verified(1.0), verified(2.0)])
    by_name = {r["metric"]: r for r in records}
    assert by_name["auc@10"]["count"] == 2 and by_name["num_pairs"]["value"] == 2.0
    assert aggregate_metrics([]) == {"num_pairs": 0.0, "num_failed": 0.0, "num_verified": 0}


def test_aggregate_thresholds_from_conf_and_rows_without_K():
    rows = [verified(3.0) | {"K0": None, "K1": None}, verified(None, status="failed")]
    m = aggregate_metrics(rows, {"pose_thresholds": [10], "homography_thresholds": [3]})
    # errors [3, inf]: sorted [0, 3, inf], recall [0, .5, 1] -> (0.75 + 3.5) / 10
    assert m["auc@10"] == pytest.approx(0.425)
    assert "auc@5" not in m and "auc_fdegensac@10" in m


# ----------------------------------------------------------------------------- real data


def sift_matches(img0: np.ndarray, img1: np.ndarray, scale: float):
    """Ratio-test SIFT matches computed at ``scale`` and returned in original pixels."""
    small = [cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for im in (img0, img1)]
    sift = cv2.SIFT_create(2000)
    (k0, d0), (k1, d1) = (sift.detectAndCompute(im, None) for im in small)
    good = [a for a, b in cv2.BFMatcher().knnMatch(d0, d1, k=2) if a.distance < 0.8 * b.distance]
    p0 = np.array([k0[m.queryIdx].pt for m in good]) / scale
    p1 = np.array([k1[m.trainIdx].pt for m in good]) / scale
    return p0, p1


@needs_shared
@pytest.mark.shared_data
def test_megadepth_pair_pose_with_sift():
    folder = SHARED_DATA / "megadepth_pair"
    cams = json.loads((folder / "cameras_converted.json").read_text())
    img0 = cv2.imread(str(folder / "img_0.jpg"), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(folder / "img_1.jpg"), cv2.IMREAD_GRAYSCALE)
    kpts0, kpts1 = sift_matches(img0, img1, 0.5)
    assert len(kpts0) > 100
    row = {
        "K0": np.ravel(cams["img_0.jpg"]["K"]).tolist(),
        "K1": np.ravel(cams["img_1.jpg"]["K"]).tolist(),
        "T_0to1": np.ravel(cams["T_0to1"]).tolist(),
        "path0": str(folder / "img_0.jpg"),
    }
    out = evaluate_pair(kpts0, kpts1, None, row)
    assert out["pose_error"] < 10.0 and out["pose_error_fdegensac"] < 10.0
    # swapping the images must break the pose (the GT direction matters)
    swapped = evaluate_pair(kpts1, kpts0, None, row)
    assert swapped["R_err"] > 5.0 or swapped["t_err"] > 20.0


def test_far_points_are_not_discarded_by_cheirality_distance():
    # depth / baseline ~ 100-300: OpenCV's default recoverPose distance threshold (50) would drop
    # every point; the protocol's 1e9 must reach OpenCV (keyword argument, see geometry.pose).
    rng = np.random.default_rng(11)
    R, t = rotation((0.2, 1.0, 0.1), 10.0), np.array([1.0, 0.1, 0.2])
    X0 = np.column_stack([rng.uniform(-60, 60, 200), rng.uniform(-40, 40, 200), rng.uniform(100, 300, 200)])
    kpts0, kpts1 = project(K0, X0), project(K1, X0 @ R.T + t)
    result = estimate_relative_pose(kpts0, kpts1, K0, K1)
    assert result is not None and result[2].sum() > 150
    assert relative_pose_error(pose_matrix(R, t), result[0], result[1])[0] < 0.1
    assert pose_from_fundamental(fundamental_from_pose(K0, K1, pose_matrix(R, t)), kpts0, kpts1, K0, K1) is not None
