"""The streaming executor and the per-row machinery under it: columns, rows, features, reservations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from matchmill.manifests.artifacts import write_artifact
from matchmill.manifests.columns import list_rows, matches_array, matches_rows, rows_to_list_array
from matchmill.manifests.schemas import MATCHES_TYPE, VERIFIED
from matchmill.stages.rows import process_rows


# --------------------------------------------------------------------------- columns (no Ray)


def test_matches_round_trip_as_zero_copy_views():
    rows = [np.arange(8, dtype=np.float32).reshape(2, 4), None, np.zeros((0, 4), np.float32),
            np.ones((3, 4), np.float32)]
    col = matches_array(rows)
    assert col.type == MATCHES_TYPE and col.null_count == 1
    back = matches_rows(pa.chunked_array([col.slice(1)]))  # a sliced batch keeps its offsets right
    assert back[0] is None and back[1].shape == (0, 4) and np.array_equal(back[2], rows[3])
    view = matches_rows(col)[0]
    assert view.base is not None  # a view into the column's buffer, not a copy
    with pytest.raises(ValueError, match="do not fill rows of 4"):
        matches_array([np.zeros(6, np.float32)])


def test_flat_and_bool_lists():
    flags = rows_to_list_array([np.array([True, False]), None], pa.list_(pa.bool_()))
    assert [None if r is None else r.tolist() for r in list_rows(flags)] == [[True, False], None]
    mats = rows_to_list_array([np.eye(3).ravel()], pa.list_(pa.float64()))
    assert list_rows(mats)[0].tolist() == np.eye(3).ravel().tolist()


def _refine_like_batch(n: int) -> pa.Table:
    from matchmill.manifests.schemas import MATCHES
    from matchmill.manifests.storage import conform

    matches = [np.full((k + 1, 4), k, np.float32) for k in range(n)]
    table = pa.table({
        "pair_id": [f"a{i}|b{i}" for i in range(n)], "image0": [f"a{i}" for i in range(n)],
        "image1": [f"b{i}" for i in range(n)], "path0": ["x"] * n, "path1": ["y"] * n,
        "matches": matches_array(matches), "scores": rows_to_list_array([np.ones(k + 1, np.float32) for k in range(n)],
                                                                         pa.list_(pa.float32())),
        "num_matches": pa.array([k + 1 for k in range(n)], pa.int32()),
        "status": ["ok"] * (n - 1) + ["failed"], "error": [None] * (n - 1) + ["propose: boom"],
    })
    return conform(table, MATCHES)


def test_process_rows_passes_untouched_columns_through_without_copies():
    batch = _refine_like_batch(4)
    seen = []

    def fn(row):
        seen.append(row["matches"].shape)
        if row["pair_id"] == "a1|b1":
            raise RuntimeError("bad pair")
        return {"num_inliers": len(row["matches"]), "inliers": np.ones(len(row["matches"]), bool)}

    out = process_rows(batch, fn, VERIFIED, stage="verify", key="pair_id")
    assert seen == [(1, 4), (2, 4), (3, 4)]  # the row that arrived failed is not computed
    assert out.column("status").to_pylist() == ["ok", "failed", "ok", "failed"]
    assert out.column("error").to_pylist()[1] == "verify: RuntimeError: bad pair"
    assert out.column("error").to_pylist()[3] == "propose: boom"
    assert out.column("num_inliers").to_pylist() == [1, None, 3, None]
    # matches were not produced by verify: the very same Arrow buffers flow on
    before = batch.column("matches").chunk(0).values.values.buffers()[1].address
    after = out.column("matches").chunk(0).values.values.buffers()[1].address
    assert before == after


# --------------------------------------------------------------------------- features


def test_feature_store_reads_only_the_arrays_a_method_indexes_and_bounds_bytes(tmp_path):
    from matchmill.manifests.schemas import FEATURES
    from matchmill.manifests.storage import write_manifest
    from matchmill.methods.base import array_shape
    from matchmill.stages.feature_store import FeatureStore

    run = f"file://{tmp_path}"
    rows = []
    for i in range(3):
        url = f"{run}/artifacts/x/{i}.safetensors"
        write_artifact(url, {"small": np.full(4, i, np.float32), "big": np.zeros((256, 256), np.float32)})
        rows.append({"image_id": f"im{i}", "method": "t", "width": 64 + i, "height": 48, "num_keypoints": 0,
                     "artifact_uri": url, "seconds": 0.0, "status": "ok", "error": None})
    write_manifest(pa.Table.from_pylist(rows, schema=FEATURES), f"{run}/extract/part-0.parquet", "extract")
    store = FeatureStore(run, cache_bytes=300_000)  # room for one "big" array (262 144 bytes)
    f0 = store.get("im0")
    assert array_shape(f0, "big") == (256, 256) and store.bytes == 0  # shapes come from the header
    assert f0["small"].tolist() == [0, 0, 0, 0] and store.bytes == 16
    assert store.image_size("im2") == (66, 48)
    f0["big"]
    store.get("im1")["big"]  # over the bound: the least recently used image (im0) is dropped
    assert list(store.cache) == ["im1"] and store.bytes == 256 * 256 * 4
    with pytest.raises(KeyError, match="has no features"):
        store.get("nope")


def test_classical_actors_import_no_torch(tmp_path):
    code = """
