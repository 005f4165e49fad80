"""Faults survived with real processes: a killed actor, a killed driver, parts damaged at rest.

Each run is compared row by row with one clean run of the same config (``demo_reference``): a
fault may cost time, never a row, a duplicate or a changed value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from matchmill.manifests.artifacts import resolve_artifact
from matchmill.manifests.commit import COMMIT_MARKER, read_commit, read_stage
from matchmill.pipeline.config import load_config
from matchmill.pipeline.graph import get_stage
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG

from tests.helpers.runs import REFERENCE_OVERRIDES, assert_same_results, run_results

pytestmark = pytest.mark.ray

PAIR_STAGES = ("propose", "refine", "verify")


def fault_overrides(storage: Path, demo_root: Path) -> list[str]:
    """The reference config, written in 1- or 2-row parts so that a fault lands mid-stage."""
    return [f"storage=file://{storage}", f"data.root={demo_root}", *REFERENCE_OVERRIDES, "part_rows=1"]


def parts_of(run_dir: Path, stage: str) -> dict[str, tuple[int, bytes]]:
    """``{part name: (mtime_ns, bytes)}`` of a stage folder of a file:// run."""
    folder = run_dir / stage
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.glob("part-*.parquet"))}


def assert_each_key_once(run_url: str, stage: str, expected: int) -> None:
    keys = read_stage(run_url, stage).column(get_stage(stage).key).to_pylist()
    assert len(keys) == expected, f"{stage}: {len(keys)} rows, expected {expected} (rows lost or duplicated)"
    assert len(set(keys)) == len(keys), f"{stage}: duplicated keys"


def actor_pids(class_part: str) -> list[int]:
    """Pids of the live actors whose class name contains ``class_part``, from the GCS actor table
    (Ray's public ``ray.util.state`` needs the dashboard, which a ``ray[data,train]`` install lacks)."""
    import ray

    table = ray._private.state.actors()
    return sorted(int(a["Pid"]) for a in table.values()
                  if a["State"] == "ALIVE" and class_part in a.get("ActorClassName", "") and a.get("Pid"))


# --------------------------------------------------------------------------- a killed actor


@pytest.fixture(scope="module")
def killed_actor_run(tmp_path_factory, ray_local, demo_root):
    """The demo with the extract actor SIGKILLed after its first part: the run and what was seen."""
    storage = tmp_path_factory.mktemp("killed_actor")
    conf = load_config(DEMO_CONFIG, fault_overrides(storage, demo_root))
    run_dir = storage / conf["run_name"]
    seen: dict = {}
    stop = threading.Event()

    def kill_extract_actor_mid_stage() -> None:
        while not stop.is_set():
            done = parts_of(run_dir, "extract")
            if done and not (run_dir / "extract" / COMMIT_MARKER).exists():
                pids = actor_pids("StageActor")
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    seen.update(pid=pids[0], parts_at_kill=len(done), at=time.monotonic(),
                                committed_at_kill=(run_dir / "extract" / COMMIT_MARKER).exists())
                    return
            stop.wait(0.02)

    killer = threading.Thread(target=kill_extract_actor_mid_stage, daemon=True)
    killer.start()
    start = time.monotonic()
    try:
        result = run_pipeline(conf, echo=lambda _: None)
    finally:
        stop.set()
        killer.join(timeout=5)
    seconds = time.monotonic() - start
    return conf, result, run_results(result.run_url), seen, seconds


def test_a_killed_actor_is_restarted_and_its_stage_loses_and_duplicates_nothing(killed_actor_run, demo_reference):
    _, result, results, seen, seconds = killed_actor_run
    assert seen, "the extract actor was never seen alive mid-stage"
    assert not seen["committed_at_kill"] and 1 <= seen["parts_at_kill"] < 14
    assert seen["pid"] not in actor_pids("StageActor")  # the process is gone; Ray started another
    extract = next(r for r in result.stages if r.stage == "extract")
    assert extract.action == "ran" and extract.rows == 14 and extract.failed == 0
    for stage, rows in (("extract", 14), ("propose", 24), ("refine", 24), ("verify", 24)):
        assert_each_key_once(result.run_url, stage, rows)
        assert read_commit(result.run_url, stage).rows == rows
    assert_same_results(results, demo_reference)
    print(f"\nkilled actor: pid {seen['pid']} after {seen['parts_at_kill']}/14 extract parts; "
          f"extract {extract.seconds:.1f} s, run {seconds:.1f} s; 0 rows lost, 0 duplicated, results equal")


