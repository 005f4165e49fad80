"""``matches`` read back as an (N, 4) array in one line: ``as_matches(df.matches[i])`` on what plain
pandas gives (an object array of 4-vectors per cell), and on every other form a row comes in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from matchmill.manifests import as_matches

from tests.helpers.written_runs import verify_rows, write_stage


def test_plain_pandas_cell_is_one_line_from_n_by_4(tmp_path):
    rows = verify_rows(num_pairs=3)
    rows[1].update(num_matches=0, matches=[], scores=[], inliers=[], num_inliers=0)  # ok, but nothing matched
    write_stage(f"file://{tmp_path}/run", "verify", rows)
    df = pd.read_parquet(tmp_path / "run" / "verify")
    assert df.matches[0].dtype == object and df.matches[0][0].shape == (4,)  # what pandas hands over
    for i, row in enumerate(rows):
        m = as_matches(df.matches[i])
        assert m.shape == (len(row.get("matches") or []), 4) and m.dtype == np.float64
        np.testing.assert_array_equal(m, np.asarray(row.get("matches") or np.zeros((0, 4)), np.float32))
    assert as_matches(df.matches[0], np.float32).dtype == np.float32
    np.testing.assert_array_equal(np.stack(df.matches[0]), as_matches(df.matches[0]))  # the plain-NumPy line
    with pytest.raises(ValueError):
        np.stack(df.matches[1])  # ... which an empty row breaks: hence the helper


@pytest.mark.parametrize("value, shape", [(None, (0, 4)), ([], (0, 4)), ([[1, 2, 3, 4]], (1, 4)),
                                          ([1, 2, 3, 4, 5, 6, 7, 8], (2, 4)), (np.zeros((3, 4), np.float32), (3, 4))])
def test_every_form_of_a_row(value, shape):
    assert as_matches(value).shape == shape


@pytest.mark.parametrize("value", [np.zeros((3, 2)), [1, 2, 3], np.zeros((2, 2, 4))])
def test_values_that_are_not_n_by_4_are_refused(value):
    with pytest.raises(ValueError, match=r"matches: expected \(N, 4\) values"):
        as_matches(value)
