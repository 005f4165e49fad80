"""The learned chain with the shipped weights, end to end on stage code (in-process, demo scene seed 0):
PUMP pyramid -> NCNet -> Patch2Pix. The shipped weights must make it far better than the same chain
from a random initialisation (the regression this test pins), with every stage's row ok."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq
from matchmill.pipeline.config import load_config
from matchmill.pipeline.inprocess import run_inprocess

from tests.helpers.paths import DEMO_CONFIG

LEARNED = DEMO_CONFIG.parent / "demo-learned.yaml"
RANDOM = ["extract.weights=null", "propose.weights=null", "refine.weights=null"]


def _correct_fraction(result, px: float = 3.0) -> tuple[float, int]:
    """Share of refined matches within ``px`` (Sampson, ground-truth pose) over all pairs, and the count."""
    pairs = {r["pair_id"]: r for r in result.tables["pairs"].to_pylist()}
    good = total = 0
    for row in result.tables["refine"].to_pylist():
        assert row["status"] == "ok", row["error"]
        m = np.asarray(row["matches"], np.float64).reshape(-1, 4)
        p = pairs[row["pair_id"]]
        F = fundamental_from_pose(p["K0"], p["K1"], np.asarray(p["T_0to1"]).reshape(4, 4))
        good += int((sampson_distance_sq(F, m[:, :2], m[:, 2:]) < px * px).sum())
        total += len(m)
    return good / max(total, 1), total


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    out = {}
    for name, extra in (("shipped", []), ("random", RANDOM)):
        conf = load_config(LEARNED, [f"data.root={demo_root}", "pairs.max_pairs_per_scene=4", *extra])
        out[name] = run_inprocess(conf, f"file://{tmp_path_factory.mktemp(name)}")
    return out


def test_every_stage_of_the_learned_chain_runs_on_the_pump_pyramid(runs):
    from matchmill.manifests.artifacts import read_artifact, resolve_artifact

    result = runs["shipped"]
    feats = read_artifact(resolve_artifact(result.run_url, result.tables["extract"].to_pylist()[0]["artifact_uri"]))
    assert [feats[f"f{i}"].shape[0] for i in range(5)] == [3, 128, 128, 128, 128] and "dense_0" not in feats
    for stage in ("propose", "refine", "verify"):
        rows = result.tables[stage].to_pylist()
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert all(r["num_matches"] > 20 for r in result.tables["refine"].to_pylist())


def test_shipped_weights_beat_the_random_init_by_far(runs):
    shipped, n_shipped = _correct_fraction(runs["shipped"])
    random, n_random = _correct_fraction(runs["random"])
    assert n_shipped >= 80
    assert shipped >= 0.35 and shipped >= random + 0.25, (shipped, random, n_shipped, n_random)
