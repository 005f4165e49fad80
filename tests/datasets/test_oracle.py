"""The correspondence oracle (matchmill/datasets/demo/oracle.py, view_pairs.py): exact answers on
analytic scenes, agreement with ray casting on demo pairs, frames of geometry/frames.py, seeds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matchmill.config import ConfigError
from matchmill.datasets.demo import Quad, Scene, look_at, render_view, write_demo_scene
from matchmill.datasets.demo.oracle import DepthOracle, HomographyOracle, View
from matchmill.datasets.demo.primitives import cast_rays
from matchmill.datasets.demo.seeds import HELD_OUT_SEEDS, TRAIN_SEED_START
from matchmill.datasets.demo.view_pairs import render_view_pair, render_views, scene_view, world_and_cameras
from matchmill.geometry.frames import resize_max, to_network
from matchmill.geometry.homography import warp_points

SEED, N_CAMS, W, H = TRAIN_SEED_START, 14, 128, 96


def _grid(w: int, h: int) -> np.ndarray:
    """(h * w, 2) float64 pixel centres, row by row."""
    gx, gy = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    return np.stack([gx.ravel(), gy.ravel()], 1)


def _flat_scene(quads: list[Quad]) -> Scene:
    return Scene(quads=quads, textures=[[np.full((64, 64, 3), 0.5, np.float32)]], boxes=[], walls=[],
                 lightmaps=[np.ones((2, 2), np.float32) for _ in quads])


def _plane(z: float, x0: float = -50, x1: float = 50, y0: float = -50, y1: float = 50) -> Quad:
    """A fronto-parallel rectangle at depth z (world = camera 0 frame) facing the camera."""
    return Quad(origin=np.array([x0, y0, z]), u=np.array([1.0, 0, 0]), v=np.array([0, 1.0, 0]),
                size=(x1 - x0, y1 - y0), normal=np.array([0, 0, -1.0]), texture=0, texel=0.01, offset=(0.0, 0.0))


def _render(scene: Scene, K: np.ndarray, T: np.ndarray, w: int = W, h: int = H) -> View:
    rgb, depth = render_view(scene, K, T, w, h, supersample=1)
    return View.from_pose((np.clip(rgb, 0, 1) * 255).astype(np.uint8), depth, K, T)


def _pose(center) -> np.ndarray:
    """World-to-camera pose of an unrotated camera at ``center``."""
    T = np.eye(4)
    T[:3, 3] = -np.asarray(center, float)
    return T


K_FLAT = np.array([[100.0, 0, (W - 1) / 2], [0, 100.0, (H - 1) / 2], [0, 0, 1]])


@pytest.fixture(scope="module")
def demo_views() -> list[View]:
    """Six views of a training scene, 128 x 96."""
    return render_views(SEED, range(6), N_CAMS, W, H)


def _ray_cast_visible(world: Scene, oracle: DepthOracle) -> np.ndarray:
    """(H0, W0) bool truth: pixel of image 0 has a surface point that projects inside image 1, in
    front of it, and the segment to camera 1's centre hits nothing (exact geometry)."""
    v0, v1 = oracle.view0, oracle.view1
    xy = _grid(*v0.size)
    z = v0.depth.ravel().astype(float)
    Xc = np.c_[xy, np.ones(len(xy))] @ np.linalg.inv(v0.K).T * z[:, None]
    Xw = (Xc - v0.t) @ v0.R
    X1 = Xw @ v1.R.T + v1.t
    with np.errstate(divide="ignore", invalid="ignore"):
        p = X1 @ v1.K.T
        xy1 = p[:, :2] / p[:, 2:3]
    w1, h1 = v1.size
    inside = (X1[:, 2] > 0) & (xy1[:, 0] >= -0.5) & (xy1[:, 0] <= w1 - 0.5) & (xy1[:, 1] >= -0.5) & (xy1[:, 1] <= h1 - 0.5)
    to_cam = -v1.R.T @ v1.t - Xw
    start = Xw + 1e-4 * to_cam / np.linalg.norm(to_cam, axis=1, keepdims=True)
    blocked = cast_rays(world.quads, start, to_cam) < 1 - 1e-4
    return ((z > 0) & inside & ~blocked).reshape(v0.depth.shape)


