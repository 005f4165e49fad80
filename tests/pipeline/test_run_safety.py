"""A user's data is never deleted, mixed or stranded (issue 19): one writer per run (the lease),
files a run did not write are refused before anything is written, and Ctrl-C / SIGTERM stop a
run with one line and a resumable state.

All but the last test run without Ray: the lease functions and the planning are called
directly, and the runs stop before their first Ray stage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from matchmill.manifests.commit import (
    COMMIT_MARKER,
    part_name,
    part_stamp,
    read_commit,
    read_stage,
    stage_url,
    write_started,
)
from matchmill.manifests.lease import (
    LEASE_FILE,
    LeaseError,
    LeaseLost,
    acquire_lease,
    ensure_held,
    lease_status,
    read_lease,
    stale_seconds,
)
from matchmill.manifests.storage import join, write_manifest
from matchmill.config import ConfigError
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import plan_stages, run_pipeline, stage_hashes
from matchmill.pipeline.status import run_status
from matchmill.pipeline.stray import foreign_parts

from tests.helpers.paths import DEMO_CONFIG
from tests.system.test_faults import session_pids

# --------------------------------------------------------------------------- the lease


def write_lease(run_dir: Path, **fields) -> dict:
    """A lease file as another process would have written it."""
    now = time.time()
    record = {"token": "someone-else", "host": "other-host", "pid": 4242, "user": "alice",
              "started_at": now - 60, "heartbeat_at": now - 1, "command": "matchmill run other.yaml", **fields}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LEASE_FILE).write_text(json.dumps(record))
    return record


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    url = f"file://{tmp_path}"
    first = acquire_lease(url, command="matchmill run a.yaml", heartbeat=False)
    try:
        with pytest.raises(LeaseError) as err:
            acquire_lease(url, heartbeat=False)
        message = str(err.value)
        assert f"run {url} is in use by pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "`matchmill run a.yaml`" in message and re.search(r"last heartbeat \d s ago\)", message)
        assert f"remove {url}/{LEASE_FILE} if that process is gone" in message
        assert "taken over automatically after 120 s without heartbeat" in message
        assert "\n" not in message
        assert read_lease(url)["token"] == first.token  # the refused attempt changed nothing
        # a live holder on another host, with a fresh heartbeat, is refused too
        first.release()
        write_lease(tmp_path)
        with pytest.raises(LeaseError, match=r"in use by pid 4242 on host other-host \(user alice, "
                                             r"`matchmill run other.yaml`, started .*, last heartbeat \d s ago\)"):
            acquire_lease(url, heartbeat=False)
    finally:
        first.release()


def test_a_stale_lease_is_taken_over(tmp_path, monkeypatch):
    url = f"file://{tmp_path}"
    write_lease(tmp_path, heartbeat_at=time.time() - 121)  # another host: only its heartbeat counts
    lease = acquire_lease(url, heartbeat=False)
    try:
        assert read_lease(url)["token"] == lease.token and read_lease(url)["pid"] == os.getpid()
    finally:
        lease.release()
    monkeypatch.setenv("MATCHMILL_LEASE_STALE_S", "600")  # the stale time is the environment's
    assert stale_seconds() == 600
    write_lease(tmp_path, heartbeat_at=time.time() - 121)
    with pytest.raises(LeaseError, match="taken over automatically after 600 s without heartbeat"):
        acquire_lease(url, heartbeat=False)
    monkeypatch.setenv("MATCHMILL_LEASE_STALE_S", "soon")
    with pytest.raises(Exception, match="MATCHMILL_LEASE_STALE_S='soon'"):
        stale_seconds()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    url = f"file://{tmp_path}"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lease(tmp_path, host=socket.gethostname(), pid=gone.pid, heartbeat_at=time.time())
    lease = acquire_lease(url, heartbeat=False)
    try:
        assert read_lease(url)["token"] == lease.token
    finally:
        lease.release()


def test_release_removes_the_lease_only_while_it_is_ours(tmp_path):
    url = f"file://{tmp_path}"
    lease = acquire_lease(url, heartbeat=False)
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp file left either

    lease = acquire_lease(url, heartbeat=False)
    taken = write_lease(tmp_path)  # another process took it over (it judged ours stale)
    with pytest.raises(LeaseLost, match="was taken over by pid 4242 on host other-host"):
        ensure_held(url)  # what the runner calls before it clears or commits a stage
    lease.release()  # not ours any more: nothing removed
    assert read_lease(url) == taken


def test_the_heartbeat_refreshes_the_lease_and_finds_a_takeover(tmp_path):
    url = f"file://{tmp_path}"
    lease = acquire_lease(url, stale_s=0.4)  # a beat every 0.1 s
    try:
        first = read_lease(url)["heartbeat_at"]
        deadline = time.monotonic() + 5
        while read_lease(url)["heartbeat_at"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_lease(url)["heartbeat_at"] > first
        assert lease_status(url).startswith(f"locked by pid {os.getpid()} on host {socket.gethostname()} "
                                            "(user ")
        write_lease(tmp_path, heartbeat_at=time.time() + 60)
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost and "taken over by pid 4242" in lease.lost
        assert read_lease(url)["token"] == "someone-else"  # the heartbeat never overwrites a new owner
    finally:
        lease.release()
    assert read_lease(url)["token"] == "someone-else"


def test_the_lease_works_on_an_object_store(monkeypatch):
    """s3:// has no exclusive create: written, read back after a settle time, refused, released."""
    pytest.importorskip("moto")
    s3fs = pytest.importorskip("s3fs")

    from tests.helpers.s3_loopback import LoopbackS3

    with LoopbackS3() as s3:
        s3.create_bucket("runs")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # an s3fs made before these variables would be reused
        url = "s3://runs/job"
        lease = acquire_lease(url, heartbeat=False)
        try:
            assert read_lease(url)["token"] == lease.token
            with pytest.raises(LeaseError, match=f"remove {url}/{LEASE_FILE} if that process is gone"):
                acquire_lease(url, heartbeat=False)
            assert lease.beat() and lease.lost is None
        finally:
            lease.release()
        assert read_lease(url) is None
        s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------- runs stopped before any write


