"""``matchmill match FOLDER`` end to end on a folder of five small photos: a normal run under the
default storage that ``status`` reads by name, and the same command from another working directory
resumes it (every stage skipped) instead of recomputing into a new ``./runs`` there."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest
import skimage.data

from matchmill.api import open_run
from matchmill.cli import main as cli_main

pytestmark = pytest.mark.ray

#: scikit-image's photos (files shipped with the package): a stereo pair and three unrelated photos.
PHOTOS = ("motorcycle_left.png", "motorcycle_right.png", "astronaut.png", "chelsea.png", "coffee.png")


def write_photos(folder: Path, side: int = 200) -> None:
    """The photos as JPEGs, ``side`` px on the long side."""
    folder.mkdir(parents=True)
    for name in PHOTOS:
        image = cv2.imread(str(Path(skimage.data.__file__).parent / name), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        scale = side / max(h, w)
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name.replace(".png", ".jpg")), small)


def test_match_a_folder_then_read_and_resume_it_from_another_directory(tmp_path, monkeypatch, capsys, ray_local):
    runs = tmp_path / "data-home" / "runs"
    monkeypatch.setenv("MATCHMILL_RUNS", str(runs))
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    write_photos(first / "My Photos")
    monkeypatch.chdir(first)
    capsys.readouterr()
    assert cli_main(["match", "My Photos", "extract.resize_max=256", "ray.num_cpus=2"]) == 0
    out = capsys.readouterr().out
    assert "matchmill match: 5 images in My Photos; pairs: every pair (10); sift at 256 px" in out, out
    assert f"run: file://{runs}/My-Photos" in out  # the resolved absolute URL, when the run starts
    for stage in ("pairs", "extract", "verify", "metrics"):
        assert f"[{stage:>8}] ran" in out, out
    assert "next: matchmill show My-Photos verify" in out

    assert cli_main(["status", "My-Photos"]) == 0  # a normal run, read by its name
    status = capsys.readouterr().out
    assert f"run: file://{runs}/My-Photos" in status
    assert all(f"{stage}" in status for stage in ("pairs", "verify", "metrics")) and "committed" in status
    verify = open_run("My-Photos").read("verify").set_index("pair_id")  # the Python API, by name too
    assert len(verify) == 10 and verify.loc["motorcycle_left.jpg|motorcycle_right.jpg", "num_inliers"] > 50

    monkeypatch.chdir(second)  # the same command from another directory: the same run, resumed
    assert cli_main(["match", os.path.relpath(first / "My Photos", second), "extract.resize_max=256",
                     "ray.num_cpus=2"]) == 0
    again = capsys.readouterr().out
    assert f"run: file://{runs}/My-Photos" in again
    for stage in ("pairs", "images", "extract", "propose", "refine", "verify", "metrics"):
        assert f"[{stage:>8}] skipped" in again, again
    assert sorted(os.listdir(second)) == [] and sorted(os.listdir(first)) == ["My Photos"]  # no ./runs anywhere
