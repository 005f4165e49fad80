"""Epipolar geometry from known poses: fundamental / essential matrices, Sampson distance.

Conventions: ``T_0to1`` (4, 4) maps camera-0 coordinates to camera-1 coordinates
(x_cam1 = R x_cam0 + t). Pixels satisfy x1^T F x0 = 0 with x0 in image 0.
"""

from __future__ import annotations

import numpy as np


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrix [v]_x of a 3-vector, shape (3, 3)."""
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def essential_from_pose(T_0to1: np.ndarray) -> np.ndarray:
    """E = [t]_x R, shape (3, 3), for a (4, 4) relative pose."""
    T = np.asarray(T_0to1, dtype=np.float64).reshape(4, 4)
    return skew(T[:3, 3]) @ T[:3, :3]


def fundamental_from_pose(K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """F = K1^-T [t]_x R K0^-1, shape (3, 3), so that x1^T F x0 = 0 for pixels x0, x1."""
    K0 = np.asarray(K0, dtype=np.float64).reshape(3, 3)
    K1 = np.asarray(K1, dtype=np.float64).reshape(3, 3)
    return np.linalg.inv(K1).T @ essential_from_pose(T_0to1) @ np.linalg.inv(K0)


def sampson_distance_sq(F: np.ndarray, x0: np.ndarray, x1: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Squared Sampson distance (px^2) of correspondences, shape (N,).

    ``F`` is first scaled to unit Frobenius norm, so the result does not depend on the scale of
    ``F``, hence of the pose's translation (COLMAP units are arbitrary). Without it a small
    translation shrinks F until ``eps`` dominates the denominator and every correspondence,
    right or wrong, gets a distance near 0. Same as
    :func:`matchmill.models.patch2pix.sampson_distance_sq_torch`.

    Args:
        F: (3, 3) fundamental matrix with x1^T F x0 = 0 (any non-zero scale).
        x0: (N, 2) pixels in image 0.
        x1: (N, 2) pixels in image 1.
        eps: added to the denominator, computed with the normalised F.
    """
    F = np.asarray(F, dtype=np.float64).reshape(3, 3)
    F = F / max(float(np.linalg.norm(F)), np.finfo(np.float64).tiny)
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1, 2)
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1, 2)
    if len(x0) != len(x1):
        raise ValueError(f"x0 and x1 differ in length: {len(x0)} vs {len(x1)}")
    h0 = np.concatenate([x0, np.ones((len(x0), 1))], axis=1)
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], axis=1)
    Fx0 = h0 @ F.T  # (N, 3)
    Ftx1 = h1 @ F  # (N, 3)
    num = np.sum(h1 * Fx0, axis=1) ** 2
    den = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    return num / (den + eps)
