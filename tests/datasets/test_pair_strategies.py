"""Pair strategies over image lists: retrieval top-k (linear in N, the SfM rule), exhaustive,
sequential, the global descriptor, and the folder source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matchmill.datasets.image_sources import SourceImage, folder_images
from matchmill.datasets.pair_strategies import (
    exhaustive_pairs,
    retrieval_pairs,
    sequential_pairs,
    shared_point_matrix,
    whiten,
)
from matchmill.models.global_descriptor import gem_grid, gem_signed
from matchmill.config import ConfigError
from matchmill.pipeline.config import resolve

CONF = {"scope": "scene", "per_image": 3, "min_similarity": None, "max_shared_points": None}


def images_and_descriptors(n: int, scenes: int = 1, seed: int = 0, dim: int = 16):
    rng = np.random.default_rng(seed)
    ims = [SourceImage(f"s{i % scenes}/im{i:04d}.jpg", f"s{i % scenes}", f"/x/s{i % scenes}/im{i:04d}.jpg") for i in range(n)]
    X = rng.normal(size=(n, dim)).astype(np.float32)
    return ims, X / np.linalg.norm(X, axis=1, keepdims=True)


def test_retrieval_candidates_grow_linearly_with_n_not_quadratically():
    counts = {}
    for n in (50, 100, 200, 400):
        ims, X = images_and_descriptors(n)
        rows = list(retrieval_pairs(ims, X, {**CONF, "scope": "all"}))
        counts[n] = len(rows)
        assert n * 3 / 2 <= len(rows) <= n * 3  # each image keeps 3 partners; a pair chosen twice counts once
        ids = [r["pair_id"] for r in rows]
        assert len(set(ids)) == len(ids)
        assert all(r["image0"] < r["image1"] for r in rows)
    ratio = counts[400] / counts[50]
    assert 6.0 <= ratio <= 10.0  # 8x images -> ~8x candidates (N^2 would be 64x)


def test_retrieval_keeps_the_most_similar_partner_of_each_image():
    ims, X = images_and_descriptors(30, seed=1)
    rows = list(retrieval_pairs(ims, X, {**CONF, "per_image": 1, "scope": "all"}))
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    chosen = {(r["image0"], r["image1"]) for r in rows}
    for i, im in enumerate(ims):
        j = int(np.argmax(S[i]))
        assert tuple(sorted((im.image_id, ims[j].image_id))) in chosen
    sims = {(r["image0"], r["image1"]): r["similarity"] for r in rows}
    a, b = next(iter(chosen))
    ia, ib = [k for k, im in enumerate(ims) if im.image_id in (a, b)]
    assert sims[(a, b)] == pytest.approx(float(X[ia] @ X[ib]), abs=1e-6)


def test_retrieval_scope_scene_never_pairs_two_scenes():
    ims, X = images_and_descriptors(60, scenes=3, seed=2)
    rows = list(retrieval_pairs(ims, X, CONF))
    assert rows and all(r["image0"].split("/")[0] == r["image1"].split("/")[0] for r in rows)
    rows_all = list(retrieval_pairs(ims, X, {**CONF, "scope": "all"}))
    assert any(r["image0"].split("/")[0] != r["image1"].split("/")[0] for r in rows_all)


def test_retrieval_sfm_rule_excludes_linked_pairs_and_reports_shared_points():
    # images 0-3 observe points 0..9, images 4-7 points 100..109: 0-3 linked, 4-7 linked, across none
    ims = []
    for i in range(8):
        pts = np.arange(10) + (0 if i < 4 else 100)
        ims.append(SourceImage(f"s/im{i}.jpg", "s", f"/x/{i}.jpg", point_ids=pts.astype(np.int64)))
    X = np.ones((8, 4), np.float32) / 2  # all alike: only the rule decides
    stats: dict = {}
    rows = list(retrieval_pairs(ims, X, {**CONF, "per_image": 7, "max_shared_points": 1}, stats))
    assert len(rows) == 16  # 4 x 4 cross pairs
    for r in rows:
        a, b = int(r["image0"][-5]), int(r["image1"][-5])
        assert (a < 4) != (b < 4)
        assert r["shared_points"] == 0
    assert stats["excluded_sfm"] == 12  # 6 linked pairs in each group
    S = shared_point_matrix(ims, list(range(8)))
    assert S[0, 1] == 10 and S[0, 5] == 0


def test_exhaustive_and_sequential_counts():
    ims, _ = images_and_descriptors(10)
    assert len(list(exhaustive_pairs(ims))) == 45
    seq = list(sequential_pairs(ims, window=2))
    assert len(seq) == 9 + 8
    with_loops = list(sequential_pairs(ims, window=2, loop_every=3))  # keys 0, 3, 6, 9: pairs > 2 apart
    assert len(with_loops) == 17 + 6
    assert len({r["pair_id"] for r in with_loops}) == len(with_loops)
    broken = [ims[0].__class__(ims[0].image_id, ims[0].scene, ims[0].path, error="missing")] + ims[1:]
    assert all(ims[0].image_id not in (r["image0"], r["image1"]) for r in exhaustive_pairs(broken))


def test_whiten_is_capped_so_small_collections_do_not_collapse():
    _, X = images_and_descriptors(14, dim=64)
    Y = whiten(X, 32)
    S = Y @ Y.T
    off = S[~np.eye(14, dtype=bool)]
    assert off.std() > 0.05  # full whitening (k = N - 1) makes every pair equally similar


def test_gem_signed_and_grid_shapes_and_invariants():
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(2, 8, 12, 16), dim=1)
    g = gem_signed(d)
    assert g.shape == (2, 16)
    assert torch.allclose(g.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (g >= 0).all()
    gg = gem_grid(d, grid=2)
    assert gg.shape == (2, 64)
    flipped = torch.flip(d, dims=[3])  # a mirrored image changes the grid descriptor, not the global one
    assert torch.allclose(gem_signed(flipped), g, atol=1e-5)
    assert not torch.allclose(gem_grid(flipped, grid=2), gg, atol=1e-3)
    with pytest.raises(ValueError, match="B, D, H, W"):
        gem_signed(d[0])


def test_folder_source_lists_images_recursively(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.jpg", "a/y.PNG", "z.jpg", ".hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    ims = folder_images(tmp_path)
    assert [im.image_id for im in ims] == ["a/x.jpg", "a/y.PNG", "z.jpg"]
    assert [im.scene for im in ims] == ["a", "a", None]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder_images(tmp_path / "nope")


@pytest.mark.parametrize("user, message", [
    ({"data": {"source": "folder", "root": "/x"}}, "covisibility needs an SfM model"),
    ({"pairs": {"strategy": "nearest"}}, "pairs.strategy: 'nearest' is not one of"),
    ({"pairs": {"strategy": "retrieval", "per_image": 0}}, "pairs.per_image: must be >= 1"),
    ({"pairs": {"max_shared_points": 1}}, "only used by pairs.strategy=retrieval"),
    ({"data": {"source": "hpatches", "root": "/x"}, "pairs": {"strategy": "exhaustive"}}, "lists its own pairs"),
    ({"mine": {"min_inliers": 3}}, "mine.min_inliers: must be >= 8"),
    ({"mine": {"min_spread": 2.0}}, r"mine.min_spread: must be in \[0, 1\]"),
])
def test_strategy_config_errors_name_the_key(user, message):
    with pytest.raises(ConfigError, match=message):
        resolve(user)


def test_folder_source_lists_any_fsspec_folder():
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("imgs/a/x.jpg", "imgs/z.png", "imgs/.cache/y.jpg"):
        fs.pipe(f"/{name}", b"x")
    try:
        ims = folder_images("memory://imgs")
        assert [im.image_id for im in ims] == ["a/x.jpg", "z.png"]
        assert ims[0].path.startswith("memory://") and ims[0].scene == "a"
        with fsspec.open(ims[0].path, "rb") as f:  # the path reads back the file
            assert f.read() == b"x"
    finally:
        fs.rm("/imgs", recursive=True)
