"""Exports never half-replace, mix or clobber what their folder holds (issue 19, part 1): a failed
export leaves the older one as it was; another run's or format's export is refused (or, with
overwrite, replaced as a whole); files that are not an export's are never touched; an
unwritable folder is one line; an image without keypoints is an empty dataset. CPU, no Ray:
the runs are built by hand as in tests/pipeline/export/test_export.py."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pyarrow as pa
import pytest

from matchmill.manifests.artifacts import artifact_url, write_artifact
from matchmill.manifests.commit import CommitInfo, write_commit
from matchmill.manifests.storage import StorageError, join, write_manifest
from matchmill.cli import main
from matchmill.pipeline.export import ExportError, export_colmap, export_hloc

from tests.pipeline.export.test_export import B, C, P1, P2, make_run, make_sparse_run, sparse_features, verified_row

HLOC_FILES = ["export.json", "keypoints.h5", "matches.h5", "pairs.txt"]


def snapshot(folder) -> dict[str, bytes]:
    """Every entry under ``folder`` (hidden ones too) with its bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = b""
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def whitespace_run(base: str) -> str:
    """A committed verify stage whose first image id holds a space (pairs.txt cannot hold it)."""
    run = join(base, "run")
    rows = [verified_row("scene/A A.jpg", B, P1), verified_row(B, C, P2)]
    write_manifest(pa.Table.from_pylist(rows), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=2, failed=0))
    return run