def pairs_file_conf(tmp_path: Path) -> dict:
    """A pairs-file job: its driver stages run in-process; nothing here reaches a Ray stage."""
    (tmp_path / "images").mkdir()
    lines = ["a.png b.png", "a.png c.png", "b.png c.png"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    return load_config(DEMO_CONFIG, [f"storage=file://{tmp_path}/runs", "run_name=safe", "data.source=pairs_file",
                                     f"data.pairs_file={tmp_path / 'pairs.txt'}", f"data.images_dir={tmp_path / 'images'}"])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_held_lease_stops_the_run_before_anything_is_written(tmp_path):
    conf = pairs_file_conf(tmp_path)
    run_dir = tmp_path / "runs" / "safe"
    holder = acquire_lease(f"file://{run_dir}", command="matchmill run other.yaml", heartbeat=False)
    try:
        with pytest.raises(LeaseError, match="is in use by pid .*`matchmill run other.yaml`"):
            run_pipeline(conf, until="images", echo=lambda _: None)
        assert sorted(p.name for p in run_dir.iterdir()) == [LEASE_FILE]  # no stage folder, no marker
        assert read_lease(f"file://{run_dir}")["token"] == holder.token
    finally:
        holder.release()
    lines: list[str] = []
    result = run_pipeline(conf, until="images", echo=lines.append)  # free now: it runs, and lets go
    assert [r.action for r in result.stages] == ["ran", "ran"], lines
    assert not (run_dir / LEASE_FILE).exists()


@pytest.fixture
def resumable(tmp_path):
    """pairs and images committed, extract started under this config: as a run stopped mid-extract."""
    conf = pairs_file_conf(tmp_path)
    run_dir = tmp_path / "runs" / "safe"
    url = run_pipeline(conf, until="images", echo=lambda _: None).run_url
    hashes = stage_hashes(conf)
    write_started(url, "extract", hashes["extract"])
    images = read_stage(url, "images", columns=["image_id"]).column("image_id").to_pylist()
    return conf, url, run_dir, hashes, images


def extract_rows(ids: list[str]) -> pa.Table:
    return pa.table({"image_id": ids, "status": ["ok"] * len(ids)})


def test_foreign_parts_in_a_stage_to_resume_are_refused_before_any_write(resumable):
    conf, url, run_dir, hashes, images = resumable
    folder = stage_url(url, "extract")
    # a complete part of this run's own: resumed from, not refused (legacy parts have no stamp)
    write_manifest(extract_rows(images[:1]), join(folder, part_name(images[:1])), "extract",
                   metadata=part_stamp("extract", hashes["extract"]))
    write_manifest(extract_rows(images[1:2]), join(folder, part_name(images[1:2])), "extract")
    assert foreign_parts(url, plan_stages(conf, url, hashes, _specs("extract"), False)) == []

    named = "downloaded.parquet"  # valid schema, keys of the input, but not a name matchmill gives
    write_manifest(extract_rows(images[2:3]), join(folder, named), "extract")
    outside = part_name(["elsewhere/x.png", "elsewhere/y.png"])  # named like ours, keys not in the input
    write_manifest(extract_rows(["elsewhere/x.png", "elsewhere/y.png"]), join(folder, outside), "extract")
    other = part_name(images[2:3])  # ours in every way but the config it was computed under
    write_manifest(extract_rows(images[2:3]), join(folder, other), "extract", metadata=part_stamp("extract", "f" * 40))
    before = snapshot(run_dir)
    with pytest.raises(ConfigError) as err:
        run_pipeline(conf, until="extract", echo=lambda _: None)
    message = str(err.value)
    assert "\n" not in message and "nothing was touched" in message and "--overwrite" in message
    assert f"extract/{named} is not named like a matchmill part" in message
    assert (f"extract/{outside} holds 2 key(s) that are not in the stage's input (images), "
            "e.g. 'elsewhere/x.png'") in message
    assert f"extract/{other} was written under another config (hash ffffffffff" in message
    assert part_name(images[:1]) not in message and part_name(images[1:2]) not in message
    assert snapshot(run_dir) == before  # files unchanged, the started marker not rewritten, no lease left
    assert "stray: downloaded.parquet" in run_status(url)


def _specs(until: str):
    from matchmill.pipeline.graph import STAGES

    names = [s.name for s in STAGES]
    return list(STAGES[: names.index(until) + 1])


def test_a_stray_file_in_a_committed_stage_is_shown_ignored_and_never_deleted(resumable):
    conf, url, run_dir, hashes, images = resumable
    stray = run_dir / "images" / "extra.parquet"
    committed = read_stage(url, "images")
    write_manifest(committed.slice(0, 2), f"file://{stray}", "images")
    assert read_commit(url, "images").parts and stray.name not in read_commit(url, "images").parts
    line = next(x for x in run_status(url).splitlines() if x.startswith("images "))
    assert "committed" in line and line.endswith("stray: extra.parquet")
    assert read_stage(url, "images").equals(committed)  # readers read the commit's parts only
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="images/extra.parquet is not covered by the commit and not named like"):
        run_pipeline(conf, until="images", echo=lambda _: None)
    assert snapshot(run_dir) == before and (run_dir / "images" / COMMIT_MARKER).exists()