import sys
from matchmill.pipeline.config import load_config
from matchmill.pipeline.graph import STAGES
conf = load_config(sys.argv[1], [f"storage=file://{sys.argv[2]}"])
for spec in STAGES:
    if spec.kind == "ray" and spec.name != "extract":
        continue
    spec.load()
from matchmill.stages.extract import ExtractActor
from matchmill.stages.verify import VerifyActor
ExtractActor(conf, "file://" + sys.argv[2], "h")
VerifyActor(conf)
import matchmill.stages.propose, matchmill.stages.refine
from matchmill.methods.registry import build_method
build_method("propose", conf["propose"]); build_method("refine", conf["refine"])
print("torch" in sys.modules)
"""
    from tests.helpers.paths import DEMO_CONFIG

    out = subprocess.run([sys.executable, "-c", code, str(DEMO_CONFIG), str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- reservations


def test_streamed_pools_share_the_cluster_cpus():
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.executor import describe_fit, fit_reservations
    from matchmill.pipeline.graph import get_stage

    from tests.helpers.paths import DEMO_CONFIG

    conf = load_config(DEMO_CONFIG, ["propose.actors=2", "verify.actors=2", "refine.actors=2"])
    specs = [get_stage(s) for s in ("propose", "refine", "verify")]
    fit = fit_reservations(specs, conf, 2.0, stateless=frozenset({"refine"}))
    assert fit == {"propose": 0.5, "refine": 1.0, "verify": 0.5}
    assert "4 actors share the cluster's 2 CPUs" in describe_fit(specs, conf, fit, 2.0, frozenset({"refine"}))
    assert fit_reservations(specs, conf, 16.0) == {"propose": 1.0, "refine": 1.0, "verify": 1.0}
    pinned = load_config(DEMO_CONFIG, ["propose.actors=2", "verify.actors=2", "verify.resources={cpu_worker: 1}"])
    assert fit_reservations(specs, pinned, 2.0)["verify"] == 1.0  # custom resources: left as configured


# --------------------------------------------------------------------------- the streamed segment on Ray


def _conf(tmp_path, demo_root, *extra):
    from matchmill.pipeline.config import load_config

    from tests.helpers.paths import DEMO_CONFIG

    return load_config(DEMO_CONFIG, [f"storage=file://{tmp_path}", f"data.root={demo_root}",
                                     "pairs.max_pairs_per_scene=16", "part_rows=4", *extra])


def _verified(run_url: str) -> dict:
    from matchmill.manifests.commit import read_stage

    t = read_stage(run_url, "verify", columns=["pair_id", "matches", "inliers", "num_inliers", "status"])
    return {r["pair_id"]: r for r in t.to_pylist()}


@pytest.mark.ray
def test_streamed_stages_resume_each_stage_from_its_own_missing_keys(ray_local, tmp_path, demo_root):
    from matchmill.manifests.commit import part_files, read_stage
    from matchmill.manifests.storage import read_manifest, remove_tree
    from matchmill.pipeline.runner import run_pipeline

    conf = _conf(tmp_path, demo_root)
    first = run_pipeline(conf, echo=lambda _: None)
    reports = {r.stage: r for r in first.stages}
    assert reports["propose"].streamed_with == ("refine", "verify")
    before = _verified(first.run_url)
    assert len(before) == read_stage(first.run_url, "pairs").num_rows
    # as if the run died mid-segment: refine lost one part, verify lost two, nothing committed
    refine_parts, verify_parts = part_files(first.run_url, "refine"), part_files(first.run_url, "verify")
    lost_refine = set(read_manifest(refine_parts[0], "refine").column("pair_id").to_pylist())
    lost_verify = set()
    for part in verify_parts[:2]:
        lost_verify |= set(read_manifest(part, "verify").column("pair_id").to_pylist())
        remove_tree(part)
    remove_tree(refine_parts[0])
    for stage in ("refine", "verify", "metrics"):
        remove_tree(f"{first.run_url}/{stage}/_COMMITTED.json")
    second = run_pipeline(conf, echo=lambda _: None)
    reports = {r.stage: r for r in second.stages}
    assert reports["propose"].action == "skipped"
    assert reports["refine"].action == "resumed" and reports["refine"].computed == len(lost_refine)
    assert reports["verify"].computed == len(lost_refine | lost_verify)
    after = _verified(second.run_url)
    assert sorted(after) == sorted(before)  # no key lost, none duplicated
    assert read_stage(second.run_url, "verify").num_rows == len(before)
    for key, row in before.items():
        assert after[key]["matches"] == row["matches"], key
        assert after[key]["inliers"] == row["inliers"], key
    assert second.metrics == first.metrics


@pytest.mark.ray
def test_one_and_two_actors_per_stage_give_identical_results(ray_local, tmp_path, demo_root):
    from matchmill.pipeline.runner import run_pipeline

    one = run_pipeline(_conf(tmp_path / "one", demo_root), echo=lambda _: None)
    two = run_pipeline(_conf(tmp_path / "two", demo_root, *[f"{s}.actors=2" for s in ("extract", "propose", "verify")]),
                       echo=lambda _: None)
    a, b = _verified(one.run_url), _verified(two.run_url)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key]["matches"], a[key]["inliers"]) == (b[key]["matches"], b[key]["inliers"]), key
    assert one.metrics == two.metrics


def test_the_pump_proposer_reads_only_the_dense_scale_it_matches_on(tmp_path):
    from matchmill.manifests.schemas import FEATURES
    from matchmill.manifests.storage import write_manifest
    from matchmill.pipeline.config import load_config
    from matchmill.stages.feature_store import FeatureStore
    from matchmill.methods.registry import build_method

    from tests.helpers.paths import DEMO_CONFIG

    conf = load_config(DEMO_CONFIG, ["extract.method=pump", "propose.method=pump-pyramid", "propose.post_filter=false"])
    extractor = build_method("extract", conf["extract"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 96, 3), np.uint8)
    run = f"file://{tmp_path}"
    rows = []
    for i in range(2):
        tensors = extractor(image)
        tensors["scale"] = np.asarray(tensors.pop("net_scale"), np.float64)
        url = f"{run}/artifacts/p/{i}.safetensors"
        write_artifact(url, tensors)
        rows.append({"image_id": f"im{i}", "method": "pump", "width": 96, "height": 64, "num_keypoints": 0,
                     "artifact_uri": url, "seconds": 0.0, "status": "ok", "error": None})
    write_manifest(pa.Table.from_pylist(rows, schema=FEATURES), f"{run}/extract/part-0.parquet", "extract")
    store = FeatureStore(run)
    f0, f1 = store.get("im0"), store.get("im1")
    matches, scores = build_method("propose", conf["propose"])(f0, f1)
    assert len(matches) > 0
    stored = sorted(k for k in f0 if k.startswith("dense_") and k != "dense_scales")
    assert stored == ["dense_0", "dense_1", "dense_2"]  # scales 1, 0.71, 0.5 were written ...
    assert sorted(f0._arrays) == ["dense_2", "dense_scales", "scale"]  # ... base_scale 0.5 read one of them


def test_gc_removes_only_what_no_committed_stage_uses(tmp_path):
    from matchmill.manifests.commit import CommitInfo, write_commit, write_started
    from matchmill.manifests.storage import write_bytes_atomic
    from matchmill.pipeline.gc import collect_garbage

    run = f"file://{tmp_path}/run"
    keep = "a" * 40
    write_commit(run, CommitInfo("extract", "extract", keep, rows=1, failed=0))
    write_artifact(f"{run}/artifacts/{keep[:12]}/00/x.safetensors", {"k": np.zeros(4, np.float32)})
    write_artifact(f"{run}/artifacts/{'b' * 12}/00/x.safetensors", {"k": np.zeros(1000, np.float32)})
    write_bytes_atomic(f"{run}/propose/part-1.parquet", b"parquet bytes")
    (tmp_path / "run" / "propose" / ".tmp-dead-part-2.parquet").write_bytes(b"x" * 10)
    write_started(run, "verify", "c" * 40)  # a partial stage: kept unless --partial
    listed, freed = collect_garbage(run, dry_run=True)
    assert sorted(u.rsplit("/", 2)[-2:][-1] for u in listed) == [".tmp-dead-part-2.parquet", "b" * 12]
    assert (tmp_path / "run" / "artifacts" / ("b" * 12)).exists() and freed > 4000  # dry run: nothing removed
    collect_garbage(run)
    assert not (tmp_path / "run" / "artifacts" / ("b" * 12)).exists()
    assert (tmp_path / "run" / "artifacts" / keep[:12]).exists()
    assert (tmp_path / "run" / "propose" / "part-1.parquet").exists()
    assert (tmp_path / "run" / "verify").exists()
    removed, _ = collect_garbage(run, partial=True)
    assert [u.rsplit("/", 1)[-1] for u in removed] == ["verify"] and not (tmp_path / "run" / "verify").exists()
