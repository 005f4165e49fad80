"""Never delete, mix or strand a user's data (issue 19), on whole runs with Ray.

- Storage failing mid-stage (here the artifacts folder is blocked by a file: ENOTDIR on every
  artifact write, as root too; a full disk gives ENOSPC the same way) stops the run with one line
  and exit code 3, the stage uncommitted, no row marked failed; once fixed, a rerun resumes to the
  clean run's results. Rows that an older version committed as failed with a storage error are
  redone by the next rerun, down to the metrics.
- A renamed run (its old folder gone) reads its own artifacts: status, the integrity check, the
  hloc export and a rerun with another propose config, with artifact references of both forms
  (relative, as written now; absolute into the old folder, as older versions wrote them).

Unit tests of the same: tests/stages/test_storage_errors.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from matchmill.manifests.commit import (
    STORAGE_STOPS,
    check_parts,
    part_files,
    read_commit,
    read_stage,
    reset_stage,
    stage_url,
    write_commit,
)
from matchmill.manifests.storage import file_sizes, read_manifest, write_manifest
from matchmill.cli import main as cli_main
from matchmill.pipeline.config import load_config
from matchmill.pipeline.graph import get_stage
from matchmill.pipeline.runner import StageState, run_driver, run_pipeline, stage_hashes

from tests.helpers.paths import DEMO_CONFIG

from tests.helpers.runs import REFERENCE_OVERRIDES, assert_same_results, run_results

pytestmark = pytest.mark.ray

PAIR_STAGES = ("propose", "refine", "verify")
LEGACY_ERROR = "extract: OSError: [Errno 28] No space left on device"


def rewrite_committed(run_url: str, stage: str, change) -> None:
    """Rewrite a committed stage's parts through ``change(table) -> table`` and recommit them as
    they are now (what an older version would have committed)."""
    for url in part_files(run_url, stage):
        write_manifest(change(read_manifest(url, stage)), url, stage)
    status = read_stage(run_url, stage, columns=["status"]).column("status").to_pylist()
    commit = read_commit(run_url, stage)
    extra = {k: v for k, v in commit.extra.items() if k != STORAGE_STOPS}  # older versions did not stop
    write_commit(run_url, dataclasses.replace(commit, parts=file_sizes(stage_url(run_url, stage)),
                                              failed=status.count("failed"), extra=extra))


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, table.schema.field(name), values)


def as_storage_failed(image: str, stage: str):
    """The rows of ``image`` (extract) or of its pairs, as an older version committed them when
    writing the image's artifact hit a full disk."""
    def change(table: pa.Table) -> pa.Table:
        if stage == "extract":
            hit, error = pc.equal(table.column("image_id"), image), LEGACY_ERROR
        else:
            hit = pc.or_(pc.equal(table.column("image0"), image), pc.equal(table.column("image1"), image))
            error = f"propose: ValueError: image '{image}' failed extraction: {LEGACY_ERROR}"
        table = set_column(table, "status", pc.if_else(hit, "failed", table.column("status")))
        table = set_column(table, "error", pc.if_else(hit, error, table.column("error")))
        if stage == "extract":
            table = set_column(table, "artifact_uri", pc.if_else(hit, pa.scalar(None, pa.string()),
                                                                 table.column("artifact_uri")))
        return table
    return change


