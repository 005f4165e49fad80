"""``matchmill export RUN OUT --format colmap``: a COLMAP database that pycolmap's incremental
mapper reconstructs as it is (demo run -> export -> reconstruction)."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.pipeline.config import load_config
from matchmill.pipeline.export import ExportError
from matchmill.pipeline.export.colmap import _colmap_F, export_colmap
from matchmill.pipeline.export.common import image_names
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local, demo_root) -> str:
    storage = tmp_path_factory.mktemp("colmap_runs")
    conf = load_config(DEMO_CONFIG, [f"storage=file://{storage}", f"data.root={demo_root}",
                                     "pairs.max_pairs_per_scene=200"])
    return run_pipeline(conf, echo=lambda _: None).run_url


def test_colmap_database_reconstructs_the_demo(demo_run, tmp_path, capsys):
    import pycolmap

    from matchmill.cli import main

    from matchmill.manifests.commit import read_stage

    assert main(["export", demo_run, str(tmp_path / "colmap"), "--format", "colmap"]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = dict(kv.split("=", 1) for kv in printed[0].split())
    assert summary["keypoints_from"] == "native" and printed[1] == "keypoints: the extract stage's keypoints"
    stored = {r["image_id"]: r["num_keypoints"] for r in
              read_stage(demo_run, "extract", columns=["image_id", "num_keypoints"]).to_pylist()}
    assert int(summary["keypoints"]) == sum(stored.values())  # every keypoint of every image, none merged
    verify = read_stage(demo_run, "verify", columns=["image0", "image1", "num_inliers", "verified"]).to_pylist()
    listed: dict[frozenset, set[int]] = {}  # a pair listed both ways is written once, from a verified listing
    for r in verify:
        listed.setdefault(frozenset((r["image0"], r["image1"])), set()).update([r["num_inliers"]] if r["verified"] else [])
    db = pycolmap.Database.open(summary["database"])
    try:
        assert db.num_images() == 14 and db.num_verified_image_pairs() == int(summary["pairs"]) > 20
        ids = {image.name: image.image_id for image in db.read_all_images()}
        written = 0
        for pair, counts in listed.items():
            a, b = (ids[f"{n.split('/', 1)[1]}"] for n in sorted(pair))
            n = len(db.read_two_view_geometry(a, b).inlier_matches) if db.exists_two_view_geometry(a, b) else 0
            assert n in counts or (n == 0 and counts <= {0}), (pair, n, counts)  # every inlier of a verified listing
            written += n
        assert written == int(summary["matches"])
        cameras = db.read_all_cameras()
        assert all(c.model.name == "PINHOLE" for c in cameras)  # the run's K, not a guess
    finally:
        db.close()
    (tmp_path / "sparse").mkdir()
    recs = pycolmap.incremental_mapping(summary["database"], summary["image_root"], str(tmp_path / "sparse"))
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    assert best.num_reg_images() >= 12
    assert best.compute_mean_reprojection_error() < 1.5


def test_image_names_are_relative_to_the_root(tmp_path):
    root, names = image_names({"s/a.jpg": str(tmp_path / "s" / "a.jpg"), "s/b.jpg": f"file://{tmp_path}/s/b.jpg"}, None)
    assert root == str(tmp_path / "s") and names == {"s/a.jpg": "a.jpg", "s/b.jpg": "b.jpg"}
    _, names = image_names({"s/a.jpg": str(tmp_path / "s" / "a.jpg")}, str(tmp_path))
    assert names == {"s/a.jpg": "s/a.jpg"}
    with pytest.raises(ExportError, match="not under the image root"):
        image_names({"x": "/elsewhere/x.jpg"}, str(tmp_path))


def test_fundamental_matrix_moves_to_colmap_pixels():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(3, 3))
    x0, x1 = np.array([10.0, 20.0, 1.0]), np.array([30.0, 5.0, 1.0])
    shift = np.array([0.5, 0.5, 0.0])
    assert (x1 + shift) @ _colmap_F(F) @ (x0 + shift) == pytest.approx(x1 @ F @ x0)


def test_colmap_export_needs_verify(demo_run, tmp_path):
    with pytest.raises(ExportError, match="--stage verify"):
        export_colmap(demo_run, str(tmp_path), stage="refine")


def test_hloc_export_writes_pairs_txt_with_names_of_the_image_root(demo_run, demo_root, tmp_path):
    """With --image-root <scene>/images the h5 keys and pairs.txt use the names the scene's COLMAP
    model uses, so hloc's reconstruction finds the images and the model's names."""
    import h5py

    from matchmill.datasets.colmap_scene import read_colmap_scene
    from matchmill.pipeline.export import export_hloc

    images = demo_root / "demo" / "images"
    summary = export_hloc(demo_run, str(tmp_path / "hloc"), image_root=str(images))
    lines = (tmp_path / "hloc" / "pairs.txt").read_text().splitlines()
    assert len(lines) == summary["pairs"]
    model_names = set(read_colmap_scene(demo_root / "demo" / "sparse").names)
    with h5py.File(tmp_path / "hloc" / "keypoints.h5", "r") as f:
        assert set(f.keys()) <= model_names
    for line in lines:
        a, b = line.split()
        assert a in model_names and b in model_names and (images / a).is_file()
    default = export_hloc(demo_run, str(tmp_path / "ids"))
    first = (tmp_path / "ids" / "pairs.txt").read_text().splitlines()[0].split()
    assert default["pairs"] == summary["pairs"] and all(n.startswith("demo/") for n in first)


def test_sparse_demo_chain_exports_every_inlier_at_its_native_keypoints(demo_run, tmp_path, capsys):
    """SIFT + mutual NN + identity refine: the hloc export keeps 100 % of verify's inliers (the
    4 px quantisation keeps ~89 %), each at exactly the run's match coordinates, on the keypoints,
    scores and descriptors the extract stage stored."""
    import h5py

    from matchmill.manifests.artifacts import read_artifact, resolve_artifact
    from matchmill.manifests.columns import matches_rows
    from matchmill.manifests.commit import read_stage
    from matchmill.cli import main
    from matchmill.pipeline.export import names_to_pair

    out = tmp_path / "hloc"
    assert main(["export", demo_run, str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = dict(kv.split("=", 1) for kv in printed[0].split())
    verify = read_stage(demo_run, "verify", columns=["image0", "image1", "matches", "inliers", "num_inliers", "verified"])
    verify = verify.filter(verify.column("verified"))  # unverified pairs are not exported
    assert int(summary["skipped_unverified"]) == read_stage(demo_run, "verify").num_rows - verify.num_rows
    inliers = sum(verify.column("num_inliers").to_pylist())
    assert summary["keypoints_from"] == "native" and summary["kept"] == "1.0"
    assert int(summary["matches"]) == int(summary["input_matches"]) == inliers > 5000
    assert printed[1].startswith(f"keypoints: native (the extract stage's), {inliers} of {inliers} matches kept")

    stored = {r["image_id"]: read_artifact(resolve_artifact(demo_run, r["artifact_uri"]))
              for r in read_stage(demo_run, "extract", columns=["image_id", "artifact_uri"]).to_pylist()}
    with h5py.File(out / "keypoints.h5", "r") as kf, h5py.File(out / "matches.h5", "r") as mf:
        for image, arrays in stored.items():
            grp = kf[image]
            np.testing.assert_array_equal(grp["keypoints"][()], arrays["keypoints"])
            np.testing.assert_array_equal(grp["scores"][()], arrays["scores"])
            assert grp["descriptors"].shape == (128, len(arrays["keypoints"]))  # (D, N)
            np.testing.assert_array_equal(grp["descriptors"][()], arrays["descriptors"].T)
        exported = 0
        for r, m in zip(verify.to_pylist(), matches_rows(verify.column("matches"))):
            run_xy = np.asarray(m, np.float32)[np.asarray(r["inliers"], bool)]
            m0 = mf[names_to_pair(r["image0"], r["image1"])]["matches0"][()]
            i0 = np.flatnonzero(m0 >= 0)
            xy = np.concatenate([kf[r["image0"]]["keypoints"][()][i0], kf[r["image1"]]["keypoints"][()][m0[i0]]], 1)
            # the same (x0, y0, x1, y1) rows, bit for bit
            assert sorted(map(tuple, xy.tolist())) == sorted(map(tuple, run_xy.tolist()))
            exported += len(i0)
    assert exported == inliers


@pytest.mark.parametrize("keypoints", ["native", "matches"])
def test_hloc_export_reconstructs_through_pycolmap_as_hloc_would(demo_run, demo_root, tmp_path, keypoints):
    """hloc is not installable here (not on PyPI): its reconstruction.main steps through pycolmap
    (matchmill/pipeline/export/reconstruction.py) on the export as written, no manual step; with the native
    keypoints and with the 4 px quantised ones."""
    from matchmill.pipeline.export import export_hloc
    from matchmill.pipeline.export import reconstruct_hloc_export

    images = demo_root / "demo" / "images"
    summary = export_hloc(demo_run, str(tmp_path / "hloc"), image_root=str(images), keypoints=keypoints)
    assert summary["keypoints_from"] == ("native" if keypoints == "native" else "quantized")
    rec = reconstruct_hloc_export(tmp_path / "hloc", images, tmp_path / "rec")
    assert rec is not None and rec.num_reg_images() >= 12
    assert rec.compute_mean_reprojection_error() < 1.5
