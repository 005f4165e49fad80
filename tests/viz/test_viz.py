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
    assert f"{row['num_matches']} matches, {row['num_inliers']} inliers, verified" in capsys.readouterr().out
    picture = cv2.imread(str(out))
    h0, w0 = load_image(row["path0"]).shape[:2]
    h1, w1 = load_image(row["path1"]).shape[:2]
    assert max(h0, h1) < picture.shape[0] < max(h0, h1) + 40 and picture.shape[1] >= w0 + w1  # + the title band
    green = (picture[..., 1] > 150) & (picture[..., 0] < 120) & (picture[..., 2] < 120)  # BGR inlier lines
    assert green.sum() > 50


def test_matches_of_an_unknown_pair_is_one_line(sift_run, tmp_path, capsys):
    run_url, _ = sift_run
    code = main(["viz", "matches", run_url, "nope|nothing", "--out", str(tmp_path / "m.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope|nothing" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- verified or not


def _colour_pixels(picture_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 30) -> int:
    return int((np.abs(picture_bgr[..., ::-1].astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


def test_an_unverified_pair_is_drawn_grey_under_a_red_title():
    from matchmill.viz.draw import INLIER_RGB, TITLE_RGB, UNVERIFIED_RGB, draw_matches

    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 255, np.uint8)  # white, so every coloured pixel is a line or the title
    matches = np.c_[rng.uniform(5, 150, (20, 1)), rng.uniform(5, 110, (20, 1)),
                    rng.uniform(5, 150, (20, 1)), rng.uniform(5, 110, (20, 1))]
    inliers = np.arange(20) < 12
    green = draw_matches(image, image, matches, inliers)[..., ::-1]  # as BGR, like cv2.imread
    grey = draw_matches(image, image, matches, inliers, verified=False,
                        title="UNVERIFIED: 12 inliers < min_inliers 15 (20 matches)")[..., ::-1]
    assert _colour_pixels(green, INLIER_RGB) > 100 and _colour_pixels(green, UNVERIFIED_RGB, 10) == 0
    assert _colour_pixels(grey, INLIER_RGB) == 0 and _colour_pixels(grey, UNVERIFIED_RGB, 10) > 100
    band = grey.shape[0] - green.shape[0]
    assert 10 < band < 40 and _colour_pixels(grey[:band], TITLE_RGB[False], 60) > 20  # red text in the band
    assert _colour_pixels(grey[:band], TITLE_RGB[True], 40) == 0


def test_the_title_says_why_a_pair_is_not_verified():
    from matchmill.viz.matches import verify_title

    row = {"num_matches": 61, "num_inliers": 11, "model": "fundamental", "F_est": [1.0] * 9, "verified": False}
    assert verify_title(row, 15) == (False, "UNVERIFIED: 11 inliers < min_inliers 15 (61 matches)")
    assert verify_title({**row, "F_est": None, "num_inliers": 0}, 15) == (
        False, "UNVERIFIED: no fundamental model (61 matches)")
    verified = {**row, "verified": True, "num_inliers": 40}
    assert verify_title(verified, 15) == (True, "verified: 40 inliers of 61 matches")
    assert verify_title({**row, "verified": None}, None) == (None, "11 inliers of 61 matches")  # a run before the flag


def test_viz_matches_of_an_unverified_pair_says_so(sift_run, tmp_path, capsys):
    """A verify row of the demo run, unverified under a (made-up) min_inliers of 1000."""
    import pyarrow as pa

    from matchmill.manifests.commit import CommitInfo, write_commit

    _, rows = sift_run
    row = {**rows[0], "verified": False}
    run_url = f"file://{tmp_path}/run"
    write_manifest(pa.Table.from_pylist([row]), join(run_url, "verify", "part-0.parquet"), "verify")
    write_commit(run_url, CommitInfo("verify", "verify", "cafe", rows=1, failed=0,
                                     extra={"config": [{"min_inliers": 1000}]}))
    out = tmp_path / "u.png"
    assert main(["viz", "matches", run_url, row["pair_id"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{row['num_inliers']} inliers, UNVERIFIED: {row['num_inliers']} inliers < min_inliers 1000" in printed
    picture = cv2.imread(str(out))
    green = (picture[..., 1] > 150) & (picture[..., 0] < 120) & (picture[..., 2] < 120)
    assert green.sum() == 0  # no line drawn as a verified inlier
