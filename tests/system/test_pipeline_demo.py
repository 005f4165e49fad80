"""The whole pipeline on the demo scene: a full run, a rerun, a resume, an invalidation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from matchmill.manifests.commit import part_files, read_commit, read_stage
from matchmill.manifests.storage import remove_tree
from matchmill.pipeline.config import load_config
from matchmill.pipeline.graph import STAGE_NAMES
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG

pytestmark = pytest.mark.ray


def demo_conf(storage: Path, demo_root: Path, *extra: str) -> dict:
    return load_config(
        DEMO_CONFIG,
        [f"storage=file://{storage}", f"data.root={demo_root}", "pairs.max_pairs_per_scene=24",
         "part_rows=8", *extra],
    )


def assert_same_metrics(a: dict, b: dict) -> None:
    """Identical metrics: RANSAC is seeded per row and deterministic inside Ray workers too
    (matchmill/geometry/robust.py), so a rerun, a resume and a run with more actors agree exactly."""
    assert a == b


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, ray_local, demo_root):
    storage = tmp_path_factory.mktemp("runs")
    conf = demo_conf(storage, demo_root)
    lines: list[str] = []
    result = run_pipeline(conf, echo=lines.append)
    return conf, result, lines


def test_full_run_commits_every_stage_with_metrics(full_run):
    conf, result, lines = full_run
    assert [r.stage for r in result.stages] == list(STAGE_NAMES)
    assert all(r.action == "ran" for r in result.stages)
    for stage in STAGE_NAMES:
        assert read_commit(result.run_url, stage) is not None, stage
    pairs = read_stage(result.run_url, "pairs")
    verified = read_stage(result.run_url, "verify")
    assert pairs.num_rows == 24
    assert sorted(verified.column("pair_id").to_pylist()) == sorted(pairs.column("pair_id").to_pylist())
    assert pc.all(pc.equal(verified.column("status"), "ok")).as_py()
    m = result.metrics
    assert 0.0 <= m["auc@5"] <= m["auc@10"] <= m["auc@20"] <= 1.0
    assert m["auc@20"] > 0.3, m  # SIFT on the demo scene must find many good poses
    assert m["mean_inliers"] > 20
    summary = json.loads((Path(result.run_url[len("file://"):]) / "metrics" / "summary.json").read_text())
    assert summary == m
    report = (Path(result.run_url[len("file://"):]) / "metrics" / "report.md").read_text()
    assert "| auc@10 |" in report


def test_extraction_runs_once_per_unique_image(full_run):
    _, result, _ = full_run
    pairs = read_stage(result.run_url, "pairs")
    unique = set(pairs.column("image0").to_pylist()) | set(pairs.column("image1").to_pylist())
    features = read_stage(result.run_url, "extract")
    assert sorted(features.column("image_id").to_pylist()) == sorted(unique)
    extract = next(r for r in result.stages if r.stage == "extract")
    assert extract.computed == len(unique) < 2 * pairs.num_rows


def test_rerun_recomputes_nothing(full_run):
    conf, first, _ = full_run
    again = run_pipeline(conf, echo=lambda _: None)
    assert all(r.action == "skipped" and r.computed == 0 for r in again.stages)
    assert again.metrics == first.metrics


def test_stopped_after_extract_resumes_to_the_same_metrics(full_run, tmp_path, demo_root):
    _, uninterrupted, _ = full_run
    conf = demo_conf(tmp_path, demo_root)
    partial = run_pipeline(conf, until="extract", echo=lambda _: None)
    assert [r.stage for r in partial.stages] == ["pairs", "images", "extract"]
    assert read_commit(partial.run_url, "propose") is None
    resumed = run_pipeline(conf, echo=lambda _: None)
    actions = {r.stage: r.action for r in resumed.stages}
    assert actions["extract"] == "skipped" and actions["propose"] == "ran"
    assert_same_metrics(resumed.metrics, uninterrupted.metrics)


def test_uncommitted_stage_redoes_only_missing_keys(full_run, tmp_path, demo_root):
    conf = demo_conf(tmp_path, demo_root)
    first = run_pipeline(conf, echo=lambda _: None)
    parts = part_files(first.run_url, "propose")
    assert len(parts) >= 2
    lost = read_stage(first.run_url, "propose").num_rows
    remove_tree(parts[0])  # as if the run died before this part was written ...
    remove_tree(first.run_url + "/propose/_COMMITTED.json")  # ... and before the commit
    from matchmill.manifests.storage import read_manifest

    kept = sum(read_manifest(p, "propose").num_rows for p in parts[1:])
    second = run_pipeline(conf, echo=lambda _: None)
    propose = next(r for r in second.stages if r.stage == "propose")
    assert propose.action == "resumed"
    assert propose.computed == lost - kept
    assert_same_metrics(second.metrics, first.metrics)


def test_config_change_never_replaces_committed_work_without_overwrite(full_run, tmp_path, demo_root):
    from matchmill.manifests.commit import read_commit
    from matchmill.config import ConfigError

    conf = demo_conf(tmp_path, demo_root)
    first = run_pipeline(conf, echo=lambda _: None)
    markers = {s: read_commit(first.run_url, s) for s in ("verify", "metrics")}
    new = demo_conf(tmp_path, demo_root, "verify.h_threshold=3.0", "verify.f_threshold=1.5")
    with pytest.raises(ConfigError, match=r"another config for verify, metrics \(changed: verify\.f_threshold, "
                                          r"verify\.h_threshold\); nothing was touched.*--overwrite") as err:
        run_pipeline(new, echo=lambda _: None)
    assert {s: read_commit(first.run_url, s) for s in markers} == markers, err.value
    changed = run_pipeline(new, echo=lambda _: None, overwrite=True)
    actions = {r.stage: r.action for r in changed.stages}
    assert actions == {"pairs": "skipped", "images": "skipped", "extract": "skipped", "propose": "skipped",
                       "refine": "skipped", "verify": "ran", "metrics": "ran"}


def test_a_bad_data_source_is_found_before_anything_is_cleared(full_run, tmp_path, demo_root):
    from matchmill.manifests.commit import read_commit, read_stage

    conf = demo_conf(tmp_path, demo_root)
    first = run_pipeline(conf, echo=lambda _: None)
    pairs_before = read_stage(first.run_url, "pairs").column("pair_id").to_pylist()
    bad = demo_conf(tmp_path, demo_root, "data.source=megadepth", f"data.root={tmp_path}/nonexistent")
    with pytest.raises(FileNotFoundError, match="data.root .*nonexistent.* does not exist"):
        run_pipeline(bad, echo=lambda _: None, overwrite=True)
    assert read_commit(first.run_url, "pairs") is not None
    assert read_stage(first.run_url, "pairs").column("pair_id").to_pylist() == pairs_before


def test_two_extract_actors_give_the_same_features(full_run, tmp_path, demo_root):
    _, one, _ = full_run
    conf = demo_conf(tmp_path, demo_root, "extract.actors=2", "extract.batch_size=2")
    two = run_pipeline(conf, until="extract", echo=lambda _: None)
    a = read_stage(one.run_url, "extract").sort_by("image_id")
    b = read_stage(two.run_url, "extract").sort_by("image_id")
    assert a.column("num_keypoints").to_pylist() == b.column("num_keypoints").to_pylist()


def test_status_and_show_read_the_run(full_run, capsys):
    from matchmill.cli import main as cli_main

    _, result, _ = full_run
    assert cli_main(["status", result.run_url]) == 0
    out = capsys.readouterr().out
    for stage in STAGE_NAMES:
        assert f"{stage:<9} committed" in out
    assert "AUC@10:" in out
    assert cli_main(["show", result.run_url, "verify", "-n", "3"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("verify: 24 rows") and "pose_error" in shown
    assert cli_main(["show", result.run_url, "nosuchstage"]) == 2
    assert "unknown stage 'nosuchstage'" in capsys.readouterr().err


def test_cli_run_prints_the_auc_summary(tmp_path, demo_root, ray_local, capsys):
    from matchmill.cli import main as cli_main

    code = cli_main(["run", str(DEMO_CONFIG), f"storage=file://{tmp_path}", f"data.root={demo_root}",
                     "pairs.max_pairs_per_scene=6"])
    out = capsys.readouterr().out
    assert code == 0
    assert "AUC@10:" in out and "[ metrics] ran" in out


def test_export_command_writes_hloc_files_of_a_real_run(full_run, tmp_path, capsys):
    import h5py

    from matchmill.cli import main as cli_main

    _, result, _ = full_run
    assert cli_main(["export", result.run_url, str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = read_stage(result.run_url, "verify", columns=["num_inliers", "verified"]).to_pylist()
    verified = [r["num_inliers"] for r in rows if r["verified"]]  # unverified pairs are not exported
    assert f"pairs={len(verified)} skipped_failed=0 skipped_unverified={24 - len(verified)} " in out
    # the demo chain is sparse (SIFT + mutual NN + identity refine): native keypoints, every inlier
    inliers = sum(verified)
    assert "keypoints_from=native" in out and f"matches={inliers} " in out and "kept=1.0" in out
    with h5py.File(tmp_path / "keypoints.h5", "r") as kp, h5py.File(tmp_path / "matches.h5", "r") as mt:
        scene = kp["demo"]
        assert len(scene) == read_stage(result.run_url, "images").num_rows
        first = next(iter(mt.values()))
        pair = next(iter(first.values()))
        assert pair["matches0"].dtype.kind == "i" and (pair["matches0"][()] >= -1).all()
