"""Epipolar helpers (numpy): Sampson distance independent of the scale of the translation."""

from __future__ import annotations

import cv2
import numpy as np

from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq


def _pair(t_scale: float):
    """Two cameras (f ~ 500, 640x480), a rotation and a translation scaled by ``t_scale``; 3D points in front."""
    K0 = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    K1 = np.array([[520.0, 0, 310], [0, 520.0, 250], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.array([0.02, -0.15, 0.03]))[0]
    T[:3, 3] = t_scale * np.array([0.8, 0.05, -0.1])
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-2, 2, 40), rng.uniform(-1.5, 1.5, 40), rng.uniform(4, 8, 40)] * t_scale
    x0 = X @ K0.T
    X1 = X @ T[:3, :3].T + T[:3, 3]
    x1 = X1 @ K1.T
    return fundamental_from_pose(K0, K1, T), x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]


def test_sampson_distance_does_not_depend_on_the_translation_scale():
    F1, x0, x1 = _pair(1.0)
    F_small, x0s, x1s = _pair(1e-4)  # the same scene and pixels, COLMAP units 10^4 times smaller
    np.testing.assert_allclose(x0s, x0, atol=1e-9)
    np.testing.assert_allclose(x1s, x1, atol=1e-9)
    wrong = x1 + np.array([0.0, 15.0])  # 15 px off, roughly across the (near horizontal) epipolar lines
    for x in (x1, wrong):
        np.testing.assert_allclose(sampson_distance_sq(F_small, x0, x), sampson_distance_sq(F1, x0, x), rtol=1e-6, atol=1e-12)
    assert sampson_distance_sq(F_small, x0, x1).max() < 1e-12  # true correspondences stay on their lines
    assert np.median(sampson_distance_sq(F_small, x0, wrong)) > 25.0  # a wrong one stays far at small scale
    np.testing.assert_allclose(sampson_distance_sq(F1 * 1e6, x0, wrong), sampson_distance_sq(F1, x0, wrong), rtol=1e-9)
