"""Shared benchmark runner: one pipeline run per method preset over the same pair list.

A benchmark command (``matchmill bench hpatches|pose|megadepth1500``) builds its pair rows
(PAIRS manifest rows with H or pose ground truth) and hands them to :func:`run_bench`, which

1. writes them once as ``OUT/pairs/<benchmark>-<content hash>.parquet`` (the pipeline reads it
   through ``data.source=pairs_file``; the content hash in the name means a changed pair list
   never reuses a stale pairs stage);
2. for each method preset, builds the full pipeline config (:mod:`.method_config`: base config
   or defaults, then the benchmark's data/storage keys, the preset, ``--resize``, the user's
   overrides), runs
   :func:`matchmill.pipeline.runner.run_pipeline` with storage ``OUT/runs`` and run name = preset
   (so a rerun resumes), reads the per-pair verify manifest and writes its summary metrics and
   ``OUT/<method>/pairs.parquet`` (+ ``run_url.txt``) (:mod:`.results`);
3. optionally tunes a match-score threshold to a target mean match count (PUMP supplementary B)
   and reports the tuned variant as method ``<method>-tuned``;
4. writes ``OUT/summary.json`` = ``{method: {metric: value}}`` (methods that ran),
   ``OUT/bench.json`` (run id, date, resize, per-method status / errors / hashes) and appends one
   history row per method and metric (:mod:`matchmill.evaluation.benchmarks.history`).

A method that fails entirely (not registered, crashed, GPU missing) is reported in
``bench.json`` and on screen and the other methods still run; its only history row is
``method_failed = 1``. Per-pair failures stay in every metric's denominator and are counted in
``num_failed``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from matchmill.config import ConfigError
from matchmill.methods.presets import PRESETS, UnregisteredMethodError
from matchmill.manifests.commit import code_version, read_stage
from matchmill.manifests.schemas import PAIRS, STATUS_OK
from matchmill.manifests.storage import (
    check_writable,
    conform,
    exists,
    join,
    read_bytes,
    url_to_fs,
    write_bytes_atomic,
    write_manifest,
)

from . import history as hist
from .method_config import config_hash, default_history_url, method_config, model_hashes, to_url
from .results import BENCH_PAIRS_SCHEMA, NON_METRIC_KEYS, bench_metrics, bench_pairs_table, write_method_outputs
from .threshold_tuning import rescore_verified, tune_threshold

__all__ = [
    "BENCHMARKS", "BENCH_PAIRS_SCHEMA", "BenchRequest", "BenchResult", "MethodResult", "default_history_url",
    "read_summary", "run_bench", "subsample_evenly", "to_url",
]

BENCHMARKS = ("hpatches", "oxford", "pose", "megadepth1500")  # oxford: Oxford affine scenes (homography GT, as hpatches)


@dataclass
class BenchRequest:
    """What one ``matchmill bench ...`` invocation asks for.

    Attributes:
        benchmark: one of BENCHMARKS.
        dataset: the ROOT / PAIRS_FILE the user gave (the CLI makes local paths absolute).
        pairs: PAIRS-manifest rows (dicts) with ground truth.
        out: OUT folder (local path or fsspec URL; not memory://, Ray workers write there).
        methods: preset names, in run order.
        overrides: dotted ``key=value`` applied to every method; ``<preset>:key=value`` to one.
        resize: long side fed to the extractors (``extract.resize_max``); None = config default.
        base_config: YAML job file used as the base (None = built-in defaults).
        address: Ray address (None = embedded / RAY_ADDRESS).
        history: history table URL; None = no history.
        target_matches: threshold tuning target: a mean match count, or a method name (its mean
            match count); None = no tuning.
        info: extra facts for bench.json (e.g. sequences used).
        presets: preset table (default PRESETS).
    """

    benchmark: str
    dataset: str
    pairs: list[dict[str, Any]]
    out: str
    methods: list[str]
    overrides: list[str] = field(default_factory=list)
    resize: int | None = None
    base_config: str | None = None
    address: str | None = None
    history: str | None = None
    target_matches: float | str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] | None = None


@dataclass
class MethodResult:
    """Outcome of one method (or one tuned variant)."""

    name: str
    status: str  # "ok" | "failed"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_url: str | None = None
    config_hash: str | None = None
    model_hashes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    num_pairs: int = 0


@dataclass
class BenchResult:
    """Outcome of :func:`run_bench`."""

    run_id: str
    out_url: str
    summary: dict[str, dict[str, Any]]
    methods: list[MethodResult]
    history_url: str | None

    @property
    def failed(self) -> list[MethodResult]:
        return [m for m in self.methods if m.status != "ok"]


def subsample_evenly(rows: list[dict[str, Any]], max_pairs: int | None) -> list[dict[str, Any]]:
    """At most ``max_pairs`` rows, evenly spaced over the list (covers every scene / bin), order kept."""
    if max_pairs is None or len(rows) <= max_pairs:
        return list(rows)
    if max_pairs < 1:
        raise ConfigError(f"--max-pairs: must be >= 1, got {max_pairs}")
    idx = np.unique(np.linspace(0, len(rows) - 1, max_pairs).round().astype(int))
    return [rows[i] for i in idx]


def pairs_table(rows: list[dict[str, Any]], out_url: str, benchmark: str) -> tuple[pa.Table, str, str]:
    """The pair rows as a PAIRS table, its URL under ``OUT/pairs`` (named by content) and digest."""
    table = conform(pa.Table.from_pylist(rows, schema=PAIRS), PAIRS, where=f"{benchmark} pairs")
    digest = hashlib.sha1(json.dumps(table.to_pylist(), sort_keys=True, default=str).encode()).hexdigest()
    return table, join(out_url, "pairs", f"{benchmark}-{digest[:12]}.parquet"), digest


# ----------------------------------------------------------------------------- one method


def run_method(
    request: BenchRequest, method: str, conf: dict, pairs_digest: str, out_url: str, echo: Callable[[str], Any]
) -> tuple[MethodResult, pa.Table | None]:
    """Run one method's pipeline and collect its metrics; any exception -> a failed result."""
    from matchmill.pipeline.runner import run_pipeline  # lazy: start-up time (the CLI imports this module)

    start = time.perf_counter()
    result = MethodResult(method, "failed", config_hash=config_hash(conf, pairs_digest))
    try:
        result.model_hashes = model_hashes(conf)
        run = run_pipeline(conf, address=request.address, echo=echo)
        result.run_url = run.run_url
        verified = read_stage(run.run_url, "verify")
        rows = verified.select([c for c in verified.column_names if c not in ("matches", "scores", "inliers")]).to_pylist()
        result.metrics = bench_metrics(rows, conf, request.benchmark)
        result.num_pairs = len(rows)
        write_method_outputs(out_url, method, bench_pairs_table(verified, run.run_url), run.run_url)
        result.status, result.error = "ok", None
    except Exception as exc:  # noqa: BLE001 - one method failing must not stop the others
        result.error = f"{type(exc).__name__}: {exc}"[:4000]  # Ray errors carry whole tracebacks
        verified = None
    result.seconds = time.perf_counter() - start
    return result, verified


def run_tuned(
    request: BenchRequest, base: MethodResult, verified: pa.Table, conf: dict, target: float, out_url: str
) -> MethodResult:
    """``<method>-tuned``: matches below the tuned score threshold dropped, verify re-run, re-scored."""
    name = f"{base.name}-tuned"
    start = time.perf_counter()
    tuned_hash = hashlib.sha1(f"{base.config_hash}|tuned-to-{target!r}".encode()).hexdigest()[:16]
    result = MethodResult(name, "failed", run_url=base.run_url, config_hash=tuned_hash,
                          model_hashes=dict(base.model_hashes))
    try:
        scores = [s if st == STATUS_OK else None for s, st in zip(verified["scores"].to_pylist(), verified["status"].to_pylist())]
        tuned = tune_threshold(scores, target)
        rescored = rescore_verified(verified, tuned.threshold, conf["verify"])
        rows = rescored.select([c for c in rescored.column_names if c not in ("matches", "scores", "inliers")]).to_pylist()
        result.metrics = bench_metrics(rows, conf, request.benchmark)
        result.metrics["match_threshold"] = tuned.threshold if math.isfinite(tuned.threshold) else None
        result.metrics["target_matches"] = float(target)
        result.num_pairs = len(rows)
        write_method_outputs(out_url, name, bench_pairs_table(rescored, base.run_url or "", tuned.threshold, inline_matches=True),
                             base.run_url)
        result.status = "ok"
        if not tuned.reached:
            result.error = f"target {target:g} matches not reached: {tuned.mean_matches:.1f} without any threshold"
    except Exception as exc:  # noqa: BLE001
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def _tuning_target(request: BenchRequest, results: list[MethodResult]) -> float | None:
    """The numeric target of the threshold tuning (a method name -> its mean match count)."""
    target = request.target_matches
    if target is None:
        return None
    if isinstance(target, (int, float)):
        return float(target)
    try:
        return float(target)
    except ValueError:
        pass
    by_name = {r.name: r for r in results}
    if target not in by_name or by_name[target].status != "ok":
        return None  # the reference method failed: reported with it, nothing to tune to
    return float(by_name[target].metrics["num_matches_mean"])


# ----------------------------------------------------------------------------- the bench


def _format_metrics(metrics: dict[str, Any]) -> str:
    keys = [k for k in metrics if "/" not in k and k not in NON_METRIC_KEYS and not k.startswith("homography_auc")]
    return "  ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys)


def _check_request(request: BenchRequest, presets: dict[str, dict[str, Any]]) -> str:
    """Validate what can be checked before any work; returns the OUT URL."""
    if request.benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark {request.benchmark!r} is not one of {BENCHMARKS}")
    if not request.pairs:
        raise ConfigError(f"{request.benchmark}: no pairs found in {request.dataset}")
    for name in request.methods:
        if name not in presets:
            raise ConfigError(f"--methods: unknown method preset {name!r}; known: {', '.join(sorted(presets))}")
    target = request.target_matches
    if isinstance(target, str) and not _is_number(target) and target not in request.methods:
        raise ConfigError(f"--target-matches {target!r}: not a number and not one of the methods run ({', '.join(request.methods)})")
    if _is_number(target) and float(target) <= 0:
        raise ConfigError(f"--target-matches: must be > 0, got {target}")
    out_url = to_url(request.out)
    fs, _ = url_to_fs(out_url)
    if "memory" in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)):
        raise ConfigError(f"--out {request.out!r}: memory:// is not visible to Ray workers; use a folder or object store")
    check_writable(out_url)
    return out_url


