"""ResNet34 -> NCNet -> Patch2Pix through the real stage code (in-process, demo scene, untrained nets)."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.manifests.artifacts import read_artifact, resolve_artifact
from matchmill.pipeline.config import load_config
from matchmill.pipeline.inprocess import run_inprocess
from matchmill.stages.pairs import build_pairs

from tests.helpers.paths import DEMO_CONFIG

CHAIN = ["extract.method=resnet34", "propose.method=ncnet", "refine.method=patch2pix"]


@pytest.fixture(scope="module")
def chain_conf(demo_root):
    return lambda *extra: load_config(DEMO_CONFIG, [f"data.root={demo_root}", "pairs.max_pairs_per_scene=3", *CHAIN, *extra])


def test_method_switch_keeps_a_config_written_for_sift(chain_conf):
    conf = chain_conf()
    assert conf["extract"]["method"] == "resnet34" and "max_keypoints" not in conf["extract"]
    assert "ratio" not in conf["propose"]  # demo.yaml's MNN key is ignored for ncnet
    assert conf["refine"]["confidence"] == 0.25


def test_chain_runs_and_keeps_matches_inside_the_images(chain_conf, tmp_path):
    conf = chain_conf("refine.confidence=0.0")
    result = run_inprocess(conf, f"file://{tmp_path}")
    feats = result.tables["extract"].to_pylist()
    tensors = read_artifact(resolve_artifact(result.run_url, feats[0]["artifact_uri"]))
    assert [tensors[f"f{i}"].shape[0] for i in range(5)] == [3, 64, 64, 128, 256]
    assert tensors["f4"].dtype == np.float16
    assert tensors["f0"].shape[1] % 16 == 0 and tensors["f0"].shape[2] % 16 == 0
    proposals = result.tables["propose"].to_pylist()
    refined = result.tables["refine"].to_pylist()
    for prop, row in zip(proposals, refined):
        assert prop["status"] == "ok" and row["status"] == "ok", (prop["error"], row["error"])
        assert prop["num_matches"] > 0
        m = np.asarray(row["matches"]).reshape(-1, 4)
        assert len(m) == prop["num_matches"]  # confidence 0: nothing is dropped
        assert (m >= -0.5).all() and (m[:, [0, 2]] <= 320).all() and (m[:, [1, 3]] <= 240).all()
        moved = np.abs(m - np.asarray(prop["matches"]).reshape(-1, 4)).max()
        assert moved <= 16.0 + 1.0  # mid + fine offsets are each bounded by 8 px (+ frame rounding)


def test_pair_where_nothing_survives_is_an_empty_valid_row(chain_conf, tmp_path):
    conf = chain_conf("refine.confidence=0.9999999")
    pairs = build_pairs(conf).slice(0, 1)
    result = run_inprocess(conf, f"file://{tmp_path}", pairs)
    row = result.tables["verify"].to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert row["num_matches"] == 0 and row["matches"] == [] and row["num_inliers"] == 0
    assert row["pose_error"] == float("inf")