# --------------------------------------------------------------------------- damaged parts


def test_parts_damaged_at_rest_are_detected_redone_and_reported(killed_actor_run, demo_reference):
    """Between two runs: a part truncated, a byte flipped in place (same size), a part deleted."""
    conf, result, _, _, _ = killed_actor_run
    run_dir = Path(result.run_url[len("file://"):])
    truncated, flipped, deleted = (sorted((run_dir / s).glob("part-*.parquet"))[1] for s in ("verify", "propose", "extract"))
    size = truncated.stat().st_size
    truncated.write_bytes(truncated.read_bytes()[: size // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0x10
    flipped.write_bytes(bytes(data))
    deleted.unlink()
    lines: list[str] = []
    again = run_pipeline(conf, echo=lines.append)
    notes = {line.split(" ", 2)[1]: line for line in lines if "removed, its rows are redone" in line}
    assert notes.keys() == {f"verify/{truncated.name}", f"propose/{flipped.name}", f"extract/{deleted.name}"}, lines
    assert f"has {size // 2} bytes where the commit recorded {size} (truncated or rewritten)" in notes[f"verify/{truncated.name}"]
    assert "is unreadable" in notes[f"propose/{flipped.name}"] and "checksum" in notes[f"propose/{flipped.name}"].lower()
    assert "is missing" in notes[f"extract/{deleted.name}"]
    actions = {r.stage: (r.action, r.computed) for r in again.stages}
    assert actions["extract"] == ("repaired", 1)  # part_rows=1: one image redone
    assert actions["propose"] == ("repaired", 1) and actions["verify"][0] == "repaired"
    assert actions["pairs"][0] == actions["images"][0] == actions["metrics"][0] == "skipped"
    repaired = read_commit(again.run_url, "verify").extra["repaired"]
    assert list(repaired) == [truncated.name] and "truncated" in repaired[truncated.name]
    for stage, rows in (("extract", 14), ("propose", 24), ("refine", 24), ("verify", 24)):
        assert_each_key_once(again.run_url, stage, rows)
    assert_same_results(run_results(again.run_url), demo_reference)
    rerun = run_pipeline(conf, echo=lambda _: None)  # the repaired parts are in the new commits
    assert all(r.action == "skipped" for r in rerun.stages)


def test_feature_artifacts_lost_or_cut_at_rest_are_extracted_again(killed_actor_run, demo_reference):
    """Between two runs: one image's feature artifact deleted, another's truncated. The rerun
    names each, redoes exactly their extract rows (the artifacts come back byte for byte) and
    leaves the pair stages, which had read them intact, committed."""
    conf, result, _, _, _ = killed_actor_run
    rows = read_stage(result.run_url, "extract").to_pylist()
    (lost, lost_uri), (cut, cut_uri) = ((r["image_id"], resolve_artifact(result.run_url, r["artifact_uri"])) for r in rows[2:4])
    lost_path, cut_path = (Path(uri[len("file://"):]) for uri in (lost_uri, cut_uri))
    original = {p: p.read_bytes() for p in (lost_path, cut_path)}
    lost_path.unlink()
    cut_path.write_bytes(original[cut_path][:100])
    lines: list[str] = []
    again = run_pipeline(conf, echo=lines.append)
    notes = [line for line in lines if "removed, its rows are redone" in line]
    assert len(notes) == 2 and all(line.startswith("matchmill: extract/part-") for line in notes), lines
    assert any(f"holds {lost}, whose artifact artifacts/" in n and " is missing" in n for n in notes), notes
    assert any(f"holds {cut}, whose artifact artifacts/" in n and "has 100 bytes where the commit recorded "
               f"{len(original[cut_path])}" in n for n in notes), notes
    actions = {r.stage: (r.action, r.computed) for r in again.stages}
    assert actions["extract"] == ("repaired", 2)  # part_rows=1: the two images, nothing else
    assert all(actions[s][0] == "skipped" for s in ("pairs", "images", *PAIR_STAGES, "metrics")), actions
    assert {p: p.read_bytes() for p in original} == original  # same input, same bytes
    assert len(read_commit(again.run_url, "extract").artifacts) == 14
    assert_same_results(run_results(again.run_url), demo_reference)


# --------------------------------------------------------------------------- a killed driver


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the killed driver's embedded Ray lives in it)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
                out.append(int(proc.name))
    return out


def writers(sid: int) -> list[str]:
    """Processes of session ``sid`` that could still write to the run: all but Ray's two node
    agents (they only exit on their next poll of the dead raylet; they write no run data)."""
    names = []
    for pid in session_pids(sid):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if name not in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
            names.append(f"{pid} {name[:60]}")
    return names


def test_a_killed_driver_resumes_without_redoing_committed_or_complete_parts(tmp_path, demo_root, ray_local, demo_reference):
    """SIGKILL ``matchmill run`` while the streamed stages write parts; the rerun resumes."""
    overrides = fault_overrides(tmp_path, demo_root)
    run_dir = tmp_path / "demo"
    driver = subprocess.Popen([sys.executable, "-m", "matchmill", "run", str(DEMO_CONFIG), *overrides],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if len(parts_of(run_dir, "propose")) >= 2 and not (run_dir / "verify" / COMMIT_MARKER).exists():
                break
            time.sleep(0.02)
        assert driver.poll() is None, "the run ended before the fault could be injected"
        os.kill(driver.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        driver.wait(timeout=10)
        while writers(driver.pid) and time.monotonic() < killed_at + 30:
            time.sleep(0.1)
        left = writers(driver.pid)  # the embedded Ray's raylet, GCS and workers die with their driver
        assert not left, f"processes of the killed run still alive after 30 s: {left}"
        gone_after = time.monotonic() - killed_at
    finally:
        for pid in session_pids(driver.pid):
            os.kill(pid, signal.SIGKILL)
    committed = {s for s in ("pairs", "images", "extract", *PAIR_STAGES, "metrics") if (run_dir / s / COMMIT_MARKER).exists()}
    assert {"pairs", "images", "extract"} <= committed and "verify" not in committed
    before = {s: parts_of(run_dir, s) for s in PAIR_STAGES}
    had = {s: {k for name in before[s] for k in _keys(run_dir / s / name, s)} for s in PAIR_STAGES}
    assert 2 <= len(before["propose"]) < 24

    resumed = run_pipeline(load_config(DEMO_CONFIG, overrides), echo=lambda _: None)
    report = {r.stage: r for r in resumed.stages}
    for stage in committed:
        assert report[stage].action == "skipped" and report[stage].computed == 0, stage
    first = next(s for s in PAIR_STAGES if s not in committed)
    assert report[first].action == ("resumed" if had[first] else "ran")
    assert report[first].computed == 24 - len(had[first])  # only the keys no complete part holds
    for stage in PAIR_STAGES:
        after = parts_of(run_dir, stage)
        assert all(after[name] == kept for name, kept in before[stage].items()), f"{stage}: a complete part was rewritten"
        new = {k for name in after.keys() - before[stage].keys() for k in _keys(run_dir / stage / name, stage)}
        assert not new & had[stage], f"{stage}: keys of complete parts were written again"
        assert_each_key_once(resumed.run_url, stage, 24)
    assert_same_results(run_results(resumed.run_url), demo_reference)
    print(f"\nkilled driver: {len(before['propose'])}/24 propose, {len(before['refine'])}/24 refine, "
          f"{len(before['verify'])}/24 verify parts kept; its Ray gone {gone_after:.1f} s after the kill; "
          f"resumed propose+refine+verify {report['propose'].seconds:.1f} s "
          f"(clean {demo_reference['seconds']['propose']:.1f} s)")


def _keys(path: Path, stage: str) -> list[str]:
    from matchmill.manifests.storage import read_manifest

    return read_manifest(f"file://{path}", stage, columns=[get_stage(stage).key]).column(get_stage(stage).key).to_pylist()