def test_a_storage_error_stops_the_stage_uncommitted_with_one_line_and_a_rerun_resumes(
        tmp_path, demo_root, ray_local, demo_reference, capsys):
    overrides = [f"storage=file://{tmp_path}", f"data.root={demo_root}", *REFERENCE_OVERRIDES]
    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    (run_dir / "artifacts").write_text("a file where the artifacts folder goes: every artifact write fails")
    url = f"file://{run_dir}"

    assert cli_main(["run", str(DEMO_CONFIG), *overrides]) == 3
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"matchmill: error: storage: could not write {url}/artifacts/"), err[0]
    assert "[Errno 20] Not a directory (after 3 tries); nothing of stage extract was committed; " in err[0], err[0]
    assert "rerun to resume" in err[0]
    assert read_commit(url, "extract") is None
    assert read_stage(url, "extract").num_rows == 0  # no row committed, let alone as failed
    assert not [p for p in run_dir.rglob(".tmp-*")]

    (run_dir / "artifacts").unlink()  # the fault is fixed: the rerun resumes
    conf = load_config(DEMO_CONFIG, overrides)
    resumed = run_pipeline(conf, echo=lambda _: None)
    actions = {r.stage: (r.action, r.failed) for r in resumed.stages}
    assert actions["pairs"][0] == actions["images"][0] == "skipped"
    assert actions["extract"] == ("ran", 0)
    assert_same_results(run_results(url), demo_reference)

    # the same run as an older version left it: one image's artifact write hit a full disk, so its
    # extract row and its pairs' rows were committed as failed, and the metrics counted them
    image = sorted(read_stage(url, "extract", columns=["image_id"]).column("image_id").to_pylist())[0]
    artifact = next(r["artifact_uri"] for r in read_stage(url, "extract").to_pylist() if r["image_id"] == image)
    (run_dir / artifact).unlink()
    commit = read_commit(url, "extract")
    write_commit(url, dataclasses.replace(commit, artifacts={k: v for k, v in commit.artifacts.items() if k != artifact}))
    for stage in ("extract", *PAIR_STAGES):
        rewrite_committed(url, stage, as_storage_failed(image, stage))
    reset_stage(url, "metrics")
    run_driver(StageState(get_stage("metrics"), stage_hashes(conf)["metrics"], "run", None), conf, url)
    assert read_commit(url, "extract").failed == 1 and read_commit(url, "verify").failed > 0
    assert run_results(url)["metrics"] != demo_reference["metrics"]

    lines: list[str] = []
    retried = run_pipeline(conf, echo=lines.append)
    actions = {r.stage: (r.action, r.computed, r.failed) for r in retried.stages}
    # the parts holding those rows are redone (one part here: extract's 14 rows, each pair stage's 24)
    assert all(actions[s][0] == "repaired" and actions[s][2] == 0 for s in ("extract", *PAIR_STAGES, "metrics")), actions
    assert actions["pairs"][0] == actions["images"][0] == "skipped"
    notes = [line for line in lines if "failed by a storage error" in line]
    assert any(line.startswith("matchmill: extract/part-") and f"holds {image}," in line for line in notes), lines
    assert_same_results(run_results(url), demo_reference)


def test_a_renamed_run_reads_its_own_artifacts_in_status_integrity_export_and_a_rerun(
        tmp_path, demo_root, ray_local, demo_reference, capsys):
    first = tmp_path / "first" / "demo"
    shutil.copytree(Path(demo_reference["run_url"][len("file://"):]), first)
    old_url = f"file://{first}"

    def half_absolute(table: pa.Table) -> pa.Table:  # as older versions wrote them: into the old folder
        uris = table.column("artifact_uri").to_pylist()
        return set_column(table, "artifact_uri", pa.array(
            [f"{old_url}/{u}" if u and i % 2 == 0 else u for i, u in enumerate(uris)], pa.string()))

    rewrite_committed(old_url, "extract", half_absolute)
    uris = read_stage(old_url, "extract", columns=["artifact_uri"]).column("artifact_uri").to_pylist()
    assert sum(u.startswith(old_url) for u in uris) == 7 and sum(u.startswith("artifacts/") for u in uris) == 7

    moved = tmp_path / "second" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))  # renamed and moved: nothing is left at the old place
    assert not first.exists()
    url = f"file://{moved}"
    overrides = [f"storage=file://{moved.parent}", "run_name=renamed", f"data.root={demo_root}", *REFERENCE_OVERRIDES]

    for spec_name in ("extract", *PAIR_STAGES):  # the integrity check resolves every artifact in the new place
        assert check_parts(url, spec_name, spec_name, read_commit(url, spec_name)) == {}, spec_name
    capsys.readouterr()
    assert cli_main(["status", url]) == 0
    status = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert status["extract"][1:4] == ["committed", "14", "0"], status
    conf = load_config(DEMO_CONFIG, overrides)
    assert {r.action for r in run_pipeline(conf, echo=lambda _: None).stages} == {"skipped"}

    assert cli_main(["export", url, str(tmp_path / "hloc")]) == 0
    printed = capsys.readouterr().out
    assert "keypoints_from=native" in printed, printed
    assert (tmp_path / "hloc" / "keypoints.h5").stat().st_size > 0

    changed = load_config(DEMO_CONFIG, [*overrides, "propose.ratio=0.8"])
    rerun = run_pipeline(changed, overwrite=True, echo=lambda _: None)
    report = {r.stage: r for r in rerun.stages}
    assert report["extract"].action == "skipped"
    for stage in PAIR_STAGES:
        assert report[stage].action == "ran" and report[stage].rows == 24 and report[stage].failed == 0, report[stage]
    assert sum(read_stage(url, "propose", columns=["num_matches"]).column("num_matches").to_pylist()) > 0
