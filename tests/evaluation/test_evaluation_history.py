"""The benchmark history table: append-only parts at any fsspec URL, read back sorted by date."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pyarrow as pa
import pytest

from matchmill.evaluation.benchmarks.history import (
    HISTORY_SCHEMA,
    append_history,
    history_parts,
    history_rows,
    new_run_id,
    read_history,
)
from matchmill.manifests.commit import code_version
from matchmill.manifests.storage import ManifestError, read_bytes

UTC = dt.timezone.utc


def _rows(run_id: str, date: dt.datetime, method: str, metrics: dict) -> list[dict]:
    return history_rows(
        run_id=run_id, date=date, benchmark="hpatches", dataset="/data/hpatches", out_url="file:///out",
        method=method, metrics=metrics, num_pairs=5, config_hash="abc123", model_hashes={"extract.pump": "init-seed-0"},
    )


@pytest.fixture(params=["file", "memory"])
def history_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/history.parquet"
    return f"memory://bench-history-{uuid.uuid4().hex}/history.parquet"


def test_round_trip_appends_parts_and_sorts_by_date(history_url):
    late = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    early = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    append_history(history_url, _rows("run-late", late, "sift", {"mma@3": 0.5, "homography_acc@3": 0.75}))
    first_part = history_parts(history_url)
    assert len(first_part) == 1
    first_bytes = read_bytes(first_part[0])
    append_history(history_url, _rows("run-early", early, "pump", {"mma@3": 0.25}))

    parts = history_parts(history_url)
    assert len(parts) == 2
    assert read_bytes(first_part[0]) == first_bytes  # old rows never rewritten
    table = read_history(history_url)
    assert table.schema.equals(HISTORY_SCHEMA)
    assert table.column("run_id").to_pylist() == ["run-early", "run-late", "run-late"]
    rows = table.to_pylist()
    assert rows[0]["date"] == early and rows[0]["method"] == "pump" and rows[0]["value"] == 0.25
    assert {r["metric"] for r in rows[1:]} == {"mma@3", "homography_acc@3"}
    assert json.loads(rows[0]["model_hashes"]) == {"extract.pump": "init-seed-0"}
    assert rows[0]["code_version"] == code_version()


def test_append_accepts_a_pyarrow_table(history_url):
    date = dt.datetime(2026, 1, 1, tzinfo=UTC)
    table = pa.Table.from_pylist(_rows("r1", date, "sift", {"auc@5": 0.4}))
    append_history(history_url, table)
    assert read_history(history_url).column("value").to_pylist() == [0.4]


def test_missing_history_reads_empty(tmp_path):
    table = read_history(f"file://{tmp_path}/nothing-here")
    assert table.num_rows == 0 and table.schema.equals(HISTORY_SCHEMA)


def test_bad_rows_are_refused_with_the_column_named(tmp_path):
    url = f"file://{tmp_path}/h"
    with pytest.raises(ManifestError, match="unknown column"):
        append_history(url, [{"run_id": "r", "date": dt.datetime.now(UTC), "colour": "blue"}])
    with pytest.raises(ManifestError, match="benchmark"):  # required column missing
        append_history(url, [{"run_id": "r", "date": dt.datetime.now(UTC), "dataset": "d", "method": "m", "metric": "x"}])
    assert history_parts(url) == []


def test_history_rows_skip_non_numeric_values_and_run_ids_are_unique():
    rows = _rows("r", dt.datetime.now(UTC), "sift", {"mma@3": 1, "note": "text", "flag": True, "auc@5": None})
    assert [(r["metric"], r["value"]) for r in rows] == [("auc@5", None), ("mma@3", 1.0)]
    ids = {new_run_id() for _ in range(20)}
    assert len(ids) == 20
