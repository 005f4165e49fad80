"""``matchmill status`` of a pipeline run: read its markers, never Ray (``show``: show.py, ``compare``: compare.py)."""

from __future__ import annotations

from typing import Any

from matchmill.manifests.commit import is_part_name, part_files, read_commit, read_started, stage_url
from matchmill.manifests.lease import lease_status
from matchmill.manifests.storage import StorageError, exists, file_sizes
from matchmill.stages.metrics import format_summary, read_summary

from .graph import ALL_STAGES, STAGES


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
