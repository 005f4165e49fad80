"""The report's pictures: curves per benchmark and matches drawn on a few pairs.

Inputs: the history (latest run of each method, for the MMA curve) and each run's per-pair data
at ``<out_url>/<method>/pairs.parquet`` (corner errors, pose errors, and the pair's matches,
inline or through the matchmill run folder the bench ran). Whatever cannot be drawn (OUT folder
deleted, column absent, run folder gone) is not an error: it becomes a "missing" note that names
the plot, the method and the reason, and the report renders without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.manifests.storage import exists, join, read_bytes, url_to_fs

from matchmill.geometry.homography import MMA_THRESHOLDS

from .report import MethodReport, Report, slug

#: Defaults of the report's pictures (one comment per key).
DEFAULT_CONF: dict = {
    "pairs_to_draw": 3,  # example pairs drawn per benchmark (same pairs for every method)
    "max_lines": 100,  # matches drawn per pair at most
    "max_side": 480,  # longer side of each drawn image, px
}

PAIRS_FILE = "pairs.parquet"
RUN_URL_FILE = "run_url.txt"


@dataclass(frozen=True)
class Picture:
    """One PNG of the report, stored next to the report files."""

    kind: str  # "mma" | "homography_accuracy" | "pose_cdf" | "matches"
    title: str
    file: str  # name relative to the report folder
    caption: str = ""
    method: str = ""  # for example pairs: the method drawn
    pair: str = ""  # for example pairs: the pair id


@dataclass
class BenchmarkPictures:
    """The pictures of one (benchmark, dataset) and the notes on those that could not be made."""

    curves: list[Picture] = field(default_factory=list)
    matches: list[Picture] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class PairData:
    """One method's per-pair table of its latest run, or why it is unavailable."""

    table: pa.Table | None
    url: str
    problem: str = ""


def pairs_url(out_url: str, method: str) -> str:
    return join(out_url, method, PAIRS_FILE)


def read_pairs(method: MethodReport) -> PairData:
    """``<out_url>/<method>/pairs.parquet`` of the method's latest run (never raises)."""
    out_url = method.latest.out_url
    if not out_url:
        return PairData(None, "", "the history row has no out_url")
    url = pairs_url(out_url, method.method)
    if method.value("method_failed"):
        return PairData(None, url, "the method failed in its latest run (no per-pair data)")
    try:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            return PairData(pq.read_table(f), url)
    except FileNotFoundError:
        return PairData(None, url, f"{url} not found (bench OUT folder moved or deleted?)")
    except Exception as exc:  # noqa: BLE001 - any storage / decode problem becomes a note
        return PairData(None, url, f"{url} unreadable ({type(exc).__name__}: {exc})")


def _column(data: PairData, name: str) -> tuple[np.ndarray | None, str]:
    if data.table is None:
        return None, data.problem
    if name not in data.table.column_names:
        return None, f"{data.url} has no {name!r} column"
    values = np.array([np.nan if v is None else v for v in data.table.column(name).to_pylist()], np.float64)
    if values.size == 0:
        return None, f"{data.url} has no rows"
    if np.isnan(values).all():
        return None, f"{data.url}: {name!r} is empty for every pair"
    return values, ""


def _mma_series(methods: list[MethodReport]) -> dict[str, np.ndarray]:
    series = {}
    for m in methods:
        values = [m.value(f"mma@{t}") for t in MMA_THRESHOLDS]
        if any(v is not None for v in values):
            series[m.method] = np.array([np.nan if v is None else v for v in values])
    return series


def _has_metric(methods: list[MethodReport], prefix: str) -> bool:
    return any(c.metric.startswith(prefix) for m in methods for c in m.metrics)


def _per_pair_curve(kind: str, title: str, column: str, plot: Callable, methods: list[MethodReport],
                    pairs: dict[str, PairData], out_dir: str, stem: str, where: str, out: BenchmarkPictures) -> None:
    series, problems = {}, []
    for m in methods:
        if pairs[m.method].table is None:  # already noted once for the method
            continue
        values, problem = _column(pairs[m.method], column)
        if values is None:
            problems.append(f"{m.method}: {problem}")
        else:
            series[m.method] = values
    if problems:
        out.missing.append(f"{title}: " + "; ".join(problems))
    if series:
        name = f"{stem}_{kind}.png"
        plot(series, join(out_dir, name), title=f"{title}, {where}")
        out.curves.append(Picture(kind, title, name, f"per-pair {column} of the latest run of each method"))


def benchmark_pictures(methods: list[MethodReport], out_dir: str, conf: dict | None = None) -> BenchmarkPictures:
    """Draw the curves and example pairs of one (benchmark, dataset) into ``out_dir``."""
    from .pair_drawings import draw_example_pairs  # imported here: matplotlib / cv2 only when drawing
    from .plots import plot_homography_accuracy, plot_mma_curve, plot_pose_error_cdf

    conf = {**DEFAULT_CONF, **(conf or {})}
    out = BenchmarkPictures()
    benchmark, dataset = methods[0].benchmark, methods[0].dataset
    stem = slug(benchmark, dataset)
    where = f"{benchmark} on {dataset}"
    mma = _mma_series(methods)
    if mma:
        name = f"{stem}_mma.png"
        plot_mma_curve(mma, join(out_dir, name), title=f"MMA, {where}")
        out.curves.append(Picture("mma", "MMA curve", name, "mma@1..10 of the latest run of each method"))
    pairs = {m.method: read_pairs(m) for m in methods}
    for m in methods:
        if pairs[m.method].table is None:
            out.missing.append(f"Per-pair curves and matches of {m.method}: {pairs[m.method].problem}")
    if _has_metric(methods, "homography_acc"):
        _per_pair_curve("homography_accuracy", "Homography accuracy", "corner_error", plot_homography_accuracy,
                        methods, pairs, out_dir, stem, where, out)
    if _has_metric(methods, "auc"):
        _per_pair_curve("pose_cdf", "Pose-error CDF", "pose_error", plot_pose_error_cdf,
                        methods, pairs, out_dir, stem, where, out)
    if conf["pairs_to_draw"] > 0:
        draw_example_pairs(methods, pairs, out_dir, stem, conf, out)
    return out


def report_pictures(report: Report, out_dir: str, conf: dict | None = None) -> dict[tuple[str, str], BenchmarkPictures]:
    """:func:`benchmark_pictures` for every (benchmark, dataset) of the report."""
    return {(b, d): benchmark_pictures(ms, out_dir, conf) for b, d, ms in report.benchmarks()}


def read_run_url(data: PairData, out_url: str, method: str) -> str | None:
    """The matchmill run folder behind a method's bench run: a ``run_url`` column of the
    per-pair table, else ``<out_url>/<method>/run_url.txt``."""
    if data.table is not None and "run_url" in data.table.column_names:
        urls = [u for u in data.table.column("run_url").to_pylist() if u]
        if urls:
            return urls[0]
    url = join(out_url, method, RUN_URL_FILE)
    try:
        if exists(url):
            return read_bytes(url).decode().strip() or None
    except Exception:  # noqa: BLE001 - unreachable storage: no run folder
        return None
    return None

