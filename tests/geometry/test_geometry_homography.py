"""Homography metrics, pydegensac wrappers and homography aggregation (HPatches protocol)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from matchmill.geometry.homography import (
    homography_accuracy,
    homography_auc,
    homography_corner_error,
    mma,
    reprojection_errors,
    scale_homography,
    warp_points,
)
from matchmill.geometry.pair_metrics import aggregate_metrics, evaluate_pair
from matchmill.geometry.robust import find_fundamental, find_homography

from tests.helpers.paths import SHARED_DATA, needs_shared


H_GENERAL = np.array([[1.1, 0.05, 12.0], [-0.03, 0.92, -7.0], [2e-4, -1e-4, 1.0]])


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def random_points(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform([0, 0], [640, 480], size=(n, 2))


# ----------------------------------------------------------------------------- corner error


def test_identity_from_exact_correspondences_has_zero_corner_error():
    pts = random_points(50)
    H, mask = find_homography(pts, pts.copy())
    assert H is not None and mask.all()
    assert homography_corner_error(H, np.eye(3), 640, 480) == pytest.approx(0.0, abs=1e-6)


def test_general_homography_from_exact_correspondences():
    pts = random_points(80, seed=1)
    H, mask = find_homography(pts, warp_points(pts, H_GENERAL))
    assert mask.all()
    assert homography_corner_error(H, H_GENERAL, 640, 480) < 1e-3


def test_corner_error_of_a_translation():
    assert homography_corner_error(translation(3, 4), np.eye(3), 100, 50) == pytest.approx(5.0)


def test_corner_error_uses_width_as_x_and_height_as_y():
    # scaling by 2 about the origin moves corner (x, y) by |(x, y)|: corners (0,0),(4,0),(4,2),(0,2)
    expected = (0.0 + 4.0 + math.sqrt(20.0) + 2.0) / 4
    scale2 = np.diag([2.0, 2.0, 1.0])
    assert homography_corner_error(scale2, np.eye(3), width=4, height=2) == pytest.approx(expected)
    # a pure x-shear only moves the corners with y != 0: |dx| = y -> (0 + 0 + 2 + 2) / 4
    shear = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert homography_corner_error(shear, np.eye(3), width=4, height=2) == pytest.approx(1.0)


def test_failed_estimates_have_infinite_corner_error():
    assert homography_corner_error(None, np.eye(3), 10, 10) == math.inf
    assert homography_corner_error(np.zeros((3, 3)), np.eye(3), 10, 10) == math.inf
    assert homography_corner_error(np.full((3, 3), np.nan), np.eye(3), 10, 10) == math.inf


# ----------------------------------------------------------------------------- reprojection / MMA


def test_reprojection_errors_by_hand():
    errs = reprojection_errors([[0, 0], [10, 10]], [[1, 0], [11, 14]], translation(1, 0))
    np.testing.assert_allclose(errs, [0.0, 4.0])
    assert reprojection_errors(np.zeros((0, 2)), np.zeros((0, 2)), np.eye(3)).shape == (0,)


def test_mma_by_hand():
    errors = [0.5, 1.0, 2.5, 9.0, math.inf]
    expected = [0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.8, 0.8]  # thresholds 1..10
    np.testing.assert_allclose(mma(errors), expected)
    np.testing.assert_allclose(mma(np.array([0.5, math.nan]), thresholds=[1]), [0.5])
    np.testing.assert_array_equal(mma([]), np.zeros(10))


def test_homography_accuracy_and_auc_by_hand():
    acc = homography_accuracy([0.5, 2.0, 4.0, 20.0, math.inf])
    assert acc == {1.0: pytest.approx(0.2), 3.0: pytest.approx(0.4), 5.0: pytest.approx(0.6), 10.0: pytest.approx(0.6)}
    assert homography_accuracy([math.nan], thresholds=(3,)) == {3.0: 0.0}
    # one pair at 1 px: auc@5 = 1 - 1 / (2 * 5)
    assert homography_auc([1.0], thresholds=(5,))[5.0] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("scale0, scale1", [(0.5, 0.5), ((0.5, 0.25), (2.0, 1.5)), (1.0, 0.3)])
def test_scale_homography_commutes_with_resizing(scale0, scale1):
    pts = random_points(20, seed=2)
    s0 = np.broadcast_to(np.asarray(scale0, dtype=float), (2,))
    s1 = np.broadcast_to(np.asarray(scale1, dtype=float), (2,))
    H_small = scale_homography(H_GENERAL, scale0, scale1)
    np.testing.assert_allclose(warp_points(pts * s0, H_small), warp_points(pts, H_GENERAL) * s1, rtol=1e-9, atol=1e-9)


def test_scale_homography_rejects_bad_scales():
    with pytest.raises(ValueError):
        scale_homography(np.eye(3), 0.0, 1.0)


# ----------------------------------------------------------------------------- pydegensac wrappers


@pytest.mark.parametrize("n", [0, 1, 3])
def test_find_homography_with_too_few_points(n):
    H, mask = find_homography(random_points(n), random_points(n, seed=1))
    assert H is None and mask.shape == (n,) and not mask.any()


@pytest.mark.parametrize("n", [0, 4, 7])
def test_find_fundamental_with_too_few_points(n):
    F, mask = find_fundamental(random_points(n), random_points(n, seed=1))
    assert F is None and mask.shape == (n,) and not mask.any()


def test_wrappers_on_degenerate_input_do_not_raise():
    same = np.ones((20, 2))
    H, mask = find_homography(same, same)
    assert H is None and not mask.any()
    with pytest.raises(ValueError):
        find_homography(np.zeros((5, 2)), np.zeros((6, 2)))


def test_find_homography_rejects_outliers_and_skips_non_finite():
    pts0 = random_points(100, seed=3)
    pts1 = warp_points(pts0, H_GENERAL)
    pts1[:20] += np.random.default_rng(4).uniform(30, 80, size=(20, 2))
    pts0[20] = np.nan
    H, mask = find_homography(pts0, pts1)
    assert not mask[:21].any() and mask[21:].all()
    assert homography_corner_error(H, H_GENERAL, 640, 480) < 1e-2


def test_wrappers_are_deterministic_with_a_seed():
    pts0 = random_points(60, seed=5)
    pts1 = warp_points(pts0, H_GENERAL) + np.random.default_rng(6).normal(scale=1.5, size=(60, 2))
    (H_a, m_a), (H_b, m_b) = find_homography(pts0, pts1, seed=3), find_homography(pts0, pts1, seed=3)
    np.testing.assert_array_equal(m_a, m_b)
    np.testing.assert_array_equal(H_a, H_b)


# ----------------------------------------------------------------------------- per pair + aggregate


def h_row(H: np.ndarray = H_GENERAL, **extra) -> dict:
    return {"pair_id": "a|b", "K0": None, "K1": None, "T_0to1": None, "H_0to1": H.ravel().tolist(),
            "width0": 640, "height0": 480, **extra}


def test_evaluate_pair_homography_row():
    pts0 = random_points(50, seed=7)
    pts1 = warp_points(pts0, H_GENERAL)
    pts1[:10] += 4.5  # 10 matches off by 6.36 px
    out = evaluate_pair(pts0, pts1, None, h_row())
    assert out["corner_error"] < 1e-2
    np.testing.assert_allclose(out["mma"], [0.8] * 6 + [1.0] * 4)
    assert out["pose_error"] is None and out["R_err"] is None


def test_evaluate_pair_homography_failures():
    out = evaluate_pair(np.zeros((0, 2)), np.zeros((0, 2)), None, h_row())
    assert out["corner_error"] == math.inf and out["mma"] == [0.0] * 10
    out = evaluate_pair(random_points(10), random_points(10), None, h_row(H_est=translation(3, 4).ravel().tolist()))
    assert out["corner_error"] == pytest.approx(homography_corner_error(translation(3, 4), H_GENERAL, 640, 480))
    out = evaluate_pair(random_points(10), random_points(10), None, h_row(H_est=np.eye(3).ravel().tolist()),
                        H_est=H_GENERAL)  # the explicit model wins over the row's column
    assert out["corner_error"] == pytest.approx(0.0, abs=1e-9)
    out = evaluate_pair(random_points(10), random_points(10), None, h_row(), H_est=np.zeros((3, 3)))
    assert out["corner_error"] == math.inf


def test_homography_estimation_uses_h_confidence(monkeypatch):
    """verify and evaluate_pair estimate H with ``h_confidence`` (0.999, CAPS / immatch), never F's ``confidence``."""
    import matchmill.geometry.pair_metrics as pair_metrics
    import matchmill.stages.verify as verify
    from matchmill.geometry.pair_metrics import DEFAULT_PAIR_METRICS_CONF

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["confidence"] if "confidence" in kwargs else args[3])
        return find_homography(*args, **kwargs)

    def no_f(*args, **kwargs):
        raise AssertionError("a homography pair must not estimate F")

    for module in (verify, pair_metrics):
        monkeypatch.setattr(module, "find_homography", spy)
        monkeypatch.setattr(module, "find_fundamental", no_f)
    assert DEFAULT_PAIR_METRICS_CONF["h_confidence"] == 0.999 and DEFAULT_PAIR_METRICS_CONF["confidence"] == 0.9999
    pts0 = random_points(40, seed=3)
    pts1 = warp_points(pts0, H_GENERAL)
    for conf, want in (({}, 0.999), ({"confidence": 0.5, "h_confidence": 0.77}, 0.77)):
        calls.clear()
        actor = object.__new__(verify.VerifyActor)  # no __init__: it would pin this process's thread pools
        actor.conf, actor.run_url, actor._features = {**verify.STAGE_DEFAULTS, **conf}, None, None
        out = actor.verify_one(h_row(image0="a", matches=np.c_[pts0, pts1].tolist()))
        assert out["model"] == "homography" and out["corner_error"] < 1e-2
        evaluate_pair(pts0, pts1, None, h_row(), conf)  # no H given: re-estimated in pair_metrics
        assert calls == [want, want]


