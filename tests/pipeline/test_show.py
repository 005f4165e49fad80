"""``matchmill show RUN STAGE``: a compact default that fits the terminal, ``--columns`` / ``--all``,
one line for an unknown column; list columns summarised (``matches`` as its shape, never 4-vectors)."""

from __future__ import annotations

import pytest

from matchmill.cli import main
from matchmill.manifests.schemas import VERIFIED
from matchmill.pipeline.show import DEFAULT_COLUMNS, show_stage

from tests.helpers.written_runs import verify_rows, write_stage


@pytest.fixture(scope="module")
def run_url(tmp_path_factory) -> str:
    """A run whose verify stage has 6 pairs of long image ids (105-character pair ids), the last failed."""
    url = f"file://{tmp_path_factory.mktemp('show') / 'photos'}"
    write_stage(url, "verify", verify_rows())
    return url


@pytest.mark.parametrize("width", [80, 100, 120])
def test_default_fits_the_width_with_key_counts_and_status(run_url, width):
    lines = show_stage(run_url, "verify", rows=5, width=width).splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    assert lines[0] == "verify: 6 rows, the first 5"
    header = lines[1].split()
    assert header[0] == "pair_id" and {"num_matches", "num_inliers", "status"} <= set(header)
    assert "matches" not in header and "path0" not in header
    rows = lines[2:7]
    # the end of each image's file name survives the shortening of the pair id
    assert all(f"1530{i:02d}.jpg|" in r.split()[0] and r.split()[0].endswith(f"1531{i:02d}.jpg")
               for i, r in enumerate(rows))
    assert rows[1].split()[header.index("num_matches")] == "27"
    assert lines[7] == f"{len(header)} of {len(VERIFIED)} columns (--columns a,b picks, --all shows all)"


def test_failed_rows_point_to_failed(run_url):
    lines = show_stage(run_url, "verify", width=100).splitlines()
    assert lines[-1] == "1 failed row shown: --failed prints each error in full"
    failed = show_stage(run_url, "verify", failed_only=True, width=100).splitlines()
    assert failed[0].endswith("verify: too few matches (3) for a fundamental matrix")
    assert "verify: 1 failed of 6 rows" in failed and not failed[-1].startswith("1 failed row")


def test_columns_in_the_order_given_with_lists_summarised(run_url):
    lines = show_stage(run_url, "verify", rows=2, columns=["num_inliers", "pair_id", "matches", "inliers",
                                                           "F_est", "crop0", "scores"]).splitlines()
    assert lines[1].split() == ["num_inliers", "pair_id", "matches", "inliers", "F_est", "crop0", "scores"]
    first = lines[2].split()
    assert first[0] == "10" and len(first[1]) == 103  # cells in full when columns are named
    assert first[2:] == ["(20,", "4)", "10/20", "3x3", "[4032,", "3024]", "(20,)"]
    assert not lines[-1].startswith(("1 failed", "7 of"))  # no hints: the user chose the columns


def test_all_gives_every_column(run_url, capsys):
    assert main(["show", run_url, "verify", "-n", "1", "--all"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == VERIFIED.names
    assert main(["show", run_url, "verify", "-n", "1", "--columns", "all"]) == 0
    assert capsys.readouterr().out.splitlines() == out


def test_unknown_column_is_one_line_listing_the_columns(run_url, capsys):
    assert main(["show", run_url, "verify", "--columns", "pair_id,inlier_count"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("matchmill: error: show: no column 'inlier_count' in stage verify; its columns: "
                               "pair_id, scene, image0")
    assert "num_inliers" in lines[0] and lines[0].endswith("(or: all)")


def test_cli_default_fits_columns_env(run_url, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", run_url, "verify", "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 1 + 3 + 1 and max(map(len, lines)) <= 80


def test_every_stage_has_a_default_of_its_own_columns():
    from matchmill.manifests.schemas import MANIFESTS

    for stage, columns in DEFAULT_COLUMNS.items():
        schema, key = MANIFESTS[stage]
        assert columns[0] == key and set(columns) <= set(schema.names), stage
