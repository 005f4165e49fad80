"""Real ``matchmill bench`` runs on a local Ray: HPatches and KITTI (../shared/data), and the
MegaDepth-1500 metric path on the demo scene."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from matchmill.evaluation.benchmarks.history import read_history
from matchmill.evaluation.benchmarks.megadepth1500 import scene_info_from_colmap
from matchmill.methods.presets import PRESETS
from matchmill.cli import main

from tests.helpers.paths import shared_data

pytestmark = pytest.mark.ray

MMA_KEYS = [f"mma@{t}" for t in range(1, 11)]
HOMOGRAPHY_KEYS = [f"homography_acc@{t}" for t in (1, 3, 5, 10)]
POSE_KEYS = [f"{p}@{t}" for p in ("auc", "auc_fdegensac") for t in (5, 10, 20)]


def test_bench_hpatches_sift_on_v_wormhole_with_threshold_tuning(ray_local, tmp_path):
    root = shared_data("hpatches")
    out, history = tmp_path / "hp", f"file://{tmp_path}/history"
    code = main(["bench", "hpatches", str(root), "--out", str(out), "--resize", "480",
                 "--target-matches", "150", "--history", history])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"sift", "sift-tuned"}
    sift = summary["sift"]
    assert set(HOMOGRAPHY_KEYS + MMA_KEYS) <= set(sift)
    assert sift["num_pairs"] == 5 and sift["num_failed"] == 0 and sift["resize_max"] == 480
    assert sift["homography_acc@10"] >= 0.6  # SIFT handles most of this viewpoint sequence
    mma = [sift[k] for k in MMA_KEYS]
    assert all(b >= a for a, b in zip(mma, mma[1:])) and 0 < mma[0] < mma[-1] <= 1
    assert sift["viewpoint/mma@3"] == sift["mma@3"]  # v_wormhole is a viewpoint sequence

    pairs = pq.read_table(out / "sift" / "pairs.parquet").to_pylist()
    assert len(pairs) == 5
    corners = np.array([p["corner_error"] for p in pairs])
    assert sift["homography_acc@10"] == pytest.approx(np.mean(corners <= 10))
    assert sift["mma@3"] == pytest.approx(np.mean([p["mma"][2] for p in pairs]))
    assert (out / "sift" / "run_url.txt").read_text().strip() == pairs[0]["run_url"]

    tuned = summary["sift-tuned"]  # PUMP supplementary B: a global score threshold to 150 matches/pair
    tuned_pairs = pq.read_table(out / "sift-tuned" / "pairs.parquet").to_pylist()
    per_pair = np.mean([p["num_matches"] for p in tuned_pairs])  # the tuning's target: a mean over all pairs
    assert 150 <= per_pair < 152 and tuned["num_matches_mean"] < sift["num_matches_mean"]
    verified = [p["num_matches"] for p in tuned_pairs if p["verified"]]  # num_matches_mean: over verified pairs
    assert tuned["num_verified"] == len(verified) and tuned["num_matches_mean"] == pytest.approx(np.mean(verified))
    assert tuned["mma@3"] > sift["mma@3"]  # the best-scored matches are more precise
    assert {p["match_threshold"] for p in tuned_pairs} == {tuned["match_threshold"]}
    assert all(len(p["matches"]) == p["num_matches"] == len(p["inliers"]) for p in tuned_pairs)  # (N, 4) rows

    table = read_history(history)
    rows = [r for r in table.to_pylist() if r["method"] == "sift"]
    assert {r["metric"] for r in rows} >= set(HOMOGRAPHY_KEYS + MMA_KEYS)
    assert {r["benchmark"] for r in rows} == {"hpatches"} and {r["dataset"] for r in rows} == {str(root)}
    by_metric = {r["metric"]: r["value"] for r in rows}
    assert by_metric["mma@3"] == sift["mma@3"] and "resize_max" not in by_metric
    assert len({r["run_id"] for r in table.to_pylist()}) == 1 and rows[0]["out_url"] == f"file://{out}"


def test_bench_pose_kitti_reports_an_unregistered_method_and_still_runs_sift(ray_local, tmp_path, monkeypatch, capsys):
    pairs_file = shared_data("kitti_seq00") / "pairs_with_gt.txt"
    monkeypatch.setitem(PRESETS, "ghost", {"extract.method": "ghost-net"})
    out = tmp_path / "kitti"
    args = ["bench", "pose", str(pairs_file), "--images", str(pairs_file.parent), "--out", str(out),
            "--methods", "ghost", "--max-pairs", "3", "extract.max_keypoints=1024"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "method 'ghost' failed" in captured.err and "ghost-net" in captured.err

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["sift"]
    sift = summary["sift"]
    assert set(POSE_KEYS) <= set(sift) and sift["num_pairs"] == 3 and sift["resize_max"] == 640
    assert sift["auc@20"] > 0.5  # KITTI forward motion: SIFT poses within a few degrees
    assert all(0 <= sift[k] <= 1 for k in POSE_KEYS)
    bench = json.loads((out / "bench.json").read_text())
    assert bench["methods"]["ghost"]["status"] == "failed"
    assert bench["methods"]["sift"]["status"] == "ok" and bench["methods"]["sift"]["model_hashes"] == {}

    history = read_history(f"file://{tmp_path}/history.parquet")  # default: next to OUT
    ghost = [r for r in history.to_pylist() if r["method"] == "ghost"]
    assert [(r["metric"], r["value"]) for r in ghost] == [("method_failed", 1.0)]

    # rerun = resume: every stage of the sift run is skipped, the numbers are identical
    assert main(args) == 1
    stdout = capsys.readouterr().out
    assert "[ extract] skipped" in stdout and "[  verify] skipped" in stdout
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len(set(read_history(f"file://{tmp_path}/history.parquet").column("run_id").to_pylist())) == 2


def test_bench_megadepth1500_metric_path_on_the_demo_scene(ray_local, demo_root, tmp_path):
    from matchmill.datasets.megadepth import select_megadepth_pairs

    selected = select_megadepth_pairs(demo_root, {"max_pairs_per_scene": 4, "symmetric": False})
    names = [(r["image0"].split("/", 1)[1], r["image1"].split("/", 1)[1], r["overlap"]) for r in selected]
    info_dir = tmp_path / "scene_info"
    info_dir.mkdir()
    (info_dir / "demo_0.3_1.0.json").write_text(json.dumps(scene_info_from_colmap(demo_root, "demo", names)))
    out = tmp_path / "md"
    code = main(["bench", "megadepth1500", str(demo_root), "--scene-info", str(info_dir), "--out", str(out),
                 "--resize", "320", "--history", "none"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    sift = summary["sift"]
    assert set(POSE_KEYS) <= set(sift) and sift["num_pairs"] == 4 and sift["num_failed"] == 0
    assert sift["resize_max"] == 320 and json.loads((out / "bench.json").read_text())["resize_max"] == 320
    assert sift["auc@20"] > 0.2  # the demo scene's pairs are posed well by SIFT
    pairs = pq.read_table(out / "sift" / "pairs.parquet").to_pylist()
    assert {p["scene"] for p in pairs} == {"demo_0.3_1.0"}
    assert all(np.isfinite(p["pose_error"]) for p in pairs)
    assert not (tmp_path / "history.parquet").exists()