def test_a_failed_export_leaves_the_older_export_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "out"
    export_hloc(make_run(f"file://{tmp_path}/store"), str(out))
    before = snapshot(out)
    assert {"keypoints.h5", "matches.h5", "pairs.txt"} <= set(before)
    # names are checked before anything is written
    with pytest.raises(ExportError, match="contains whitespace"):
        export_hloc(whitespace_run(f"file://{tmp_path}/other"), str(out))
    assert snapshot(out) == before  # keypoints.h5 / matches.h5 are not the other run's
    assert sorted(before) == HLOC_FILES
    # a failure while writing (after keypoints.h5 is done): nothing published, staging removed
    import matchmill.pipeline.export.hloc as export_module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_write_matches", broken)
    with pytest.raises(OSError, match="No space left"):
        export_hloc(make_run(f"file://{tmp_path}/store3"), str(out), overwrite=True)
    assert snapshot(out) == before
    with pytest.raises(OSError):  # into a new folder: the folder is not left behind
        export_hloc(make_run(f"file://{tmp_path}/store4"), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_another_format_or_run_is_refused_or_replaced_whole(tmp_path, capsys):
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store")
    out = tmp_path / "out"
    export_colmap(run, str(out))
    colmap = snapshot(out)
    # an hloc export into the COLMAP export: refused, one line, nothing written
    assert main(["export", run, str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} holds an export of another run/format: colmap export of run {run}" in err[0]
    assert err[0].endswith("choose an empty folder or pass --overwrite")
    assert snapshot(out) == colmap and sorted(colmap) == ["database.db", "export.json"]
    # --overwrite replaces the whole set: no stale database.db beside the hloc files
    assert main(["export", run, str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == HLOC_FILES
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "hloc" and manifest["run"] == run and manifest["stage"] == "verify"
    assert manifest["files"] == HLOC_FILES[1:] and manifest["written"]
    # the same run again: replaced without asking
    export_hloc(run, str(out), quantize=False, keypoints="matches")
    with h5py.File(out / "keypoints.h5", "r") as f:
        assert f.attrs["keypoints_from"] == "per-pair"
    # another run: refused, then replaced with overwrite
    other = make_run(f"file://{tmp_path}/other")
    with pytest.raises(ExportError, match=r"holds an export of another run/format: hloc export of run .*/store/run"):
        export_hloc(other, str(out))
    export_hloc(other, str(out), overwrite=True)
    assert json.loads((out / "export.json").read_text())["run"] == other


def test_stale_or_foreign_files_are_never_mixed_or_removed(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    # export files without export.json (an older matchmill, or a run cut short): refused
    old = tmp_path / "old"
    old.mkdir()
    (old / "database.db").write_bytes(b"SQLite format 3\0")
    with pytest.raises(ExportError, match=r"database.db without export.json .*pass --overwrite"):
        export_hloc(run, str(old))
    assert sorted(os.listdir(old)) == ["database.db"]
    export_hloc(run, str(old), overwrite=True)
    assert sorted(os.listdir(old)) == HLOC_FILES
    # a database.db put beside an hloc export later: its export.json does not list it
    (old / "database.db").write_bytes(b"SQLite format 3\0")
    with pytest.raises(ExportError, match="database.db that its export.json does not list"):
        export_hloc(run, str(old))
    # files that are not an export's: refused even with overwrite, and never touched
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "pairs.txt").write_text("a.jpg b.jpg\n")
    before = snapshot(mine)
    for overwrite in (False, True):
        with pytest.raises(ExportError, match=r"holds files that are not a matchmill export \(images/, notes.txt\)"):
            export_hloc(run, str(mine), overwrite=overwrite)
        with pytest.raises(ExportError, match="not a matchmill export"):
            export_colmap(make_sparse_run(f"file://{tmp_path}/sparse{overwrite}")[0], str(mine), overwrite=overwrite)
    assert snapshot(mine) == before
    theirs = tmp_path / "theirs"  # an export.json that is not ours is the user's file
    theirs.mkdir()
    (theirs / "export.json").write_text('{"name": "someone else"}')
    with pytest.raises(ExportError, match=r"not a matchmill export \(export.json\)"):
        export_hloc(run, str(theirs), overwrite=True)
    # hidden entries (a Finder .DS_Store, a crashed export's staging folder) do not block
    hidden = tmp_path / "hidden"
    (hidden / ".tmp-export-dead").mkdir(parents=True)
    (hidden / ".DS_Store").write_bytes(b"x")
    export_hloc(run, str(hidden))
    assert sorted(os.listdir(hidden)) == [".DS_Store", ".tmp-export-dead"] + HLOC_FILES


def unwritable_destinations(tmp_path) -> list[str]:
    (tmp_path / "a-file").write_text("x")
    out = [str(tmp_path / "a-file" / "out"), str(tmp_path / "a-file")]
    if os.geteuid() != 0:  # root writes through permission bits
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        out.append(str(tmp_path / "ro"))
    return out


@pytest.mark.parametrize("fmt", ["hloc", "colmap"])
def test_an_unwritable_destination_is_one_line(tmp_path, capsys, fmt):
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store")
    for dest in unwritable_destinations(tmp_path):
        capsys.readouterr()
        assert main(["export", run, dest, "--format", fmt]) == 2, dest
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("matchmill: error: export destination") and dest in err[0], err
        assert "not writable" in err[0] or "is a file, not a folder" in err[0]
    with pytest.raises(StorageError):
        export_hloc(run, str(tmp_path / "a-file" / "out"))


def test_an_image_without_keypoints_is_an_empty_dataset(tmp_path):
    """hloc writes (0, 2) keypoints for an image without features; so do both exports."""
    run = join(f"file://{tmp_path}/store", "run")
    rng = np.random.default_rng(0)
    A0 = "scene/A.jpg"
    feats = {A0: sparse_features(rng, 12), B: sparse_features(rng, 5)}
    feats[B] = {k: (v[:0] if k in ("keypoints", "descriptors", "scores", "scales") else v) for k, v in feats[B].items()}
    rows = []
    for image, f in feats.items():
        url = artifact_url(run, "e" * 12, image)
        write_artifact(url, f)
        rows.append({"image_id": image, "method": "sift", "width": 320, "height": 240,
                     "num_keypoints": len(f["keypoints"]), "artifact_uri": url, "seconds": 0.0,
                     "status": "ok", "error": None})
    write_manifest(pa.Table.from_pylist(rows), join(run, "extract", "part-0.parquet"), "extract")
    write_commit(run, CommitInfo("extract", "extract", "e" * 12, rows=2, failed=0))
    write_manifest(pa.Table.from_pylist([verified_row(A0, B, [])]), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=1, failed=0))

    summary = export_hloc(run, str(tmp_path / "hloc"))
    assert summary["keypoints_from"] == "native" and summary["keypoints"] == 12 and summary["pairs"] == 1
    with h5py.File(tmp_path / "hloc" / "keypoints.h5", "r") as f:
        assert f[B]["keypoints"].shape == (0, 2) and f[B]["keypoints"].dtype == np.float32
        assert f[B]["descriptors"].shape == (8, 0) and f[B]["scores"].shape == (0,)
        assert f[A0]["keypoints"].shape == (12, 2)
    with h5py.File(tmp_path / "hloc" / "matches.h5", "r") as f:
        assert (f["scene-A.jpg/scene-B.jpg"]["matches0"][()] == -1).all()
    assert export_hloc(run, str(tmp_path / "rebuilt"), keypoints="matches")["keypoints"] == 0
    with h5py.File(tmp_path / "rebuilt" / "keypoints.h5", "r") as f:
        assert f[B]["keypoints"].shape == (0, 2)
    assert export_colmap(run, str(tmp_path / "colmap"))["images"] == 2
