"""The Python API (matchmill/api.py): ``match`` on one pair, ``run`` / ``open_run`` and ``Run``.

``match`` must give what a run stores for the same pair (one code path), so one test matches pairs
of the shared demo run (``demo_reference``) and compares with its verify rows; the run tests reuse
that run (a copy of it) rather than starting another Ray job.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import matchmill
from matchmill import api
from matchmill.config import ConfigError
from matchmill.datasets.image_io import load_image
from matchmill.manifests.storage import StorageError

from tests.helpers.paths import DEMO_CONFIG

from tests.helpers.runs import REFERENCE_OVERRIDES

# ----------------------------------------------------------------------------- package


def test_import_matchmill_config_does_not_import_the_api():
    code = ("import sys, matchmill.config, matchmill; "
            "assert 'matchmill.api' not in sys.modules and 'ray' not in sys.modules, 'api imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert matchmill.match is api.match and matchmill.Run is api.Run
    assert {"match", "run", "open_run", "Run"} <= set(dir(matchmill))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        matchmill.nope  # noqa: B018


# ----------------------------------------------------------------------------- match

#: A known homography: a mild perspective warp that keeps most of the photograph in view.
H_TRUE = np.array([[0.9, 0.08, 30.0], [-0.05, 0.95, 20.0], [1e-4, -5e-5, 1.0]])


@pytest.fixture(scope="module")
def photo_pair() -> tuple[np.ndarray, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    image0 = skimage_data.astronaut()  # (512, 512, 3) uint8, bundled with scikit-image
    image1 = cv2.warpPerspective(image0, H_TRUE, (image0.shape[1], image0.shape[0]))
    return image0, image1


def test_match_recovers_a_known_homography(photo_pair):
    image0, image1 = photo_pair
    out = matchmill.match(image0, image1, "sift", verify__geometry="homography", extract__resize_max=512)
    k = len(out["matches"])
    assert out["matches"].shape == (k, 4) and out["matches"].dtype == np.float32
    assert out["scores"].shape == (k,) and out["inliers"].shape == (k,) and out["inliers"].dtype == bool
    assert out["keypoints0"].ndim == 2 and out["keypoints0"].shape[1] == 2
    assert out["model"] == "homography" and out["num_inliers"] == int(out["inliers"].sum()) > 100
    assert out["image_size0"].tolist() == [512, 512]
    # the inliers agree with the true warp; the estimate is the true one
    inl = out["matches"][out["inliers"]].astype(np.float64)
    warped = cv2.perspectiveTransform(inl[None, :, :2], H_TRUE)[0]
    assert np.median(np.linalg.norm(warped - inl[:, 2:], axis=1)) < 1.0
    H = out["H"] / out["H"][2, 2]
    corners = np.array([[[0, 0], [511, 0], [511, 511], [0, 511]]], np.float64)
    err = np.linalg.norm(cv2.perspectiveTransform(corners, H) - cv2.perspectiveTransform(corners, H_TRUE), axis=2)
    assert err.max() < 3.0
    # deterministic, and the chain is built once per (method, overrides)
    chains = len(api._CHAINS)
    again = matchmill.match(image0, image1, "sift", overrides={"verify.geometry": "homography",
                                                              "extract.resize_max": 512})
    assert len(api._CHAINS) == chains
    np.testing.assert_array_equal(again["matches"], out["matches"])
    np.testing.assert_array_equal(again["inliers"], out["inliers"])


def test_match_takes_grey_arrays_and_paths(photo_pair, tmp_path):
    image0, image1 = photo_pair
    path0, path1 = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(path0), cv2.cvtColor(image0, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(path1), cv2.cvtColor(image1, cv2.COLOR_RGB2BGR))
    from_paths = matchmill.match(path0, str(path1), extract__resize_max=320)
    from_arrays = matchmill.match(image0, image1, overrides=["extract.resize_max=320"])
    np.testing.assert_array_equal(from_paths["matches"], from_arrays["matches"])
    assert from_paths["model"] == "fundamental" and from_paths["F"].shape == (3, 3)
    grey = matchmill.match(image0[:, :, 1], image1[:, :, 1], extract__resize_max=320)
    assert grey["num_inliers"] > 20


@pytest.mark.parametrize("call, error, words", [
    (lambda a: matchmill.match(a, a, "nope"), ConfigError, ["unknown method 'nope'", "sift"]),
    (lambda a: matchmill.match(a[:, :, :2], a), ValueError, ["image0", "(512, 512, 2)"]),
    (lambda a: matchmill.match(a, np.zeros((4, 5, 3, 2), np.uint8)), ValueError, ["image1", "(4, 5, 3, 2)"]),
    (lambda a: matchmill.match(a, a.astype(np.float32)), ValueError, ["image1", "float32"]),
    (lambda a: matchmill.match([1, 2], a), TypeError, ["image0", "list"]),
    (lambda a: matchmill.match("/nonexistent/x.png", a), FileNotFoundError, ["image0", "/nonexistent/x.png"]),
    (lambda a: matchmill.match(a, a, extract__max_kpts=10), ConfigError, ["extract.max_kpts"]),
    (lambda a: matchmill.match(a, a, extract__resize_max="big"), ConfigError, ["extract.resize_max"]),
    (lambda a: matchmill.match(a, a, pairs__max_pairs_per_scene=3), ConfigError, ["pairs.max_pairs_per_scene"]),
    (lambda a: matchmill.match(a, a, overrides={"extract.resize_max": 1}, extract__resize_max=2), ConfigError,
     ["extract.resize_max", "twice"]),
])
def test_match_refuses_bad_input_with_one_line(photo_pair, call, error, words):
    with pytest.raises(error) as info:
        call(photo_pair[0])
    message = str(info.value.args[0]) if info.value.args else str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ----------------------------------------------------------------------------- match == run


def _demo_sections() -> dict:
    """The demo job's extract / propose / refine / verify keys as match overrides."""
    from matchmill.pipeline.config import load_config

    conf = load_config(DEMO_CONFIG, list(REFERENCE_OVERRIDES))
    return {f"{s}.{k}": v for s in api.MATCH_SECTIONS for k, v in conf[s].items()}


