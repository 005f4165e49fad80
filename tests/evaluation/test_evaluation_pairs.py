"""Benchmark pair lists (HPatches tree, MegaDepth-1500 scene info), presets and threshold tuning."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pyarrow as pa
import pytest

from matchmill.evaluation.benchmarks.hpatches import list_hpatches_bench_pairs
from matchmill.evaluation.benchmarks.megadepth1500 import (
    SceneInfoError,
    list_megadepth1500_pairs,
    read_scene_info,
    scene_info_from_colmap,
    scene_info_pairs,
)
from matchmill.methods.presets import (
    PRESETS,
    UnknownPresetError,
    UnregisteredMethodError,
    check_registered,
    select_methods,
)
from matchmill.evaluation.benchmarks.run import subsample_evenly
from matchmill.evaluation.benchmarks.threshold_tuning import keep_above, rescore_verified, tune_threshold
from matchmill.manifests.schemas import VERIFIED

from tests.helpers.paths import shared_data

H_TEXT = "1 0 5\n0 1 -3\n0 0 1\n"


def _touch_image(path):
    cv2.imwrite(str(path), np.full((12, 16, 3), 128, np.uint8))


# ----------------------------------------------------------------------------- HPatches


def test_hpatches_listing_skips_underscore_folders_and_incomplete_pairs(tmp_path):
    seq = tmp_path / "v_seq"
    seq.mkdir()
    for k in (1, 2, 3, 5):
        _touch_image(seq / f"{k}.ppm")
    for k in (2, 4, 5):  # 3 has no H, 4 has no image
        (seq / f"H_1_{k}").write_text(H_TEXT)
    (seq / "H_1_5").write_text("1 2 3\n")  # malformed -> failed pair, still listed
    hidden = tmp_path / "_backup"
    hidden.mkdir()
    _touch_image(hidden / "1.ppm")
    _touch_image(hidden / "2.ppm")
    (hidden / "H_1_2").write_text(H_TEXT)
    no_ref = tmp_path / "i_noref"
    no_ref.mkdir()
    _touch_image(no_ref / "2.ppm")
    (no_ref / "H_1_2").write_text(H_TEXT)

    rows, info = list_hpatches_bench_pairs(tmp_path)
    assert [r["pair_id"] for r in rows] == ["v_seq/1.ppm|v_seq/2.ppm", "v_seq/1.ppm|v_seq/5.ppm"]
    ok, bad = rows
    assert ok["status"] == "ok" and ok["H_0to1"] == [1, 0, 5, 0, 1, -3, 0, 0, 1] and ok["scene"] == "v_seq"
    assert bad["status"] == "failed" and "H_1_5" in bad["error"]
    assert info["sequences"] == ["v_seq"] and info["without_pairs"] == ["i_noref"]


def test_hpatches_d2net_subset_drops_the_eight_large_sequences(tmp_path):
    for name in ("v_talent", "v_ok"):
        seq = tmp_path / name
        seq.mkdir()
        _touch_image(seq / "1.ppm")
        _touch_image(seq / "2.ppm")
        (seq / "H_1_2").write_text(H_TEXT)
    rows, info = list_hpatches_bench_pairs(tmp_path)
    assert {r["scene"] for r in rows} == {"v_ok"} and info["excluded"] == ["v_talent"]
    rows, _ = list_hpatches_bench_pairs(tmp_path, d2net_subset=False)
    assert {r["scene"] for r in rows} == {"v_ok", "v_talent"}


def test_hpatches_listing_errors_name_the_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_hpatches_bench_pairs(tmp_path / "missing")
    (tmp_path / "empty_seq").mkdir()
    with pytest.raises(FileNotFoundError, match="no sequence folder"):
        list_hpatches_bench_pairs(tmp_path)


def test_hpatches_listing_on_the_shared_sequence():
    rows, info = list_hpatches_bench_pairs(shared_data("hpatches"))
    assert len(rows) == 5 and info["sequences"] == ["v_wormhole"]
    assert all(r["status"] == "ok" and len(r["H_0to1"]) == 9 for r in rows)


# ----------------------------------------------------------------------------- MegaDepth-1500


def _skew(t):
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def _epipolar_distance(K0, K1, T, m):
    """Distance (px) of x1 to the epipolar line of x0 under T (x1 = R x0 + t)."""
    F = np.linalg.inv(K1).T @ _skew(T[:3, 3]) @ T[:3, :3] @ np.linalg.inv(K0)
    line = F @ np.array([m[0], m[1], 1.0])
    return abs(np.array([m[2], m[3], 1.0]) @ line) / math.hypot(line[0], line[1])


def test_megadepth1500_scene_info_pairs_follow_the_T_0to1_convention(tmp_path):
    folder = shared_data("megadepth1500_scene_info")
    path = folder / "0022_0.3_0.5.json"
    info = json.loads(path.read_text())
    rows = scene_info_pairs(path, tmp_path)
    assert len(rows) == len(info["pairs"]) and all(r["status"] == "ok" for r in rows)
    ours, swapped = [], []
    for row, pair in zip(rows[:40], info["pairs"][:40]):
        i, j = (str(v) for v in pair["idx"])
        assert row["image0"] == info["images"][i]["image_path"]
        assert row["path1"] == str(tmp_path / info["images"][j]["image_path"])
        assert row["scene"] == "0022_0.3_0.5" and row["overlap"] == pytest.approx(pair["overlap"])
        K0, K1 = np.reshape(row["K0"], (3, 3)), np.reshape(row["K1"], (3, 3))
        T = np.reshape(row["T_0to1"], (4, 4))
        np.testing.assert_allclose(K0, info["images"][i]["K"])
        ours.append(_epipolar_distance(K0, K1, T, pair["central_matches"]))
        swapped.append(_epipolar_distance(K0, K1, np.linalg.inv(T), pair["central_matches"]))
    # the file's own central matches lie on our epipolar lines, and not on the inverse pose's
    assert np.median(ours) < 2.0, np.median(ours)
    assert np.median(swapped) > 10 * np.median(ours)


def test_megadepth1500_lists_every_file_of_the_shared_scene_info(tmp_path):
    folder = shared_data("megadepth1500_scene_info")
    rows, info = list_megadepth1500_pairs(tmp_path, folder)
    assert len(info["scene_info"]) == 5 and sum(info["pairs_per_file"].values()) == len(rows) == 1500
    assert len({r["pair_id"] for r in rows}) == 1500
    assert {r["scene"] for r in rows} == {p.split("/")[-1][:-5] for p in info["scene_info"]}
    picked = subsample_evenly(rows, 10)
    assert len(picked) == 10 and {r["scene"] for r in picked} == {r["scene"] for r in rows}


def test_megadepth1500_bad_scene_info_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SceneInfoError, match="bad.json"):
        read_scene_info(bad)
    bad.write_text(json.dumps({"images": {}, "pairs": [{"idx": [0]}]}))
    with pytest.raises(SceneInfoError, match=r"pairs\[0\]"):
        read_scene_info(bad)
    nan_k = {"image_path": "a.jpg", "K": [[float("nan"), 0, 1], [0, 1, 1], [0, 0, 1]], "pose": np.eye(4).tolist()}
    ok_k = {"image_path": "b.jpg", "K": np.eye(3).tolist(), "pose": np.eye(4).tolist()}
    bad.write_text(json.dumps({"images": {"0": nan_k, "1": ok_k}, "pairs": [{"idx": [0, 1]}, {"idx": [1, 7]}]}))
    rows = scene_info_pairs(bad, tmp_path)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "images[0].K" in rows[0]["error"] and "bad.json" in rows[0]["error"]
    assert "not in 'images'" in rows[1]["error"]
    (tmp_path / "no_json").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.json"):
        list_megadepth1500_pairs(tmp_path, tmp_path / "no_json")


def test_scene_info_from_colmap_matches_the_megadepth_pair_source(demo_root, tmp_path):
    from matchmill.datasets.megadepth import select_megadepth_pairs

    selected = select_megadepth_pairs(demo_root, {"max_pairs_per_scene": 3, "symmetric": False})
    names = [(r["image0"].split("/", 1)[1], r["image1"].split("/", 1)[1], r["overlap"]) for r in selected]
    info = scene_info_from_colmap(demo_root, "demo", names)
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(info))
    rows, _ = list_megadepth1500_pairs(demo_root, path)
    for ours, theirs in zip(rows, selected):
        assert ours["path0"] == theirs["path0"] and ours["path1"] == theirs["path1"]
        np.testing.assert_allclose(ours["T_0to1"], theirs["T_0to1"], atol=1e-9)
        np.testing.assert_allclose(ours["K1"], theirs["K1"])


# ----------------------------------------------------------------------------- presets


def test_presets_and_method_selection():
    assert PRESETS["patch2pix"] == {
        "extract.method": "resnet34", "propose.method": "ncnet", "propose.weights": "shipped:ncnet-resnet34-seed0",
        "refine.method": "patch2pix", "refine.weights": "shipped:patch2pix-resnet34-seed0"}
    assert PRESETS["pump-ncnet-patch2pix"]["extract.pyramid"] is True
    assert select_methods(["patch2pix", "sift", ""]) == ["sift", "patch2pix"]
    assert select_methods(["patch2pix"], include_baseline=False) == ["patch2pix"]
    with pytest.raises(UnknownPresetError, match="known: .*sift"):
        select_methods(["sfit"])
    with pytest.raises(ValueError, match="no method"):
        select_methods([""], include_baseline=False)
    check_registered("sift")
    with pytest.raises(UnregisteredMethodError, match="ghost.*extract.method='nope'"):
        check_registered("ghost", {"extract.method": "nope"})


# ----------------------------------------------------------------------------- threshold tuning


def test_tune_threshold_reaches_the_target_mean_exactly():
    scores = [np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.95, 0.5]), None]  # third pair failed
    tuned = tune_threshold(scores, 2.0)  # 6 matches over 3 pairs needed: all but 0.5 ... rank 6 = 0.5
    assert tuned.threshold == 0.5 and tuned.mean_matches == 2.0 and tuned.reached
    tuned = tune_threshold(scores, 1.0)  # 3 best: 0.95, 0.9, 0.8
    assert tuned.threshold == 0.8 and tuned.mean_matches == 1.0
    tuned = tune_threshold(scores, 5.0)
    assert not tuned.reached and tuned.threshold == -math.inf and tuned.mean_matches == 2.0
    ties = tune_threshold([np.array([0.7, 0.7, 0.7])], 1.0)
    assert ties.threshold == 0.7 and ties.mean_matches == 3.0  # ties are kept together
    with pytest.raises(ValueError, match="positive"):
        tune_threshold(scores, 0)
    m, s = keep_above(np.arange(8.0), np.array([0.1, 0.9]), 0.5)
    assert m.tolist() == [[4, 5, 6, 7]] and s.tolist() == [0.9]


def test_rescore_verified_reruns_ransac_and_mma_on_the_kept_matches(tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "im.png"
    cv2.imwrite(str(image), np.zeros((240, 320, 3), np.uint8))
    H = np.array([[1.05, 0.02, 8.0], [-0.01, 0.98, -5.0], [1e-5, 0.0, 1.0]])
    pts0 = rng.uniform([0, 0], [320, 240], size=(80, 2))
    proj = np.c_[pts0, np.ones(80)] @ H.T
    pts1 = proj[:, :2] / proj[:, 2:]
    pts1[:40] = rng.uniform([0, 0], [320, 240], size=(40, 2))  # 40 outliers ...
    scores = np.r_[rng.uniform(0.0, 0.4, 40), rng.uniform(0.6, 1.0, 40)]  # ... with low scores
    row = {
        "pair_id": "a|b", "image0": "a", "image1": "b", "path0": str(image), "path1": str(image),
        "H_0to1": H.ravel().tolist(), "num_matches": 80, "matches": np.c_[pts0, pts1].tolist(),
        "scores": scores.tolist(), "status": "ok",
    }
    failed = {"pair_id": "c|d", "image0": "c", "image1": "d", "path0": "x", "path1": "y", "status": "failed",
              "error": "extract: broken"}
    table = pa.Table.from_pylist([row, failed], schema=VERIFIED)
    conf = {"h_threshold": 2.0, "h_confidence": 0.999, "f_threshold": 1.0, "confidence": 0.9999, "max_iters": 2000,
            "ransac_seed": 0, "geometry": "auto", "pose_threshold": 0.5, "pose_confidence": 0.99999, "num_cpus": 1,
            "min_inliers": 15}
    tuned = tune_threshold([scores, None], 20.0)  # 40 matches over 2 pairs -> exactly the inliers
    out = rescore_verified(table, tuned.threshold, conf).to_pylist()
    assert out[0]["status"] == "ok" and out[0]["num_matches"] == 40 and out[0]["verified"] is True
    assert out[0]["mma"][0] == 1.0 and out[0]["corner_error"] < 0.5
    assert out[1]["status"] == "failed" and out[1]["error"] == "extract: broken"


# ----------------------------------------------------------------------------- configs and hashes


def test_method_config_hashes_follow_what_is_computed(tmp_path):
    import hashlib

    from matchmill.evaluation.benchmarks.method_config import config_hash, default_history_url, method_config, model_hashes
    from matchmill.weights import shipped_path

    import torch

    weights = tmp_path / "p2p.pth"
    torch.save({"w": torch.zeros(1)}, weights)  # only hashed here, but configs refuse a file that is not weights

    def conf(out, *overrides, method="patch2pix"):
        return method_config(method, "file:///x/pairs.parquet", f"file://{out}", resize=320, overrides=overrides)

    base = conf(tmp_path / "a")
    assert base["extract"]["method"] == "resnet34" and base["extract"]["resize_max"] == 320
    assert base["storage"] == f"file://{tmp_path}/a/runs" and base["run_name"] == "patch2pix"
    shipped = model_hashes(base)
    assert shipped["extract.resnet34"] == "init-seed-0"
    assert shipped["propose.ncnet"] == hashlib.sha256(shipped_path("ncnet-resnet34-seed0").read_bytes()).hexdigest()[:16]
    random = conf(tmp_path / "a", "patch2pix:propose.weights=null", "patch2pix:refine.weights=null")
    assert model_hashes(random) == {"extract.resnet34": "init-seed-0", "propose.ncnet": "init-seed-0",
                                    "refine.patch2pix": "init-seed-0"}
    with_weights = conf(tmp_path / "a", f"patch2pix:refine.weights={weights}", "sift:extract.max_keypoints=7")
    assert with_weights["extract"] == base["extract"]  # the sift-only override did not reach patch2pix
    assert conf(tmp_path / "a", "sift:extract.max_keypoints=7", method="sift")["extract"]["max_keypoints"] == 7
    assert model_hashes(with_weights)["refine.patch2pix"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]

    same = config_hash(base, "digest")
    assert config_hash(conf(tmp_path / "b", "verify.actors=2"), "digest") == same  # other OUT, execution key
    assert config_hash(conf(tmp_path / "a", "verify.h_threshold=3.0"), "digest") != same
    assert config_hash(base, "other pairs") != same
    assert default_history_url(str(tmp_path / "runs" / "2026-03-01")) == f"file://{tmp_path}/runs/history.parquet"
