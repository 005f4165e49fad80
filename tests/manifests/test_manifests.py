"""Manifest schemas, storage and commit markers on file://, memory:// and a loopback S3 server."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matchmill.manifests import schemas
from matchmill.manifests.artifacts import ArtifactDamaged, ArtifactReader, artifact_url, read_artifact, write_artifact
from matchmill.manifests.commit import (
    CommitInfo,
    artifact_sizes,
    check_artifacts,
    committed_keys,
    part_name,
    read_commit,
    read_stage,
    write_commit,
)
from matchmill.manifests.storage import (
    ManifestError,
    StorageError,
    check_writable,
    join,
    list_files,
    read_manifest,
    write_manifest,
)


def pair_row(i: int, **extra) -> dict:
    row = {
        "pair_id": schemas.make_pair_id(f"s/a{i}.jpg", f"s/b{i}.jpg"),
        "scene": "s",
        "image0": f"s/a{i}.jpg",
        "image1": f"s/b{i}.jpg",
        "path0": f"/data/a{i}.jpg",
        "path1": f"/data/b{i}.jpg",
        "K0": [500.0, 0, 160, 0, 500, 120, 0, 0, 1],
        "K1": [510.0, 0, 160, 0, 510, 120, 0, 0, 1],
        "T_0to1": list(np.eye(4).ravel()),
        "H_0to1": None,
        "overlap": 0.5,
        "crop0": [320, 240],
        "crop1": None,
        "status": "ok",
        "error": None,
    }
    row.update(extra)
    return row


def verified_table(n: int) -> pa.Table:
    rows = []
    for i in range(n):
        m = np.arange(8 * (i + 1), dtype=np.float32)
        rows.append(
            {
                **pair_row(i),
                "num_matches": len(m) // 4,
                "matches": m.tolist(),
                "scores": [0.5] * (len(m) // 4),
                "model": "fundamental",
                "num_inliers": 1,
                "inliers": [True] + [False] * (len(m) // 4 - 1),
                "pose_error": float("inf") if i == 0 else 1.5,
                "mma": [0.1 * k for k in range(10)],
                "seconds": 0.01,
            }
        )
    return pa.Table.from_pylist(rows)


@pytest.fixture(params=["file", "memory"])
def base_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return f"memory://mm-test-{uuid.uuid4().hex}"


@pytest.mark.parametrize("manifest", ["pairs", "verify"])
def test_round_trip_keeps_values_and_schema(base_url, manifest):
    table = pa.Table.from_pylist([pair_row(i) for i in range(3)]) if manifest == "pairs" else verified_table(3)
    url = join(base_url, manifest, "part-0.parquet")
    write_manifest(table, url, manifest)
    back = read_manifest(url, manifest)
    assert back.schema.equals(schemas.MANIFESTS[manifest][0])
    assert back.column("pair_id").to_pylist() == table.column("pair_id").to_pylist()
    if manifest == "verify":
        assert np.asarray(back.column("matches").to_pylist()[1]).ravel().tolist() == pytest.approx(list(range(16)))
        assert back.schema.field("matches").type == schemas.MATCHES_TYPE  # flat N*4 input nested to (N, 4)
        assert back.column("pose_error").to_pylist()[0] == float("inf")
        assert back.column("inliers").to_pylist()[0][0] is True
    else:
        assert back.column("K0").to_pylist()[0] == pytest.approx([500.0, 0, 160, 0, 500, 120, 0, 0, 1])
        assert back.column("crop1").to_pylist()[0] is None


def test_write_rejects_missing_required_column(base_url):
    table = pa.Table.from_pylist([pair_row(0)]).drop_columns(["path0"])
    with pytest.raises(ManifestError, match="path0"):
        write_manifest(table, join(base_url, "p.parquet"), "pairs")


def test_read_names_file_and_column_of_a_bad_type(tmp_path):
    table = pa.Table.from_pylist([pair_row(0)]).set_column(10, "overlap", pa.array(["high"]))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(ManifestError) as err:
        read_manifest(f"file://{path}", "pairs")
    assert "bad.parquet" in str(err.value) and "overlap" in str(err.value)


def test_read_names_a_corrupt_file(tmp_path):
    path = tmp_path / "part-x.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ManifestError, match="part-x.parquet"):
        read_manifest(f"file://{path}", "pairs")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    url = f"file://{tmp_path}/stage"
    write_manifest(pa.Table.from_pylist([pair_row(0)]), join(url, "part-1.parquet"), "pairs")
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["part-1.parquet"]
    assert list_files(url) == [f"file://{tmp_path}/stage/part-1.parquet"]


def test_commit_marker_round_trip_and_partial_keys(base_url):
    run = join(base_url, "run")
    rows = [pair_row(i) for i in range(4)]
    write_manifest(pa.Table.from_pylist(rows[:2]), join(run, "pairs", part_name(["a"])), "pairs")
    write_manifest(pa.Table.from_pylist(rows[2:]), join(run, "pairs", part_name(["b"])), "pairs")
    assert read_commit(run, "pairs") is None
    done, broken = committed_keys(run, "pairs", "pairs", "pair_id")
    assert done == {r["pair_id"] for r in rows} and broken == []
    write_commit(run, CommitInfo("pairs", "pairs", "abc123", rows=4, failed=0))
    info = read_commit(run, "pairs")
    assert (info.config_hash, info.rows, info.schema_version) == ("abc123", 4, schemas.SCHEMA_VERSION)
    assert info.code_version
    assert read_stage(run, "pairs").num_rows == 4


def test_unreadable_part_is_reported_not_trusted(tmp_path):
    run = f"file://{tmp_path}/run"
    write_manifest(pa.Table.from_pylist([pair_row(0)]), join(run, "pairs", "part-a.parquet"), "pairs")
    (tmp_path / "run" / "pairs" / "part-b.parquet").write_bytes(b"truncated")
    done, broken = committed_keys(run, "pairs", "pairs", "pair_id")
    assert done == {pair_row(0)["pair_id"]}
    assert broken == [f"file://{tmp_path}/run/pairs/part-b.parquet"]


def test_artifact_round_trip(base_url):
    url = artifact_url(base_url, "f" * 40, "scene/img 1.jpg")
    tensors = {"keypoints": np.random.rand(5, 2).astype(np.float32), "desc": np.ones((5, 3), np.float16)}
    write_artifact(url, tensors)
    back = read_artifact(url)
    assert back["desc"].dtype == np.float16
    np.testing.assert_array_equal(back["keypoints"], tensors["keypoints"])


def test_a_byte_changed_in_an_artifact_fails_its_array_checksum_and_names_it(tmp_path):
    url = artifact_url(f"file://{tmp_path}", "f" * 40, "img.png")
    tensors = {"a": np.arange(64, dtype=np.float32), "b": np.arange(64, dtype=np.int64)}
    write_artifact(url, tensors)
    reader = ArtifactReader(url)
    begin, _ = reader.header["b"]["data_offsets"]
    path = url[len("file://"):]
    data = bytearray(open(path, "rb").read())
    data[reader.data_start + begin + 5] ^= 0x01  # one bit of array "b", size unchanged
    open(path, "wb").write(bytes(data))
    reader = ArtifactReader(url)
    np.testing.assert_array_equal(reader.read("a"), tensors["a"])  # the other array is intact and reads
    with pytest.raises(ArtifactDamaged, match=r"array 'b' fails its CRC32 check"):
        reader.read("b")
    with pytest.raises(ArtifactDamaged, match=r"array 'b' fails its CRC32 check"):
        read_artifact(url)
    open(path, "wb").write(bytes(data[:20]))  # cut inside the header
    with pytest.raises(ArtifactDamaged, match=str(tmp_path)):
        ArtifactReader(url)


def test_commit_records_artifact_sizes_and_the_check_names_the_part_of_a_damaged_one(tmp_path):
    run = f"file://{tmp_path}/run"
    rows = []
    for name in ("a.png", "b.png", "c.png"):
        url = artifact_url(run, "e" * 40, name)
        write_artifact(url, {"x": np.full(10, len(rows), np.float32)})
        rows.append({"image_id": name, "method": "sift", "width": 4, "height": 4, "num_keypoints": 0,
                     "artifact_uri": url, "seconds": 0.0, "status": "ok", "error": None})
    rows.append({**rows[0], "image_id": "broken.png", "artifact_uri": None, "status": "failed", "error": "x"})
    write_manifest(pa.Table.from_pylist(rows[:2]), join(run, "extract", "part-a.parquet"), "extract")
    write_manifest(pa.Table.from_pylist(rows[2:]), join(run, "extract", "part-b.parquet"), "extract")
    sizes = artifact_sizes(run, "extract", "extract")
    assert len(sizes) == 3 and all(key.startswith("artifacts/eeeeeeeeeeee/") for key in sizes)  # relative to the run
    commit = CommitInfo("extract", "extract", "e" * 40, rows=4, failed=1, artifacts=sizes)
    write_commit(run, commit)
    assert read_commit(run, "extract").artifacts == sizes
    assert check_artifacts(run, "extract", "extract", commit) == {}
    gone, cut = (rows[i]["artifact_uri"][len("file://"):] for i in (0, 2))
    os.remove(gone)
    with open(cut, "r+b") as f:
        f.truncate(30)
    problems = check_artifacts(run, "extract", "extract", commit)
    assert problems.keys() == {"part-a.parquet", "part-b.parquet"}
    assert problems["part-a.parquet"].startswith("holds a.png, whose artifact artifacts/eeeeeeeeeeee/")
    assert problems["part-a.parquet"].endswith(" is missing")
    assert problems["part-b.parquet"].startswith("holds c.png") and "has 30 bytes where the commit recorded" in problems["part-b.parquet"]


def test_unwritable_storage_fails_with_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        check_writable(f"file://{blocker}/run")


def test_s3_round_trip_on_a_loopback_server():
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    s3fs = pytest.importorskip("s3fs")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="runs")
        fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=False)
        s3fs.S3FileSystem.clear_instance_cache()
        import fsspec

        fsspec.config.conf["s3"] = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
        try:
            url = "s3://runs/job/pairs/part-0.parquet"
            write_manifest(pa.Table.from_pylist([pair_row(0), pair_row(1)]), url, "pairs")
            assert read_manifest(url, "pairs").num_rows == 2
            assert list_files("s3://runs/job/pairs") == [url]
            with pytest.raises(StorageError, match="not writable"):
                check_writable("s3://no-such-bucket/job")
        finally:
            fsspec.config.conf.pop("s3", None)
        del fs
    finally:
        server.stop()
