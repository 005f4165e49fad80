"""PUMP through the real stage code: dense maps -> pyramidal matching, and PUMP descriptors at SIFT keypoints -> MNN."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.manifests.artifacts import read_artifact, resolve_artifact
from matchmill.config import ConfigError
from matchmill.pipeline.config import load_config
from matchmill.pipeline.inprocess import run_inprocess
from matchmill.methods.pump import stored_scales

from tests.helpers.paths import DEMO_CONFIG

SMALL = ["extract.resize_max=160", "pairs.max_pairs_per_scene=2"]


@pytest.fixture(scope="module")
def pump_conf(demo_root):
    return lambda *extra: load_config(DEMO_CONFIG, [f"data.root={demo_root}", *SMALL, "extract.method=pump", *extra])


def test_stored_scales_are_the_multiscale_steps():
    assert stored_scales(0.5) == pytest.approx([1.0, 2**-0.5, 0.5])
    assert stored_scales(1.0) == [1.0]
    with pytest.raises(ValueError, match="dense_min_scale"):
        stored_scales(0.0)


def test_pyramid_chain_runs_end_to_end(pump_conf, tmp_path):
    conf = pump_conf("propose.method=pump-pyramid", "refine.method=identity", "propose.min_cc_size=5")
    result = run_inprocess(conf, f"file://{tmp_path}")
    feats = result.tables["extract"].to_pylist()
    assert all(f["status"] == "ok" for f in feats), [f["error"] for f in feats]
    tensors = read_artifact(resolve_artifact(result.run_url, feats[0]["artifact_uri"]))
    assert list(tensors["dense_scales"]) == pytest.approx([1.0, 2**-0.5, 0.5])
    d0 = tensors["dense_0"]
    assert d0.dtype == np.float16 and d0.shape[0] == 128 and max(d0.shape[1:]) == 160
    norms = np.linalg.norm(d0.astype(np.float32), axis=0)
    assert np.allclose(norms, 1.0, atol=1e-2)  # unit descriptors at every pixel
    assert tensors["dense_1"].shape[1] == round(d0.shape[1] * 2**-0.5)
    for row in result.tables["propose"].to_pylist():
        assert row["status"] == "ok", row["error"]
        m = np.asarray(row["matches"], np.float32).reshape(-1, 4)
        assert len(m) == row["num_matches"]
        assert (m >= -0.5).all() and (m[:, [0, 2]] < 320).all() and (m[:, [1, 3]] < 240).all()
    verified = result.tables["verify"].to_pylist()
    assert all(r["status"] == "ok" for r in verified), [r["error"] for r in verified]


def test_pump_descriptors_at_sift_keypoints_feed_mnn(pump_conf, tmp_path):
    conf = pump_conf("extract.keypoints=sift", "extract.max_keypoints=256", "propose.method=mnn",
                     "refine.method=identity")
    result = run_inprocess(conf, f"file://{tmp_path}")
    tensors = read_artifact(resolve_artifact(result.run_url, result.tables["extract"].to_pylist()[0]["artifact_uri"]))
    kp, desc = tensors["keypoints"], tensors["descriptors"]
    assert 0 < len(kp) <= 256 and desc.shape == (len(kp), 128)
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-3)
    assert kp[:, 0].max() < 320 and kp[:, 1].max() < 240  # original pixels (the image was resized to 160)
    rows = result.tables["propose"].to_pylist()
    assert all(r["status"] == "ok" and r["num_matches"] > 0 for r in rows), [r["error"] for r in rows]


def test_pyramid_proposer_on_keypoint_only_features_says_what_is_missing(demo_root, tmp_path):
    conf = load_config(DEMO_CONFIG, [f"data.root={demo_root}", *SMALL, "propose.method=pump-pyramid"])
    result = run_inprocess(conf, f"file://{tmp_path}")  # SIFT features: no dense maps
    rows = result.tables["propose"].to_pylist()
    assert rows and all(r["status"] == "failed" for r in rows)
    assert "extract.method=pump" in rows[0]["error"]


def test_bad_pump_settings_are_refused(pump_conf):
    with pytest.raises((ConfigError, ValueError)):
        from matchmill.methods.pump import PumpExtractor

        PumpExtractor({"keypoints": "harris"})
    conf = pump_conf("propose.method=pump-pyramid")
    assert conf["propose"]["max_scale"] == 1.0 and conf["extract"]["dense_min_scale"] == 0.5
    assert conf["propose"]["base_scale"] == 0.5


@pytest.mark.parametrize("base_scale", [0.5, 1.0])
def test_an_image_against_itself_matches_the_identity_in_original_pixels(demo_root, base_scale):
    from matchmill.datasets.image_io import load_image
    from matchmill.geometry.frames import resize_max
    from matchmill.methods.pump import PumpExtractor, PumpPyramidProposer

    image = load_image(str(sorted((demo_root / "demo" / "images").glob("*.jpg"))[2]))
    small, scale = resize_max(image, 128)
    feats = PumpExtractor({})(small)
    net_scale = feats.pop("net_scale")
    feats["scale"] = np.array([scale[0] * net_scale[0], scale[1] * net_scale[1]])
    matches, scores = PumpPyramidProposer({"base_scale": base_scale, "min_cc_size": 5})(feats, feats)
    assert len(matches) > 20 and len(scores) == len(matches)
    pixel = image.shape[1] / small.shape[1] / base_scale  # one pixel of the matching frame, in original pixels
    err = np.abs(matches[:, :2] - matches[:, 2:]).max(axis=1)
    cell = 4 * pixel  # one atomic cell in original pixels
    assert (err <= 2 * cell).mean() >= 0.99  # the criterion: within 2 atomic cells
    assert (err <= pixel + 1e-3).mean() >= 0.9  # mostly exact; the untrained net's neighbouring pixels are near-identical
    assert matches[:, 0].max() > image.shape[1] - 2 * cell and matches[:, 1].max() > image.shape[0] - 2 * cell