# ----------------------------------------------------------------------------- analytic scenes


def test_identity_pair_maps_every_pixel_to_itself(demo_views):
    view = demo_views[0]
    xy1, visible = DepthOracle(view, view).dense()
    np.testing.assert_array_equal(visible, view.depth > 0)
    assert visible.mean() > 0.5
    grid = _grid(W, H).reshape(H, W, 2)
    np.testing.assert_allclose(xy1[visible], grid[visible], atol=1e-3)


def test_camera_translation_shifts_a_fronto_parallel_plane_and_drops_out_of_frame_pixels():
    """Camera 1 moved by (b, c, 0): x1 = x0 - f b / Z, y1 = y0 - f c / Z; pixels pushed past the
    left / top border (x1 < -0.5) are not visible, all others are."""
    Z, b, c = 8.0, 0.4, -0.2  # shift 5 px left and 2.5 px down
    scene = _flat_scene([_plane(Z)])
    v0, v1 = _render(scene, K_FLAT, np.eye(4)), _render(scene, K_FLAT, _pose([b, c, 0]))
    xy1, visible = DepthOracle(v0, v1).dense()
    expected = _grid(W, H).reshape(H, W, 2) + [-100 * b / Z, -100 * c / Z]
    np.testing.assert_allclose(xy1, expected, atol=1e-3)
    inside = (expected[..., 0] >= -0.5) & (expected[..., 1] <= H - 0.5)
    np.testing.assert_array_equal(visible, inside)
    assert (~visible).sum() == 5 * H + 2 * W - 10  # columns 0-4 and rows 94-95 leave (row 93 lands on 95.5: in)


def test_an_occluder_hides_what_is_behind_it_in_the_other_view():
    """A 1 m wide board 2 m in front of a wall; camera 1 moved 1 m right. Wall pixels whose line to
    camera 1 crosses the board are not visible (analytic), the board itself is."""
    z_wall, z_board, move = 10.0, 5.0, 1.0
    scene = _flat_scene([_plane(z_wall), _plane(z_board, -0.5, 0.5, -50, 50)])
    v0, v1 = _render(scene, K_FLAT, np.eye(4)), _render(scene, K_FLAT, _pose([move, 0, 0]))
    oracle = DepthOracle(v0, v1)
    xy1, visible = oracle.dense()
    x_world = (np.arange(W) - K_FLAT[0, 2]) / 100 * v0.depth[0]  # per column, first row
    on_board = np.abs(v0.depth[0] - z_board) < 1e-3
    # line from camera 1 (move, 0, 0) to the wall point crosses z = z_board at x = move + (x - move) z_board / z_wall
    cross = move + (x_world - move) * z_board / z_wall
    hidden = ~on_board & (np.abs(cross) <= 0.5)
    assert hidden.sum() >= 8 and on_board.sum() >= 8
    # away from the half-pixel edges the oracle agrees column by column
    x1 = xy1[0, :, 0]
    edge = np.zeros(W, bool)
    for e in (move + (-0.5 - move) * z_wall / z_board, move + (0.5 - move) * z_wall / z_board):  # wall x of the shadow edges
        edge |= np.abs(x_world - e) * 100 / z_wall <= 1.0
    in_frame = (x1 >= -0.5) & (x1 <= W - 0.5)
    check = ~edge & in_frame
    np.testing.assert_array_equal(visible[0][check], (~hidden)[check])
    assert visible[0][on_board & in_frame].all()
    assert not visible[:, hidden & ~edge].any()
    # the hidden pixels still get their projection (for epipolar terms), only marked invisible
    assert np.isfinite(xy1[:, hidden]).all()


