"""``matchmill compare RUN RUN...``: the metrics of several runs side by side.

Rows are every metric any of the runs has (pose AUCs first, then the others in the order the
metrics stage writes them); a run without a metric shows ``-`` there. Counts (``num_*``) print as
integers, fractions (``auc*``, ``homography_acc*``, ``mma*``) in percent with 2 decimals, means
(``mean_*``) with 1 decimal, anything else with 4 significant digits.
"""

from __future__ import annotations

import math

from matchmill.manifests.commit import read_commit
from matchmill.stages.metrics import read_summary

#: Metrics that are fractions, printed in percent.
PERCENT_PREFIXES = ("auc", "homography_acc", "mma")
#: Metrics listed first, in this order, when a run has them.
FIRST = ("auc@5", "auc@10", "auc@20")


def compare_runs(run_urls: list[str]) -> str:
    """What ``matchmill compare`` prints: :func:`compare_table` of the runs' metrics, the columns
    named ``<run name>: <extract>><propose>><refine>`` (methods read from the stage commits), then
    a line naming the runs that have no metrics yet."""
    names, summaries = [], []
    for url in run_urls:
        summary = read_summary(url)
        methods = _methods(url) if summary else []
        name = url.rstrip("/").rsplit("/", 1)[-1]
        names.append(f"{name}: {'>'.join(methods)}" if methods else name)
        summaries.append(summary)
    lines = [compare_table(names, summaries)]
    missing = [u for u, s in zip(run_urls, summaries) if not s]
    if missing:
        lines.append("no metrics yet: " + ", ".join(missing))
    return "\n".join(lines)


def _methods(url: str) -> list[str]:
    """The run's chain, from the config each stage committed (``identity`` steps left out)."""
    methods = []
    for stage in ("extract", "propose", "refine"):
        commit = read_commit(url, stage)
        config = commit.extra.get("config") if commit else None  # [stage section, ...] (runner.stage_config)
        method = config[0].get("method") if config else None
        if method and method != "identity":
            methods.append(method)
    return methods


def compare_table(names: list[str], summaries: list[dict[str, float]]) -> str:
    """Rows = every metric of any summary (:data:`FIRST`, then first-seen order), columns = runs;
    a metric a run lacks is ``-``; a last line says which metrics are percentages.

    Args:
        names: one column title per run.
        summaries: per run, ``{metric: value}`` (``summary.json`` of its metrics stage; {} if none).
    """
    keys = [k for k in FIRST if any(k in s for s in summaries)]
    keys += [k for k in dict.fromkeys(k for s in summaries for k in s) if k not in keys]
    if not keys:
        return "  ".join(names)
    width = max(len(k) for k in keys)
    cells = [[format_metric(k, s.get(k)) for s in summaries] for k in keys]
    widths = [max([len(n), 8] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    lines = [" " * width + "  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    lines += [f"{k:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths)) for k, row in zip(keys, cells)]
    percent = [k for k in keys if k.startswith(PERCENT_PREFIXES)]
    if percent:
        lines.append(f"({', '.join(sorted({k.split('@')[0] for k in percent}))}: percent)")
    return "\n".join(lines)


def format_metric(key: str, value: float | None) -> str:
    """One cell: ``-`` when missing; counts as integers, fractions in percent (2 decimals),
    means with 1 decimal, others with 4 significant digits; nan / inf as they are."""
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if key.startswith(PERCENT_PREFIXES):
        return f"{100 * value:.2f}"
    if key.startswith("num_") and value.is_integer():
        return str(int(value))
    if key.startswith("mean_"):
        return f"{value:.1f}"
    return f"{value:.4g}"
