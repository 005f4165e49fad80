"""Storage errors versus row errors (issue 19): the storage failing is retried, then stops the
stage uncommitted; it is never committed as a failed row. And artifacts are referenced relative to
their run, so a moved or copied run reads its own.

Whole runs (Ray) are in tests/pipeline/test_storage_runs.py.
"""

from __future__ import annotations

import errno
import time

import numpy as np
import pyarrow as pa
import pytest

from matchmill.manifests import storage
from matchmill.manifests.artifacts import (
    ArtifactOutsideRun,
    artifact_path,
    artifact_url,
    read_artifact,
    resolve_artifact,
    run_relative,
    write_artifact,
)
from matchmill.manifests.commit import is_storage_failure
from matchmill.manifests.schemas import FEATURES
from matchmill.manifests.storage import (
    ManifestError,
    StorageUnavailable,
    read_bytes,
    read_manifest,
    with_retries,
    write_bytes_atomic,
)
from matchmill.stages.rows import process_rows


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(storage, "STORAGE_BACKOFF_S", (0.0,))


def test_a_transient_storage_error_is_retried_and_the_operation_succeeds():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return "done"

    assert with_retries(flaky, "read", "s3://b/x", writing=False) == "done"
    assert len(calls) == 2


def test_a_persistent_storage_error_raises_storage_unavailable_after_the_tries():
    calls = []

    def full() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageUnavailable) as info:
        with_retries(full, "write", "file:///run/artifacts/x.safetensors", writing=True)
    assert len(calls) == storage.STORAGE_TRIES == 3
    assert str(info.value) == ("could not write file:///run/artifacts/x.safetensors: [Errno 28] No space left on "
                               "device (after 3 tries)")


def test_a_failed_write_is_retried_then_stops_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A real failure (the artifact folder's parent is a file: ENOTDIR, as root too), and a disk
    that fills while the file is published (ENOSPC on the rename): no ``.tmp-*`` left behind."""
    (tmp_path / "artifacts").write_text("not a folder")
    with pytest.raises(StorageUnavailable, match=r"could not write file://.*/artifacts/a/b.safetensors: "
                                                 r"\[Errno 20\] Not a directory \(after 3 tries\)"):
        write_artifact(f"file://{tmp_path}/artifacts/a/b.safetensors", {"x": np.zeros(3, np.float32)})

    from fsspec.implementations.local import LocalFileSystem

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFileSystem, "mv", no_space)
    with pytest.raises(StorageUnavailable, match=r"No space left on device"):
        write_bytes_atomic(f"file://{tmp_path}/run/extract/part-0.parquet", b"data")
    assert [p.name for p in (tmp_path / "run" / "extract").iterdir()] == []


def test_a_missing_file_or_bytes_that_do_not_decode_are_not_storage_errors(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError):  # at once, not retried: the caller says what is missing
        read_bytes(f"file://{tmp_path}/missing.jpg")
    bad = tmp_path / "part-0.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(f"file://{bad}", "extract")
    assert time.perf_counter() - start < 1.0


def test_a_storage_error_stops_the_batch_while_a_bad_row_only_fails_itself(tmp_path):
    """The per-row error capture turns a bad row into a failed row, and lets the storage failing
    through: a batch never commits rows as failed because a write failed."""
    (tmp_path / "artifacts").write_text("not a folder")
    batch = pa.table({"image_id": ["bad.jpg", "good.jpg"], "path": ["bad.jpg", "good.jpg"],
                      "status": ["ok", "ok"], "error": [None, None]})

    def extract_one(row) -> dict:
        if row["image_id"] == "bad.jpg":
            raise ValueError("corrupt image")
        write_artifact(f"file://{tmp_path}/{artifact_path('h' * 40, row['image_id'])}", {"x": np.zeros(2)})
        return {"artifact_uri": artifact_path("h" * 40, row["image_id"])}

    only_bad = process_rows(batch.slice(0, 1), extract_one, FEATURES, stage="extract", key="image_id")
    assert only_bad.column("status").to_pylist() == ["failed"]
    assert only_bad.column("error").to_pylist() == ["extract: ValueError: corrupt image"]
    with pytest.raises(StorageUnavailable, match="Not a directory"):
        process_rows(batch, extract_one, FEATURES, stage="extract", key="image_id")


def test_rows_committed_as_failed_by_a_storage_error_are_told_from_bad_data():
    assert is_storage_failure("extract: OSError: [Errno 28] No space left on device")
    assert is_storage_failure("extract: OSError: [Errno 30] Read-only file system: '/r/artifacts/x'")
    assert is_storage_failure("extract: PermissionError: [Errno 13] Permission denied: '/r/artifacts/x'")
    assert is_storage_failure("propose: ValueError: image 'a.jpg' failed extraction: extract: OSError: [Errno 28] "
                              "No space left on device")  # a pair row that inherited it
    assert not is_storage_failure("extract: ImageError: a.jpg: file not found")
    assert not is_storage_failure("extract: FileNotFoundError: [Errno 2] No such file or directory: 'a.jpg'")
    assert not is_storage_failure("extract: ImageError: a.jpg: not a readable image (cannot identify image file)")
    assert not is_storage_failure(None)


def test_artifact_references_are_relative_to_the_run_and_resolved_against_it(tmp_path):
    run = f"file://{tmp_path}/runs/demo"
    rel = artifact_path("c" * 40, "scene/a.jpg")
    assert rel.startswith("artifacts/cccccccccccc/") and rel.endswith(".safetensors")
    assert artifact_url(run, "c" * 40, "scene/a.jpg") == f"{run}/{rel}"
    write_artifact(resolve_artifact(run, rel), {"x": np.arange(3, dtype=np.float32)})
    assert read_artifact(resolve_artifact(run, rel))["x"].tolist() == [0, 1, 2]
    assert resolve_artifact(run, f"{run}/{rel}") == f"{run}/{rel}"  # absolute inside the run (older versions)
    # absolute, written by an older version before the run was moved or copied: read inside this run,
    # never at the old place
    assert resolve_artifact(run, f"file:///elsewhere/old_name/{rel}") == f"{run}/{rel}"
    assert resolve_artifact(run, f"/elsewhere/old_name/{rel}") == f"{run}/{rel}"
    assert run_relative(run, f"s3://bucket/old/{rel}") == rel
    with pytest.raises(ArtifactOutsideRun, match="lies outside the run"):
        resolve_artifact(run, "file:///etc/passwd")
