"""``matchmill viz pyramid`` and ``matchmill viz matches`` write real PNGs and refuse bad input with one line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matchmill.datasets.image_io import load_image
from matchmill.manifests.storage import join, write_manifest
from matchmill.cli import main
from matchmill.pipeline.config import load_config
from matchmill.pipeline.inprocess import run_inprocess
from matchmill.viz.pyramid import prepare, pump_net, pyramid_levels

from tests.helpers.paths import DEMO_CONFIG


@pytest.fixture(scope="module")
def two_images(demo_root):
    images = sorted((demo_root / "demo" / "images").glob("*.jpg"))
    return str(images[3]), str(images[4])


def test_pyramid_figure_has_a_row_per_level(two_images, tmp_path, capsys):
    out = tmp_path / "pyr.png"
    assert main(["viz", "pyramid", *two_images, "--x", "150", "--y", "100", "--resize", "96", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    n_levels = int(printed.split(": ")[1].split(" levels")[0])
    net = pump_net()
    small1 = prepare(load_image(two_images[0]), 96, 4)
    small2 = prepare(load_image(two_images[1]), 96, 4)
    levels = pyramid_levels(net, small1, small2, 150 * 96 / 320, 100 * 96 / 320)
    assert n_levels == len(levels) >= 3
    sizes = [lv["patch_size"] for lv in levels]
    assert sizes == sorted(sizes) and sizes[1] == 2 * sizes[0]  # the receptive field doubles per level
    for lv in levels:
        top3 = np.asarray(lv["top3"])
        assert top3.shape == (3, 3) and (top3[:, 0] < small2.shape[1]).all() and (top3[:, 1] < small2.shape[0]).all()
        assert top3[0, 2] >= top3[1, 2] >= top3[2, 2]  # best first
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > picture.shape[1]  # one row per level
    assert picture.std() > 10  # not a blank canvas


def test_pyramid_pixel_outside_the_image_is_one_line(two_images, tmp_path, capsys):
    code = main(["viz", "pyramid", *two_images, "--x", "5000", "--y", "10", "--resize", "96", "--out", str(tmp_path / "x.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "outside image 1" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def sift_run(demo_root, tmp_path_factory):
    run_url = f"file://{tmp_path_factory.mktemp('viz_run')}"
    conf = load_config(DEMO_CONFIG, [f"data.root={demo_root}", "pairs.max_pairs_per_scene=2"])
    result = run_inprocess(conf, run_url)
    write_manifest(result.tables["verify"], join(run_url, "verify", "part-00000.parquet"), "verify")
    return run_url, result.tables["verify"].to_pylist()


def test_matches_drawing_shows_both_images(sift_run, tmp_path, capsys):
    run_url, rows = sift_run
    row = rows[0]
    out = tmp_path / "m.png"
    assert main(["viz", "matches", run_url, row["pair_id"], "--out", str(out)]) == 0
    assert f"{row['num_matches']} matches, {row['num_inliers']} inliers" in capsys.readouterr().out
    picture = cv2.imread(str(out))
    h0, w0 = load_image(row["path0"]).shape[:2]
    h1, w1 = load_image(row["path1"]).shape[:2]
    assert picture.shape[0] == max(h0, h1) and picture.shape[1] >= w0 + w1
    green = (picture[..., 1] > 150) & (picture[..., 0] < 120) & (picture[..., 2] < 120)  # BGR inlier lines
    assert green.sum() > 50


def test_matches_of_an_unknown_pair_is_one_line(sift_run, tmp_path, capsys):
    run_url, _ = sift_run
    code = main(["viz", "matches", run_url, "nope|nothing", "--out", str(tmp_path / "m.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope|nothing" in err and "Traceback" not in err
