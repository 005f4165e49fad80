"""Ground truth for mining missed pairs: demo scenes with split SfM models, depth-based overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matchmill.datasets.colmap_scene import read_colmap_scene
from matchmill.datasets.demo import MARKER_NAME, SFM_GROUPS_NAME, ensure_demo_scene, write_demo_scene
from matchmill.datasets.megadepth import load_depth
from matchmill.datasets.depth_overlap import depth_overlap, scene_overlap_matrix, shared_point_counts

KW = dict(seed=7, num_cameras=6, width=96, height=72)
GROUPS = [0, 0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """(unsplit, split) tiny demo scenes of the same seed."""
    root = tmp_path_factory.mktemp("mining")
    return write_demo_scene(root / "plain", **KW), write_demo_scene(root / "split", sfm_groups=GROUPS, **KW)


# ------------------------------------------------------------------------------------------
# split SfM models


def test_split_model_links_only_within_groups(scenes):
    plain, split = scenes
    names, shared = shared_point_counts(split)
    assert names == [f"demo_{i:03d}.jpg" for i in range(6)]
    assert shared.shape == (6, 6) and np.array_equal(shared, shared.T)
    g = np.array(GROUPS)
    same = g[:, None] == g[None, :]
    off = ~np.eye(6, dtype=bool)
    assert np.all(shared[~same] == 0)
    assert np.all(shared[same & off] > 0)
    # without groups the model links across the groups, with the same within-group counts (an
    # image's own count drops: its observations of points only the other group also saw go)
    _, shared_plain = shared_point_counts(plain)
    assert shared_plain[~same].sum() > 0
    np.testing.assert_array_equal(shared[same & off], shared_plain[same & off])
    assert np.all(np.diag(shared) <= np.diag(shared_plain))


def test_split_points_keep_xyz_and_tracks_of_two(scenes):
    plain, split = scenes
    a, b = read_colmap_scene(plain / "sparse"), read_colmap_scene(split / "sparse")
    assert len(b.point3D_ids) > len(a.point3D_ids)  # tracks spanning both groups became two points
    xyz_plain = {tuple(x) for x in np.round(a.xyz, 9)}
    assert {tuple(x) for x in np.round(b.xyz, 9)} <= xyz_plain
    counts = np.zeros(b.point3D_ids.max() + 1, int)
    for im in b.images:
        np.add.at(counts, im.point3D_ids, 1)
    assert counts[b.point3D_ids].min() >= 2
    for im_a, im_b in zip(a.images, b.images):  # same poses and intrinsics
        np.testing.assert_allclose(im_b.cam_from_world, im_a.cam_from_world, atol=1e-12)
        np.testing.assert_array_equal(im_b.K, im_a.K)


def test_split_scene_has_same_images_and_depths(scenes):
    plain, split = scenes
    for sub in ("images", "depths"):
        files = sorted(p.name for p in (plain / sub).iterdir())
        assert files == sorted(p.name for p in (split / sub).iterdir()) and len(files) == 6
        for f in files:
            if sub == "images":
                assert (plain / sub / f).read_bytes() == (split / sub / f).read_bytes()
            else:
                np.testing.assert_array_equal(load_depth(plain / sub / f), load_depth(split / sub / f))


def test_marker_has_sfm_groups_only_when_given(scenes):
    plain, split = scenes
    m_plain, m_split = (json.loads((s / MARKER_NAME).read_text()) for s in scenes)
    assert "sfm_groups" not in m_plain and not (plain / SFM_GROUPS_NAME).exists()
    assert m_split.pop("sfm_groups") == GROUPS
    assert m_split == m_plain
    assert json.loads((split / SFM_GROUPS_NAME).read_text()) == {
        f"demo_{i:03d}.jpg": g for i, g in enumerate(GROUPS)}
    # ensure_demo_scene reuses a scene only with the same groups
    jpg = split / "images" / "demo_000.jpg"
    before = jpg.stat().st_mtime_ns
    assert ensure_demo_scene(split.parent, sfm_groups=GROUPS, **KW) == split
    assert jpg.stat().st_mtime_ns == before
    assert ensure_demo_scene(plain.parent, **KW) == plain


@pytest.mark.parametrize("groups, match", [
    ([0, 0, 1], "one label per camera"),
    ([0, 0, 0, 1, 1, 1, 1], "one label per camera"),
    ([0, 0, 0, 1, 1, 1.0], "must be ints"),
    ([0, 0, 0, 1, 1, "b"], "must be ints"),
    ([0, 0, 0, 1, 1, True], "must be ints"),
    ("000111", "list of 6 int labels"),
])
def test_bad_sfm_groups_raise_before_writing(tmp_path: Path, groups, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        write_demo_scene(out, sfm_groups=groups, **KW)
    with pytest.raises(ValueError, match=match):
        ensure_demo_scene(out, sfm_groups=groups, **KW)
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# depth overlap on a synthetic plane


W, H, F = 96, 72, 48.0
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1.0]])


def _pose(R: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(4, 4) cam_from_world of a camera at ``center`` with world-to-camera rotation R."""
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ center
    return T


