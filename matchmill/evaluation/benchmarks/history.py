"""Benchmark history: one Parquet table, at any fsspec URL, that every bench run appends to.

The table lives in a folder (``url``); each :func:`append_history` call publishes one new
``part-<UTC timestamp>-<hex>.parquet`` file atomically and never touches old parts, so
concurrent bench runs (e.g. scheduled reruns on several checkpoints) cannot clobber each other.
:func:`read_history` reads all parts and returns them sorted by date.

One row = one (bench run, method, metric) value, with what is needed to say *which* model and
*which* code produced it: model weight hashes, the pipeline config hash and the code version.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import posixpath
import secrets
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matchmill.manifests.commit import code_version
from matchmill.manifests.storage import ManifestError, conform, full_url, url_to_fs, write_bytes_atomic

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),  # one id per bench invocation
        pa.field("date", pa.timestamp("us", tz="UTC"), nullable=False),  # when the bench run started
        pa.field("benchmark", pa.string(), nullable=False),  # "hpatches" | "pose" | "megadepth1500"
        pa.field("dataset", pa.string(), nullable=False),  # ROOT / PAIRS_FILE given by the user
        pa.field("method", pa.string(), nullable=False),  # preset name, e.g. "sift", "patch2pix"
        pa.field("metric", pa.string(), nullable=False),  # e.g. "mma@3", "auc@10", "num_matches_mean"
        pa.field("value", pa.float64()),  # null when the metric could not be computed
        pa.field("num_pairs", pa.int64()),  # pairs the method was evaluated on
        pa.field("config_hash", pa.string()),  # hash of the method's full pipeline config
        pa.field("model_hashes", pa.string()),  # JSON object: model -> sha256[:16] | "init-seed-<n>"
        pa.field("code_version", pa.string()),  # matchmill.__version__ (+ git describe): manifests.commit.code_version
        pa.field("out_url", pa.string()),  # the bench OUT folder
    ]
)

PART_PREFIX = "part-"


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A bench-invocation id ``<UTC timestamp>-<6 hex>``, sortable by time."""
    now = now or utc_now()
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _as_table(rows: list[dict[str, Any]] | pa.Table) -> pa.Table:
    if isinstance(rows, pa.Table):
        return conform(rows, HISTORY_SCHEMA, where="history rows")
    if not isinstance(rows, list):
        raise TypeError(f"history rows must be a list of dicts or a pyarrow Table, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"history row {i} is {type(row).__name__}, expected dict")
        unknown = set(row) - set(HISTORY_SCHEMA.names)
        if unknown:
            raise ManifestError(f"history row {i}: unknown column(s) {sorted(unknown)}; known: {HISTORY_SCHEMA.names}")
    columns = {name: [row.get(name) for row in rows] for name in HISTORY_SCHEMA.names}
    try:
        table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in HISTORY_SCHEMA})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"history rows do not fit the history schema: {exc}") from exc
    return conform(table, HISTORY_SCHEMA, where="history rows")


def append_history(url: str, rows: list[dict[str, Any]] | pa.Table) -> None:
    """Append ``rows`` to the history table at ``url`` (a folder) as one new part file.

    Old parts are never rewritten. An empty ``rows`` writes nothing.
    """
    table = _as_table(rows)
    if table.num_rows == 0:
        return
    name = f"{PART_PREFIX}{utc_now().strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes_atomic(url.rstrip("/") + "/" + name, buf.getvalue())


def history_parts(url: str) -> list[str]:
    """URLs of the part files of the history table at ``url`` (empty when it does not exist)."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return []
    if not fs.isdir(path):
        raise ManifestError(f"history {url!r} is a file; it must be a folder of part-*.parquet files")
    names = [p for p in fs.ls(path, detail=False)
             if posixpath.basename(p).startswith(PART_PREFIX) and p.endswith(".parquet")]
    return [full_url(fs, p) for p in sorted(names)]


def read_history(url: str) -> pa.Table:
    """All rows of the history table at ``url``, sorted by date (then run, method, metric).

    A missing table reads as an empty table with :data:`HISTORY_SCHEMA`.
    """
    tables = []
    for part in history_parts(url):
        fs, path = url_to_fs(part)
        try:
            with fs.open(path, "rb") as f:
                raw = pq.read_table(f)
        except Exception as exc:  # noqa: BLE001 - any decode error names the file
            raise ManifestError(f"history part {part}: unreadable Parquet ({type(exc).__name__}: {exc})") from exc
        tables.append(conform(raw, HISTORY_SCHEMA, where=part))
    if not tables:
        return HISTORY_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    order = pc.sort_indices(table, sort_keys=[("date", "ascending"), ("run_id", "ascending"),
                                              ("method", "ascending"), ("metric", "ascending")])
    return table.take(order)


def history_rows(
    *,
    run_id: str,
    date: _dt.datetime,
    benchmark: str,
    dataset: str,
    out_url: str,
    method: str,
    metrics: dict[str, Any],
    num_pairs: int | None,
    config_hash: str | None,
    model_hashes: dict[str, str],
) -> list[dict[str, Any]]:
    """One history row per numeric metric of one method (non-numeric values are skipped)."""
    rows = []
    for metric, value in sorted(metrics.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
            continue
        rows.append(
            {
                "run_id": run_id, "date": date, "benchmark": benchmark, "dataset": dataset,
                "method": method, "metric": metric, "value": None if value is None else float(value),
                "num_pairs": num_pairs, "config_hash": config_hash,
                "model_hashes": json.dumps(model_hashes, sort_keys=True),
                "code_version": code_version(), "out_url": out_url,
            }
        )
    return rows


def iter_metric_values(table: pa.Table, method: str, metric: str) -> Iterable[tuple[_dt.datetime, float]]:
    """``(date, value)`` of one method's metric over the history, oldest first."""
    mask = pc.and_(pc.equal(table["method"], method), pc.equal(table["metric"], metric))
    sub = table.filter(mask)
    return zip(sub["date"].to_pylist(), sub["value"].to_pylist())