def test_match_gives_the_verify_rows_of_a_run(demo_reference):
    verify = demo_reference["verify"].to_pylist()
    pairs = {r["pair_id"]: r for r in demo_reference["pairs"].to_pylist()}
    overrides = _demo_sections()
    checked = 0
    for row in verify[:3]:
        assert row["status"] == "ok" and row["model"] == "fundamental"
        pair = pairs[row["pair_id"]]
        # the demo's MegaDepth-style rows crop each image to its valid area: the stage crops after reading
        images = []
        for side in ("0", "1"):
            image, crop = load_image(pair["path" + side]), pair["crop" + side]
            images.append(image[: int(crop[1]), : int(crop[0])] if crop else image)
        out = matchmill.match(*images, "sift", overrides=overrides)
        stored = np.asarray(row["matches"], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(out["matches"], stored)
        # scores: equal up to float rounding (the actor's BLAS runs one thread, this process several)
        np.testing.assert_allclose(out["scores"], np.asarray(row["scores"], np.float32), rtol=1e-5)
        np.testing.assert_array_equal(out["inliers"], np.asarray(row["inliers"], bool))
        assert out["num_inliers"] == row["num_inliers"]
        np.testing.assert_allclose(out["F"].ravel(), row["F_est"], rtol=1e-9, atol=1e-12)
        checked += 1
    assert checked == 3


# ----------------------------------------------------------------------------- run, open_run, Run


@pytest.fixture(scope="module")
def copied_run(demo_reference, demo_root, tmp_path_factory):
    """``matchmill.run`` of the reference job on a copy of the reference run: every stage is
    committed with this config, so it runs nothing (no new Ray job) and returns the Run."""
    storage = tmp_path_factory.mktemp("api_runs")
    src = Path(demo_reference["run_url"][len("file://"):])
    shutil.copytree(src, storage / src.name)
    overrides = [f"data.root={demo_root}", *REFERENCE_OVERRIDES]
    lines: list[str] = []
    run = matchmill.run(DEMO_CONFIG, overrides, storage=f"file://{storage}", run_name=src.name, echo=lines.append)
    return run, lines


def test_run_returns_the_run_and_reads_it(copied_run, demo_reference):
    run, lines = copied_run
    assert run.url.endswith("/demo") and run.url.startswith("file://")
    assert {r.action for r in run.result.stages} == {"skipped"}, lines
    status = run.status()
    assert status["kind"] == "run" and status["url"] == run.url and status["lock"] is None
    assert [s for s, e in status["stages"].items() if e["state"] != "committed"] == []
    assert status["stages"]["verify"]["rows"] == demo_reference["verify"].num_rows
    assert status["metrics"] == demo_reference["metrics"] == run.metrics
    assert "committed" in status["text"] and run.url in status["text"]
    verify = run.read("verify")
    assert isinstance(verify, pd.DataFrame) and len(verify) == demo_reference["verify"].num_rows
    assert sorted(verify.pair_id) == sorted(demo_reference["verify"].column("pair_id").to_pylist())
    assert np.stack(verify.matches.iloc[0]).shape[1] == 4
    assert list(run.read("metrics").columns) == ["metric", "value", "count"]
    with pytest.raises(KeyError, match="unknown stage 'nope'; stages: pairs"):
        run.read("nope")


def test_open_run_export_and_errors(copied_run, tmp_path):
    run, _ = copied_run
    opened = matchmill.open_run(run.url[len("file://"):])
    assert opened.url == run.url and opened.result is None
    assert opened.metrics == run.metrics
    with pytest.raises(ValueError, match="stage mine is not committed \\(missing\\)"):
        opened.read("mine")
    out = opened.export("hloc", tmp_path / "hloc")
    assert out == str(tmp_path / "hloc")
    assert (tmp_path / "hloc" / "matches.h5").is_file() and (tmp_path / "hloc" / "keypoints.h5").is_file()
    assert opened.last_export["pairs"] > 0
    with pytest.raises(ValueError, match="unknown format 'ply'; formats: hloc, colmap"):
        opened.export("ply", tmp_path / "x")
    with pytest.raises(TypeError, match="unknown keyword all_matches; known: stage"):
        opened.export("hloc", tmp_path / "y", all_matches=True)
    with pytest.raises(StorageError, match="does not exist"):
        matchmill.open_run(tmp_path / "no-such-run")


def test_run_takes_a_dict_and_stops_where_asked(demo_root, tmp_path):
    """A dict config, dotted keywords and ``until``: the driver stages only (no Ray)."""
    from matchmill.config import read_user_config

    config = read_user_config(DEMO_CONFIG)
    run = matchmill.run(config, {"data.root": str(demo_root)}, storage=str(tmp_path), run_name="partial",
                        pairs__max_pairs_per_scene=4, until="images", echo=None)
    stages = run.status()["stages"]
    assert stages["pairs"]["state"] == "committed" and stages["pairs"]["rows"] == 4
    assert stages["extract"]["state"] == "missing"
    assert len(run.read("pairs")) == 4
    with pytest.raises(ValueError, match="stage extract is not committed \\(missing\\)"):
        run.read("extract")
    assert run.metrics == {}
    with pytest.raises(ConfigError, match="pairs.nope"):
        matchmill.run(config, pairs__nope=1)
    with pytest.raises(ConfigError, match="expected a YAML path or a dict"):
        matchmill.run(3)
