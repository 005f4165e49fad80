"""``matchmill status`` and ``matchmill show``: read a run's markers and manifests, never Ray."""

from __future__ import annotations

import pandas as pd

from matchmill.manifests.commit import part_files, read_commit, read_stage, read_started
from matchmill.manifests.storage import StorageError, exists

from .graph import STAGES, get_stage


def run_status(run_url: str) -> str:
    if not exists(run_url):
        raise StorageError(f"run {run_url!r} does not exist")
    from matchmill.training.status import is_training_run, training_status

    if is_training_run(run_url):
        return training_status(run_url)
    lines = [f"run: {run_url}", f"{'stage':<9} {'state':<11} {'rows':>7} {'failed':>7} {'time':>8}  hash"]
    for spec in STAGES:
        commit = read_commit(run_url, spec.name)
        if commit is not None:
            lines.append(
                f"{spec.name:<9} {'committed':<11} {commit.rows:>7} {commit.failed:>7} "
                f"{commit.seconds:>7.1f}s  {commit.config_hash[:10]}"
            )
        elif read_started(run_url, spec.name) is not None:
            parts = len(part_files(run_url, spec.name))
            lines.append(f"{spec.name:<9} {'partial':<11} {'':>7} {'':>7} {'':>8}  ({parts} part files)")
        else:
            lines.append(f"{spec.name:<9} {'missing':<11}")
    from matchmill.stages.metrics import format_summary, read_summary

    summary = read_summary(run_url)
    if summary:
        lines += ["", "metrics:", format_summary(summary)]
    return "\n".join(lines)


def show_stage(run_url: str, stage: str, rows: int = 10, failed_only: bool = False) -> str:
    spec = get_stage(stage)
    table = read_stage(run_url, spec.name, spec.manifest)
    if table.num_rows == 0:
        return f"{stage}: no rows"
    if failed_only and "status" in table.column_names:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table.column("status"), "failed"))
    df = table.slice(0, rows).to_pandas()
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(_short)
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.max_colwidth", 60):
        return f"{stage}: {table.num_rows} rows\n{df.to_string(index=False)}"


def _short(value):
    if value is None:
        return None
    if hasattr(value, "__len__") and not isinstance(value, str) and len(value) > 6:
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in list(value[:4]))
        return f"[{head}, ... ({len(value)})]"
    return value