def verified_h(corner_error, mma_values, status="ok"):
    return {"pair_id": f"{corner_error}{status}", "H_0to1": np.eye(3).ravel().tolist(), "status": status,
            "num_matches": 4, "num_inliers": 2, "corner_error": corner_error, "mma": mma_values}


def test_aggregate_homography_rows():
    rows = [
        verified_h(0.5, [1.0] * 10),
        verified_h(2.0, [0.5] * 5 + [1.0] * 5),
        verified_h(None, None, status="failed"),  # counts: corner inf, mma 0
        verified_h(math.inf, [0.0] * 10),  # 0 matches
    ]
    m = aggregate_metrics(rows)
    assert m["homography_acc@1"] == pytest.approx(0.25)
    assert m["homography_acc@3"] == pytest.approx(0.5)
    assert m["homography_acc@10"] == pytest.approx(0.5)
    assert m["mma@1"] == pytest.approx(1.5 / 4) and m["mma@10"] == pytest.approx(0.5)
    assert "homography_auc@5" in m and "auc@5" not in m and "auc_fdegensac@5" not in m
    assert m["num_pairs"] == 4 and m["num_failed"] == 1


def test_aggregate_rejects_malformed_mma():
    with pytest.raises(ValueError, match="mma"):
        aggregate_metrics([verified_h(1.0, [1.0] * 9)])


