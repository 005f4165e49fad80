"""What a bench run reports per method: summary metrics and the per-pair table.

``bench_metrics`` turns VERIFIED rows into the method's entry of ``OUT/summary.json`` (the
pipeline's own aggregate, :func:`matchmill.geometry.pair_metrics.aggregate_metrics`, plus counts,
the resize used and the HPatches splits); ``bench_pairs_table`` into ``OUT/<method>/pairs.parquet``.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.geometry.homography import MMA_THRESHOLDS
from matchmill.geometry.pair_metrics import aggregate_metrics
from matchmill.manifests.schemas import MATCHES_TYPE, STATUS_OK
from matchmill.manifests.storage import join, write_bytes_atomic

#: Summary keys that describe the run rather than measure it: in summary.json, not in the history.
NON_METRIC_KEYS = frozenset({"resize_max", "match_threshold", "target_matches", "num_pairs"})

#: Columns of ``OUT/<method>/pairs.parquet`` (one row per pair; heavy match arrays stay in the run).
BENCH_PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # pipeline pair key "<image0>|<image1>"
        pa.field("scene", pa.string()),  # sequence / scene-info file / scene folder
        pa.field("image0", pa.string()),
        pa.field("image1", pa.string()),
        pa.field("path0", pa.string()),  # readable image paths (for drawing matches)
        pa.field("path1", pa.string()),
        pa.field("status", pa.string()),  # "ok" | "failed"
        pa.field("error", pa.string()),  # why the pair failed (stage: message)
        pa.field("num_matches", pa.int64()),  # matches before RANSAC (0 on failed pairs)
        pa.field("num_inliers", pa.int64()),  # RANSAC inliers (0 on failed pairs)
        pa.field("verified", pa.bool_()),  # verify's flag (>= verify.min_inliers inliers); null in older runs
        pa.field("corner_error", pa.float64()),  # px, homography GT only; inf when failed
        pa.field("pose_error", pa.float64()),  # deg, max(R_err, t_err), OpenCV essential; inf when failed
        pa.field("pose_error_fdegensac", pa.float64()),  # deg, from the pydegensac F; inf when failed
        pa.field("R_err", pa.float64()),
        pa.field("t_err", pa.float64()),
        pa.field("mma", pa.list_(pa.float64())),  # fractions at 1..10 px (homography GT only; 0s when failed)
        pa.field("overlap", pa.float64()),  # covisibility from the pair source, if any
        pa.field("match_threshold", pa.float64()),  # tau of a "-tuned" method (matches with score >= tau)
        pa.field("run_url", pa.string()),  # the matchmill run (its verify stage has matches/inliers)
    ]
)

_VERIFY_COLUMNS_FOR_PAIRS = [
    "pair_id", "scene", "image0", "image1", "path0", "path1", "status", "error", "num_matches", "num_inliers",
    "verified", "corner_error", "pose_error", "pose_error_fdegensac", "R_err", "t_err", "mma", "overlap",
    "T_0to1", "H_0to1", "K0", "K1",
]


def _finite_or_inf(value: Any, failed: bool) -> float | None:
    if failed:
        return math.inf
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def bench_pairs_table(verified: pa.Table, run_url: str, match_threshold: float | None = None,
                      inline_matches: bool = False) -> pa.Table:
    """``OUT/<method>/pairs.parquet`` rows from a VERIFIED table: failed pairs get inf errors and
    0 matches in the families their ground truth defines, unverified pairs inf pose / corner errors
    (their MMA kept), so the file reads like the metrics.

    ``inline_matches`` adds the ``matches`` ((N, 4), the manifests' type) / ``inliers`` (N) columns (for ``-tuned``
    variants, whose matches are not those of the run folder).
    """
    columns = _VERIFY_COLUMNS_FOR_PAIRS + (["matches", "inliers"] if inline_matches else [])
    rows = []
    for r in verified.select([c for c in columns if c in verified.column_names]).to_pylist():
        failed = r.get("status") != STATUS_OK
        no_model = failed or r.get("verified") is False  # an unverified pair counts as a failed estimation
        has_h = r.get("H_0to1") is not None or r.get("corner_error") is not None
        has_pose = r.get("T_0to1") is not None or r.get("pose_error") is not None
        rows.append(
            {
                **{k: r.get(k) for k in ("pair_id", "scene", "image0", "image1", "path0", "path1", "status", "error", "overlap")},
                "num_matches": int(r.get("num_matches") or 0),
                "num_inliers": int(r.get("num_inliers") or 0),
                "verified": None if failed else r.get("verified"),
                "corner_error": _finite_or_inf(r.get("corner_error"), no_model) if has_h else None,
                "pose_error": _finite_or_inf(r.get("pose_error"), no_model) if has_pose else None,
                "pose_error_fdegensac": _finite_or_inf(r.get("pose_error_fdegensac"), no_model) if has_pose else None,
                "R_err": _finite_or_inf(r.get("R_err"), no_model) if has_pose else None,
                "t_err": _finite_or_inf(r.get("t_err"), no_model) if has_pose else None,
                "mma": ([0.0] * len(MMA_THRESHOLDS) if failed or r.get("mma") is None else list(r["mma"])) if has_h else None,
                "match_threshold": match_threshold,
                "run_url": run_url,
                **({"matches": r.get("matches"), "inliers": r.get("inliers")} if inline_matches else {}),
            }
        )
    schema = BENCH_PAIRS_SCHEMA
    if inline_matches:
        schema = schema.append(pa.field("matches", MATCHES_TYPE)).append(pa.field("inliers", pa.list_(pa.bool_())))
    return pa.Table.from_pylist(rows, schema=schema)


#: HPatches splits reported next to the overall numbers: sequence-name prefix -> metric prefix.
HPATCHES_SPLITS = {"i_": "illumination", "v_": "viewpoint"}


def bench_metrics(verified_rows: list[dict[str, Any]], conf: dict, benchmark: str) -> dict[str, Any]:
    """Summary metrics of one method: the pipeline's aggregate (pose AUCs with OpenCV essential and
    pydegensac F, homography accuracy / AUC, MMA), match counts, failures, the resize used and, for
    HPatches, ``illumination/...`` and ``viewpoint/...`` MMA and homography accuracy."""
    agg = aggregate_metrics(verified_rows, conf["metrics"])
    renames = {"mean_matches": "num_matches_mean", "mean_inliers": "num_inliers_mean"}
    out: dict[str, Any] = {renames.get(k, k): v for k, v in agg.items()}
    out["num_pairs"] = len(verified_rows)
    out["num_failed"] = int(agg.get("num_failed", 0))
    if benchmark == "hpatches":
        for prefix, label in HPATCHES_SPLITS.items():
            subset = [r for r in verified_rows if str(r.get("scene") or "").startswith(prefix)]
            if subset:
                for key, value in aggregate_metrics(subset, conf["metrics"]).items():
                    if key.startswith(("mma@", "homography_acc@")):
                        out[f"{label}/{key}"] = value
    out["resize_max"] = conf["extract"].get("resize_max")
    return out


def write_method_outputs(out_url: str, name: str, pairs_table: pa.Table, run_url: str | None) -> None:
    """``OUT/<name>/pairs.parquet`` and ``OUT/<name>/run_url.txt`` (each published atomically)."""
    buf = io.BytesIO()
    pq.write_table(pairs_table, buf, compression="zstd")
    write_bytes_atomic(join(out_url, name, "pairs.parquet"), buf.getvalue())
    if run_url:
        write_bytes_atomic(join(out_url, name, "run_url.txt"), (run_url + "\n").encode())


