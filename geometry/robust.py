"""Thin wrappers over pydegensac (DEGENSAC homography / fundamental matrix).

They never raise on small or degenerate input: fewer matches than the minimal sample (4 for H,
8 for F -- pydegensac's own minimum) or a degenerate result (non-finite or all-zero matrix,
which is how pydegensac reports "no model") give ``(None, all-False mask)``.
Non-finite correspondences are left out of the sample and reported as outliers.

Defaults follow the CAPS / immatch HPatches protocol for H (2 px) except ``max_iters``, which
is 10000 here (pydegensac's default is 50000 for H and 100000 for F); pass ``max_iters`` to
reproduce the reference runs. ``seed`` fixes pydegensac's random generator so that reruns (and
resumed runs) give identical inliers; ``seed=-1`` lets pydegensac seed itself.

Conventions: pixels in OpenCV convention; the returned H maps image-0 pixels to image-1 pixels
(x1 ~ H x0); the returned F satisfies x1^T F x0 = 0. Matrices are float64 (3, 3).
"""

from __future__ import annotations

import numpy as np
import pydegensac

MIN_SAMPLE_HOMOGRAPHY = 4
MIN_SAMPLE_FUNDAMENTAL = 8


def _prepare(kpts0: np.ndarray, kpts1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) float64 copies of both point sets and the (N,) mask of finite correspondences."""
    p0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if len(p0) != len(p1):
        raise ValueError(f"kpts0 and kpts1 differ in length: {len(p0)} vs {len(p1)}")
    finite = np.isfinite(p0).all(axis=1) & np.isfinite(p1).all(axis=1)
    return p0, p1, finite


def _valid_model(M: np.ndarray | None) -> np.ndarray | None:
    """The (3, 3) float64 model, or None when missing, non-finite or all zeros."""
    if M is None:
        return None
    M = np.asarray(M, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(M).all() or not np.any(M):
        return None
    return M


def _run(solver, kpts0, kpts1, min_sample: int, **kwargs) -> tuple[np.ndarray | None, np.ndarray]:
    """Call a pydegensac solver on the finite correspondences; map the mask back to (N,)."""
    p0, p1, finite = _prepare(kpts0, kpts1)
    mask = np.zeros(len(p0), dtype=bool)
    if int(finite.sum()) < min_sample:
        return None, mask
    M, sub_mask = solver(np.ascontiguousarray(p0[finite]), np.ascontiguousarray(p1[finite]), **kwargs)
    M = _valid_model(M)
    if M is None:
        return None, mask
    mask[np.flatnonzero(finite)] = np.asarray(sub_mask, dtype=bool).reshape(-1)
    return M, mask


def find_homography(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    threshold: float = 2.0,
    confidence: float = 0.999,
    max_iters: int = 10000,
    *,
    seed: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """DEGENSAC homography image 0 -> image 1.

    Args:
        kpts0, kpts1: (N, 2) matched pixels.
        threshold: inlier threshold in pixels (pydegensac ``px_th``, symmetric Sampson-type error).
        confidence: RANSAC confidence.
        max_iters: iteration cap.
        seed: random seed (-1: pydegensac picks one).

    Returns:
        (H (3, 3) normalised so that H[2, 2] = 1 when possible, or None; inliers (N,) bool).
    """
    H, mask = _run(
        pydegensac.findHomography,
        kpts0,
        kpts1,
        MIN_SAMPLE_HOMOGRAPHY,
        px_th=float(threshold),
        conf=float(confidence),
        max_iters=int(max_iters),
        seed=int(seed),
    )
    if H is not None and abs(H[2, 2]) > 1e-12:
        H = H / H[2, 2]
    return H, mask


def find_fundamental(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    threshold: float = 1.0,
    confidence: float = 0.9999,
    max_iters: int = 10000,
    *,
    seed: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """DEGENSAC fundamental matrix with x1^T F x0 = 0 (degeneracy check on).

    Args:
        kpts0, kpts1: (N, 2) matched pixels.
        threshold: inlier threshold in pixels (pydegensac ``px_th``, Sampson error).
        confidence: RANSAC confidence.
        max_iters: iteration cap.
        seed: random seed (-1: pydegensac picks one).

    Returns:
        (F (3, 3) or None, inliers (N,) bool).
    """
    return _run(
        pydegensac.findFundamentalMatrix,
        kpts0,
        kpts1,
        MIN_SAMPLE_FUNDAMENTAL,
        px_th=float(threshold),
        conf=float(confidence),
        max_iters=int(max_iters),
        seed=int(seed),
    )
