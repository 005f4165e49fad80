"""The training set the shipped weights are trained on (matchmill/training/training_set.py): scenes, photos, manifests."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from matchmill.training.training_set import HELD_OUT_SEEDS, PHOTOS, TRAIN_SEED_START, check_held_out, write_training_set
from matchmill.manifests.schemas import IMAGES, PAIRS


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainset")
    return out, write_training_set(out, num_scenes=2, num_cameras=6, width=160, height=120, max_pairs_per_scene=8)


def test_manifests_hold_the_scenes_pairs_and_every_photo(small_set):
    out, info = small_set
    pairs = pq.read_table(out / "pairs.parquet")
    images = pq.read_table(out / "images.parquet")
    assert pairs.schema.names == PAIRS.names and images.schema.names == IMAGES.names
    assert info["seeds"] == [TRAIN_SEED_START, TRAIN_SEED_START + 1]
    assert 0 < pairs.num_rows <= 16 and info["pairs"] == pairs.num_rows
    assert set(pairs["scene"].to_pylist()) <= {f"train-s{s}" for s in info["seeds"]}
    rows = pairs.to_pylist()
    assert all(r["K0"] and r["K1"] and r["T_0to1"] for r in rows)  # pose ground truth for NCNet / Patch2Pix
    scenes = [r for r in images.to_pylist() if r["scene"] != "photos"]
    photos = [r for r in images.to_pylist() if r["scene"] == "photos"]
    assert len(photos) == len(PHOTOS) and {r["image_id"] for r in photos} == {f"photos/{n}.png" for n in PHOTOS}
    assert {r["image_id"] for r in scenes} == {r["image0"] for r in rows} | {r["image1"] for r in rows}
    licences = json.loads((out / "photos" / "LICENSES.json").read_text())
    assert set(licences) == set(PHOTOS) and all(v["licence"] for v in licences.values())


def test_rerun_with_the_same_parameters_is_a_no_op(small_set):
    out, info = small_set
    before = (out / "pairs.parquet").stat().st_mtime_ns
    again = write_training_set(out, num_scenes=2, num_cameras=6, width=160, height=120, max_pairs_per_scene=8)
    assert again == info and (out / "pairs.parquet").stat().st_mtime_ns == before


def test_held_out_seeds_never_enter_a_training_set(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        check_held_out([HELD_OUT_SEEDS[0], 5000])
    with pytest.raises(ValueError, match="held-out"):
        write_training_set(tmp_path, num_scenes=1, seed_start=HELD_OUT_SEEDS[-1])
    assert not any(tmp_path.iterdir())  # validation before anything is written
