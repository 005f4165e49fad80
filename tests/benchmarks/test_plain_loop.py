"""benchmarks/plain_loop.py (the baseline of benchmarks/beat_the_loop.py) on a tiny generated scene."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))

import plain_loop  # noqa: E402


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    out = tmp_path_factory.mktemp("plain_loop")
    subprocess.run([sys.executable, "-m", "matchmill", "demo-data", str(out), "--cameras", "3",
                    "--width", "160", "--height", "120"], check=True, capture_output=True)
    images = next(out.glob("*/images"))
    names = sorted(p.name for p in images.iterdir() if p.suffix == ".jpg")
    assert len(names) == 3
    return images, list(itertools.combinations(names, 2))


def test_cached_and_per_pair_agree_and_matches_are_mutual(tiny_scene):
    images, pairs = tiny_scene
    per_pair = plain_loop.run_loop(pairs, images, "per_pair")
    cached = plain_loop.run_loop(pairs, images, "cached")
    assert per_pair.extractions == 2 * len(pairs) and cached.extractions == 3
    assert list(per_pair.pairs) == list(cached.pairs) == pairs
    assert sum(r.num_matches for r in cached.pairs.values()) > 0
    for key in pairs:
        a, b = per_pair.pairs[key], cached.pairs[key]
        np.testing.assert_array_equal(a.matches, b.matches)
        np.testing.assert_array_equal(a.inliers, b.inliers)
        assert a.num_inliers == b.num_inliers == int(b.inliers.sum())
        assert b.num_matches == len(b.matches) == len(b.inliers)
        np.testing.assert_array_equal(a.indices, b.indices)
        # mutual: no keypoint index of either image is used twice (SIFT can put several keypoints,
        # one per orientation, at the same pixel, so coordinates may repeat; indices may not)
        assert len(np.unique(b.indices[:, 0])) == len(np.unique(b.indices[:, 1])) == len(b.indices)


def test_mutual_nn_indices_unique_and_ratio_prunes():
    rng = np.random.default_rng(0)
    d0 = rng.random((200, 128), np.float32)
    d1 = np.concatenate([d0[:100] + 0.01 * rng.random((100, 128), np.float32), rng.random((150, 128), np.float32)])
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    all_mnn = plain_loop.mutual_nn(d0, d1, 0.0)
    pruned = plain_loop.mutual_nn(d0, d1, 0.9)
    for idx in (all_mnn, pruned):
        assert len(np.unique(idx[:, 0])) == len(idx) and len(np.unique(idx[:, 1])) == len(idx)
    assert set(map(tuple, pruned.tolist())) <= set(map(tuple, all_mnn.tolist()))
    assert {(i, i) for i in range(100)} <= set(map(tuple, pruned.tolist()))


def test_resize_maps_keypoints_to_original_pixels(tiny_scene):
    images, pairs = tiny_scene
    sift = plain_loop.make_sift(plain_loop.LoopConf())
    kpts, desc = plain_loop.extract(images / pairs[0][0], sift, plain_loop.LoopConf(resize_max=80))
    assert len(kpts) == len(desc) > 0
    assert kpts[:, 0].max() < 160 and kpts[:, 1].max() < 120 and kpts.min() > -1
    assert kpts[:, 0].max() > 80  # back in the 160 x 120 frame, not the 80 x 60 one