def test_no_overlap_gives_zero_visible_pixels(demo_views):
    """Camera 1 at camera 0's place looking down at the ground behind it: it sees surfaces, but
    everything camera 0 sees is behind camera 1."""
    world, cams = world_and_cameras(SEED, N_CAMS, W, H)
    K, T = cams[0]
    center = -T[:3, :3].T @ T[:3, 3]
    ahead = T[2, :2] / np.linalg.norm(T[2, :2])  # camera 0's viewing direction on the ground
    back = look_at(center, np.array([*(center[:2] - center[2] * ahead), 0.0]))  # 45 deg down, backwards
    pair = render_view_pair(SEED, 0, 1, N_CAMS, W, H, cameras=[(K, T), (K, back)])
    xy1, visible = pair.oracle.dense()
    assert visible.sum() == 0 and pair.oracle.visible_share() == 0.0
    assert (pair.view1.depth > 0).mean() > 0.3  # camera 1 does see the ground behind
    errors = pair.oracle.match_errors(np.c_[_grid(W, H)[:50], _grid(W, H)[:50]])
    assert np.isnan(errors).all()


# ----------------------------------------------------------------------------- rendered demo pairs


@pytest.mark.parametrize("i, j", [(0, 1), (2, 3), (4, 5)])
def test_round_trip_returns_to_the_start_on_mutually_visible_pixels(demo_views, i, j):
    """0 -> 1 -> 0 is exact (float rounding) except within a pixel of a surface edge in image 1
    (measured at 128 x 96: 90-97 % of the pixels within 0.01 px, >= 99.8 % within 1 px)."""
    oracle = DepthOracle(demo_views[i], demo_views[j])
    xy1, visible = oracle.dense()
    assert 0.1 < visible.mean() < 0.95
    start = _grid(W, H)[visible.ravel()]
    back, visible_back = oracle.reverse().true_match(xy1[visible].astype(np.float64))
    assert visible_back.mean() > 0.98  # what 0 sees of 1, 1 sees back
    err = np.linalg.norm(back - start, axis=1)[visible_back]
    assert np.median(err) < 1e-3
    assert np.mean(err < 0.01) > 0.85
    assert np.mean(err < 1.0) > 0.99


def test_visibility_agrees_with_ray_casting(demo_views):
    """Depth-test visibility against exact occlusion by ray casting (the renderer's own geometry):
    few false 'visible' (they would be wrong supervision), few missed."""
    world, _ = world_and_cameras(SEED, N_CAMS, W, H)
    false_visible = missed = truth_total = 0
    for i, j in [(0, 1), (1, 3), (2, 5), (4, 5)]:
        oracle = DepthOracle(demo_views[i], demo_views[j])
        visible = oracle.dense()[1]
        truth = _ray_cast_visible(world, oracle)
        false_visible += int((visible & ~truth).sum())
        missed += int((truth & ~visible).sum())
        truth_total += int(truth.sum())
    assert truth_total > 10_000
    assert false_visible <= 0.01 * truth_total
    assert missed <= 0.04 * truth_total


def test_sparse_queries_agree_with_dense_and_measure_errors(demo_views):
    oracle = DepthOracle(demo_views[0], demo_views[1])
    xy1, visible = oracle.dense()
    rows, cols = np.nonzero(visible)
    pick = np.random.default_rng(0).choice(len(rows), 200, replace=False)
    q = np.stack([cols[pick], rows[pick]], 1).astype(float)
    sparse_xy1, sparse_visible = oracle.true_match(q)
    assert sparse_visible.all()
    np.testing.assert_allclose(sparse_xy1, xy1[rows[pick], cols[pick]], atol=1e-4)
    offset = np.random.default_rng(1).normal(size=(200, 2))
    errors = oracle.match_errors(np.c_[q, sparse_xy1 + offset])
    np.testing.assert_allclose(errors, np.linalg.norm(offset, axis=1), atol=1e-9)
    # a query without truth (sky / outside image 0) gives NaN, not a large error
    sky = np.argwhere(demo_views[0].depth == 0)[0][::-1].astype(float)
    errors = oracle.match_errors(np.array([[*sky, 10, 10], [-5, 3, 10, 10]]))
    assert np.isnan(errors).all()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        oracle.match_errors(np.zeros((3, 2)))