def _build_configs(request: BenchRequest, presets: dict, pairs_url: str, out_url: str
                   ) -> tuple[dict[str, dict], list[MethodResult]]:
    """Validated configs of the methods, and failed results for those whose config is invalid."""
    configs: dict[str, dict] = {}
    failed: list[MethodResult] = []
    for method in request.methods:
        try:
            configs[method] = method_config(
                method, pairs_url, out_url, presets=presets, base_config=request.base_config,
                resize=request.resize, overrides=request.overrides)
        except (ConfigError, UnregisteredMethodError) as exc:
            failed.append(MethodResult(method, "failed", error=str(exc)))
    if not configs:  # nothing can run: a usage error, not a benchmark result
        raise ConfigError(failed[0].error)
    return configs, failed


def _run_tuning(request: BenchRequest, results: list[MethodResult], verified_by_method: dict[str, pa.Table],
                configs: dict[str, dict], out_url: str, echo: Callable[[str], Any]) -> float | None:
    """Append the ``-tuned`` variants to ``results``; returns the numeric target (None = no tuning)."""
    target = _tuning_target(request, results)
    if request.target_matches is not None and target is None:
        echo(f"[bench] threshold tuning skipped: reference method {request.target_matches!r} failed")
    if target is None:
        return None
    for base in [r for r in results if r.status == "ok" and r.name != request.target_matches]:
        tuned = run_tuned(request, base, verified_by_method[base.name], configs[base.name], target, out_url)
        results.append(tuned)
        echo(f"[bench] {tuned.name}: " + (_format_metrics(tuned.metrics) if tuned.status == "ok" else f"FAILED: {tuned.error}"))
    return target


