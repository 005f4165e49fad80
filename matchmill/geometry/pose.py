"""Relative pose estimation and pose-error metrics (LoFTR / SuperGlue protocol).

Protocol (MegaDepth-1500 / ScanNet-1500, as in LoFTR ``estimate_pose`` / ``relative_pose_error``
/ ``error_auc``), re-implemented here:

- Keypoints are normalised with the intrinsics, an essential matrix is fitted with OpenCV RANSAC
  (identity camera matrix) at ``thr = threshold_px / mean(fx0, fy1, fx0, fy1)`` and confidence
  0.99999; every 3x3 candidate E is decomposed with ``cv2.recoverPose`` (distance threshold 1e9)
  and the candidate with the most cheirality inliers wins. Fewer than 5 matches or no E -> None.
- ``R_err = arccos((tr(R^T R_gt) - 1) / 2)``; ``t_err = angle(t, t_gt)`` folded to
  ``min(e, 180 - e)`` because E fixes t only up to sign; pose error = ``max(R_err, t_err)``.
- AUC: sort the errors, prepend 0, recall = linspace(0, 1, N + 1), trapezoid integral of recall
  over error up to the threshold, divided by the threshold. inf / nan errors count as failures.

Threshold normalisation: the reference code (SuperGlue, LoFTR) divides by
``mean([K0[0,0], K1[1,1], K0[0,0], K1[1,1]])``, i.e. (fx0, fy1, fx0, fy1), not the four distinct
focals; we follow the reference code so numbers are comparable. For the usual square-pixel,
shared-camera case both forms coincide.

Conventions: pixels in OpenCV convention, ``T_0to1`` (4, 4) maps camera-0 coordinates to
camera-1 coordinates (x1 = R x0 + t), all matrices float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

#: Minimum number of correspondences for the 5-point solver.
MIN_MATCHES_ESSENTIAL = 5

#: Distance threshold passed to ``cv2.recoverPose`` so that far points are not discarded. It must
#: be passed by keyword: with OpenCV 5 a positional 1e9 binds to another overload that silently
#: uses the default threshold of 50 (baseline units).
_RECOVER_POSE_DISTANCE = 1e9


def _as_points(kpts: np.ndarray) -> np.ndarray:
    """(N, 2) float64 copy of keypoints given as any (N, 2)-shaped array."""
    return np.asarray(kpts, dtype=np.float64).reshape(-1, 2)


def _as_matrix(m: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    """(n, n) float64 matrix from an (n, n) array or a flat row-major list."""
    return np.asarray(m, dtype=np.float64).reshape(n, n)


def normalize_keypoints(kpts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels -> normalised camera coordinates, (N, 2) -> (N, 2), via K^-1 (handles skew)."""
    pts = _as_points(kpts)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    rays = homog @ np.linalg.inv(_as_matrix(K, 3)).T
    return rays[:, :2] / rays[:, 2:3]


def normalized_threshold(threshold_px: float, K0: np.ndarray, K1: np.ndarray) -> float:
    """RANSAC threshold in normalised coordinates: threshold_px / mean(fx0, fy1, fx0, fy1)."""
    K0 = _as_matrix(K0, 3)
    K1 = _as_matrix(K1, 3)
    return float(threshold_px / np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]]))


def _recover_best_pose(
    E_stack: np.ndarray, pts0: np.ndarray, pts1: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Decompose each 3x3 block of E_stack (3k, 3); keep the one with most cheirality inliers.

    Args:
        E_stack: (3k, 3) stacked essential-matrix candidates.
        pts0, pts1: (N, 2) normalised coordinates.
        mask: (N, 1) uint8 RANSAC inlier mask of ``findEssentialMat``.

    Returns:
        (R (3, 3), t (3,), inliers (N,) bool) or None when no candidate has an inlier.
    """
    best = None
    best_count = 0
    for E in np.split(E_stack, len(E_stack) // 3):
        count, R, t, cand_mask, _ = cv2.recoverPose(
            E, pts0, pts1, np.eye(3), distanceThresh=_RECOVER_POSE_DISTANCE, mask=mask.copy()
        )
        if count > best_count:
            best_count = count
            best = (R.astype(np.float64), t.reshape(3).astype(np.float64), cand_mask.ravel() > 0)
    return best


def estimate_relative_pose(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    threshold_px: float = 0.5,
    confidence: float = 0.99999,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Relative pose from pixel matches with OpenCV's 5-point RANSAC (LoFTR protocol).

    Args:
        kpts0, kpts1: (N, 2) matched pixels in image 0 / image 1.
        K0, K1: (3, 3) intrinsics (or flat 9-lists).
        threshold_px: RANSAC threshold in pixels (normalised by the mean focal, see module doc).
        confidence: RANSAC confidence.

    Returns:
        ``(R (3, 3), t (3,) unit vector, inlier_mask (N,) bool)`` with x1 = R x0 + t up to the
        scale of t; the mask holds the RANSAC inliers that also pass the cheirality check of the
        chosen candidate. None when there are fewer than 5 matches or estimation fails.
    """
    pts0 = _as_points(kpts0)
    pts1 = _as_points(kpts1)
    if len(pts0) != len(pts1):
        raise ValueError(f"kpts0 and kpts1 differ in length: {len(pts0)} vs {len(pts1)}")
    if len(pts0) < MIN_MATCHES_ESSENTIAL:
        return None
    n0 = normalize_keypoints(pts0, K0)
    n1 = normalize_keypoints(pts1, K1)
    finite = np.isfinite(n0).all(axis=1) & np.isfinite(n1).all(axis=1)
    if not finite.all():
        raise ValueError("keypoints or intrinsics produce non-finite normalised coordinates")
    thr = normalized_threshold(threshold_px, K0, K1)
    try:
        E_stack, mask = cv2.findEssentialMat(
            n0, n1, np.eye(3), method=cv2.RANSAC, prob=confidence, threshold=thr
        )
    except cv2.error:
        return None
    if E_stack is None or mask is None or E_stack.shape[0] < 3 or E_stack.shape[0] % 3:
        return None
    return _recover_best_pose(E_stack.astype(np.float64), n0, n1, mask)


def rotation_error_deg(R_gt: np.ndarray, R: np.ndarray) -> float:
    """Angle of R^T R_gt in degrees: arccos((tr(R^T R_gt) - 1) / 2), clipped to [-1, 1]."""
    cos = (np.trace(_as_matrix(R, 3).T @ _as_matrix(R_gt, 3)) - 1.0) / 2.0
    return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_error_deg(t_gt: np.ndarray, t: np.ndarray, ignore_gt_t_thr: float = 0.0) -> float:
    """Angle between translation directions, folded to min(e, 180 - e), in degrees.

    Returns 0 when ``|t_gt| <= ignore_gt_t_thr`` or t_gt is zero (direction undefined, e.g. pure
    rotation); inf when the estimate is zero or non-finite.
    """
    t_gt = np.asarray(t_gt, dtype=np.float64).reshape(3)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    norm_gt = np.linalg.norm(t_gt)
    if norm_gt <= ignore_gt_t_thr or norm_gt == 0.0:
        return 0.0
    norm = np.linalg.norm(t)
    if not np.isfinite(norm) or norm == 0.0:
        return float("inf")
    cos = np.dot(t, t_gt) / (norm * norm_gt)
    err = float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))
    return min(err, 180.0 - err)


