"""``matchmill mine`` end to end on a rendered scene whose SfM model is split in two camera groups:
the candidate rule, acceptance against the renderer's ground truth, the mined-pairs manifest as
PUMP's U data, rerun = resume, and the bad inputs of the issue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from matchmill.evaluation.benchmarks.mining import classify, scene_truth, score_mining, write_mining_family
from matchmill.manifests.commit import read_commit, read_stage
from matchmill.manifests.schemas import MINED
from matchmill.config import ConfigError
from matchmill.pipeline.config import load_config
from matchmill.pipeline.graph import MINE_GRAPH
from matchmill.pipeline.runner import run_pipeline
from matchmill.stages.mine import hull_fraction, judge, read_report, summary_line

from tests.helpers.paths import REPO

MINE_CONFIG = REPO / "configs" / "mine.yaml"
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mine_family")
    write_mining_family(root, [1000], num_cameras=10)
    return root


def mine_conf(storage: Path, root: Path, *extra: str) -> dict:
    return load_config(MINE_CONFIG, [f"storage=file://{storage}", "data.source=megadepth", f"data.root={root}",
                                     "pairs.per_image=3", "part_rows=8", *extra])


@pytest.fixture(scope="module")
def mined(tmp_path_factory, ray_local, family):
    storage = tmp_path_factory.mktemp("mine_runs")
    conf = mine_conf(storage, family)
    lines: list[str] = []
    result = run_pipeline(conf, graph=MINE_GRAPH, echo=lines.append)
    return conf, result, lines


def test_candidates_share_no_sfm_point_and_stay_linear(mined, family):
    conf, result, _ = mined
    pairs = read_stage(result.run_url, "pairs").to_pylist()
    assert pairs and all(p["status"] == "ok" for p in pairs)
    truth = scene_truth(family, "mine-s1000")
    for p in pairs:
        a, b = (x.split("/", 1)[1] for x in (p["image0"], p["image1"]))
        assert p["shared_points"] == 0 == truth.shared[truth.index[a], truth.index[b]]
        assert -1.0 <= p["similarity"] <= 1.0
        assert p["T_0to1"] is not None  # one model frame: the pose is known, SfM just never linked them
    assert len(pairs) <= 10 * 3
    assert read_commit(result.run_url, "mine") is not None


def test_accepted_pairs_overlap_in_the_ground_truth(mined, family):
    _, result, lines = mined
    mined_rows = read_stage(result.run_url, "mine").to_pylist()
    accepted = [r["pair_id"] for r in mined_rows if r["status"] == "ok"]
    candidates = [p["pair_id"] for p in read_stage(result.run_url, "pairs", columns=["pair_id"]).to_pylist()]
    truth = {"mine-s1000": scene_truth(family, "mine-s1000")}
    score = score_mining(candidates, accepted, truth, tau=0.1)
    assert score["accepted"] >= 5
    assert score["precision"] >= 0.9, score
    assert all(classify(p, truth, 0.1) in ("positive", "low overlap") for p in accepted)
    report = read_report(result.run_url)
    assert report["accepted"] == len(accepted)
    assert report["candidates"] == len(candidates)
    assert report["accepted"] + sum(report["rejected"].values()) == report["candidates"]
    assert report["drawn"] and (Path(result.run_url[len("file://"):]) / "mine" / report["drawn"][0]["png"]).is_file()
    assert (Path(result.run_url[len("file://"):]) / "mine" / "report.md").read_text().startswith("# matchmill mine")


def test_mined_manifest_is_pump_u_data_and_refused_where_ground_truth_is_needed(mined):
    from matchmill.training.manifest_data import inspect_manifest, locate_manifest, read_pair_rows

    _, result, _ = mined
    table = read_stage(result.run_url, "mine", "mine")
    assert table.schema.names == MINED.names
    rows = table.to_pylist()
    assert all(r[k] is None for r in rows for k in ("K0", "K1", "T_0to1", "H_0to1"))
    verify_hash = read_commit(result.run_url, "verify").config_hash
    assert {r["chain_hash"] for r in rows} == {verify_hash}
    for r in rows:
        assert r["num_inliers"] >= 50 and r["inlier_ratio"] >= 0.5 and r["spread"] >= 0.05
        assert len(r["F_est"]) == 9
    # the run URL of a mine run means its mined pairs, not its candidates
    kind, files = locate_manifest(result.run_url, ("pairs",), "data.pairs")
    assert kind == "pairs" and all("/mine/" in f for f in files)
    summary = inspect_manifest(result.run_url + "/mine", ("pairs",), "data.pairs")
    assert summary.mined and summary.ok_rows == len(rows) and summary.pose_rows == 0
    assert len(read_pair_rows(result.run_url + "/mine", "data.pairs")) == len(rows)
    from matchmill.training.config import load_train_config

    with pytest.raises(ConfigError, match="mined-pairs manifest .* carry no ground truth"):
        load_train_config("patch2pix", REPO / "configs" / "train-patch2pix.yaml", [f"data.pairs={result.run_url}/mine"])


def test_pump_training_reads_mined_pairs_as_u_data(mined, tmp_path):
    from matchmill.training.config import load_train_config

    _, result, _ = mined
    conf = load_train_config("pump", REPO / "configs" / "train-pump.yaml",  # validates the job: no error
                             [f"data.pairs={result.run_url}/mine", "pump.u_fraction=1.0", "data.images=null"])
    assert conf["data"]["pairs"].endswith("/mine")


def test_rerun_is_a_resume_with_identical_results(mined):
    conf, result, _ = mined
    before = read_stage(result.run_url, "mine").sort_by("pair_id").to_pylist()
    again = run_pipeline(conf, graph=MINE_GRAPH, echo=lambda _: None)
    assert all(r.action == "skipped" for r in again.stages)
    conf2 = load_config(MINE_CONFIG, [f"storage={conf['storage']}", "data.source=megadepth",
                                      f"data.root={conf['data']['root']}", "pairs.per_image=3", "part_rows=8",
                                      "mine.min_inliers=1000"])
    strict = run_pipeline(conf2, graph=MINE_GRAPH, echo=lambda _: None, overwrite=True)
    actions = {r.stage: r.action for r in strict.stages}
    assert actions["verify"] == "skipped" and actions["mine"] == "ran"  # acceptance does not redo matching
    empty = read_stage(result.run_url, "mine").to_pylist()
    assert empty == []  # a valid, empty manifest
    line = summary_line(read_report(result.run_url))
    assert line.startswith("mine: 0 of ") and "too few inliers" in line
    restored = run_pipeline(conf, graph=MINE_GRAPH, echo=lambda _: None, overwrite=True)
    assert {r.stage: r.action for r in restored.stages}["mine"] == "ran"
    assert read_stage(result.run_url, "mine").sort_by("pair_id").to_pylist() == before


def test_missing_image_is_a_failed_row_and_the_run_goes_on(tmp_path, ray_local, family):
    root = tmp_path / "scenes"
    shutil.copytree(family, root)
    (root / "mine-s1000" / "images" / "demo_003.jpg").unlink()
    (root / "mine-s1000" / "images" / "demo_006.jpg").write_bytes(b"not a jpeg")
    conf = mine_conf(tmp_path / "runs", root, "pairs.per_image=2")
    result = run_pipeline(conf, graph=MINE_GRAPH, echo=lambda _: None)
    pairs = read_stage(result.run_url, "pairs").to_pylist()
    failed = {p["pair_id"]: p["error"] for p in pairs if p["status"] == "failed"}
    assert set(failed) == {"mine-s1000/demo_003.jpg|mine-s1000/demo_003.jpg", "mine-s1000/demo_006.jpg|mine-s1000/demo_006.jpg"}
    assert "file not found" in failed["mine-s1000/demo_003.jpg|mine-s1000/demo_003.jpg"]
    assert "demo_006.jpg" in failed["mine-s1000/demo_006.jpg|mine-s1000/demo_006.jpg"]
    ok = [p for p in pairs if p["status"] == "ok"]
    assert ok and all("demo_003" not in p["pair_id"] and "demo_006" not in p["pair_id"] for p in ok)
    mined_rows = read_stage(result.run_url, "mine").to_pylist()
    assert {r["pair_id"] for r in mined_rows if r["status"] == "failed"} == set(failed)
    assert read_report(result.run_url)["failed_upstream"] == 2


def test_scene_without_model_is_an_error_or_retrieval_alone_when_configured(tmp_path, family):
    from matchmill.stages.pairs import build_pairs

    root = tmp_path / "scenes"
    shutil.copytree(family / "mine-s1000" / "images", root / "nomodel" / "images")
    conf = mine_conf(tmp_path / "runs", root)
    with pytest.raises(ValueError, match="no COLMAP model .* pairs.max_shared_points needs one"):
        build_pairs(conf)
    fallback = build_pairs(mine_conf(tmp_path / "runs", root, "pairs.sfm_fallback=true"))
    rows = fallback.to_pylist()
    assert rows and all(r["shared_points"] is None and r["T_0to1"] is None for r in rows)
    conf_folder = load_config(MINE_CONFIG, [f"storage=file://{tmp_path}", "data.source=folder", f"data.root={root}"])
    with pytest.raises(ValueError, match="data.source=folder has none"):
        build_pairs(conf_folder)


def test_mine_refuses_a_strategy_that_is_not_retrieval(tmp_path, capsys):
    from matchmill.cli import main

    code = main(["mine", str(MINE_CONFIG), f"storage=file://{tmp_path}", "pairs.strategy=covisibility",
                 "pairs.max_shared_points=null"])
    assert code == 2
    assert "mining needs pairs.strategy=retrieval" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # validation before anything is written


def test_acceptance_rules():
    conf = {"min_inliers": 4, "min_inlier_ratio": 0.5, "min_spread": 0.1}
    grid = np.stack(np.meshgrid(np.linspace(0, 99, 4), np.linspace(0, 79, 4)), -1).reshape(-1, 2)
    m = np.concatenate([grid, grid], 1).astype(np.float32)
    row = {"num_matches": 20, "num_inliers": 16, "matches": m.tolist() + [[0, 0, 0, 0]] * 4,
           "inliers": [True] * 16 + [False] * 4, "F_est": [0.0] * 9, "model": "fundamental",
           "image0": "a", "image1": "b"}
    sizes = {"a": (100, 80), "b": (100, 80)}
    reason, fig = judge(row, sizes, conf)
    assert reason is None and fig["inlier_ratio"] == 0.8 and fig["spread"] == pytest.approx(1.0, abs=0.03)
    bunched = dict(row, matches=(m * 0.1).tolist() + [[0, 0, 0, 0]] * 4)
    assert judge(bunched, sizes, conf)[0] == "low spread"
    assert judge(dict(row, num_matches=40), sizes, conf)[0] == "low inlier ratio"
    assert judge(dict(row, F_est=None, inliers=None), sizes, conf)[0] == "no model"
    assert hull_fraction(np.zeros((2, 2)), (10, 10)) == 0.0


def test_run_pairs_any_image_folder_by_retrieval(tmp_path, ray_local, family):
    from tests.helpers.paths import DEMO_CONFIG

    folder = family / "mine-s1000" / "images"
    conf = load_config(DEMO_CONFIG, [f"storage=file://{tmp_path}", "data.source=folder", f"data.root={folder}",
                                     "pairs.strategy=retrieval", "pairs.per_image=2"])
    result = run_pipeline(conf, echo=lambda _: None)
    pairs = read_stage(result.run_url, "pairs").to_pylist()
    assert 10 <= len(pairs) <= 20
    assert all(p["similarity"] is not None and p["K0"] is None and p["shared_points"] is None for p in pairs)
    verified = read_stage(result.run_url, "verify", columns=["pair_id", "status", "num_inliers"]).to_pylist()
    assert {v["pair_id"] for v in verified} == {p["pair_id"] for p in pairs}
    assert all(v["status"] == "ok" for v in verified)
    assert np.median([v["num_inliers"] for v in verified]) > 30  # retrieval found pairs that match


def test_summary_line_says_why_nothing_was_mined():
    base = {"accepted": 0, "candidates": 0, "rejected": {}, "failed_upstream": 0,
            "candidate_rule": {"max_shared_points": 1}}
    assert "every pair of images shares >= 1 SfM point(s)" in summary_line(base)
    assert "among the images that could be read" in summary_line({**base, "failed_upstream": 3})
    line = summary_line({**base, "candidates": 9, "rejected": {"too few inliers": 7, "low spread": 2}})
    assert line == "mine: 0 of 9 candidates accepted (rejected: 7 too few inliers, 2 low spread)"


def test_global_descriptors_on_ray_equal_the_driver_ones(tmp_path, ray_local, family):
    """The Ray path (an actor pool with extract's resources) computes the same descriptors as the
    driver, and a broken image is reported the same way by both."""
    from matchmill.stages import global_descriptors as gd
    from matchmill.stages.pairs import source_images

    root = tmp_path / "scenes"
    shutil.copytree(family, root)
    (root / "mine-s1000" / "images" / "demo_004.jpg").write_bytes(b"broken")
    conf = mine_conf(tmp_path / "runs", root)
    images = source_images(conf) * 7  # 70 rows: above RAY_MIN_IMAGES
    assert len(images) >= gd.RAY_MIN_IMAGES
    execution = {**conf["extract"], "actors": 2, "num_cpus": 1.0}  # the pool holds every CPU of the test Ray
    X_ray, err_ray = gd.describe_images(images, None, None, 10**8, execution=execution)
    X_drv, err_drv = gd.describe_images(images, None, None, 10**8, execution=None)
    assert set(err_ray) == set(err_drv) == {i for i, im in enumerate(images) if im.image_id.endswith("demo_004.jpg")}
    ok = [i for i in range(len(images)) if i not in err_ray]
    np.testing.assert_allclose(X_ray[ok], X_drv[ok], atol=1e-4)
    assert np.allclose(np.linalg.norm(X_ray[ok], axis=1), 1.0, atol=1e-4)
