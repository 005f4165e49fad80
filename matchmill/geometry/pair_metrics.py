"""Per-pair evaluation (VERIFIED metric columns) and their aggregation into benchmark numbers.

``evaluate_pair`` computes, from whatever ground truth a pair row carries:

- pose GT (K0, K1, T_0to1): ``R_err``, ``t_err``, ``pose_error`` with the LoFTR protocol on *all*
  matches (``geometry.pose.estimate_relative_pose``), and ``*_fdegensac`` from the pydegensac
  fundamental matrix (E = K1^T F K0, cheirality vote among the F inliers). Failed estimation
  -> inf.
- homography GT (H_0to1): ``corner_error`` of the estimated H (inf when it failed), and ``mma``
  (10 floats, thresholds 1..10 px) on all matches, before RANSAC.
- missing GT -> those keys None. ``mma`` stays None for pose pairs: an epipolar-distance "MMA"
  is not the D2-Net protocol and would not be comparable, so we do not invent one.

The estimated models are taken from the ``H_est`` / ``F_est`` arguments, else from the row's
``H_est`` / ``F_est`` columns (the F with the ``inliers`` argument), else estimated here with
pydegensac using ``conf``; with the same config and seed every route gives the same model.
``conf`` holds keys of DEFAULT_PAIR_METRICS_CONF (the verify stage passes those of its section);
an unknown key is an error (:func:`matchmill.config.merge_conf`).

``aggregate_metrics`` turns VERIFIED rows into benchmark numbers. AUCs, accuracies and MMA are
fractions in [0, 1]. Rows with ``status == "failed"`` stay in every denominator: they count as
pose error inf, corner error inf, MMA 0. A failed row that carries no GT at all (e.g. its pairs
line did not parse) counts as a failure in every metric family present in the run. An ``ok`` row
that is not ``verified`` (fewer than ``verify.min_inliers`` inliers, or no model) counts as a
failed estimation does: pose and corner errors inf (whatever the row's own errors say), MMA as
measured (MMA scores the matches before RANSAC, not the model). Mean matches and inliers are over
the verified pairs. A row without the ``verified`` column (or null there: runs made before the
flag) is verified when it is ``ok``.

All frames: pixels of the original images (see manifests.schemas), OpenCV convention.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from matchmill.config import merge_conf
from matchmill.manifests.storage import url_to_fs

from .homography import (
    MMA_THRESHOLDS,
    homography_accuracy,
    homography_auc,
    homography_corner_error,
    mma,
    reprojection_errors,
)
from .pose import estimate_relative_pose, pose_auc, pose_from_fundamental, relative_pose_error
from .robust import find_fundamental, find_homography

#: Defaults of ``evaluate_pair``'s ``conf``, one comment per key. This is the one definition of
#: the verify stage's robust-estimation keys (``matchmill/stages/verify.py`` takes them from here).
DEFAULT_PAIR_METRICS_CONF: dict[str, float] = {
    "h_threshold": 2.0,  # pydegensac homography inlier threshold (px), CAPS / immatch protocol
    "f_threshold": 1.0,  # pydegensac fundamental inlier threshold (px)
    "confidence": 0.9999,  # pydegensac F confidence
    "h_confidence": 0.999,  # pydegensac H confidence (CAPS / immatch protocol)
    "max_iters": 10000,  # RANSAC iteration cap (H and F)
    "ransac_seed": 0,  # RANSAC seed; fixed so reruns give identical inliers (-1 = random)
    "pose_threshold": 0.5,  # OpenCV essential-matrix RANSAC threshold (px), LoFTR protocol
    "pose_confidence": 0.99999,  # OpenCV essential-matrix RANSAC confidence
}
#: Bounds of those keys (notation: matchmill/config.py ``parse_bound``), checked with the job's config.
PAIR_METRICS_BOUNDS: dict[str, str] = {
    "h_threshold": "> 0",
    "f_threshold": "> 0",
    "confidence": "(0, 1)",
    "h_confidence": "(0, 1)",
    "max_iters": ">= 1",
    "ransac_seed": ">= -1",  # -1 = random
    "pose_threshold": "> 0",
    "pose_confidence": "(0, 1)",
}

#: Defaults of ``aggregate_metrics``'s ``conf`` (the metrics section of the pipeline config).
DEFAULT_AGGREGATE_CONF: dict[str, list[float]] = {
    "pose_thresholds": [5, 10, 20],  # pose AUC thresholds (degrees)
    "homography_thresholds": [1, 3, 5, 10],  # corner-error accuracy / AUC thresholds (px)
}
#: Bounds of each threshold in those lists.
AGGREGATE_BOUNDS: dict[str, str] = {"pose_thresholds": "> 0", "homography_thresholds": "> 0"}

#: Keys returned by ``evaluate_pair`` (all VERIFIED columns).
METRIC_COLUMNS: tuple[str, ...] = (
    "R_err",
    "t_err",
    "pose_error",
    "R_err_fdegensac",
    "t_err_fdegensac",
    "pose_error_fdegensac",
    "corner_error",
    "mma",
)

_INF = float("inf")


# ----------------------------------------------------------------------------- row helpers


def _is_missing(value: Any) -> bool:
    """True for None and scalar NaN (how pandas spells a null float)."""
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _get(row: Mapping[str, Any], key: str) -> Any:
    """row[key], or None when absent or null."""
    value = row.get(key)
    return None if _is_missing(value) else value


def _matrix(row: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    """(n, n) float64 matrix from a flat row-major list column, None when null.

    Raises:
        ValueError: wrong length or non-finite values (broken ground truth must not be scored).
    """
    value = _get(row, key)
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != n * n:
        raise ValueError(f"{key}: expected {n * n} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{key}: non-finite values")
    return arr.reshape(n, n)


def has_pose_gt(row: Mapping[str, Any]) -> bool:
    """True when the row carries K0, K1 and T_0to1."""
    return all(_get(row, k) is not None for k in ("K0", "K1", "T_0to1"))


def has_homography_gt(row: Mapping[str, Any]) -> bool:
    """True when the row carries H_0to1."""
    return _get(row, "H_0to1") is not None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image from its header; path may be any fsspec URL."""
    fs, inner = url_to_fs(path)  # not fsspec.open: a local name with '::' is not a URL chain
    try:
        from PIL import Image
    except ImportError:  # pillow normally comes with matplotlib; fall back to a full decode
        import cv2

        with fs.open(inner, "rb") as f:  # IMREAD_UNCHANGED ignores EXIF orientation: stored pixels
            img = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode image {path}")
        return int(img.shape[1]), int(img.shape[0])
    with fs.open(inner, "rb") as f, Image.open(f) as im:  # stored size, EXIF orientation ignored
        return int(im.size[0]), int(im.size[1])


