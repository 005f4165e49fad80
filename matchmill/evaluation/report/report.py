"""The report model: for every (benchmark, dataset, method), its latest run against the run before.

A run is one ``run_id`` of the history table (one bench invocation). For each group the latest
run is the group's newest ``run_id`` by date, the previous run the one just before it. Each metric
of either run gets a :class:`MetricComparison`: delta, tolerance and whether it regressed.

Regression rule (absolute tolerances, in the metric's own unit):

- higher-is-better metrics (AUC, accuracy, MMA, match counts) regress when
  ``previous - latest > tolerance``;
- lower-is-better metrics (``num_failed``, errors, seconds) regress when
  ``latest - previous > tolerance``;
- informational metrics (``num_pairs``) never regress by value;
- a metric present in the previous run but missing (or null / nan) in the latest run regresses
  (except those listed in :data:`VALUE_WHEN_ABSENT`, e.g. ``method_failed``, read as 0 when
  absent, so a method that starts failing regresses and one that recovers does not).

A drop of exactly the tolerance is not a regression. Tolerances are looked up by the longest
matching metric-name prefix in :data:`DEFAULT_TOLERANCES` (overridable per prefix).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from matchmill.evaluation.benchmarks.history import read_history
from matchmill.manifests.storage import ManifestError

#: Metric-name prefix -> absolute tolerance in the metric's unit (longest prefix wins).
DEFAULT_TOLERANCES: dict[str, float] = {
    "": 0.01,  # anything not listed below: fractions in [0, 1] by convention
    "mma": 0.01,  # mean matching accuracy at t px, fraction
    "homography_acc": 0.01,  # fraction of pairs with corner error <= t
    "homography_auc": 0.01,  # AUC of the corner-error curve, fraction
    "auc": 0.01,  # pose AUC (and auc_fdegensac), fraction
    "num_matches": 5.0,  # mean matches per pair (e.g. num_matches_mean)
    "num_inliers": 5.0,  # mean inliers per pair
    "mean_matches": 5.0,  # pipeline summary name of the mean match count
    "mean_inliers": 5.0,  # pipeline summary name of the mean inlier count
    "num_failed": 0.0,  # any new failed pair is a regression
    "num_verified": 0.0,  # any pair that stops being verified (verify.min_inliers) is a regression
    "method_failed": 0.0,  # 1 when the whole method failed in that run (its only row then)
}

#: Metric-name prefixes where a *rise* is the regression.
LOWER_IS_BETTER: tuple[str, ...] = ("num_failed", "method_failed", "seconds", "time")

#: Metrics a run may omit; when a run of the method exists but lacks one, it reads as this value
#: (a bench run writes ``method_failed = 1`` only when the method failed).
VALUE_WHEN_ABSENT: dict[str, float] = {"method_failed": 0.0}

#: Metric-name prefixes shown but never flagged by value (they describe the run, not its quality).
INFORMATIONAL: tuple[str, ...] = ("num_pairs",)

_EPS = 1e-12  # float noise allowed on top of a tolerance


@dataclass(frozen=True)
class RunInfo:
    """What identifies one method's run: when, which code, which models, where its outputs are."""

    run_id: str
    date: _dt.datetime
    config_hash: str | None
    model_hashes: dict[str, str]
    code_version: str | None
    out_url: str | None
    num_pairs: int | None


@dataclass(frozen=True)
class MetricComparison:
    """One metric of one method: latest vs previous value."""

    metric: str
    latest: float | None  # None: missing, null or nan in the latest run
    previous: float | None  # None: no previous run, or the metric was missing there
    tolerance: float
    direction: str  # "higher" | "lower" | "info"
    regressed: bool
    reason: str  # empty unless regressed, e.g. "dropped by 0.0312, tolerance 0.01"

    @property
    def delta(self) -> float | None:
        if self.latest is None or self.previous is None:
            return None
        return self.latest - self.previous


