"""Homography metrics (HPatches protocol): corner error, reprojection error, MMA, accuracy.

Protocol choices (see docs/specs/patch2pix.md section 6.1 for the drift in the reference code):

- Corner error uses the four corners (0, 0), (w, 0), (w, h), (0, h) of image 0, with w, h the
  width and height of image 0 *in the frame the matches live in* (the original image unless the
  caller evaluates in a resized frame, then the resized size and a rescaled H, see
  ``scale_homography``). x is the column, y the row: the 2021 immatch code swapped w and h; we
  do not reproduce that bug.
- MMA: one direction only (image 0 -> image 1), fraction of matches with error <= t for
  t = 1..10 px; a pair with no matches scores 0 at every threshold.
- Homography accuracy: fraction of pairs with corner error <= t; failed estimations (inf / nan)
  count as incorrect and stay in the denominator.

Conventions: pixels in OpenCV convention (top-left pixel centre at (0, 0)); ``H_0to1`` maps
image-0 pixels to image-1 pixels (x1 ~ H x0); float64 throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .pose import error_auc

#: MMA thresholds of the D2-Net / Patch2Pix protocol reported in the VERIFIED ``mma`` column.
MMA_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))

#: Homography accuracy thresholds (px).
ACCURACY_THRESHOLDS: tuple[int, ...] = (1, 3, 5, 10)


def _as_h(H: np.ndarray | Sequence[float]) -> np.ndarray:
    """(3, 3) float64 homography from a (3, 3) array or flat 9-list."""
    return np.asarray(H, dtype=np.float64).reshape(3, 3)


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply a homography to pixels, (N, 2) -> (N, 2); points mapped to infinity become inf."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ _as_h(H).T
    w = homog[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = homog[:, :2] / w
    out[~np.isfinite(out).all(axis=1)] = np.inf
    return out


def image_corners(width: float, height: float) -> np.ndarray:
    """(4, 2) corners (0, 0), (w, 0), (w, h), (0, h) as (x, y)."""
    w, h = float(width), float(height)
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def homography_corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, width: float, height: float) -> float:
    """Mean L2 distance (px) between the 4 image-0 corners warped by H_est and by H_gt.

    Args:
        H_est: (3, 3) estimate, or None for a failed estimation (-> inf).
        H_gt: (3, 3) ground truth image 0 -> image 1.
        width, height: size of image 0 in the frame of the matches.

    Returns:
        The error in pixels of image 1; inf when the estimate is missing, non-finite, or sends a
        corner to infinity.
    """
    if H_est is None:
        return float("inf")
    H_est = _as_h(H_est)
    if not np.isfinite(H_est).all() or not np.any(H_est):
        return float("inf")
    corners = image_corners(width, height)
    diff = warp_points(corners, H_est) - warp_points(corners, H_gt)
    err = float(np.mean(np.linalg.norm(diff, axis=1)))
    return err if np.isfinite(err) else float("inf")


def reprojection_errors(kpts0: np.ndarray, kpts1: np.ndarray, H_gt: np.ndarray) -> np.ndarray:
    """One-directional reprojection errors ||H_gt(x0) - x1|| in pixels of image 1, shape (N,)."""
    k0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    k1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if len(k0) != len(k1):
        raise ValueError(f"kpts0 and kpts1 differ in length: {len(k0)} vs {len(k1)}")
    err = np.linalg.norm(warp_points(k0, H_gt) - k1, axis=1)
    return np.where(np.isnan(err), np.inf, err)


def mma(errors: np.ndarray | Iterable[float], thresholds: Iterable[float] = MMA_THRESHOLDS) -> np.ndarray:
    """Mean matching accuracy of one pair: fraction of errors <= t for each t, shape (T,).

    Empty ``errors`` (no matches) gives zeros; nan errors count as wrong.
    """
    thr = np.asarray(list(thresholds), dtype=np.float64)
    errs = np.asarray(errors if isinstance(errors, np.ndarray) else list(errors), dtype=np.float64)
    errs = errs.reshape(-1)
    if errs.size == 0:
        return np.zeros(len(thr))
    return (errs[None, :] <= thr[:, None]).mean(axis=1)


def homography_accuracy(
    corner_errors: Iterable[float], thresholds: Sequence[float] = ACCURACY_THRESHOLDS
) -> dict[float, float]:
    """Fraction of pairs with corner error <= t, {float(t): fraction}.

    inf / nan (failed estimation) count as incorrect. An empty input gives nan for every t.
    """
    errs = np.asarray(list(corner_errors), dtype=np.float64).reshape(-1)
    if errs.size == 0:
        return {float(t): float("nan") for t in thresholds}
    return {float(t): float(np.mean(errs <= t)) for t in thresholds}


def homography_auc(
    corner_errors: Iterable[float], thresholds: Sequence[float] = ACCURACY_THRESHOLDS
) -> dict[float, float]:
    """AUC of the corner-error recall curve (SuperGlue / LoFTR style), {float(t): auc}."""
    return error_auc(corner_errors, thresholds)


def _scale_matrix(scale: float | Sequence[float]) -> np.ndarray:
    """diag(sx, sy, 1) from a scalar s (sx = sy = s) or a pair (sx, sy)."""
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (2,))
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale factors must be positive and finite, got {scale!r}")
    return np.diag([s[0], s[1], 1.0])


def scale_homography(
    H: np.ndarray, scale0: float | Sequence[float], scale1: float | Sequence[float]
) -> np.ndarray:
    """Re-express H (3, 3) for resized frames: H' = S1 H S0^-1, S = diag(sx, sy, 1).

    ``scale0`` / ``scale1`` map original pixels to resized pixels of image 0 / image 1
    (x_resized = s * x_original, e.g. new_width / old_width), as a scalar or (sx, sy). This is
    the plain-scaling convention used by the HPatches reference code; it ignores the half-pixel
    shift of an exact pixel-centre resize (at most 0.5 * |1 - s| px).
    """
    return _scale_matrix(scale1) @ _as_h(H) @ np.linalg.inv(_scale_matrix(scale0))