def _image0_size(row: Mapping[str, Any], given: tuple[float, float] | None = None) -> tuple[float, float]:
    """Size of image 0 in the matches' frame: ``given``, else row width0/height0, else the image file."""
    if given is not None:
        return float(given[0]), float(given[1])
    w, h = _get(row, "width0"), _get(row, "height0")
    if w is not None and h is not None:
        return float(w), float(h)
    return image_size(row["path0"])


def _merge_conf(defaults: Mapping[str, Any], conf: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """:func:`matchmill.config.merge_conf` (an unknown key raises ConfigError), a None value
    meaning the default."""
    return merge_conf(defaults, {k: v for k, v in (conf or {}).items() if v is not None}, owner)


# ----------------------------------------------------------------------------- per pair


def _pose_errors(T_0to1: np.ndarray, estimate: tuple | None) -> tuple[float, float, float]:
    """(R_err, t_err, max of both) in degrees; inf when the estimate is None."""
    if estimate is None:
        return _INF, _INF, _INF
    R_err, t_err = relative_pose_error(T_0to1, estimate[0], estimate[1])
    return R_err, t_err, max(R_err, t_err)


def _given_model(given: np.ndarray | None, row: Mapping[str, Any], key: str) -> np.ndarray | None:
    """(3, 3) model passed explicitly, else the row's ``key`` column, else None."""
    if given is not None:
        return np.asarray(given, dtype=np.float64).reshape(3, 3)
    return _matrix(row, key, 3)


def _fundamental(kpts0, kpts1, inliers, F_given, conf) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The given F (with the given inliers) or one estimated here with pydegensac."""
    if F_given is not None:
        return F_given, None if inliers is None else np.asarray(inliers, dtype=bool).reshape(-1)
    return find_fundamental(
        kpts0,
        kpts1,
        threshold=conf["f_threshold"],
        confidence=conf["confidence"],
        max_iters=conf["max_iters"],
        seed=conf["ransac_seed"],
    )


def _homography(kpts0, kpts1, H_given, conf) -> np.ndarray | None:
    """The given H or one estimated here with pydegensac."""
    if H_given is not None:
        return H_given
    H, _ = find_homography(
        kpts0,
        kpts1,
        threshold=conf["h_threshold"],
        confidence=conf["h_confidence"],
        max_iters=conf["max_iters"],
        seed=conf["ransac_seed"],
    )
    return H


def _pose_metrics(kpts0, kpts1, inliers, row, F_given, conf) -> dict[str, float]:
    """R/t/pose errors for OpenCV-essential (LoFTR) and pydegensac-F estimates."""
    K0, K1, T = _matrix(row, "K0", 3), _matrix(row, "K1", 3), _matrix(row, "T_0to1", 4)
    est = estimate_relative_pose(
        kpts0, kpts1, K0, K1, threshold_px=conf["pose_threshold"], confidence=conf["pose_confidence"]
    )
    R_err, t_err, pose_err = _pose_errors(T, est)
    F, F_mask = _fundamental(kpts0, kpts1, inliers, F_given, conf)
    est_f = None if F is None else pose_from_fundamental(F, kpts0, kpts1, K0, K1, inliers=F_mask)
    R_f, t_f, pose_f = _pose_errors(T, est_f)
    return {
        "R_err": R_err,
        "t_err": t_err,
        "pose_error": pose_err,
        "R_err_fdegensac": R_f,
        "t_err_fdegensac": t_f,
        "pose_error_fdegensac": pose_f,
    }


def _homography_metrics(kpts0, kpts1, row, H_given, conf, size0=None) -> dict[str, Any]:
    """Corner error of the estimated H and MMA@1..10 px of all matches."""
    H_gt = _matrix(row, "H_0to1", 3)
    width, height = _image0_size(row, size0)
    corner = homography_corner_error(_homography(kpts0, kpts1, H_given, conf), H_gt, width, height)
    mma_values = mma(reprojection_errors(kpts0, kpts1, H_gt), MMA_THRESHOLDS)
    return {"corner_error": corner, "mma": [float(v) for v in mma_values]}


def evaluate_pair(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    inliers: np.ndarray | None,
    row: Mapping[str, Any],
    conf: Mapping[str, Any] | None = None,
    *,
    H_est: np.ndarray | None = None,
    F_est: np.ndarray | None = None,
    image0_size: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """VERIFIED metric columns of one pair.

    Args:
        kpts0, kpts1: (N, 2) matched pixels (original frame), all matches before RANSAC.
        inliers: (N,) bool inliers of the given F (used only together with a given F), or None.
        row: pair row with PAIR_FIELDS keys (K0, K1 flat 9, T_0to1 flat 16, H_0to1 flat 9, or
            None); optional ``H_est`` / ``F_est`` (flat 9) columns; optional ``width0`` /
            ``height0`` (else the size is read from ``path0``'s header).
        conf: overrides of DEFAULT_PAIR_METRICS_CONF (an unknown key raises ConfigError; None = default).
        H_est, F_est: (3, 3) models already estimated by the caller (e.g. the verify stage);
            they win over the row's columns. A given all-zero / non-finite model is a failure.
        image0_size: (width, height) of image 0 (the verify stage passes the features
            manifest's); wins over the row's ``width0`` / ``height0`` and the file header.

    Returns:
        Dict with exactly METRIC_COLUMNS: errors in degrees / pixels (inf when estimation
        failed), ``mma`` a list of 10 floats; None where the row lacks the ground truth.

    Raises:
        ValueError: malformed ground truth or mismatched keypoints.
    """
    conf = _merge_conf(DEFAULT_PAIR_METRICS_CONF, conf, "pair metrics")
    k0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    k1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if len(k0) != len(k1):
        raise ValueError(f"kpts0 and kpts1 differ in length: {len(k0)} vs {len(k1)}")
    out: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS)
    if has_pose_gt(row):
        out.update(_pose_metrics(k0, k1, inliers, row, _given_model(F_est, row, "F_est"), conf))
    if has_homography_gt(row):
        out.update(_homography_metrics(k0, k1, row, _given_model(H_est, row, "H_est"), conf, image0_size))
    return out


# ----------------------------------------------------------------------------- aggregation


def is_verified_row(row: Mapping[str, Any]) -> bool:
    """The row's ``verified`` flag; ``ok`` rows without one (older runs) count as verified,
    failed rows never."""
    if row.get("status") == "failed":
        return False
    flag = _get(row, "verified")
    return True if flag is None else bool(flag)


def _error_or_inf(row: Mapping[str, Any], key: str) -> float:
    """A per-pair error; failed and unverified rows, null and nan count as inf."""
    if not is_verified_row(row):
        return _INF
    value = _get(row, key)
    if value is None or math.isnan(float(value)):
        return _INF
    return float(value)


def _mma_or_zeros(row: Mapping[str, Any]) -> np.ndarray:
    """The row's MMA vector (10,); failed or null rows give zeros."""
    value = None if row.get("status") == "failed" else _get(row, "mma")
    if value is None:
        return np.zeros(len(MMA_THRESHOLDS))
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != len(MMA_THRESHOLDS):
        raise ValueError(f"mma of pair {row.get('pair_id')!r}: expected {len(MMA_THRESHOLDS)} values, got {arr.size}")
    return np.nan_to_num(arr, nan=0.0)


def _num_matches(row: Mapping[str, Any]) -> int:
    """num_matches, else len(matches) / 4, else 0."""
    n = _get(row, "num_matches")
    if n is not None:
        return int(n)
    matches = _get(row, "matches")
    return 0 if matches is None else len(matches) // 4


def _num_inliers(row: Mapping[str, Any]) -> int:
    """num_inliers, else sum(inliers), else 0."""
    n = _get(row, "num_inliers")
    if n is not None:
        return int(n)
    inl = _get(row, "inliers")
    return 0 if inl is None else int(np.count_nonzero(np.asarray(inl, dtype=bool)))


def _in_pose_family(row: Mapping[str, Any]) -> bool:
    """Pose GT (T_0to1) or a pose error: tolerant of readers that skip the K columns."""
    return _get(row, "T_0to1") is not None or _get(row, "pose_error") is not None


def _in_homography_family(row: Mapping[str, Any]) -> bool:
    """Homography GT or a corner error."""
    return _get(row, "H_0to1") is not None or _get(row, "corner_error") is not None


def _families(rows: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """Rows entering the pose and homography aggregates (their own rows + failed rows without GT)."""
    pose = [r for r in rows if _in_pose_family(r)]
    homog = [r for r in rows if _in_homography_family(r)]
    orphans = [
        r for r in rows if r.get("status") == "failed" and not _in_pose_family(r) and not _in_homography_family(r)
    ]
    return (pose + orphans if pose else []), (homog + orphans if homog else [])


def _pose_aggregate(rows: Sequence[Mapping[str, Any]], thresholds: Sequence[float]) -> dict[str, tuple[float, int]]:
    """auc@t and auc_fdegensac@t, each with the pair count."""
    out: dict[str, tuple[float, int]] = {}
    for prefix, key in (("auc", "pose_error"), ("auc_fdegensac", "pose_error_fdegensac")):
        for thr, value in pose_auc([_error_or_inf(r, key) for r in rows], thresholds).items():
            out[f"{prefix}@{thr:g}"] = (value, len(rows))
    return out


def _homography_aggregate(
    rows: Sequence[Mapping[str, Any]], thresholds: Sequence[float]
) -> dict[str, tuple[float, int]]:
    """homography_acc@t, homography_auc@t and mma@1..10, each with the pair count."""
    n = len(rows)
    corners = [_error_or_inf(r, "corner_error") for r in rows]
    out: dict[str, tuple[float, int]] = {}
    for thr, value in homography_accuracy(corners, thresholds).items():
        out[f"homography_acc@{thr:g}"] = (value, n)
    for thr, value in homography_auc(corners, thresholds).items():
        out[f"homography_auc@{thr:g}"] = (value, n)
    mean_mma = np.mean([_mma_or_zeros(r) for r in rows], axis=0)
    for thr, value in zip(MMA_THRESHOLDS, mean_mma):
        out[f"mma@{thr:g}"] = (float(value), n)
    return out


def _aggregate(
    rows: Iterable[Mapping[str, Any]], conf: Mapping[str, Any] | None
) -> dict[str, tuple[float, int]]:
    """All aggregate metrics as {name: (value, number of pairs that entered it)}."""
    conf = _merge_conf(DEFAULT_AGGREGATE_CONF, conf, "aggregate metrics")
    rows = list(rows)
    n = len(rows)
    verified = [r for r in rows if is_verified_row(r)]
    out: dict[str, tuple[float, int]] = {
        "num_pairs": (float(n), n),
        "num_failed": (float(sum(r.get("status") == "failed" for r in rows)), n),
        "num_verified": (len(verified), n),
    }
    if n:  # over the verified pairs; 0 when none is
        nv = len(verified)
        out["mean_matches"] = (float(np.mean([_num_matches(r) for r in verified])) if nv else 0.0, nv)
        out["mean_inliers"] = (float(np.mean([_num_inliers(r) for r in verified])) if nv else 0.0, nv)
    pose_rows, homog_rows = _families(rows)
    if pose_rows:
        out.update(_pose_aggregate(pose_rows, conf["pose_thresholds"]))
    if homog_rows:
        out.update(_homography_aggregate(homog_rows, conf["homography_thresholds"]))
    return out


def aggregate_metrics(
    rows: Iterable[Mapping[str, Any]], conf: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Benchmark numbers from VERIFIED rows (dicts, e.g. ``table.to_pylist()``).

    Args:
        rows: VERIFIED rows; the columns read are status, verified, num_matches (or matches),
            num_inliers (or inliers), pose_error, pose_error_fdegensac, corner_error, mma,
            T_0to1, H_0to1 (and K0/K1 only through evaluate_pair, not here).
        conf: overrides of DEFAULT_AGGREGATE_CONF (an unknown key raises ConfigError; None = default).

    Returns:
        ``num_pairs``, ``num_failed``, ``num_verified`` (an int: ok rows whose flag is set, see
        the module docstring), and ``mean_matches``, ``mean_inliers`` -- means over the verified
        pairs, 0.0 when none is -- when there is a row; unverified pairs count as failed
        estimations (pose and corner error inf) in the figures below; ``auc@t`` and
        ``auc_fdegensac@t`` (t in pose_thresholds) when some row has pose GT
        (T_0to1) or a pose error; ``homography_acc@t``, ``homography_auc@t`` (t in
        homography_thresholds) and ``mma@1..@10`` when some row has H GT or a corner error.
        MMA is the mean over those pairs of the per-pair MMA (0-match and failed pairs count
        as 0: the D2-Net fixed-denominator convention). Fractions are in [0, 1].
    """
    return {name: value for name, (value, _) in _aggregate(rows, conf).items()}


def aggregate_metric_records(
    rows: Iterable[Mapping[str, Any]], conf: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Same as ``aggregate_metrics`` as METRICS-manifest rows {metric, value, count}, where
    count is the number of pairs that entered that metric."""
    return [{"metric": k, "value": v, "count": c} for k, (v, c) in _aggregate(rows, conf).items()]