@dataclass
class MethodReport:
    """One (benchmark, dataset, method): its latest run, the previous one and every metric."""

    benchmark: str
    dataset: str
    method: str
    latest: RunInfo
    previous: RunInfo | None
    metrics: list[MetricComparison]

    @property
    def regressions(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.regressed]

    @property
    def changed(self) -> list[str]:
        """Which run identifiers differ from the previous run (config, models, code)."""
        if self.previous is None:
            return []
        names = ("config_hash", "model_hashes", "code_version")
        return [n for n in names if getattr(self.latest, n) != getattr(self.previous, n)]

    def value(self, metric: str) -> float | None:
        for m in self.metrics:
            if m.metric == metric:
                return m.latest
        return None


@dataclass
class Report:
    """Everything ``matchmill report`` renders, in display order."""

    history_url: str
    generated_at: _dt.datetime
    methods: list[MethodReport] = field(default_factory=list)

    @property
    def regressions(self) -> list[tuple[MethodReport, MetricComparison]]:
        return [(m, c) for m in self.methods for c in m.regressions]

    def benchmarks(self) -> list[tuple[str, str, list[MethodReport]]]:
        """(benchmark, dataset, its method reports) in display order."""
        out: dict[tuple[str, str], list[MethodReport]] = {}
        for m in self.methods:
            out.setdefault((m.benchmark, m.dataset), []).append(m)
        return [(b, d, ms) for (b, d), ms in out.items()]


def parse_tolerances(specs: Sequence[str] | None) -> dict[str, float]:
    """``["0.02", "mma=0.05"]`` -> tolerance table: DEFAULT_TOLERANCES, then a bare number sets
    every prefix, then ``PREFIX=X`` entries set that prefix. Raises ValueError naming the spec."""
    table = dict(DEFAULT_TOLERANCES)
    bare = [s for s in specs or [] if "=" not in s]
    prefixed = [s for s in specs or [] if "=" in s]
    for spec in bare:
        value = _tolerance_value(spec, spec)
        table = {prefix: value for prefix in table}
    for spec in prefixed:
        prefix, _, raw = spec.partition("=")
        prefix = prefix.strip()
        if not prefix:
            raise ValueError(f"tolerance {spec!r}: empty metric prefix (write PREFIX=X, e.g. mma=0.02)")
        table[prefix] = _tolerance_value(raw, spec)
    return table


def _tolerance_value(raw: str, spec: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"tolerance {spec!r}: {raw!r} is not a number (write X or PREFIX=X)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance {spec!r}: must be a finite number >= 0, got {raw!r}")
    return value


def _longest_prefix(metric: str, prefixes: Sequence[str]) -> str | None:
    matches = [p for p in prefixes if metric.startswith(p)]
    return max(matches, key=len) if matches else None


def tolerance_for(metric: str, tolerances: Mapping[str, float]) -> float:
    """Tolerance of ``metric``: the entry of the longest prefix of its name."""
    prefix = _longest_prefix(metric, list(tolerances))
    if prefix is None:
        raise ValueError(f"no tolerance for metric {metric!r}: add an entry '' (default) to the tolerance table")
    return float(tolerances[prefix])


def direction_of(metric: str) -> str:
    """``"higher"`` (default), ``"lower"`` (failures, errors, times) or ``"info"`` (num_pairs)."""
    if _longest_prefix(metric, INFORMATIONAL):
        return "info"
    if _longest_prefix(metric, LOWER_IS_BETTER) or "error" in metric:
        return "lower"
    return "higher"


def compare_metric(metric: str, latest: float | None, previous: float | None, tolerance: float,
                   direction: str) -> MetricComparison:
    """Flag ``metric`` when it got worse by more than ``tolerance``, or vanished from the latest run."""
    latest, previous = _clean(latest), _clean(previous)
    regressed, reason = False, ""
    if previous is not None and latest is None:
        regressed, reason = True, "missing in the latest run"
    elif previous is not None and direction != "info":
        worse_by = previous - latest if direction == "higher" else latest - previous
        if worse_by > tolerance + _EPS:
            verb = "dropped" if direction == "higher" else "rose"
            regressed, reason = True, f"{verb} by {abs(latest - previous):.4g}, tolerance {tolerance:g}"
    return MetricComparison(metric, latest, previous, tolerance, direction, regressed, reason)


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def metric_sort_key(metric: str) -> tuple:
    """Family, then threshold as a number: mma@2 before mma@10, auc@5 before auc@20."""
    name, sep, thr = metric.partition("@")
    try:
        number = float(thr) if sep else -1.0
    except ValueError:
        number = math.inf
    return (name, number, metric)


