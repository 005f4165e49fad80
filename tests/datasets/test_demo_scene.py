"""The generated demo scene: layout, determinism, depth maps, COLMAP model and pixel conventions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from matchmill.datasets.colmap_scene import read_colmap_scene
from matchmill.datasets.demo import (
    DEMO_SCENE_VERSION,
    MARKER_NAME,
    Quad,
    Scene,
    build_scene,
    ensure_demo_scene,
    render_view,
    write_demo_scene,
)
from matchmill.datasets.megadepth import load_depth, sample_depth
from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq

W, H, N_CAMS = 320, 240, 14


@pytest.fixture(scope="session")
def demo_scene_dir(tmp_path_factory) -> Path:
    """The default demo scene, generated once per session (shared with other test files)."""
    return ensure_demo_scene(tmp_path_factory.getbasetemp() / "matchmill_demo")


@pytest.fixture(scope="session")
def scene(demo_scene_dir):
    return read_colmap_scene(demo_scene_dir / "sparse")


def _read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img


def _backproject(im, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (N, 2) with depth, their depth (N,) and world points (N, 3)."""
    v, u = np.nonzero(depth > 0)
    uv = np.stack([u, v], 1).astype(np.float64)
    z = depth[v, u].astype(np.float64)
    Xc = np.concatenate([(uv - im.K[:2, 2]) / np.diag(im.K)[:2], np.ones((len(uv), 1))], 1) * z[:, None]
    T_inv = np.linalg.inv(im.cam_from_world)
    return uv, z, Xc @ T_inv[:3, :3].T + T_inv[:3, 3]


