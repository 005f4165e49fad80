"""``matchmill bench``: bad input stops before any work with one error line and exit code 2."""

from __future__ import annotations

import pytest

from matchmill.cli import main

from tests.helpers.paths import shared_data


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("matchmill: error: ")
    return err[0]


def test_missing_hpatches_root(tmp_path, capsys):
    assert main(["bench", "hpatches", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_pairs_file(tmp_path, capsys):
    code = main(["bench", "pose", str(tmp_path / "pairs.txt"), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "pairs.txt" in _one_error_line(capsys)


def test_pairs_file_whose_images_are_all_missing(tmp_path, capsys):
    pairs = shared_data("kitti_seq00") / "pairs_with_gt.txt"
    assert main(["bench", "pose", str(pairs), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "none of the" in _one_error_line(capsys)


def test_megadepth1500_without_images(tmp_path, capsys):
    info = shared_data("megadepth1500_scene_info")
    assert main(["bench", "megadepth1500", str(tmp_path), "--scene-info", str(info), "--out", str(tmp_path / "o")]) == 2
    assert "MegaDepth root" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "sfit"], "unknown method preset 'sfit'"),
        (["--no-sift"], "no method to run"),
        (["extract.no_such_key=1"], "extract.no_such_key"),  # an override after the options
        (["--max-pairs", "2", "ghost:extract.max_keypoints=5"], "'ghost' is not a method preset"),
    ],
)
def test_bad_methods_or_overrides(tmp_path, capsys, extra, message):
    root = shared_data("hpatches")
    assert main(["bench", "hpatches", str(root), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "o" / "runs").exists()  # nothing ran
