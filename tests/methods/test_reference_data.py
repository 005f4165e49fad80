"""The classical path on real reference images (../shared/data; skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from matchmill.pipeline.config import load_config
from matchmill.pipeline.inprocess import run_inprocess
from matchmill.stages.pairs import build_pairs

from tests.helpers.paths import DEMO_CONFIG, shared_data


def only_pair(conf: dict, suffix: str):
    pairs = build_pairs(conf)
    keep = pc.match_substring(pairs.column("pair_id"), suffix)
    return pairs.filter(keep)


@pytest.mark.parametrize(
    "source, folder, pair_suffix",
    [("oxford", "oxford_graf", "img2.png"), ("hpatches", "hpatches", "v_wormhole/2.ppm")],
)
def test_sift_homography_corner_error_below_3px(source, folder, pair_suffix, tmp_path):
    root = shared_data(folder)
    conf = load_config(DEMO_CONFIG, [f"data.source={source}", f"data.root={root}", "extract.resize_max=1024",
                                     "extract.max_keypoints=4096"])
    pairs = only_pair(conf, pair_suffix)
    assert pairs.num_rows == 1
    result = run_inprocess(conf, f"file://{tmp_path}", pairs)
    row = result.tables["verify"].to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "homography"
    assert row["corner_error"] < 3.0, row["corner_error"]
    assert row["mma"][2] > 0.3  # MMA@3 of raw SIFT+MNN matches on an easy viewpoint change


def test_sift_pose_error_on_the_megadepth_pair_below_10_degrees(tmp_path):
    folder = shared_data("megadepth_pair")
    cams = json.loads((folder / "cameras_converted.json").read_text())
    values = []
    for name in ("img_0.jpg", "img_1.jpg"):
        values += list(np.asarray(cams[name]["K"], float).ravel())
    values += list(np.asarray(cams["T_0to1"], float).ravel())
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("img_0.jpg img_1.jpg 0 0 " + " ".join(repr(float(v)) for v in values) + "\n")
    conf = load_config(DEMO_CONFIG, ["data.source=pairs_file", f"data.pairs_file={pairs_file}",
                                     f"data.images_dir={folder}", "extract.resize_max=1024",
                                     "extract.max_keypoints=4096", "propose.ratio=0.85"])
    result = run_inprocess(conf, f"file://{tmp_path}/run")
    row = result.tables["verify"].to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert row["pose_error"] < 10.0, (row["R_err"], row["t_err"])
    assert result.extract_calls == 2
