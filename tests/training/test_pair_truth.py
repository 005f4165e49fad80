"""Ground truth of training pair rows (matchmill/training/pair_truth.py) on the demo scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matchmill.datasets.demo.oracle import DepthOracle, HomographyOracle
from matchmill.datasets.demo.view_pairs import scene_view
from matchmill.training.manifest_data import read_pair_rows
from matchmill.training.pair_truth import PairTruth, depth_path, first_rows_with_truth, row_has_truth

from tests.helpers.train_fixtures import demo_pairs_manifest


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory):
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("truth-manifests") / "pairs.parquet")


@pytest.fixture(scope="module")
def rows(pairs_url):
    return read_pair_rows(pairs_url, "data.pairs")


def _size(row, i):
    return tuple(int(v) for v in row[f"crop{i}"])


def test_depth_path_follows_the_megadepth_layout():
    assert depth_path("/d/scene/images/a.jpg") == "/d/scene/depths/a.h5"
    assert depth_path("file:///d/images/s/images/sub/a.b.png") == "file:///d/images/s/depths/sub/a.b.h5"
    assert depth_path("/d/scene/a.jpg") is None


def test_row_oracle_equals_the_oracle_of_the_written_views(rows):
    """K0, K1, T_0to1 of the row + the depth maps give the same answers as the scene's own cameras."""
    truth = PairTruth()
    xy = np.random.default_rng(0).uniform(0, 200, (400, 2))
    for row in rows[:3]:
        oracle = truth.oracle(row, _size(row, 0), _size(row, 1))
        scene_dir = Path(row["path0"]).parents[1]
        ref = DepthOracle(scene_view(scene_dir, Path(row["path0"]).name), scene_view(scene_dir, Path(row["path1"]).name))
        xy1, vis = oracle.true_match(xy)
        ref_xy1, ref_vis = ref.true_match(xy)
        assert vis.sum() > 50
        np.testing.assert_array_equal(vis, ref_vis)
        np.testing.assert_allclose(xy1[vis], ref_xy1[vis], atol=1e-6)
    assert truth.num_skipped == 0


def test_cell_targets_round_trip_within_a_cell(rows):
    truth = PairTruth()
    row = rows[0]
    t = truth.cell_targets(row, _size(row, 0), _size(row, 1), (320, 240), 16)
    assert t.grid_a == t.grid_b == (15, 20)
    assert t.a2b.shape == (300,) and t.b2a.shape == (300,) and t.a2b.dtype == np.int64
    both = np.flatnonzero((t.a2b >= 0) & (t.b2a[np.maximum(t.a2b, 0)] >= 0))
    assert len(both) > 50
    back = t.b2a[t.a2b[both]]
    dist = np.maximum(np.abs(back // 20 - both // 20), np.abs(back % 20 - both % 20))
    assert np.mean(dist <= 1) > 0.95  # A -> B -> A lands on the same cell or a neighbour
    assert truth.cell_targets(row, _size(row, 0), _size(row, 1), (320, 240), 16) is t  # cached
    with pytest.raises(ValueError, match="multiple of the cell stride"):
        truth.cell_targets(row, _size(row, 0), _size(row, 1), (328, 240), 16)


def test_pair_without_overlap_or_truth_is_skipped_and_counted_once(rows, caplog):
    truth = PairTruth()
    away = dict(rows[0], pair_id="away")
    T = np.eye(4)
    T[:3, :3] = np.diag([-1.0, 1.0, -1.0])  # camera 1 turned 180 degrees: sees nothing of image 0
    away["T_0to1"] = T.ravel().tolist()
    bare = dict(rows[1], pair_id="bare", K0=None)
    with caplog.at_level("INFO", logger="matchmill.training.pair_truth"):
        for _ in range(2):
            assert truth.cell_targets(away, _size(away, 0), _size(away, 1), (320, 240), 16) is None
            assert truth.cell_targets(bare, _size(bare, 0), _size(bare, 1), (320, 240), 16) is None
    assert truth.num_skipped == 2
    assert truth.skipped["no visible overlap"] == 1
    assert sum(1 for r in caplog.records if "skipping away" in r.getMessage()) == 1
    assert truth.cell_targets(rows[0], _size(rows[0], 0), _size(rows[0], 1), (320, 240), 16) is not None


def test_rows_without_depth_have_no_truth(rows, tmp_path):
    moved = dict(rows[0], path0=str(tmp_path / "elsewhere" / "a.jpg"))
    assert row_has_truth(rows[0]) and not row_has_truth(moved)
    assert not row_has_truth(dict(rows[0], T_0to1=None))
    assert first_rows_with_truth([moved, dict(rows[0], K1=None)]) == 0
    assert PairTruth().oracle(moved, _size(moved, 0), _size(moved, 1)) is None


def test_homography_rows_use_the_exact_warp():
    H = np.array([[1.0, 0.0, 16.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    row = {"pair_id": "h", "path0": "x.jpg", "path1": "y.jpg", "H_0to1": H.ravel().tolist()}
    truth = PairTruth()
    assert isinstance(truth.oracle(row, (64, 32), (64, 32)), HomographyOracle)
    t = truth.cell_targets(row, (64, 32), (64, 32), (64, 32), 16)  # shift by one cell to the right
    np.testing.assert_array_equal(t.a2b, [1, 2, 3, -1, 5, 6, 7, -1])
    np.testing.assert_array_equal(t.b2a, [-1, 0, 1, 2, -1, 4, 5, 6])
