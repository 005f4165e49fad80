"""``matchmill status`` and ``matchmill show``: read a run's markers and manifests, never Ray."""

from __future__ import annotations

from typing import Any

import pandas as pd

from matchmill.manifests.commit import is_part_name, part_files, read_commit, read_stage, read_started, stage_url
from matchmill.manifests.lease import lease_status
from matchmill.manifests.storage import StorageError, exists, file_sizes
from matchmill.stages.metrics import format_summary, read_summary

from .graph import ALL_STAGES, STAGES, get_stage


def run_state(run_url: str) -> dict[str, Any]:
    """A pipeline run's state as data (what ``matchmill status`` prints, and ``Run.status()`` returns).

    Returns:
        ``{"url", "kind": "run", "lock": str | None, "stages": {name: {"state": "committed" |
        "partial" | "missing", "rows", "failed", "seconds", "config_hash", "part_files", "stray"}},
        "metrics": dict}``; stages of another graph (``mine``) that this run never had are left out.

    Raises:
        StorageError: the run does not exist.
    """
    if not exists(run_url):
        raise StorageError(f"run {run_url!r} does not exist")
    stages: dict[str, dict[str, Any]] = {}
    for spec in ALL_STAGES:
        commit, started = read_commit(run_url, spec.name), read_started(run_url, spec.name)
        if spec not in STAGES and commit is None and started is None:
            continue  # a stage of another graph (mine) this run never had
        entry: dict[str, Any] = {"state": "missing", "rows": None, "failed": None, "seconds": None,
                                 "config_hash": None, "part_files": 0, "stray": []}
        if commit is not None:
            entry.update(state="committed", rows=commit.rows, failed=commit.failed, seconds=commit.seconds,
                         config_hash=commit.config_hash, part_files=len(part_files(run_url, spec.name)),
                         stray=_stray(run_url, spec.name, commit))
        elif started is not None:
            entry.update(state="partial", part_files=len(part_files(run_url, spec.name)),
                         stray=_stray(run_url, spec.name, None))
        stages[spec.name] = entry
    return {"url": run_url, "kind": "run", "lock": lease_status(run_url), "stages": stages,
            "metrics": read_summary(run_url)}


def format_run_state(state: dict[str, Any]) -> str:
    """The ``matchmill status`` text of :func:`run_state`'s dict."""
    lines = [f"run: {state['url']}", f"{'stage':<9} {'state':<11} {'rows':>7} {'failed':>7} {'time':>8}  hash"]
    if state["lock"]:
        lines.insert(1, state["lock"])  # "locked by pid ... on host ... (heartbeat Ns ago)"
    for name, s in state["stages"].items():
        stray = f"  stray: {', '.join(s['stray'])}" if s["stray"] else ""
        if s["state"] == "committed":
            lines.append(f"{name:<9} {'committed':<11} {s['rows']:>7} {s['failed']:>7} "
                         f"{s['seconds']:>7.1f}s  {s['config_hash'][:10]}" + stray)
        elif s["state"] == "partial":
            lines.append(f"{name:<9} {'partial':<11} {'':>7} {'':>7} {'':>8}  ({s['part_files']} part files)" + stray)
        else:
            lines.append(f"{name:<9} {'missing':<11}")
    if state["metrics"]:
        lines += ["", "metrics:", format_summary(state["metrics"])]
    return "\n".join(lines)


def run_status(run_url: str) -> str:
    """``matchmill status`` of a pipeline run (a training run's status: matchmill.training.status)."""
    return format_run_state(run_state(run_url))


def _stray(run_url: str, stage: str, commit) -> list[str]:
    """The Parquet files of a stage folder that are not its parts: not in a committed stage's
    inventory (its readers skip them), or, in a partial stage, not named like a matchmill part (the
    next run refuses them: matchmill/pipeline/stray.py)."""
    names = sorted(file_sizes(stage_url(run_url, stage)))
    if commit is not None:
        return [n for n in names if n not in commit.parts] if commit.parts else []
    return [n for n in names if not is_part_name(n)]


def show_stage(run_url: str, stage: str, rows: int = 10, failed_only: bool = False) -> str:
    """The first ``rows`` rows of a stage's manifest as a table. With ``failed_only``: the failed
    rows, each one's key and full error text first (one ``key  error`` line per row), then the table."""
    spec = get_stage(stage)
    table = read_stage(run_url, spec.name, spec.manifest)
    if table.num_rows == 0:
        return f"{stage}: no rows"
    head: list[str] = []
    if failed_only and "status" in table.column_names:
        import pyarrow.compute as pc

        total = table.num_rows
        table = table.filter(pc.equal(table.column("status"), "failed"))
        if table.num_rows == 0:
            return f"{stage}: no failed rows ({total} rows)"
        head = _error_lines(table.slice(0, rows), _key_column(spec, table))
        if table.num_rows > rows:
            head.append(f"... {table.num_rows - rows} more failed rows (-n {table.num_rows} shows all)")
        head.append("")
        title = f"{stage}: {table.num_rows} failed of {total} rows"
    else:
        title = f"{stage}: {table.num_rows} rows"
    df = table.slice(0, rows).to_pandas()
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(_short)
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.max_colwidth", 60):
        return "\n".join([*head, title, df.to_string(index=False)])


def _key_column(spec, table) -> str | None:
    for name in (getattr(spec, "key", None), "pair_id", "image_id"):
        if name and name in table.column_names:
            return name
    return None


def _error_lines(table, key: str | None) -> list[str]:
    """``key  error`` per row, the error in full (continuation lines indented under it)."""
    keys = table.column(key).to_pylist() if key else [str(i) for i in range(table.num_rows)]
    errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * table.num_rows
    width = max((len(str(k)) for k in keys), default=0)
    lines = []
    for k, error in zip(keys, errors):
        text = (error or "(no error text)").rstrip("\n").replace("\n", "\n" + " " * (width + 2))
        lines.append(f"{str(k):<{width}}  {text}")
    return lines


def _short(value):
    if value is None:
        return None
    if hasattr(value, "__len__") and not isinstance(value, str) and len(value) > 6:
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in list(value[:4]))
        return f"[{head}, ... ({len(value)})]"
    return value


def compare_runs(run_urls: list[str]) -> str:
    """A table of the metrics of several runs (rows = metrics, columns = runs' methods); fractions in percent."""
    columns, summaries = [], []
    for url in run_urls:
        summary = read_summary(url)
        methods = []
        for stage in ("extract", "propose", "refine") if summary else ():
            commit = read_commit(url, stage)
            config = commit.extra.get("config") if commit else None  # [stage section, ...] (runner.stage_config)
            method = config[0].get("method") if config else None
            if method and method != "identity":
                methods.append(method)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        columns.append(f"{name}: {'>'.join(methods)}" if methods else name)
        summaries.append(summary)
    keys = [k for k in ("auc@5", "auc@10", "auc@20") if any(k in s for s in summaries)]
    keys += sorted({k for s in summaries for k in s if k.startswith(("homography_acc", "mma@3", "num_"))} - set(keys))
    width = max([len(k) for k in keys] + [6])
    widths = [max(len(c), 8) for c in columns]
    lines = [" " * width + "  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for key in keys:
        cells = []
        for s, w in zip(summaries, widths):
            v = s.get(key)
            pct = key.startswith(("auc", "homography", "mma"))
            cells.append(f"{'-':>{w}}" if v is None else f"{100 * v if pct else v:>{w}.2f}")
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    missing = [u for u, s in zip(run_urls, summaries) if not s]
    if missing:
        lines.append("no metrics yet: " + ", ".join(missing))
    return "\n".join(lines)