def relative_pose_error(
    T_0to1: np.ndarray, R: np.ndarray, t: np.ndarray, ignore_gt_t_thr: float = 0.0
) -> tuple[float, float]:
    """(R_err_deg, t_err_deg) of an estimate (R (3, 3), t (3,)) against GT ``T_0to1`` (4, 4)."""
    T = _as_matrix(T_0to1, 4)
    return rotation_error_deg(T[:3, :3], R), translation_error_deg(T[:3, 3], t, ignore_gt_t_thr)


def error_auc(errors: Iterable[float], thresholds: Sequence[float]) -> dict[float, float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1].

    Args:
        errors: (N,) per-pair errors; inf / nan mean failure (never recalled).
        thresholds: positive thresholds in the errors' unit.

    Returns:
        {float(threshold): auc}. An empty error list gives 0 for every threshold.
    """
    errs = np.asarray(list(errors), dtype=np.float64).reshape(-1)
    errs = np.where(np.isnan(errs), np.inf, errs)
    errs = np.concatenate([[0.0], np.sort(errs)])
    recall = np.linspace(0.0, 1.0, len(errs))
    aucs: dict[float, float] = {}
    for thr in thresholds:
        thr = float(thr)
        if thr <= 0:
            raise ValueError(f"AUC thresholds must be positive, got {thr}")
        last = int(np.searchsorted(errs, thr))  # errs[:last] < thr
        x = np.concatenate([errs[:last], [thr]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs[thr] = float(np.trapezoid(y, x) / thr)
    return aucs


def pose_auc(errors: Iterable[float], thresholds: Sequence[float] = (5, 10, 20)) -> dict[float, float]:
    """Pose AUC (degrees) at ``thresholds``: {5.0: auc, 10.0: auc, 20.0: auc}, see error_auc."""
    return error_auc(errors, thresholds)


def pose_from_fundamental(
    F: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    inliers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Relative pose from a fundamental matrix: E = K1^T F K0, decomposed by ``cv2.recoverPose``.

    This is the separate "F-DEGENSAC" column (pydegensac has no essential solver); it is not the
    LoFTR protocol.

    Args:
        F: (3, 3) with x1^T F x0 = 0 for pixels.
        kpts0, kpts1: (N, 2) matched pixels used for the cheirality vote.
        K0, K1: (3, 3) intrinsics.
        inliers: optional (N,) bool; only these matches vote (normally the F inliers).

    Returns:
        (R (3, 3), t (3,) unit vector) or None when F is degenerate or no point passes cheirality.
    """
    F = _as_matrix(F, 3)
    if not np.isfinite(F).all() or not np.any(F):
        return None
    pts0 = _as_points(kpts0)
    pts1 = _as_points(kpts1)
    if inliers is not None:
        keep = np.asarray(inliers, dtype=bool).reshape(-1)
        pts0, pts1 = pts0[keep], pts1[keep]
    if len(pts0) == 0:
        return None
    E = _as_matrix(K1, 3).T @ F @ _as_matrix(K0, 3)
    n0 = normalize_keypoints(pts0, K0)
    n1 = normalize_keypoints(pts1, K1)
    mask = np.full((len(n0), 1), 255, dtype=np.uint8)
    try:
        count, R, t, _, _ = cv2.recoverPose(
            E, n0, n1, np.eye(3), distanceThresh=_RECOVER_POSE_DISTANCE, mask=mask
        )
    except cv2.error:
        return None
    if count <= 0:
        return None
    return R.astype(np.float64), t.reshape(3).astype(np.float64)
