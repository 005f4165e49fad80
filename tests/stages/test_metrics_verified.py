"""The metrics honour verify's ``verified`` flag: an unverified pair counts as a failed estimation
(pose and corner error inf, MMA as measured), ``num_verified`` counts the verified pairs (an int)
and the mean matches / inliers are over them."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from matchmill.geometry.pair_metrics import aggregate_metrics
from matchmill.manifests.commit import CommitInfo, write_commit
from matchmill.manifests.storage import join, write_manifest
from matchmill.stages.metrics import STAGE_DEFAULTS, compute_metrics

EYE4 = np.eye(4).ravel().tolist()
EYE3 = np.eye(3).ravel().tolist()


def pose_row(name: str, pose_error: float | None, verified: bool | None, status: str = "ok", n: int = 100) -> dict:
    return {"pair_id": name, "status": status, "T_0to1": EYE4, "verified": verified, "num_matches": n,
            "num_inliers": n // 2, "pose_error": pose_error, "pose_error_fdegensac": pose_error}


def test_unverified_pose_pair_counts_as_a_failed_estimation():
    good = [pose_row("a", 1.0, True), pose_row("b", 2.0, True)]
    weak = pose_row("c", 3.0, False, n=20)  # a small pose error, but only 10 inliers: not a verified model
    failed_estimation = pose_row("c", math.inf, True, n=20)  # what a pair without a model gives today
    m = aggregate_metrics(good + [weak])
    same = aggregate_metrics(good + [failed_estimation])
    for key in ("auc@5", "auc@10", "auc@20", "auc_fdegensac@5", "auc_fdegensac@20"):
        assert m[key] == pytest.approx(same[key])
        assert m[key] < aggregate_metrics(good + [pose_row("c", 3.0, True, n=20)])[key]
    assert m["num_pairs"] == 3 and m["num_failed"] == 0 and m["num_verified"] == 2
    assert isinstance(m["num_verified"], int)
    assert m["mean_matches"] == pytest.approx(100.0) and m["mean_inliers"] == pytest.approx(50.0)  # verified only


def test_unverified_homography_pair_keeps_its_mma_and_loses_its_corner_error():
    def h_row(name, corner, verified):
        return {"pair_id": name, "status": "ok", "H_0to1": EYE3, "verified": verified, "num_matches": 10,
                "num_inliers": 9, "corner_error": corner, "mma": [0.5] * 10}

    m = aggregate_metrics([h_row("a", 0.5, True), h_row("b", 0.5, False)])
    assert m["homography_acc@1"] == pytest.approx(0.5)  # b's 0.5 px does not count
    assert m["mma@1"] == pytest.approx(0.5)  # MMA scores the matches, not the model: b's is kept
    assert m["num_verified"] == 1


def test_rows_without_the_flag_count_as_verified_when_ok():
    """Runs made before the flag (null column) and hand-made rows keep their old figures."""
    rows = [pose_row("a", 1.0, None), pose_row("b", None, None, status="failed", n=0)]
    m = aggregate_metrics(rows)
    assert m["num_verified"] == 1 and m["mean_matches"] == pytest.approx(100.0)
    assert m["auc@10"] == pytest.approx(aggregate_metrics([pose_row("a", 1.0, True), rows[1]])["auc@10"])


def test_no_verified_pair_gives_zero_means():
    m = aggregate_metrics([pose_row("a", 1.0, False)])
    assert m["num_verified"] == 0 and m["mean_matches"] == 0.0 and m["mean_inliers"] == 0.0
    assert m["auc@20"] == 0.0


def test_metrics_stage_reads_the_flag_from_the_manifest(tmp_path):
    run = f"file://{tmp_path}/run"
    rows = [{**pose_row(f"x{i}|y", float(i), i != 2), "image0": f"x{i}", "image1": "y", "path0": "p", "path1": "q"}
            for i in range(4)]
    write_manifest(pa.Table.from_pylist(rows), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=4, failed=0))
    table = compute_metrics(run, {"metrics": dict(STAGE_DEFAULTS)})
    summary = json.loads((tmp_path / "run" / "metrics" / "summary.json").read_text())
    assert summary["num_verified"] == 3 and isinstance(summary["num_verified"], int)  # "3", not "3.0"
    by_name = {r["metric"]: r for r in table.to_pylist()}
    assert by_name["num_verified"]["value"] == 3 and by_name["mean_matches"]["count"] == 3
    assert "| num_verified | 3 |" in (tmp_path / "run" / "metrics" / "report.md").read_text()
