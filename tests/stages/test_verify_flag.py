"""The verify stage's honesty rules (issue 22, item 4): ``verify.min_inliers`` (COLMAP's 15), the
per-row ``verified`` flag, exact duplicate matches dropped before RANSAC, and two unrelated photos
(skimage's astronaut and chelsea) matched with the demo's SIFT chain coming back unverified."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from matchmill.config import ConfigError
from matchmill.manifests.schemas import VERIFIED
from matchmill.methods.registry import build_method
from matchmill.pipeline.config import load_config
from matchmill.stages.extract import extract_image
from matchmill.stages.propose import propose_pair
from matchmill.stages.refine import refine_pair
from matchmill.stages.rows import process_rows
from matchmill.stages.verify import STAGE_DEFAULTS, is_verified, verify_pair

from tests.helpers.paths import DEMO_CONFIG


def shifted_pairs(n: int, seed: int = 0, outliers: int = 0) -> np.ndarray:
    """(n + outliers, 4) matches of a pure translation (a valid F), then random outliers."""
    rng = np.random.default_rng(seed)
    k0 = rng.uniform(0, 300, (n, 2))
    m = np.c_[k0, k0 + [12.0, -7.0]]
    bad = rng.uniform(0, 300, (outliers, 4))
    return np.r_[m, bad].astype(np.float32).astype(np.float64)


def test_min_inliers_is_colmaps_default_and_bounded():
    assert STAGE_DEFAULTS["min_inliers"] == 15
    assert load_config(DEMO_CONFIG, [])["verify"]["min_inliers"] == 15
    with pytest.raises(ConfigError, match=r"verify.min_inliers: must be >= 0, got -1"):
        load_config(DEMO_CONFIG, ["verify.min_inliers=-1"])
    with pytest.raises(ConfigError, match=r"verify.min_inliers: expected int"):
        load_config(DEMO_CONFIG, ["verify.min_inliers=2.5"])


def test_is_verified_needs_a_model_and_enough_inliers():
    F = np.eye(3)
    assert is_verified(F, 15, 15) and not is_verified(F, 14, 15)
    assert not is_verified(None, 0, 0)  # no model is never verified, even with min_inliers 0


@pytest.mark.parametrize("n, min_inliers, verified", [(40, 15, True), (14, 15, False), (15, 15, True), (10, 10, True)])
def test_flag_follows_min_inliers(n, min_inliers, verified):
    conf = {**STAGE_DEFAULTS, "min_inliers": min_inliers}
    out = verify_pair(conf, shifted_pairs(n))
    assert out["F_est"] is not None and out["num_inliers"] == n  # every match of the translation is an inlier
    assert out["verified"] is verified
    assert out["num_matches"] == n and out["num_duplicates"] == 0


def test_too_few_matches_for_a_model_is_unverified_even_at_min_inliers_0():
    out = verify_pair({**STAGE_DEFAULTS, "min_inliers": 0}, shifted_pairs(5))
    assert out["F_est"] is None and out["num_inliers"] == 0 and out["verified"] is False


def test_exact_duplicates_are_dropped_before_ransac_best_score_kept():
    m = shifted_pairs(30, outliers=4)
    doubled = np.r_[m, m[:6], m[:3]]  # 9 exact duplicates (three rows three times)
    scores = np.r_[np.full(len(m), 0.5), np.full(6, 0.9), np.full(3, 0.1)].astype(np.float32)
    out = verify_pair(dict(STAGE_DEFAULTS), doubled, scores)
    assert out["num_duplicates"] == 9 and out["num_matches"] == len(m) == len(out["matches"])
    assert out["matches"].dtype == np.float32 and len(np.unique(out["matches"], axis=0)) == len(m)
    assert out["inliers"].shape == (len(m),) and out["num_inliers"] == int(out["inliers"].sum()) <= len(m)
    # the best-scored copy stays (the 0.9 copies of the first six rows), the kept rows in input order
    expected = np.r_[m[6:], m[:6]]
    assert out["scores"].tolist() == pytest.approx([0.5] * (len(m) - 6) + [0.9] * 6)
    np.testing.assert_array_equal(out["matches"], expected.astype(np.float32))
    # the same inliers as the deduplicated input gives: RANSAC never saw the copies
    alone = verify_pair(dict(STAGE_DEFAULTS), expected, out["scores"])
    np.testing.assert_array_equal(alone["inliers"], out["inliers"])
    assert alone["num_duplicates"] == 0 and alone["num_inliers"] == out["num_inliers"]


def test_the_stage_writes_flag_counts_and_deduplicated_matches():
    """Through process_rows (the actor's path): the VERIFIED columns of one batch."""
    m = shifted_pairs(30)
    few = shifted_pairs(9, seed=1)
    rows = [
        {"pair_id": "a|b", "image0": "a", "image1": "b", "path0": "a", "path1": "b", "status": "ok",
         "num_matches": 32, "matches": np.r_[m, m[:2]].tolist(), "scores": [1.0] * 32},
        {"pair_id": "a|c", "image0": "a", "image1": "c", "path0": "a", "path1": "c", "status": "ok",
         "num_matches": 9, "matches": few.tolist(), "scores": [1.0] * 9},
        {"pair_id": "b|c", "image0": "b", "image1": "c", "path0": "b", "path1": "c", "status": "failed",
         "error": "propose: boom"},
    ]
    table = pa.Table.from_pylist(rows, schema=VERIFIED)
    conf = dict(STAGE_DEFAULTS)
    out = process_rows(table, lambda r: verify_pair(conf, np.asarray(r["matches"], np.float64),
                                                    r.get("scores")), VERIFIED, stage="verify", key="pair_id")
    got = {r["pair_id"]: r for r in out.to_pylist()}
    assert got["a|b"]["verified"] is True and got["a|b"]["num_duplicates"] == 2 and got["a|b"]["num_matches"] == 30
    assert len(got["a|b"]["matches"]) == 30 == len(got["a|b"]["inliers"]) == len(got["a|b"]["scores"])
    assert got["a|c"]["verified"] is False and got["a|c"]["status"] == "ok"
    assert len(got["a|c"]["matches"]) == 9  # an unverified row keeps its matches
    assert got["b|c"]["status"] == "failed" and got["b|c"]["verified"] is None


def test_unrelated_photos_come_back_unverified():
    """astronaut|chelsea (issue 22): the demo's SIFT chain gives ~60 matches and ~10 inliers, which
    passed as ``ok`` and were drawn green; with min_inliers 15 the row is unverified."""
    skimage_data = pytest.importorskip("skimage.data")
    conf = load_config(DEMO_CONFIG, [])
    extractor = build_method("extract", conf["extract"])
    proposer, refiner = build_method("propose", conf["propose"]), build_method("refine", conf["refine"])
    feats = [extract_image(extractor, im, conf["extract"]["resize_max"])
             for im in (skimage_data.astronaut(), skimage_data.chelsea())]
    matches, scores = propose_pair(proposer, feats[0], feats[1])
    matches, scores = refine_pair(refiner, np.asarray(matches, np.float32), np.asarray(scores, np.float32), *feats)
    sizes = [tuple(int(v) for v in f["image_size"]) for f in feats]
    out = verify_pair(conf["verify"], np.asarray(matches, np.float64), scores, *sizes)
    assert out["num_matches"] > 30  # enough matches to look like a pair
    assert out["F_est"] is not None and 0 < out["num_inliers"] < conf["verify"]["min_inliers"]
    assert out["verified"] is False
