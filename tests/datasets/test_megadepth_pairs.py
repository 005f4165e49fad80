"""MegaDepth pair selection on the generated demo scene, and the COLMAP reader's error handling."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pycolmap
import pytest

from matchmill.datasets.colmap_scene import intrinsics_from_camera, read_colmap_scene
from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.megadepth import (
    DEFAULT_CONF,
    covisibility_counts,
    crop_to_aspect,
    load_depth,
    select_megadepth_pairs,
)
from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq
from matchmill.manifests.schemas import PAIRS, make_pair_id


@pytest.fixture(scope="session")
def demo_scene_dir(tmp_path_factory) -> Path:
    """The default demo scene, generated once per session (shared with other test files)."""
    return ensure_demo_scene(tmp_path_factory.getbasetemp() / "matchmill_demo")


@pytest.fixture(scope="session")
def root(demo_scene_dir) -> Path:
    return demo_scene_dir.parent


@pytest.fixture(scope="session")
def model(demo_scene_dir):
    """Independent ground truth straight from pycolmap: name -> (cam_from_world (4, 4), K_colmap,
    {point3D_id: COLMAP xy})."""
    rec = pycolmap.Reconstruction(str(demo_scene_dir / "sparse"))
    out = {}
    for image_id in rec.reg_image_ids():
        im = rec.image(image_id)
        T = np.eye(4)
        T[:3] = im.cam_from_world().matrix()
        obs = {p.point3D_id: np.array(p.xy) for p in im.get_observation_points2D()}
        out[im.name] = (T, rec.camera(im.camera_id).calibration_matrix(), obs)
    return out


@pytest.fixture(scope="session")
def default_pairs(root):
    return select_megadepth_pairs(root, {})


def _copy_scene(demo_scene_dir: Path, dst_root: Path) -> Path:
    dst = dst_root / "demo"
    shutil.copytree(demo_scene_dir, dst)
    return dst


def _names(pair: dict) -> tuple[str, str]:
    return pair["image0"].split("/", 1)[1], pair["image1"].split("/", 1)[1]


# ------------------------------------------------------------------------------------------


def test_rows_match_the_pairs_schema(default_pairs, demo_scene_dir):
    assert len(default_pairs) > 20
    table = pa.Table.from_pylist(default_pairs, schema=PAIRS)  # raises on a type mismatch
    assert table.num_rows == len(default_pairs)
    for p in default_pairs:
        assert list(p) == PAIRS.names
        assert p["scene"] == "demo" and p["status"] == "ok" and p["error"] is None and p["H_0to1"] is None
        assert p["image0"].startswith("demo/") and p["image1"].startswith("demo/")
        assert p["pair_id"] == make_pair_id(p["image0"], p["image1"])
        for key, name in zip(("path0", "path1"), _names(p)):
            assert Path(p[key]).is_absolute() and Path(p[key]).is_file()
            assert Path(p[key]) == (demo_scene_dir / "images" / name).absolute()
        assert len(p["K0"]) == 9 and len(p["K1"]) == 9 and len(p["T_0to1"]) == 16
        assert p["crop0"] == [318, 212] and p["crop1"] == [318, 212]  # 320x240 cropped to 3:2
    assert len({p["pair_id"] for p in default_pairs}) == len(default_pairs)


def test_overlap_bounds_and_value(default_pairs, model):
    for p in default_pairs:
        assert DEFAULT_CONF["min_overlap"] <= p["overlap"] < DEFAULT_CONF["max_overlap"]
        n0, n1 = _names(p)
        ids0, ids1 = set(model[n0][2]), set(model[n1][2])
        # the demo's depth maps agree with every observation, so nothing is dropped
        assert p["overlap"] == pytest.approx(len(ids0 & ids1) / len(ids0))


def test_poses_and_intrinsics_match_the_model(default_pairs, model):
    for p in default_pairs:
        n0, n1 = _names(p)
        (T0, K0c, _), (T1, K1c, _) = model[n0], model[n1]
        np.testing.assert_allclose(np.reshape(p["T_0to1"], (4, 4)), T1 @ np.linalg.inv(T0), atol=1e-9)
        for K, Kc in ((p["K0"], K0c), (p["K1"], K1c)):  # OpenCV = COLMAP principal point - 0.5
            np.testing.assert_allclose(np.reshape(K, (3, 3)), Kc - np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]))


def test_ground_truth_epipolar_geometry(default_pairs, model):
    for p in default_pairs:
        n0, n1 = _names(p)
        obs0, obs1 = model[n0][2], model[n1][2]
        shared = sorted(set(obs0) & set(obs1))
        x0 = np.array([obs0[i] for i in shared]) - 0.5  # COLMAP -> OpenCV pixels
        x1 = np.array([obs1[i] for i in shared]) - 0.5
        F = fundamental_from_pose(np.reshape(p["K0"], (3, 3)), np.reshape(p["K1"], (3, 3)),
                                  np.reshape(p["T_0to1"], (4, 4)))
        assert sampson_distance_sq(F, x0, x1).max() < 1e-6
        # and a wrong pose is caught by the same measure
        assert sampson_distance_sq(F, x0, x1[::-1]).mean() > 1.0


def test_max_pairs_and_seed(root):
    a = select_megadepth_pairs(root, {"max_pairs_per_scene": 7, "seed": 1})
    b = select_megadepth_pairs(root, {"max_pairs_per_scene": 7, "seed": 1})
    c = select_megadepth_pairs(root, {"max_pairs_per_scene": 7, "seed": 2})
    assert len(a) == 7 and a == b
    assert [p["pair_id"] for p in a] != [p["pair_id"] for p in c]


def test_overlap_bins_are_respected(root):
    edges = [0.35, 0.45, 0.55, 1.0]
    pairs = select_megadepth_pairs(root, {"overlap_bins": edges, "pairs_per_bin": 5})
    counts = Counter(int(np.searchsorted(edges, p["overlap"], side="right")) - 1 for p in pairs)
    assert counts == {0: 5, 1: 5, 2: 5}
    # quota from max_pairs_per_scene when pairs_per_bin is None
    pairs = select_megadepth_pairs(root, {"overlap_bins": edges, "max_pairs_per_scene": 9})
    counts = Counter(int(np.searchsorted(edges, p["overlap"], side="right")) - 1 for p in pairs)
    assert counts == {0: 3, 1: 3, 2: 3}
    # bins narrower than [min_overlap, max_overlap) restrict the candidates
    pairs = select_megadepth_pairs(root, {"overlap_bins": [0.5, 0.6]})
    assert pairs and all(0.5 <= p["overlap"] < 0.6 for p in pairs)


def test_symmetric_flag(default_pairs, root):
    def has_both(pairs):
        keys = {(p["image0"], p["image1"]) for p in pairs}
        return any((b, a) in keys for a, b in keys)

    assert has_both(default_pairs)
    one_way = select_megadepth_pairs(root, {"symmetric": False})
    assert not has_both(one_way)
    unordered = {frozenset((p["image0"], p["image1"])) for p in default_pairs}
    assert {frozenset((p["image0"], p["image1"])) for p in one_way} == unordered


def test_aspect_filter_and_crop_options(default_pairs, root):
    assert select_megadepth_pairs(root, {"aspect_range": [1.4, 1.7]}) == []
    no_filter = select_megadepth_pairs(root, {"aspect_range": None})
    assert [p["pair_id"] for p in no_filter] == [p["pair_id"] for p in default_pairs]
    no_crop = select_megadepth_pairs(root, {"crop_aspect": None, "max_pairs_per_scene": 3})
    assert all(p["crop0"] == [320, 240] and p["crop1"] == [320, 240] for p in no_crop)


@pytest.mark.parametrize(
    "size, expected",
    [((320, 240), (318, 212)), ((640, 480), (639, 426)), ((1600, 900), (1350, 900)),
     ((1001, 667), (999, 666)), ((1500, 1000), (1500, 1000)), ((1024, 683), (1023, 682))],
)
def test_crop_to_aspect(size, expected):
    w, h = crop_to_aspect(*size, 1.5)
    assert (w, h) == expected and w * 2 == h * 3 and w <= size[0] and h <= size[1]
    assert crop_to_aspect(*size, None) == size


def test_covisibility_counts_match_dense_product():
    rng = np.random.default_rng(0)
    incidence = rng.random((9, 120)) < 0.4
    im, pt = np.nonzero(incidence)
    dense = incidence.astype(int) @ incidence.T.astype(int)
    np.testing.assert_array_equal(covisibility_counts(im, pt, 9), dense)
    np.testing.assert_array_equal(covisibility_counts(im, pt, 9, chunk=7), dense)  # chunked path
    assert covisibility_counts(np.zeros(0, int), np.zeros(0, int), 3).sum() == 0


def test_sampson_check_drops_pairs_with_wrong_intrinsics(demo_scene_dir, tmp_path):
    scene_dir = _copy_scene(demo_scene_dir, tmp_path)
    rec = pycolmap.Reconstruction(str(scene_dir / "sparse"))
    bad = rec.find_image_with_name("demo_003.jpg")
    cam = rec.camera(bad.camera_id)
    p = np.array(cam.params)
    cam.params = [p[0] * 1.15, p[1] * 1.15, p[2], p[3]]
    rec.write(str(scene_dir / "sparse"))

    checked = select_megadepth_pairs(tmp_path, {})
    unchecked = select_megadepth_pairs(tmp_path, {"max_sampson_sq": None})
    involves = lambda pairs: [q for q in pairs if "demo/demo_003.jpg" in (q["image0"], q["image1"])]  # noqa: E731
    assert len(involves(unchecked)) > 0
    assert involves(checked) == []
    assert len(checked) == len(unchecked) - len(involves(unchecked))


def test_depth_maps_drop_inconsistent_observations(demo_scene_dir, default_pairs, tmp_path):
    scene_dir = _copy_scene(demo_scene_dir, tmp_path)
    dpath = scene_dir / "depths" / "demo_005.h5"
    depth = load_depth(dpath)
    with h5py.File(dpath, "w") as f:  # every observation of demo_005 now disagrees by 30 %
        f.create_dataset("depth", data=depth * 1.3)
    with_depth = select_megadepth_pairs(tmp_path, {})
    assert with_depth and all("demo/demo_005.jpg" not in (p["image0"], p["image1"]) for p in with_depth)
    without = select_megadepth_pairs(tmp_path, {"depth_check": False})
    assert any("demo/demo_005.jpg" in (p["image0"], p["image1"]) for p in without)
    # a missing depth folder skips the check (and the demo's true depths change nothing)
    shutil.rmtree(scene_dir / "depths")
    assert select_megadepth_pairs(tmp_path, {}) == [
        {**p, "path0": p["path0"].replace(str(demo_scene_dir.parent), str(tmp_path)),
         "path1": p["path1"].replace(str(demo_scene_dir.parent), str(tmp_path))} for p in default_pairs
    ]


def test_missing_images_are_dropped(demo_scene_dir, tmp_path):
    scene_dir = _copy_scene(demo_scene_dir, tmp_path)
    (scene_dir / "images" / "demo_007.jpg").unlink()
    pairs = select_megadepth_pairs(tmp_path, {})
    assert pairs and all("demo/demo_007.jpg" not in (p["image0"], p["image1"]) for p in pairs)
    kept = select_megadepth_pairs(tmp_path, {"require_images": False})
    assert any("demo/demo_007.jpg" in (p["image0"], p["image1"]) for p in kept)


# ------------------------------------------------------------------------------------------
# bad inputs


def test_missing_root_and_scene_errors(root, tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nowhere"))):
        select_megadepth_pairs(tmp_path / "nowhere", {})
    with pytest.raises(ValueError, match="no scene folder"):
        select_megadepth_pairs(tmp_path, {})
    with pytest.raises(ValueError, match=re.escape(str(root / "nope" / "sparse"))):
        select_megadepth_pairs(root, {"scenes": ["nope"]})
    with pytest.raises(ValueError, match="unknown .* keys"):
        select_megadepth_pairs(root, {"min_overlapp": 0.2})
    with pytest.raises(ValueError, match="overlap_bins"):
        select_megadepth_pairs(root, {"overlap_bins": [0.5, 0.4]})
    assert select_megadepth_pairs(root, {"exclude_scenes": ["demo"], "scenes": ["demo"]}) == []


def test_missing_or_corrupt_sparse_model(demo_scene_dir, tmp_path):
    scene_dir = _copy_scene(demo_scene_dir, tmp_path)
    (scene_dir / "sparse" / "points3D.bin").unlink()
    with pytest.raises(ValueError, match=re.escape(str(scene_dir / "sparse"))):
        select_megadepth_pairs(tmp_path, {"scenes": ["demo"]})
    with pytest.raises(ValueError, match=re.escape(str(scene_dir / "sparse"))):
        read_colmap_scene(scene_dir / "sparse")
    with pytest.raises(ValueError, match="does not exist"):
        read_colmap_scene(scene_dir / "no_such_model")
    shutil.copy(demo_scene_dir / "sparse" / "points3D.bin", scene_dir / "sparse" / "points3D.bin")
    with open(scene_dir / "sparse" / "images.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="images.bin"):
        read_colmap_scene(scene_dir / "sparse")


def test_camera_models(tmp_path):
    assert intrinsics_from_camera("SIMPLE_RADIAL", [500.0, 320.0, 240.0, 0.1]).tolist() == [
        [500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]]
    assert intrinsics_from_camera("RADIAL", [500.0, 320.0, 240.0, 0.1, 0.0])[0, 2] == 319.5
    assert intrinsics_from_camera("SIMPLE_PINHOLE", [400.0, 100.0, 50.0])[1, 1] == 400.0
    # an OPENCV camera in a model is rejected with the folder and image in the message
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, "OPENCV", 300.0, 64, 48)
    rec.add_camera_with_trivial_rig(cam)
    rec.add_image_with_trivial_frame(pycolmap.Image(name="x.jpg", camera_id=1, image_id=1), pycolmap.Rigid3d())
    rec.write(str(tmp_path))
    with pytest.raises(ValueError, match=r"OPENCV.*not supported") as e:
        read_colmap_scene(tmp_path)
    assert str(tmp_path) in str(e.value) and "x.jpg" in str(e.value)
