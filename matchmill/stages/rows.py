"""Row-wise processing with failure capture, shared by every Ray stage, without per-value Python objects.

A stage's per-row function gets a :class:`Row` (scalars as Python values, list columns as NumPy
views into the batch: ``row["matches"]`` is (N, 4) float32, ``row["K0"]`` (9,) float64) and returns
the new columns of that row (scalars, NumPy arrays). Columns a stage does not produce are passed
through as Arrow arrays, untouched. Any exception becomes a ``status = "failed"`` row with the error
text, except :class:`~matchmill.manifests.storage.StorageUnavailable` (storage failing, not the row),
which stops the stage uncommitted; rows that arrive already failed pass through with their error, so nothing disappears
between stages.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from matchmill.manifests.columns import list_rows, rows_to_list_array
from matchmill.manifests.schemas import STATUS_FAILED, STATUS_OK
from matchmill.manifests.storage import StorageUnavailable, conform

log = logging.getLogger(__name__)


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


class BatchColumns:
    """Lazily decoded columns of one batch: each column converted once, on first use."""

    def __init__(self, batch: pa.Table):
        self.batch = batch
        self._cache: dict[str, list] = {}

    def column(self, name: str) -> list | None:
        if name not in self._cache:
            if name not in self.batch.column_names:
                return None
            col = self.batch.column(name)
            if _is_list(col.type):
                width = col.type.value_type.list_size if pa.types.is_fixed_size_list(col.type.value_type) else None
                self._cache[name] = list_rows(col, width=width)
            else:
                self._cache[name] = col.to_pylist()
        return self._cache[name]


class Row:
    """Read-only view of one row of a batch (``row["x"]``, ``row.get("x")``)."""

    __slots__ = ("_cols", "_i")

    def __init__(self, cols: BatchColumns, index: int):
        self._cols, self._i = cols, index

    def get(self, name: str, default: Any = None) -> Any:
        values = self._cols.column(name)
        if values is None:
            return default
        value = values[self._i]
        return default if value is None else value

    def __getitem__(self, name: str) -> Any:
        values = self._cols.column(name)
        if values is None:
            raise KeyError(name)
        return values[self._i]

    def __contains__(self, name: str) -> bool:
        return name in self._cols.batch.column_names


def process_rows(
    batch: pa.Table,
    fn: Callable[[Row], dict[str, Any]],
    schema: pa.Schema,
    stage: str,
    key: str,
) -> pa.Table:
    """Apply ``fn`` to each ``status == "ok"`` row of ``batch``; return a table of ``schema``.

    Output columns come from ``fn``'s results where a row produced them, else from the input
    batch (zero-copy when no row produced the column), else null.
    """
    cols = BatchColumns(batch)
    n = batch.num_rows
    statuses = cols.column("status") or [STATUS_OK] * n
    errors = cols.column("error") or [None] * n
    results: list[dict | None] = [None] * n
    status_out, error_out = list(statuses), list(errors)
    for i in range(n):
        if statuses[i] != STATUS_OK:
            status_out[i], error_out[i] = STATUS_FAILED, errors[i] or "failed upstream"
            continue
        row = Row(cols, i)
        try:
            results[i] = fn(row)
        except StorageUnavailable:
            raise  # the storage failed, not the row: stop the stage uncommitted (a rerun resumes)
        except Exception as exc:  # noqa: BLE001 - a bad row must never stop the batch
            message = f"{stage}: {type(exc).__name__}: {exc}"
            log.warning("%s %s failed: %s\n%s", key, row.get(key), message, traceback.format_exc(limit=3))
            status_out[i], error_out[i] = STATUS_FAILED, message
            continue
        status_out[i], error_out[i] = STATUS_OK, None
    produced = {k for r in results if r for k in r}
    arrays = []
    for field in schema:
        if field.name == "status":
            arrays.append(pa.array(status_out, field.type))
        elif field.name == "error":
            arrays.append(pa.array(error_out, field.type))
        elif field.name not in produced:
            if field.name in batch.column_names:
                arrays.append(batch.column(field.name))
            else:
                arrays.append(pa.nulls(n, field.type))
        else:
            old = cols.column(field.name) or [None] * n
            values = [r[field.name] if r is not None and field.name in r else old[i] for i, r in enumerate(results)]
            arrays.append(_to_array(values, field.type))
    table = pa.Table.from_arrays(
        [a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a], a.type) for a in arrays],
        names=schema.names,
    )
    return conform(table, schema, where=f"{stage} output")


def _to_array(values: list, type_: pa.DataType) -> pa.Array:
    if _is_list(type_):
        return rows_to_list_array([None if v is None else np.asarray(v) for v in values], type_)
    return pa.array(values, type=type_)