def _project(im, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV pixels (N, 2) and depth (N,) of world points (N, 3) in image ``im``."""
    Xc = X @ im.cam_from_world[:3, :3].T + im.cam_from_world[:3, 3]
    return Xc[:, :2] / Xc[:, 2:] * np.diag(im.K)[:2] + im.K[:2, 2], Xc[:, 2]


# ------------------------------------------------------------------------------------------


def test_layout_and_marker(demo_scene_dir: Path):
    out = demo_scene_dir.parent
    images = sorted((demo_scene_dir / "images").glob("*.jpg"))
    depths = sorted((demo_scene_dir / "depths").glob("*.h5"))
    assert len(images) == N_CAMS and len(depths) == N_CAMS
    assert [p.stem for p in images] == [p.stem for p in depths]
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (demo_scene_dir / "sparse" / name).is_file()
    img = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
    assert img.shape == (H, W, 3)
    assert img.std() > 20  # textured, not blank
    with h5py.File(depths[0], "r") as f:
        d = f["depth"]
        assert d.shape == (H, W) and d.dtype == np.float32
    expected = {"seed": 0, "num_cameras": N_CAMS, "width": W, "height": H,
                "version": DEMO_SCENE_VERSION, "scene": "demo"}
    assert json.loads((out / MARKER_NAME).read_text()) == expected
    assert json.loads((demo_scene_dir / MARKER_NAME).read_text()) == expected


def test_ensure_reuses_existing_scene(demo_scene_dir: Path):
    jpg = demo_scene_dir / "images" / "demo_000.jpg"
    before = jpg.stat().st_mtime_ns
    assert ensure_demo_scene(demo_scene_dir.parent) == demo_scene_dir
    assert jpg.stat().st_mtime_ns == before


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    kw = dict(num_cameras=2, width=96, height=72)
    a = write_demo_scene(tmp_path / "a", seed=3, **kw)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 2
    first = {n: (a / "images" / n).read_bytes() for n in names}
    depth0 = load_depth(a / "depths" / (Path(names[0]).stem + ".h5"))
    # rewriting in place replaces the old scene and must give the same bytes again
    assert write_demo_scene(tmp_path / "a", seed=3, **kw) == a
    c = write_demo_scene(tmp_path / "c", seed=4, **kw)
    for n in names:
        assert (a / "images" / n).read_bytes() == first[n]
        assert (c / "images" / n).read_bytes() != first[n]
    np.testing.assert_array_equal(load_depth(a / "depths" / (Path(names[0]).stem + ".h5")), depth0)


def test_bad_arguments(tmp_path: Path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileExistsError, match="not a demo scene"):
        write_demo_scene(tmp_path, num_cameras=2, width=32, height=32)
    with pytest.raises(ValueError, match="num_cameras"):
        write_demo_scene(tmp_path / "x", num_cameras=1)
    with pytest.raises(ValueError, match="plain folder name"):
        write_demo_scene(tmp_path / "x", scene="a/b")


def test_model_reads_back_with_pycolmap(demo_scene_dir: Path):
    rec = pycolmap.Reconstruction(str(demo_scene_dir / "sparse"))
    assert rec.num_reg_images() == N_CAMS >= 12
    assert rec.num_points3D() > 1000
    n_checked = 0
    for image_id in rec.reg_image_ids():
        im = rec.image(image_id)
        cam = rec.camera(im.camera_id)
        assert cam.model_name == "PINHOLE" and (cam.width, cam.height) == (W, H)
        # COLMAP convention: principal point at the image centre = (W/2, H/2)
        assert cam.principal_point_x == pytest.approx(W / 2) and cam.principal_point_y == pytest.approx(H / 2)
        pts = im.get_observation_points2D()
        assert len(pts) > 100
        xy = np.array([p.xy for p in pts])
        X = np.array([rec.points3D[p.point3D_id].xyz for p in pts])
        T = np.eye(4)
        T[:3] = im.cam_from_world().matrix()
        Xc = X @ T[:3, :3].T + T[:3, 3]
        proj = (Xc @ cam.calibration_matrix().T)[:, :2] / Xc[:, 2:]
        assert np.abs(proj - xy).max() < 0.01
        assert np.all((xy >= 0) & (xy <= [W, H]))
        n_checked += len(pts)
    assert n_checked == sum(p.track.length() for p in rec.points3D.values())
    assert min(p.track.length() for p in rec.points3D.values()) >= 2


def test_colmap_scene_uses_opencv_convention(demo_scene_dir: Path, scene):
    rec = pycolmap.Reconstruction(str(demo_scene_dir / "sparse"))
    assert len(scene.images) == N_CAMS
    for im in scene.images:
        assert im.K[0, 2] == pytest.approx(W / 2 - 0.5) and im.K[1, 2] == pytest.approx(H / 2 - 0.5)
        X = scene.xyz[np.searchsorted(scene.point3D_ids, im.point3D_ids)]
        xy, z = _project(im, X)
        assert np.abs(xy - im.xy).max() < 0.01
        np.testing.assert_allclose(z, im.depths, rtol=1e-9)
        ref = rec.find_image_with_name(im.name)
        ref_xy = {p.point3D_id: p.xy for p in ref.get_observation_points2D()}
        np.testing.assert_allclose(im.xy + 0.5, [ref_xy[int(i)] for i in im.point3D_ids], atol=1e-9)


def test_observations_agree_with_depth_maps(demo_scene_dir: Path, scene):
    for im in scene.images:
        depth = load_depth(demo_scene_dir / "depths" / (Path(im.name).stem + ".h5"))
        z_map = sample_depth(depth, im.xy)
        assert np.isfinite(z_map).all()
        assert np.abs(z_map - im.depths).max() <= 0.01 * z_map.max()
        assert (np.abs(z_map - im.depths) <= 0.01 * z_map).all()


@pytest.mark.parametrize("i, j", [(0, 2), (3, 4), (6, 7), (10, 11)])
def test_depth_maps_are_consistent_across_views(demo_scene_dir: Path, scene, i: int, j: int):
    a, b = scene.images[i], scene.images[j]
    da = load_depth(demo_scene_dir / "depths" / (Path(a.name).stem + ".h5"))
    db = load_depth(demo_scene_dir / "depths" / (Path(b.name).stem + ".h5"))
    assert (da == 0).mean() < 0.5  # mostly geometry, some sky
    _, _, X = _backproject(a, da)
    xy, z = _project(b, X)
    zb = sample_depth(db, xy)
    known = np.isfinite(zb) & (z > 0)
    visible = known & (np.abs(z - zb) <= 0.01 * zb)
    in_front = known & (z < 0.99 * zb)  # would be seen in front of b's surface: impossible
    assert visible.sum() > 0.3 * len(X)
    assert in_front.sum() <= 1e-3 * known.sum()


def test_renderer_pixel_convention():
    """OpenCV convention in the renderer: pixel u covers [u - 0.5, u + 0.5]. A quad whose edge
    projects to u = cx + 0.2 - 0.4 = 159.3 (cx = 159.5) must fully cover pixel 159 in colour and
    depth, and leave pixel 160 untouched; a half-pixel error would mix or move them."""
    f, cx, cy, z = 100.0, 159.5, 119.5, 5.0
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    x_edge = (159.3 - cx) / f * z
    quad = Quad(origin=np.array([x_edge - 100, -50, z]), u=np.array([1.0, 0, 0]), v=np.array([0, 1.0, 0]),
                size=(100.0, 100.0), normal=np.array([0, 0, -1.0]), texture=0, texel=0.01, offset=(0.0, 0.0))
    flat = Scene(quads=[quad], textures=[[np.full((64, 64, 3), 0.5, np.float32)]], boxes=[], walls=[],
                 lightmaps=[np.ones((2, 2), np.float32)])
    rgb, depth = render_view(flat, K, np.eye(4), 320, 240)
    np.testing.assert_allclose(rgb[:, :160], 0.5, atol=1e-6)
    assert np.all(np.abs(rgb[:, 160:] - 0.5).max(axis=2) > 0.1)  # sky
    np.testing.assert_allclose(depth[:, :160], z, rtol=1e-6)
    assert np.all(depth[:, 160:] == 0)


def test_depth_maps_backproject_onto_the_ground_plane(demo_scene_dir: Path, scene):
    """Depth maps + model K (OpenCV) put ground pixels exactly on the world plane z = 0."""
    for im in scene.images[::3]:
        depth = load_depth(demo_scene_dir / "depths" / (Path(im.name).stem + ".h5"))
        _, z, X = _backproject(im, depth)
        on_ground = np.abs(X[:, 2]) < 1e-6 * z  # float32 depth gives ~1e-8; half a pixel ~1e-4
        assert on_ground.mean() > 0.08
        near = np.abs(X[:, 2]) < 2e-2  # ground, plus the lowest rows of walls and boxes
        assert on_ground.sum() >= 0.95 * near.sum()


@pytest.mark.parametrize("i, j", [(0, 2), (6, 7)])
def test_pixel_convention_by_photometric_alignment(demo_scene_dir: Path, scene, i: int, j: int):
    """Warping image j onto image i through depth and poses aligns best with zero extra shift;
    a half-pixel error in any convention (render, depth, K, COLMAP shift) would break this.

    The photos differ in sunlight, blur and noise (as real photos do), which flattens the NCC
    peak, so its sub-pixel position (parabola through the shifts -0.5, 0, +0.5) is checked: a
    half-pixel error would move it by ~0.5 px."""
    a, b = scene.images[i], scene.images[j]
    da = load_depth(demo_scene_dir / "depths" / (Path(a.name).stem + ".h5"))
    db = load_depth(demo_scene_dir / "depths" / (Path(b.name).stem + ".h5"))
    ia = _read_gray(demo_scene_dir / "images" / a.name).astype(np.float32)
    ib = _read_gray(demo_scene_dir / "images" / b.name).astype(np.float32)
    uv, _, X = _backproject(a, da)
    xy, z = _project(b, X)
    zb = sample_depth(db, xy)
    vis = np.isfinite(zb) & (np.abs(z - zb) <= 0.01 * zb)
    src = ia[uv[vis, 1].astype(int), uv[vis, 0].astype(int)]

    def ncc(shift) -> float:
        q = (xy[vis] + shift).astype(np.float32)
        n = len(q) // 1000 * 1000
        vals = cv2.remap(ib, q[:n, 0].reshape(-1, 1000), q[:n, 1].reshape(-1, 1000), cv2.INTER_LINEAR).ravel()
        x, y = src[:n] - src[:n].mean(), vals - vals.mean()
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    best = ncc((0.0, 0.0))
    assert best > 0.85
    for axis in (0, 1):
        step = np.zeros(2)
        step[axis] = 0.5
        lo, hi = ncc(-step), ncc(step)
        assert lo < best - 0.005 and hi < best - 0.005
        peak = 0.5 * 0.5 * (lo - hi) / (lo - 2 * best + hi)  # sub-pixel NCC maximum along the axis
        assert abs(peak) < 0.1, (axis, peak)


def test_textures_do_not_repeat_across_surfaces():
    """Each quad maps into its own region of its texture without wrapping, and quads sharing a
    texture use disjoint regions: a wrapped texture is an exactly periodic pattern (matches one
    period off are geometrically consistent), which made the demo's brick facade ambiguous."""
    world = build_scene(np.random.default_rng([0, 2]))
    regions: dict[int, list[tuple[float, float, float, float]]] = {}
    for q in world.quads:
        h, w = world.textures[q.texture][0].shape[:2]
        s0, t0 = q.offset
        s1, t1 = s0 + q.size[0] / q.texel, t0 + q.size[1] / q.texel
        assert 0 <= s0 and s1 <= w and 0 <= t0 and t1 <= h, (q.texture, (s0, s1, t0, t1), (w, h))
        for r in regions.get(q.texture, []):  # shared edges are fine, overlaps are not
            assert min(s1, r[1]) - max(s0, r[0]) <= 1e-6 or min(t1, r[3]) - max(t0, r[2]) <= 1e-6
        regions.setdefault(q.texture, []).append((s0, s1, t0, t1))


def test_viewpoints_vary(scene):
    """Some pairs overlap >= 0.35, some less; scale changes >= 1.5x between overlapping views."""
    ids = [set(im.point3D_ids.tolist()) for im in scene.images]
    n = len(ids)
    ov = np.array([[len(ids[i] & ids[j]) / len(ids[i]) if i != j else -1 for j in range(n)] for i in range(n)])
    assert (ov >= 0.35).sum() >= 20
    assert ((ov >= 0) & (ov < 0.35)).sum() >= 20
    max_scale = 0.0
    for i in range(n):
        for j in range(n):
            if ov[i, j] < 0.35:
                continue
            a, b = scene.images[i], scene.images[j]
            _, ia, ib = np.intersect1d(a.point3D_ids, b.point3D_ids, return_indices=True)
            ratio = np.median((a.depths[ia] / a.K[0, 0]) / (b.depths[ib] / b.K[0, 0]))
            max_scale = max(max_scale, ratio)
    assert max_scale >= 1.5


def test_sift_works_between_neighbours_but_is_not_trivial(demo_scene_dir: Path, scene):
    sift = cv2.SIFT_create(1500)
    matcher = cv2.BFMatcher()
    ratios = []
    for i, j in [(0, 2), (3, 4), (6, 7), (10, 11)]:
        a, b = scene.images[i], scene.images[j]
        ka, da = sift.detectAndCompute(_read_gray(demo_scene_dir / "images" / a.name), None)
        kb, db = sift.detectAndCompute(_read_gray(demo_scene_dir / "images" / b.name), None)
        good = [m for m, m2 in matcher.knnMatch(da, db, k=2) if m.distance < 0.8 * m2.distance]
        x0 = np.array([ka[m.queryIdx].pt for m in good])
        x1 = np.array([kb[m.trainIdx].pt for m in good])
        T = b.cam_from_world @ np.linalg.inv(a.cam_from_world)
        err = sampson_distance_sq(fundamental_from_pose(a.K, b.K, T), x0, x1)
        correct = int((err < 4.0).sum())
        assert correct >= 30, (i, j, correct, len(good))
        ratios.append(correct / len(good))
    assert np.median(ratios) < 0.95  # repeated textures and viewpoint change leave wrong matches