def _rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _plane_depth(T: np.ndarray, z_plane: float = 5.0) -> np.ndarray:
    """(H, W) z-depth of the world plane z = z_plane in camera T (0 where not hit in front)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays_cam = np.stack([(u - K[0, 2]) / F, (v - K[1, 2]) / F, np.ones_like(u)], -1)  # z_cam = 1
    R, center = T[:3, :3], -T[:3, :3].T @ T[:3, 3]
    rays_world = rays_cam @ R  # R^T r
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (z_plane - center[2]) / rays_world[..., 2]  # ray parameter = z-depth (r_z = 1)
    return np.where(np.isfinite(s) & (s > 0), s, 0.0)


T0 = _pose(np.eye(3), np.zeros(3))
D0 = _plane_depth(T0)


def test_plane_self_overlap_is_one():
    assert np.all(D0 == 5.0)
    assert depth_overlap(D0, K, T0, D0, K, T0) == 1.0
    R = _rot_y(20) @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    T = _pose(R, np.array([0.3, -0.2, 1.0]))
    assert depth_overlap(_plane_depth(T), K, T, _plane_depth(T), K, T, stride=1) == 1.0


def test_sideways_shift_of_half_the_view_gives_half():
    # camera 1 moved by +5 along x: plane points move by F * 5 / 5 = 48 px = W / 2 to the left
    T1 = _pose(np.eye(3), np.array([5.0, 0.0, 0.0]))
    assert depth_overlap(D0, K, T0, _plane_depth(T1), K, T1, stride=4) == pytest.approx(0.5)
    assert depth_overlap(D0, K, T0, _plane_depth(T1), K, T1, stride=1) == pytest.approx(48 / 96)
    # moved by +3.75 along y: points move up by F * 3.75 / 5 = 36 px = H / 2, 36 of 72 rows stay
    T2 = _pose(np.eye(3), np.array([0.0, 3.75, 0.0]))
    assert depth_overlap(D0, K, T0, _plane_depth(T2), K, T2, stride=1) == pytest.approx(36 / 72)
    # a quarter of the width (12 px): 84 of 96 columns stay
    T3 = _pose(np.eye(3), np.array([-1.25, 0.0, 0.0]))
    assert depth_overlap(D0, K, T0, _plane_depth(T3), K, T3, stride=1) == pytest.approx(84 / 96)


def test_forward_motion_keeps_the_central_quarter():
    # camera 1 at half the distance: image 0 offsets from the centre double in image 1
    T1 = _pose(np.eye(3), np.array([0.0, 0.0, 2.5]))
    D1 = _plane_depth(T1)
    assert np.all(D1 == 2.5)
    u, v = np.arange(W), np.arange(H)
    frac_u = np.mean(np.abs(2 * (u - K[0, 2])) <= K[0, 2] + 1e-9)
    frac_v = np.mean(np.abs(2 * (v - K[1, 2])) <= K[1, 2] + 1e-9)
    got = depth_overlap(D0, K, T0, D1, K, T1, stride=1)
    assert got == pytest.approx(frac_u * frac_v) and 0.24 < got < 0.26
    # the other way round everything of image 1 is seen by image 0
    assert depth_overlap(D1, K, T1, D0, K, T0, stride=1) == 1.0


def test_pure_rotation_matches_the_homography():
    T1 = _pose(_rot_y(25), np.zeros(3))
    D1 = _plane_depth(T1)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    h = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ (K @ _rot_y(25) @ np.linalg.inv(K)).T
    xy = h[:, :2] / h[:, 2:]
    inside = (h[:, 2] > 0) & (xy[:, 0] >= 0) & (xy[:, 0] <= W - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= H - 1)
    got = depth_overlap(D0, K, T0, D1, K, T1, stride=1)
    assert 0.3 < got < 0.9
    assert got == pytest.approx(inside.mean(), abs=2 / W)  # up to a column at the border


def test_looking_away_and_occlusion_give_zero():
    T_back = _pose(_rot_y(180), np.zeros(3))  # sees the other half-space: the plane is behind it
    assert depth_overlap(D0, K, T0, np.full((H, W), 5.0), K, T_back) == 0.0
    # same view, but camera 1's depth map has a nearer surface everywhere: all occluded
    assert depth_overlap(D0, K, T0, np.full((H, W), 3.0), K, T0) == 0.0
    # within the tolerance still counts; sky (0) in image 0 is not counted at all
    assert depth_overlap(D0, K, T0, np.full((H, W), 5.2), K, T0, rel_tol=0.05) == 1.0
    half_sky = D0.copy()
    half_sky[:, : W // 2] = 0
    assert depth_overlap(half_sky, K, T0, D0, K, T0) == 1.0
    assert depth_overlap(np.zeros((H, W)), K, T0, D0, K, T0) == 0.0


# ------------------------------------------------------------------------------------------
# depth overlap on a demo scene


def test_scene_overlap_matrix_on_split_scene(scenes):
    plain, split = scenes
    names, ov = scene_overlap_matrix(split)
    assert names == shared_point_counts(split)[0]
    assert ov.shape == (6, 6) and np.all(np.diag(ov) == 1)
    assert np.all((ov >= 0) & (ov <= 1))
    np.testing.assert_array_equal(ov, scene_overlap_matrix(plain)[1])  # poses/depths, not tracks
    # self-overlap: ~1 less the pixels where sample_depth sees a depth discontinuity; at 96x72 the
    # far ground changes depth by > 5 % per pixel, which costs up to 15 % (~1-2 % at 320x240)
    selfs = []
    for im in read_colmap_scene(split / "sparse").images:
        d = load_depth(split / "depths" / (Path(im.name).stem + ".h5"))
        selfs.append(depth_overlap(d, im.K, im.cam_from_world, d, im.K, im.cam_from_world))
    assert min(selfs) > 0.8 and np.mean(selfs) > 0.9 and max(selfs) <= 1.0
    # neighbours on the arc overlap; pairs without depth overlap share no SfM point either
    _, shared = shared_point_counts(plain)
    off = ~np.eye(6, dtype=bool)
    assert ov[off].max() > 0.3
    assert np.all(shared[off & (np.minimum(ov, ov.T) == 0)] == 0)