def test_rendered_views_are_the_written_scene(tmp_path):
    """render_view_pair gives the decoded JPEGs, depth maps and cameras of write_demo_scene, and
    scene_view reads the same View back from the folder."""
    seed = SEED + 1
    folder = write_demo_scene(tmp_path, seed=seed, num_cameras=3, width=64, height=48)
    pair = render_view_pair(seed, 2, 0, num_cameras=3, width=64, height=48)
    for view, name in [(pair.view0, "demo_002.jpg"), (pair.view1, "demo_000.jpg")]:
        disk = scene_view(folder, name)
        np.testing.assert_array_equal(view.image, disk.image)
        np.testing.assert_array_equal(view.depth, disk.depth)
        np.testing.assert_allclose(view.K, disk.K, atol=1e-9)
        np.testing.assert_allclose(view.R, disk.R, atol=1e-9)
        np.testing.assert_allclose(view.t, disk.t, atol=1e-9)
    rgb = cv2.imread(str(folder / "images" / "demo_002.jpg"))[..., ::-1]
    np.testing.assert_array_equal(pair.view0.image, rgb)


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("max_side", [64, 100])
def test_resized_frames_follow_geometry_frames(demo_views, max_side):
    """Queries in a resized frame (scale of frames.resize_max) answer like an oracle of views
    rendered at that size with K re-expressed by frames.to_network: a half-pixel slip anywhere
    would show as a 0.25-0.5 px difference."""
    world, cams = world_and_cameras(SEED, N_CAMS, W, H)
    small, scale = resize_max(demo_views[0].image, max_side)
    sw, sh = small.shape[1], small.shape[0]
    oracle = DepthOracle(demo_views[0], demo_views[1]).resized((sw, sh), (sw, sh))
    assert np.allclose(oracle.scale0, scale) and np.allclose(oracle.scale1, scale)
    small_views = []
    for K, T in cams[:2]:
        Ks = K.copy()
        Ks[0, 0], Ks[1, 1] = K[0, 0] / scale[0], K[1, 1] / scale[1]
        Ks[:2, 2] = to_network(K[None, :2, 2], scale)[0]
        small_views.append(_render(world, Ks, T, sw, sh))
    direct = DepthOracle(*small_views)
    q = _grid(sw, sh) + np.random.default_rng(0).uniform(-0.5, 0.5, (sw * sh, 2))
    a, va = oracle.true_match(q)
    b, vb = direct.true_match(q)
    both = va & vb
    assert both.mean() > 0.3 and np.mean(va == vb) > 0.95
    diff = np.linalg.norm(a - b, axis=1)[both]
    assert np.median(diff) < 1e-3
    assert np.mean(diff < 0.05) > 0.9
    # the dense map of the resized oracle covers the resized frame; reverse() swaps the frames
    xy1, visible = oracle.dense()
    assert xy1.shape == (sh, sw, 2) and visible.shape == (sh, sw)
    assert oracle.reverse().size0 == (sw, sh)


# ----------------------------------------------------------------------------- homographies