def run_bench(request: BenchRequest, echo: Callable[[str], Any] = print) -> BenchResult:
    """Run every method of ``request`` and write summary.json, bench.json, per-pair Parquet, history.

    Raises:
        ConfigError: no pairs, bad options, or every method's config is invalid (nothing ran).
        StorageError: OUT is not writable.
    """
    presets = request.presets or PRESETS
    out_url = _check_request(request, presets)
    date = hist.utc_now()
    run_id = hist.new_run_id(date)
    table, pairs_url, digest = pairs_table(request.pairs, out_url, request.benchmark)
    configs, results = _build_configs(request, presets, pairs_url, out_url)
    if not exists(pairs_url):
        write_manifest(table, pairs_url, "pairs")
    echo(f"[bench] {request.benchmark}: {len(request.pairs)} pairs from {request.dataset} -> {out_url} (run {run_id})")
    for r in results:
        echo(f"[bench] {r.name}: FAILED before running: {r.error}")

    verified_by_method: dict[str, pa.Table] = {}  # kept only for the threshold tuning
    for method, conf in configs.items():
        echo(f"[bench] {method}: running")
        result, verified = run_method(request, method, conf, digest, out_url, echo)
        results.append(result)
        if verified is not None and request.target_matches is not None:
            verified_by_method[method] = verified
        if result.status == "ok":
            echo(f"[bench] {method}: {_format_metrics(result.metrics)}  ({result.seconds:.1f}s)")
        else:
            echo(f"[bench] {method}: FAILED: {result.error}")
    results.sort(key=lambda r: request.methods.index(r.name))
    target = _run_tuning(request, results, verified_by_method, configs, out_url, echo)

    summary = {r.name: r.metrics for r in results if r.status == "ok"}
    write_bytes_atomic(join(out_url, "summary.json"), json.dumps(summary, indent=2, default=_json_default).encode())
    resizes = sorted({c["extract"].get("resize_max") for c in configs.values()}, key=str)
    resize = resizes[0] if len(resizes) == 1 else resizes  # per-method overrides may differ
    _write_bench_json(request, out_url, run_id, date, pairs_url, results, target, resize)
    if request.history:
        hist.append_history(request.history, _history_rows(request, out_url, run_id, date, results))
        echo(f"[bench] history: {len(results)} method(s) appended to {request.history}")
    echo(f"[bench] summary: {join(out_url, 'summary.json')}")
    return BenchResult(run_id, out_url, summary, results, request.history)


