"""``matchmill gc`` works on one run and only inside it (issue 19: never delete a user's data).

No Ray: gc reads markers and lists folders only."""

from __future__ import annotations

from pathlib import Path

import pytest

from matchmill.manifests.commit import CommitInfo, write_commit, write_started
from matchmill.cli import main as cli_main
from matchmill.pipeline.gc import NotARunError, collect_garbage

KEEP = "a" * 40  # the committed extract config hash (its artifacts: artifacts/aaaaaaaaaaaa)


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def _put(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run(path: Path) -> str:
    """A run with a committed extract stage; returns its URL."""
    url = f"file://{path}"
    write_commit(url, CommitInfo("extract", "extract", KEEP, rows=1, failed=0))
    _put(path / "artifacts" / KEEP[:12] / "00" / "x.safetensors")
    return url


def test_gc_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    """Before: ``matchmill gc h`` removed h/artifacts/model (a user's model folder) and exited 0."""
    home = tmp_path / "h"
    _put(home / "artifacts" / "model" / "w.bin", b"weights")
    _put(home / "notes" / ".tmp-draft.txt", b"mine")
    before = _files(home)
    capsys.readouterr()
    assert cli_main(["gc", f"file://{home}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a matchmill run" in err[0] and "nothing removed" in err[0], err
    assert _files(home) == before
    with pytest.raises(NotARunError):
        collect_garbage(f"file://{home}", dry_run=True)


def test_gc_names_the_runs_of_a_storage_root(tmp_path, capsys):
    """Before: gc on a storage root listed (and removed) every run's ``.tmp-*`` files."""
    root = tmp_path / "runs"
    for name in ("b", "a"):
        _run(root / name)
        _put(root / name / "extract" / ".tmp-1-part.parquet")
    before = _files(root)
    capsys.readouterr()
    assert cli_main(["gc", f"file://{root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a storage root holding runs a, b; name one run" in err[0], err
    assert _files(root) == before


def test_gc_stays_inside_the_run_and_leaves_what_it_does_not_know(tmp_path):
    """Only ``.tmp-*`` files where a run writes and artifact-hash folders go; a nested run, an
    unknown folder, a non-hash folder under artifacts/ and the writer lease stay."""
    run_dir = tmp_path / "run"
    run = _run(run_dir)
    gone = {
        _put(run_dir / "artifacts" / ("b" * 12) / "00" / "x.safetensors"),  # a replaced extract config
        _put(run_dir / "artifacts" / KEEP[:12] / "00" / ".tmp-1-x.safetensors"),
        _put(run_dir / "extract" / ".tmp-2-part-00001.parquet"),
        _put(run_dir / "mine" / "drawings" / ".tmp-3-00.png"),
        _put(run_dir / "_retrieval" / ".tmp-4-key.npz"),
        _put(run_dir / ".tmp-5-notes.json"),
    }
    kept = {
        _put(run_dir / ".tmp-6-_lease.json", b"{}"),  # a lease being written right now
        _put(run_dir / "artifacts" / "model" / "w.bin"),  # not an artifact hash: the user's
        _put(run_dir / "artifacts" / "ABCDEF012345" / ".tmp-7"),  # upper case: not ours either
        _put(run_dir / "user" / ".tmp-8-keep.txt"),  # a folder gc does not know
        _put(run_dir / "artifacts" / KEEP[:12] / "00" / "x.safetensors"),
    }
    nested = run_dir / "extract" / "old"  # a run someone stored inside a stage folder
    _run(nested)
    kept |= {_put(nested / "extract" / ".tmp-9-part.parquet"), _put(nested / "artifacts" / ("c" * 12) / "f")}
    listed, _ = collect_garbage(run, dry_run=True)
    assert {Path(u[len("file://"):]) for u in listed} == {run_dir / "artifacts" / ("b" * 12)} | {
        p for p in gone if "b" * 12 not in str(p)}
    collect_garbage(run)
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)


def test_gc_partial_removes_an_uncommitted_stage_once(tmp_path):
    """Before: the temp file inside the partial stage was listed (and removed) besides its folder."""
    run_dir = tmp_path / "run"
    run = _run(run_dir)
    write_started(run, "propose", "c" * 40)
    _put(run_dir / "propose" / ".tmp-1-part.parquet")
    removed, _ = collect_garbage(run, partial=True)
    assert [u.rsplit("/", 1)[-1] for u in removed] == ["propose"]
    assert (run_dir / "extract" / "_COMMITTED.json").exists() and not (run_dir / "propose").exists()


def test_gc_takes_the_run_lease_and_refuses_while_a_run_writes(tmp_path, capsys):
    """gc removes under the run's writer lease: while another process holds it (a ``matchmill
    run`` writing), gc stops in one line naming the holder and removes nothing; a dry run only
    lists. Before: gc removed files under a running job."""
    from matchmill.manifests.lease import acquire_lease, read_lease

    run_dir = tmp_path / "run"
    run = _run(run_dir)
    doomed = _put(run_dir / "extract" / ".tmp-2-part-00001.parquet")
    with acquire_lease(run, command="matchmill run job.yaml", heartbeat=False):
        capsys.readouterr()
        assert cli_main(["gc", run]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by pid" in err[0] and "matchmill run job.yaml" in err[0], err
        assert doomed.exists()
        assert cli_main(["gc", run, "--dry-run"]) == 0 and doomed.exists()
    assert cli_main(["gc", run]) == 0
    assert not doomed.exists() and read_lease(run) is None  # removed, and gc's own lease released