def _run_info(rows: list[dict]) -> RunInfo:
    last = rows[-1]
    try:
        hashes = json.loads(last["model_hashes"]) if last.get("model_hashes") else {}
    except json.JSONDecodeError:
        hashes = {"unparsed": str(last["model_hashes"])}
    return RunInfo(
        run_id=last["run_id"], date=last["date"], config_hash=last.get("config_hash"),
        model_hashes=hashes if isinstance(hashes, dict) else {"value": str(hashes)},
        code_version=last.get("code_version"), out_url=last.get("out_url"), num_pairs=last.get("num_pairs"),
    )


def _method_report(key: tuple[str, str, str], runs: dict[str, list[dict]], order: list[str],
                   tolerances: Mapping[str, float]) -> MethodReport:
    latest_rows = runs[order[-1]]
    previous_rows = runs[order[-2]] if len(order) > 1 else []
    latest_values = {**VALUE_WHEN_ABSENT, **{r["metric"]: r["value"] for r in latest_rows}}
    previous_values = {**VALUE_WHEN_ABSENT, **{r["metric"]: r["value"] for r in previous_rows}} if previous_rows else {}
    shown = {r["metric"] for r in latest_rows + previous_rows}
    metrics = [
        compare_metric(name, latest_values.get(name), previous_values.get(name),
                       tolerance_for(name, tolerances), direction_of(name))
        for name in sorted(shown, key=metric_sort_key)
    ]
    return MethodReport(*key, latest=_run_info(latest_rows),
                        previous=_run_info(previous_rows) if previous_rows else None, metrics=metrics)


_REQUIRED = ("run_id", "date", "benchmark", "dataset", "method", "metric", "value")


def build_report(history: pa.Table, tolerances: Mapping[str, float] | None = None, history_url: str = "",
                 now: _dt.datetime | None = None) -> Report:
    """The report model of a history table (``read_history``'s output, sorted by date).

    Raises:
        ManifestError: the table is empty or lacks a required column.
    """
    missing = [c for c in _REQUIRED if c not in history.column_names]
    if missing:
        raise ManifestError(f"history {history_url!r}: missing column(s) {missing}")
    if history.num_rows == 0:
        raise ManifestError(f"history {history_url!r} is empty or does not exist (no part-*.parquet rows)")
    tolerances = DEFAULT_TOLERANCES if tolerances is None else tolerances
    groups: dict[tuple[str, str, str], dict[str, list[dict]]] = {}
    run_dates: dict[tuple[tuple[str, str, str], str], _dt.datetime] = {}
    for row in history.to_pylist():
        key = (row["benchmark"], row["dataset"], row["method"])
        groups.setdefault(key, {}).setdefault(row["run_id"], []).append(row)
        run_dates[(key, row["run_id"])] = max(run_dates.get((key, row["run_id"]), row["date"]), row["date"])
    methods = []
    for key in sorted(groups):
        order = sorted(groups[key], key=lambda run_id: (run_dates[(key, run_id)], run_id))
        methods.append(_method_report(key, groups[key], order, tolerances))
    return Report(history_url=history_url, generated_at=now or _dt.datetime.now(_dt.timezone.utc), methods=methods)


def load_report(history_url: str, tolerances: Mapping[str, float] | None = None) -> Report:
    """Read the history table at ``history_url`` (B1's ``read_history``) and build the report."""
    return build_report(read_history(history_url), tolerances, history_url=history_url)


def slug(*parts: str) -> str:
    """A file-name-safe, collision-free slug of ``parts`` (used for the figure files):
    readable words joined by ``_`` plus a short hash of the exact text."""
    words = [re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-.")[-40:] for p in parts]
    digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:6]
    return "_".join([w for w in words if w] + [digest])
