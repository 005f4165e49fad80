"""The folder recipe without Ray: ``configs/folder.yaml`` is ``matchmill match``'s job, the pair
strategy by folder size, the sequential mode's pairs, run names from folder names, and an image
folder with nothing to match stopping before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from matchmill.cli import main as cli_main
from matchmill.config import ConfigError, read_user_config
from matchmill.datasets.image_sources import IMAGE_EXTENSIONS, check_folder_images
from matchmill.datasets.pair_strategies import choose_strategy
from matchmill.pipeline.config import load_config, resolve, run_url
from matchmill.pipeline.folder_job import FOLDER_JOB, LEARNED_RESIZE_MAX, folder_job, run_name_for
from matchmill.stages.pairs import strategy_rows
from tests.helpers.paths import DEMO_CONFIG, REPO

FOLDER_CONFIG = REPO / "configs" / "folder.yaml"


def write_images(folder: Path, count: int, size: int = 48) -> list[str]:
    """``count`` small noise images (names sorted as frames 00, 01, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"frame{i:02d}.png" for i in range(count)]
    for name in names:
        cv2.imwrite(str(folder / name), (rng.random((size, size)) * 255).astype(np.uint8))
    return names


def pair_ids(conf: dict) -> list[tuple[str, str]]:
    return [(row["image0"], row["image1"]) for row in strategy_rows(conf)]


def test_folder_yaml_is_the_recipe_of_matchmill_match(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHMILL_RUNS", str(tmp_path / "runs"))
    assert read_user_config(FOLDER_CONFIG) == FOLDER_JOB  # no storage line: the default storage
    photos = tmp_path / "My Photos"
    photos.mkdir()
    from_file = load_config(FOLDER_CONFIG, [f"data.root={photos}", "run_name=My-Photos"])
    from_command = resolve(folder_job(str(photos)))
    assert from_file == from_command
    assert run_url(from_command) == f"file://{tmp_path}/runs/My-Photos"
    # real photos, not the 320 px demo: SIFT at 1600 px, 4096 keypoints, pairs by folder size
    assert from_command["extract"]["resize_max"] == 1600 and from_command["extract"]["max_keypoints"] == 4096
    assert from_command["pairs"]["strategy"] == "auto" and from_command["data"]["source"] == "folder"


def test_method_out_sequential_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learned = resolve(folder_job("photos", method="pump-sift-mnn"))
    assert learned["extract"]["method"] == "pump" and learned["extract"]["resize_max"] == LEARNED_RESIZE_MAX
    conf = resolve(folder_job("photos", out="./elsewhere", sequential=True, window=3, loop_every=4,
                              overrides=["extract.resize_max=800", "run_name=x"]))
    assert run_url(conf) == f"file://{tmp_path}/elsewhere/x"  # --out on the command line: the working directory's
    assert conf["data"]["root"] == str(tmp_path / "photos")  # absolute: the same job from any directory
    assert (conf["pairs"]["strategy"], conf["pairs"]["window"], conf["pairs"]["loop_every"]) == ("sequential", 3, 4)
    assert conf["extract"]["resize_max"] == 800
    with pytest.raises(ConfigError, match="give --sequential too"):
        folder_job("photos", window=3)


@pytest.mark.parametrize("folder, name", [
    ("My Photos", "My-Photos"), (".hidden", "hidden"), ("rome 2024/", "rome-2024"),
    ("s3://bucket/trips/rome/", "rome"), ("Fotos_Köln", "Fotos_Köln"), ("...", "folder"),
])
def test_run_name_from_the_folder_name(tmp_path, monkeypatch, folder, name):
    monkeypatch.chdir(tmp_path)
    assert run_name_for(folder) == name
    resolve({"run_name": run_name_for(folder)})  # passes check_run_name


def test_strategy_by_folder_size(tmp_path):
    auto = {"strategy": "auto", "exhaustive_max": 60}
    assert [choose_strategy(n, auto) for n in (2, 60, 61, 5000)] == ["exhaustive", "exhaustive", "retrieval", "retrieval"]
    assert choose_strategy(10_000, {**auto, "strategy": "exhaustive"}) == "exhaustive"  # an explicit one is kept
    write_images(tmp_path / "imgs", 5)
    conf = resolve(folder_job(str(tmp_path / "imgs"), overrides=["pairs.exhaustive_max=5"]))
    assert len(pair_ids(conf)) == 10  # 5 images <= 5: every pair


def test_sequential_pairs_window_and_loop_closure(tmp_path):
    names = write_images(tmp_path / "frames", 7)
    conf = resolve(folder_job(str(tmp_path / "frames"), sequential=True, window=2))
    expected = [(names[a], names[b]) for a in range(7) for b in range(a + 1, min(a + 3, 7))]
    assert pair_ids(conf) == expected  # each frame with the next 2
    looped = resolve(folder_job(str(tmp_path / "frames"), sequential=True, window=2, loop_every=3))
    new = [(names[0], names[3]), (names[0], names[6]), (names[3], names[6])]  # every 3rd frame with each other
    assert sorted(set(pair_ids(looped)) - set(expected)) == new


def test_check_folder_images_names_the_folder_and_the_endings(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ConfigError) as err:
        check_folder_images(empty)
    assert str(empty) in str(err.value) and all(e in str(err.value) for e in IMAGE_EXTENSIONS)
    assert "found 1 other file(s)" in str(err.value) and "\n" not in str(err.value)
    broken = tmp_path / "broken"
    write_images(broken, 1)
    (broken / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"2 image file\(s\), 1 readable \(frame00.png\); matching needs at least 2"):
        check_folder_images(broken)
    assert check_folder_images(tmp_path / "broken", needed=1) == 2


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*")] if path.exists() else []


@pytest.mark.parametrize("command", ["match", "run"])
def test_an_empty_folder_stops_with_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys, command):
    """Before: an empty folder ran every stage with rows=0 and exited 0."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("MATCHMILL_RUNS", str(runs))
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {"match": ["match", str(empty)],
            "run": ["run", str(DEMO_CONFIG), "data.source=folder", f"data.root={empty}", "pairs.strategy=exhaustive",
                    "run_name=empty"]}[command]
    capsys.readouterr()
    assert cli_main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and str(empty) in err and ".jpg" in err, err
    assert "run:" not in out  # validation ends before the run starts
    assert _files(runs) == []  # not even an empty run folder
    assert set(os.listdir(tmp_path)) <= {"empty", "runs"}  # no ./runs or other folder made here
