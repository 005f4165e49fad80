"""``Run.read(stage).matches[i]`` and ``Run.matches(pair_id)`` are (N, 4) float32 arrays (no Ray: the
run is written as manifests)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import matchmill

from tests.helpers.written_runs import verify_rows, write_stage


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    url = f"file://{tmp_path_factory.mktemp('matches') / 'photos'}"
    rows = verify_rows()
    write_stage(url, "verify", rows)
    return matchmill.open_run(url), rows


def test_read_gives_n_by_4_arrays(written):
    run, rows = written
    frame = run.read("verify")
    for i, row in enumerate(rows[:-1]):
        cell = frame.matches[i]
        assert cell.shape == (row["num_matches"], 4) and cell.dtype == np.float32 and cell.flags.writeable
        np.testing.assert_array_equal(cell, np.asarray(row["matches"], np.float32))
    assert frame.matches[len(rows) - 1] is None  # the failed row
    assert frame.inliers[0].dtype == bool and frame.inliers[0].shape == (rows[0]["num_matches"],)


def test_one_pair_and_its_inliers(written):
    run, rows = written
    pair = rows[2]
    m = run.matches(pair["pair_id"])
    assert m.shape == (pair["num_matches"], 4) and m.dtype == np.float32
    inl = run.matches(pair["pair_id"], inliers_only=True)
    np.testing.assert_array_equal(inl, m[np.asarray(pair["inliers"])])
    assert inl.shape == (pair["num_inliers"], 4)
    assert run.matches(rows[-1]["pair_id"]).shape == (0, 4)  # failed: no matches
    assert run.matches(rows[-1]["pair_id"], inliers_only=True).shape == (0, 4)


def test_errors_name_the_problem(written):
    run, rows = written
    with pytest.raises(KeyError, match=re.escape("pair 'a.jpg|b.jpg' is not in stage verify")):
        run.matches("a.jpg|b.jpg")
    with pytest.raises(ValueError, match="stage refine is not committed"):
        run.matches(rows[0]["pair_id"], stage="refine")
    with pytest.raises(KeyError, match="unknown stage 'verified'"):
        run.matches(rows[0]["pair_id"], stage="verified")