# ----------------------------------------------------------------------------- real data


@needs_shared
@pytest.mark.shared_data
def test_hpatches_sift_homography_in_resized_frame():
    folder = SHARED_DATA / "hpatches" / "v_wormhole"
    img0 = cv2.imread(str(folder / "1.ppm"), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(folder / "2.ppm"), cv2.IMREAD_GRAYSCALE)
    small0, small1 = (cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for im in (img0, img1))
    s0 = (small0.shape[1] / img0.shape[1], small0.shape[0] / img0.shape[0])
    s1 = (small1.shape[1] / img1.shape[1], small1.shape[0] / img1.shape[0])
    H_gt = scale_homography(np.loadtxt(folder / "H_1_2"), s0, s1)
    sift = cv2.SIFT_create(2000)
    (k0, d0), (k1, d1) = (sift.detectAndCompute(im, None) for im in (small0, small1))
    good = [a for a, b in cv2.BFMatcher().knnMatch(d0, d1, k=2) if a.distance < 0.8 * b.distance]
    pts0 = np.array([k0[m.queryIdx].pt for m in good])
    pts1 = np.array([k1[m.trainIdx].pt for m in good])
    H, mask = find_homography(pts0, pts1)
    assert mask.sum() > 100
    assert homography_corner_error(H, H_gt, small0.shape[1], small0.shape[0]) < 3.0
    assert mma(reprojection_errors(pts0, pts1, H_gt))[2] > 0.7  # MMA@3
    # the unscaled GT must not fit the resized frame: the scaling is what makes it work
    assert mma(reprojection_errors(pts0, pts1, np.loadtxt(folder / "H_1_2")))[2] < 0.1


@needs_shared
@pytest.mark.shared_data
def test_evaluate_pair_reads_image_size_from_path():
    folder = SHARED_DATA / "oxford_graf"
    row = {"H_0to1": np.loadtxt(folder / "H1to2p").ravel().tolist(), "path0": str(folder / "img1.png")}
    H_est = translation(1.0, 0.0) @ np.loadtxt(folder / "H1to2p")
    out = evaluate_pair(np.zeros((0, 2)), np.zeros((0, 2)), None, row | {"H_est": H_est.ravel().tolist()})
    assert out["corner_error"] == pytest.approx(1.0)
    # width 800, height 640 read from the PNG header: a scale about the origin reveals the corners
    H_gt = np.eye(3)
    out = evaluate_pair(np.zeros((0, 2)), np.zeros((0, 2)), None,
                        {"H_0to1": H_gt.ravel().tolist(), "path0": str(folder / "img1.png"),
                         "H_est": np.diag([1.01, 1.01, 1.0]).ravel().tolist()})
    expected = 0.01 * (0 + 800 + math.hypot(800, 640) + 640) / 4
    assert out["corner_error"] == pytest.approx(expected)
