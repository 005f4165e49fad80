"""Row-wise processing with failure capture, shared by every Ray stage.

A stage's per-row function returns the new columns of one row. Any exception becomes a
``status = "failed"`` row with the error text; rows that arrive already failed pass through
with their error, so nothing disappears between stages.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import pyarrow as pa

from matchmill.manifests.schemas import STATUS_FAILED, STATUS_OK
from matchmill.manifests.storage import conform

log = logging.getLogger(__name__)


def process_rows(
    batch: pa.Table,
    fn: Callable[[dict], dict[str, Any]],
    schema: pa.Schema,
    stage: str,
    key: str,
) -> pa.Table:
    """Apply ``fn`` to each ``status == "ok"`` row of ``batch``; return a table of ``schema``."""
    out: list[dict] = []
    for row in batch.to_pylist():
        if row.get("status", STATUS_OK) != STATUS_OK:
            out.append({**row, "status": STATUS_FAILED, "error": row.get("error") or "failed upstream"})
            continue
        try:
            result = fn(row)
        except Exception as exc:  # noqa: BLE001 - a bad row must never stop the batch
            message = f"{stage}: {type(exc).__name__}: {exc}"
            log.warning("%s %s failed: %s\n%s", key, row.get(key), message, traceback.format_exc(limit=3))
            out.append({**row, "status": STATUS_FAILED, "error": message})
            continue
        out.append({**row, **result, "status": STATUS_OK, "error": None})
    columns = {field.name: [row.get(field.name) for row in out] for field in schema}
    arrays = [_to_array(columns[f.name], f.type) for f in schema]
    return conform(pa.Table.from_arrays(arrays, names=schema.names), schema, where=f"{stage} output")


def _to_array(values: list, type_: pa.DataType) -> pa.Array:
    if pa.types.is_list(type_):
        values = [None if v is None else (v.ravel() if hasattr(v, "ravel") else v) for v in values]
    return pa.array(values, type=type_)
