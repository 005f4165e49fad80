"""Versioned pyarrow schemas of every manifest in a run.

One schema per stage output. Per-pair manifests carry the pair columns forward (``PAIR_FIELDS``)
so that each row is self-contained: a verify actor needs no join to find the ground truth.

Conventions shared by all manifests:
- ``status`` is ``"ok"`` or ``"failed"``; a failed row keeps its key and says why in ``error``.
- Pixel coordinates are in the *original* image frame (before any resize), x right, y down,
  pixel centres at integer coordinates (OpenCV convention).
- Small per-pair arrays live inline: ``matches`` is ``list<fixed_size_list<float32, 4>>`` (N rows
  of x0, y0, x1, y1), read zero-copy as an (N, 4) array with :mod:`matchmill.manifests.columns`;
  ``scores`` / ``inliers`` are N-long lists aligned with it. Large tensors are artifacts
  referenced by URI.
- A manifest is named after the stage that writes it (``extract``, ``propose``, ``refine``,
  ``verify``): one name for the folder, the schema and the config section.
- Matrices are row-major flat ``list<float64>``: K 9 values, T_0to1 16, H_0to1 9.
  ``T_0to1`` maps camera-0 coordinates to camera-1 coordinates (x1 = R x0 + t);
  ``H_0to1`` maps pixels of image 0 to image 1 (x1 ~ H x0).
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

#: Bump when any schema below changes incompatibly; stored in every commit marker.
SCHEMA_VERSION = 2  # 2: stage-named manifests, matches as fixed-size (N, 4) lists

STATUS_OK = "ok"
STATUS_FAILED = "failed"

_f64_list = pa.list_(pa.float64())
_f32_list = pa.list_(pa.float32())
#: (N, 4) float32 per row: x0, y0, x1, y1 in original pixels.
MATCHES_TYPE = pa.list_(pa.list_(pa.float32(), 4))

STATUS_FIELDS = [
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("error", pa.string()),  # why the row failed, null when ok
]

PAIR_FIELDS = [
    pa.field("pair_id", pa.string(), nullable=False),  # stable key: "<image0>|<image1>"
    pa.field("scene", pa.string()),  # scene / sequence name
    pa.field("image0", pa.string(), nullable=False),  # image_id of the first image
    pa.field("image1", pa.string(), nullable=False),  # image_id of the second image
    pa.field("path0", pa.string(), nullable=False),  # readable path or URL of image0
    pa.field("path1", pa.string(), nullable=False),
    pa.field("K0", _f64_list),  # 3x3 intrinsics of image0 (original pixels), null if unknown
    pa.field("K1", _f64_list),
    pa.field("T_0to1", _f64_list),  # 4x4 relative pose cam0 -> cam1, null if unknown
    pa.field("H_0to1", _f64_list),  # 3x3 homography image0 -> image1, null if unknown
    pa.field("overlap", pa.float64()),  # covisibility score used for selection, null if n/a
    pa.field("crop0", pa.list_(pa.int32())),  # [w, h] valid region (crop at right/bottom)
    pa.field("crop1", pa.list_(pa.int32())),
    pa.field("similarity", pa.float64()),  # retrieval: cosine of the two global descriptors, null if n/a
    pa.field("shared_points", pa.int32()),  # 3D points the two images share in the SfM model, null if unknown
]

PAIRS = pa.schema(PAIR_FIELDS + STATUS_FIELDS, metadata={"manifest": "pairs"})

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # stable key, unique per image
        pa.field("scene", pa.string()),
        pa.field("path", pa.string(), nullable=False),  # readable path or URL
        pa.field("crop", pa.list_(pa.int32())),  # [w, h] valid region, null = whole image
    ]
    + STATUS_FIELDS,
    metadata={"manifest": "images"},
)

FEATURES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("method", pa.string()),  # extractor name, e.g. "sift" (null on failed rows)
        pa.field("width", pa.int32()),  # original image width (pixels)
        pa.field("height", pa.int32()),  # original image height
        pa.field("num_keypoints", pa.int32()),  # 0 for purely dense methods
        pa.field("artifact_uri", pa.string()),  # safetensors file with the tensors, relative to the run (older: absolute)
        pa.field("seconds", pa.float64()),  # compute time of the extractor call
    ]
    + STATUS_FIELDS,
    metadata={"manifest": "extract"},
)

_MATCH_FIELDS = [
    pa.field("num_matches", pa.int32()),
    pa.field("matches", MATCHES_TYPE),  # (N, 4): x0, y0, x1, y1 (original pixels)
    pa.field("scores", _f32_list),  # N match scores / confidences
]

PROPOSALS = pa.schema(
    PAIR_FIELDS
    + _MATCH_FIELDS
    + [pa.field("seconds", pa.float64())]
    + STATUS_FIELDS,
    metadata={"manifest": "propose"},
)

#: Same columns as PROPOSALS: refined matches replace the proposals row for row.
MATCHES = PROPOSALS.with_metadata({"manifest": "refine"})

#: The verify stage's rows. Its ``matches`` / ``scores`` / ``num_matches`` are refine's without the
#: exact duplicate matches (``num_duplicates``); a row that is ``ok`` but not ``verified`` keeps its
#: matches, inliers and errors, and everything downstream (metrics, exports, viz) treats it as a
#: pair whose estimation failed.
VERIFIED = pa.schema(
    PAIR_FIELDS
    + _MATCH_FIELDS
    + [
        pa.field("model", pa.string()),  # "homography" | "fundamental"
        pa.field("num_inliers", pa.int32()),
        pa.field("inliers", pa.list_(pa.bool_())),  # N flags, aligned with matches
        pa.field("num_duplicates", pa.int32()),  # exact duplicate matches dropped before RANSAC (not in num_matches)
        pa.field("verified", pa.bool_()),  # a model with >= verify.min_inliers inliers; null in runs made before the flag
        pa.field("H_est", _f64_list),  # 3x3 estimated homography, null if not estimated
        pa.field("F_est", _f64_list),  # 3x3 estimated fundamental matrix, null if n/a
        pa.field("R_err", pa.float64()),  # degrees, from OpenCV essential (null w/o pose GT)
        pa.field("t_err", pa.float64()),  # degrees, min(e, 180 - e)
        pa.field("pose_error", pa.float64()),  # max(R_err, t_err); inf when estimation failed
        pa.field("R_err_fdegensac", pa.float64()),  # same from pydegensac F -> E
        pa.field("t_err_fdegensac", pa.float64()),
        pa.field("pose_error_fdegensac", pa.float64()),
        pa.field("corner_error", pa.float64()),  # px, mean over image-0 corners; inf if failed
        pa.field("mma", _f64_list),  # fraction of matches with reprojection error <= 1..10 px
        pa.field("seconds", pa.float64()),
    ]
    + STATUS_FIELDS,
    metadata={"manifest": "verify"},
)

METRICS = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),  # e.g. "auc@10", "mma@3"
        pa.field("value", pa.float64()),
        pa.field("count", pa.int64()),  # pairs that entered the aggregate
    ],
    metadata={"manifest": "metrics"},
)

#: ``matchmill mine``'s output: a pairs manifest (``matchmill train pump`` reads it as U data as it
#: is) plus the provenance of each accepted pair. Mined pairs carry no ground truth (K, T and H
#: are null): they are pairs the SfM model did not connect, for losses that need none.
MINED = pa.schema(
    PAIR_FIELDS
    + [
        pa.field("num_matches", pa.int32()),  # matches the chain proposed / refined
        pa.field("num_inliers", pa.int32()),  # RANSAC inliers of verify's model
        pa.field("inlier_ratio", pa.float64()),  # num_inliers / num_matches
        pa.field("spread", pa.float64()),  # inliers' convex-hull area / image area, the smaller of the two images
        pa.field("model", pa.string()),  # verify's model ("fundamental" | "homography")
        pa.field("F_est", _f64_list),  # 3x3 fundamental matrix (original pixels), null if not estimated
        pa.field("chain_hash", pa.string()),  # config hash of the verify stage (extract -> propose -> refine -> verify)
    ]
    + STATUS_FIELDS,
    metadata={"manifest": "mine"},
)

#: Manifest (= stage) name -> (schema, key column).
MANIFESTS: dict[str, tuple[pa.Schema, str]] = {
    "pairs": (PAIRS, "pair_id"),
    "images": (IMAGES, "image_id"),
    "extract": (FEATURES, "image_id"),
    "propose": (PROPOSALS, "pair_id"),
    "refine": (MATCHES, "pair_id"),
    "verify": (VERIFIED, "pair_id"),
    "metrics": (METRICS, "metric"),
    "mine": (MINED, "pair_id"),
}


#: Joins the two image ids of a pair id; no image id may contain it (:func:`normalize_image_id`).
PAIR_SEPARATOR = "|"


def make_pair_id(image0: str, image1: str) -> str:
    """Stable pair key from two image ids (``image0|image1``)."""
    return f"{image0}{PAIR_SEPARATOR}{image1}"


def normalize_image_id(name: str) -> str:
    """The one id of an image named ``name`` (a '/'-separated path relative to its source's root):
    ``posixpath.normpath`` of it, so ``./a.jpg``, ``a.jpg`` and ``b/../a.jpg`` are one image.

    Backslashes are kept (a legal character of a POSIX file name); absolute names stay absolute.

    Raises:
        ValueError: ``name`` is empty, contains the pair-id separator ``|`` (``p.jpg|q.jpg`` +
            ``r.jpg`` and ``p.jpg`` + ``q.jpg|r.jpg`` would be one pair), or leaves its root
            (``../x.jpg``).
    """
    if PAIR_SEPARATOR in name:
        raise ValueError(f"image name {name!r} contains {PAIR_SEPARATOR!r}, the pair-id separator; rename the file")
    normal = posixpath.normpath(name) if name else ""
    if normal in ("", "."):
        raise ValueError(f"empty image name {name!r}")
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"image name {name!r} leaves the images folder (..); give names relative to it")
    return normal