def test_status_names_the_lock_holder(resumable):
    _, url, run_dir, _, _ = resumable
    assert "locked by" not in run_status(url)
    write_lease(run_dir)
    assert re.fullmatch(r"locked by pid 4242 on host other-host \(user alice, heartbeat \d s ago\)",
                        run_status(url).splitlines()[1])
    write_lease(run_dir, heartbeat_at=time.time() - 500)
    assert re.search(r"; stale: no heartbeat for 50\d s, the next run takes it over$", run_status(url).splitlines()[1])


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM


@pytest.mark.ray
def test_ctrl_c_and_sigterm_stop_a_run_with_one_line_and_it_resumes(tmp_path, demo_root, ray_local):
    """Ctrl-C as the run starts (exit 130); SIGTERM once Ray runs extract (exit 143: Ray's own
    handler, a native stack dump, is replaced); each time one line, the lease released; then the
    same command resumes: committed stages skipped, extract's complete parts kept, no image twice."""
    run_dir = tmp_path / "demo"
    overrides = [f"storage=file://{tmp_path}", f"data.root={demo_root}", "pairs.max_pairs_per_scene=4", "part_rows=1"]
    cmd = [sys.executable, "-m", "matchmill", "run", str(DEMO_CONFIG), *overrides, "--until", "extract"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    for sig, code, ready in ((signal.SIGINT, 130, lambda: (run_dir / LEASE_FILE).exists()),
                             (signal.SIGTERM, 143, lambda: any((run_dir / "extract").glob("part-*.parquet")))):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and not ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            for pid in session_pids(proc.pid):  # what an interrupted embedded Ray might leave behind
                os.kill(pid, signal.SIGKILL)
        assert proc.returncode == code, err
        assert "matchmill: interrupted; rerun the same command to resume" in err, err
        assert len(err.strip().splitlines()) < 5 and "Traceback" not in err and "SIGTERM received" not in err, err
        assert not (run_dir / LEASE_FILE).exists()  # released on the way out
        assert not (run_dir / "extract" / COMMIT_MARKER).exists()
    kept = {p.name: p.read_bytes() for p in (run_dir / "extract").glob("part-*.parquet")}
    assert kept

    result = run_pipeline(load_config(DEMO_CONFIG, overrides), until="extract", echo=lambda _: None)
    actions = {r.stage: (r.action, r.computed) for r in result.stages}
    assert actions["pairs"][0] == actions["images"][0] == "skipped"
    images = read_stage(result.run_url, "images").column("image_id").to_pylist()
    assert actions["extract"] == ("resumed", len(images) - len(kept))  # only what no complete part holds
    ids = read_stage(result.run_url, "extract").column("image_id").to_pylist()
    assert sorted(ids) == sorted(images)  # every image once: nothing lost, nothing twice
    assert {n: (run_dir / "extract" / n).read_bytes() for n in kept} == kept  # complete parts kept as written
