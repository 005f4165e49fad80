"""The Parquet step log of a training run: ``<run>/log/part-<first step>-<attempt>-<n>.parquet``.

Rank 0 appends one row per step (``kind = "train"``: loss parts, samples/s, lr) and one per
validation (``kind = "val"``: the task's metrics), flushed every ``train.log_every`` steps as a
new part file (object stores have no append). A resumed run writes a new *attempt*; readers keep,
per (kind, step), the row of the newest attempt, so steps redone after a crash appear once.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.manifests.storage import list_files, read_bytes, write_bytes_atomic

__all__ = ["LogWriter", "read_log"]


class LogWriter:
    """Buffers rows and writes them as one Parquet part per flush."""

    def __init__(self, run_url: str, attempt: int | None = None) -> None:
        self.folder = run_url.rstrip("/") + "/log"
        self.attempt = int(attempt if attempt is not None else time.time_ns())
        self.rows: list[dict[str, Any]] = []
        self._parts = 0

    def add(self, kind: str, step: int, values: dict[str, Any]) -> None:
        row = {"kind": kind, "step": int(step), "attempt": self.attempt, "time": time.time()}
        row.update({k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in values.items()})
        self.rows.append(row)

    def flush(self) -> None:
        if not self.rows:
            return
        import pandas as pd

        table = pa.Table.from_pandas(pd.DataFrame(self.rows), preserve_index=False)  # union of the rows' keys
        buf = io.BytesIO()
        pq.write_table(table, buf)
        first = self.rows[0]["step"]
        write_bytes_atomic(f"{self.folder}/part-{first:09d}-{self.attempt}-{self._parts:05d}.parquet", buf.getvalue())
        self._parts += 1
        self.rows = []


def read_log(run_url: str) -> pa.Table:
    """All log rows, one per (kind, step) from the newest attempt, sorted by step then kind."""
    tables = []
    for url in list_files(run_url.rstrip("/") + "/log"):
        tables.append(pq.read_table(io.BytesIO(read_bytes(url))))
    if not tables:
        return pa.table({"kind": pa.array([], pa.string()), "step": pa.array([], pa.int64())})
    table = pa.concat_tables(tables, promote_options="default")
    df = table.to_pandas().sort_values(["step", "kind", "attempt"])
    df = df.drop_duplicates(["kind", "step"], keep="last").reset_index(drop=True)
    return pa.Table.from_pandas(df, preserve_index=False)