def _is_number(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _write_bench_json(request: BenchRequest, out_url: str, run_id: str, date: _dt.datetime, pairs_url: str,
                      results: list[MethodResult], target: float | None, resize: Any) -> None:
    payload = {
        "run_id": run_id,
        "date": date.isoformat(),
        "benchmark": request.benchmark,
        "dataset": request.dataset,
        "out_url": out_url,
        "pairs_url": pairs_url,
        "num_pairs": len(request.pairs),
        "resize_max": resize,  # long side fed to the extractors (None = original size)
        "target_matches": target,
        "history_url": request.history,
        "code_version": code_version(),
        "info": request.info,
        "methods": {
            r.name: {
                "status": r.status, "error": r.error, "run_url": r.run_url, "config_hash": r.config_hash,
                "model_hashes": r.model_hashes, "seconds": round(r.seconds, 3), "num_pairs": r.num_pairs,
                "num_failed": r.metrics.get("num_failed"), "resize_max": r.metrics.get("resize_max"),
            }
            for r in results
        },
    }
    write_bytes_atomic(join(out_url, "bench.json"), json.dumps(payload, indent=2, default=_json_default).encode())


def _history_rows(request: BenchRequest, out_url: str, run_id: str, date: _dt.datetime,
                  results: list[MethodResult]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in results:
        common = dict(run_id=run_id, date=date, benchmark=request.benchmark, dataset=request.dataset,
                      out_url=out_url, method=r.name, config_hash=r.config_hash, model_hashes=r.model_hashes)
        if r.status == "ok":
            metrics = {k: v for k, v in r.metrics.items() if k not in NON_METRIC_KEYS}
            rows += hist.history_rows(**common, metrics=metrics, num_pairs=r.num_pairs)
        else:
            rows += hist.history_rows(**common, metrics={"method_failed": 1.0}, num_pairs=len(request.pairs))
    return rows


def read_summary(out: str) -> dict[str, dict[str, Any]]:
    """``OUT/summary.json`` as a dict."""
    return json.loads(read_bytes(join(to_url(out), "summary.json")))
