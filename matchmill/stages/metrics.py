"""Metrics stage (driver side): aggregate per-pair errors into the run's metrics.

Writes the METRICS manifest (metric, value, count) plus ``summary.json`` and ``report.md`` next
to it. Failed pairs stay in every denominator (they count as failures, never vanish); so do
unverified ones (fewer than ``verify.min_inliers`` inliers), which count as failed estimations
(pose / corner error inf). ``num_verified`` counts the verified pairs, and ``mean_matches`` /
``mean_inliers`` are means over them
(:func:`matchmill.geometry.pair_metrics.aggregate_metrics`).
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

from matchmill.geometry.pair_metrics import (
    AGGREGATE_BOUNDS,
    DEFAULT_AGGREGATE_CONF,
    aggregate_metric_records,
    aggregate_metrics,
)
from matchmill.manifests.commit import read_stage
from matchmill.manifests.schemas import METRICS
from matchmill.manifests.storage import exists, join, read_bytes, write_bytes_atomic

#: Columns of the verified manifest the aggregate needs (the big per-match arrays, K and the
#: keys are skipped: the driver holds one small dict per pair here).
_COLUMNS = [
    "status", "verified", "num_matches", "num_inliers", "pose_error", "pose_error_fdegensac",
    "corner_error", "mma", "H_0to1", "T_0to1",
]


#: The metrics section's keys, defined with their comments in ``matchmill/geometry/pair_metrics.py``.
STAGE_DEFAULTS = dict(DEFAULT_AGGREGATE_CONF)
#: Bounds of its numbers (each threshold of a list), defined in ``matchmill/geometry/pair_metrics.py``.
STAGE_BOUNDS = dict(AGGREGATE_BOUNDS)


def build(conf: dict, run_url: str) -> pa.Table:
    """The metrics stage (driver side)."""
    return compute_metrics(run_url, conf)


def compute_metrics(run_url: str, conf: dict) -> pa.Table:
    verified = read_stage(run_url, "verify", columns=_COLUMNS)
    rows_in = verified.to_pylist()
    summary = aggregate_metrics(rows_in, conf["metrics"])
    rows = aggregate_metric_records(rows_in, conf["metrics"])
    write_bytes_atomic(join(run_url, "metrics", "summary.json"), json.dumps(summary, indent=2).encode())
    write_bytes_atomic(join(run_url, "metrics", "report.md"), markdown_table(summary).encode())
    return pa.Table.from_pylist(rows, schema=METRICS)


def markdown_table(summary: dict[str, float]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {key} | {format_value(value)} |")
    return "\n".join(lines) + "\n"


def format_value(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}"


def read_summary(run_url: str) -> dict[str, float]:
    url = join(run_url, "metrics", "summary.json")
    return json.loads(read_bytes(url)) if exists(url) else {}


def format_summary(summary: dict[str, float]) -> str:
    """One screen: pose AUCs first (with the ``AUC@10`` line), then everything else; AUCs,
    accuracies and MMA in percent."""
    lines = []
    for t in (5, 10, 20):
        if f"auc@{t}" in summary:
            lines.append(f"AUC@{t}: {100 * summary[f'auc@{t}']:.2f}")
    for key, value in summary.items():
        if key.startswith("auc@"):
            continue
        if key.startswith(("auc", "homography_acc", "mma")):  # fractions, shown in percent
            lines.append(f"{key}: {100 * value:.2f}")
        else:
            lines.append(f"{key}: {format_value(value)}")
    return "\n".join(lines)