def test_homography_oracle_is_the_homography():
    Hm = np.array([[0.9, 0.1, 5.0], [-0.05, 1.1, -3.0], [1e-4, 2e-4, 1.0]])
    oracle = HomographyOracle(Hm, (80, 60), (70, 50))
    q = _grid(80, 60)
    xy1, visible = oracle.true_match(q)
    np.testing.assert_allclose(xy1, warp_points(q, Hm), atol=1e-12)
    inside = (xy1[:, 0] >= -0.5) & (xy1[:, 0] <= 69.5) & (xy1[:, 1] >= -0.5) & (xy1[:, 1] <= 49.5)
    np.testing.assert_array_equal(visible, inside)
    assert 0.3 < visible.mean() < 1.0
    back, back_visible = oracle.reverse().true_match(xy1[visible])
    np.testing.assert_allclose(back, q[visible], atol=1e-9)
    assert back_visible.all()
    dense_xy1, dense_visible = oracle.dense()
    np.testing.assert_allclose(dense_xy1.reshape(-1, 2)[visible], xy1[visible], atol=1e-4)
    np.testing.assert_array_equal(dense_visible.ravel(), visible)
    with pytest.raises(ValueError, match="invertible"):
        HomographyOracle(np.zeros((3, 3)), (8, 8), (8, 8))


def test_homography_oracle_of_a_pump_synthetic_pair_aligns_its_images():
    """The oracle of a PUMP S pair: img2 sampled at the oracle's xy1 matches img1 (both in OpenCV
    pixels); a U pair (no H) is refused."""
    from matchmill.models.pump.synthetic import CPU_SYNTH_CONF, TrainingPair, make_synthetic_pair

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0), 128 + 90 * np.sin((xx + yy) / 9.0),
                      128 + 80 * np.cos(xx / 13.0 - yy / 5.0)], -1).astype(np.uint8)
    pair = make_synthetic_pair(image, rng, CPU_SYNTH_CONF)
    oracle = HomographyOracle.from_pair(pair)
    assert oracle.size0 == (pair.img1.shape[1], pair.img1.shape[0])
    xy1, visible = oracle.dense()
    assert visible.mean() > 0.2
    inner = visible & (pair.img1.sum(axis=2) > 0)  # black = outside the source canvas
    src = pair.img1[inner].astype(np.float32)
    pts = xy1[inner]
    warped = cv2.remap(pair.img2.astype(np.float32), pts[:, 0].reshape(-1, 1), pts[:, 1].reshape(-1, 1),
                       cv2.INTER_LINEAR).reshape(-1, 3)
    keep = warped.sum(axis=1) > 0  # img2's own black border (outside its rotated canvas)
    assert keep.mean() > 0.5
    a, b = src[keep] - src[keep].mean(0), warped[keep] - warped[keep].mean(0)
    assert (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()) > 0.9
    with pytest.raises(ValueError, match="unsupervised"):
        HomographyOracle.from_pair(TrainingPair(pair.img1, pair.img2, np.full((3, 3), np.nan)))


# ----------------------------------------------------------------------------- seeds and settings


def test_held_out_seeds_are_refused_for_training():
    for seed in HELD_OUT_SEEDS:
        with pytest.raises(ValueError, match="held-out"):
            render_view_pair(seed, 0, 1, num_cameras=3, width=32, height=24)
    with pytest.raises(ValueError, match="held-out"):
        render_views(HELD_OUT_SEEDS[0], [0], num_cameras=3, width=32, height=24)
    # evaluation may render them (measuring Patch2Pix on the held-out scenes)
    pair = render_view_pair(HELD_OUT_SEEDS[-1], 0, 1, num_cameras=3, width=32, height=24, for_training=False)
    assert pair.view0.image.shape == (24, 32, 3)


def test_bad_settings_are_refused(demo_views):
    with pytest.raises(ConfigError, match="depth_tol"):
        DepthOracle(demo_views[0], demo_views[1], {"depth_tol": 0.1})
    with pytest.raises(ValueError, match="depth_rel_tol"):
        DepthOracle(demo_views[0], demo_views[1], {"depth_rel_tol": 0})
    with pytest.raises(ValueError, match="view indices"):
        render_views(SEED, [0, N_CAMS], N_CAMS, W, H)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        DepthOracle(demo_views[0], demo_views[1]).true_match(np.zeros((4, 3)))
