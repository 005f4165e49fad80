"""The report's pictures: curves per benchmark and matches drawn on a few pairs.

Inputs: the history (latest run of each method, for the MMA curve) and each run's per-pair data
at ``<out_url>/<method>/pairs.parquet`` (corner errors, pose errors, and the pair's matches,
inline or through the matchmill run folder the bench ran). Whatever cannot be drawn (OUT folder
deleted, column absent, run folder gone) is not an error: it becomes a "missing" note that names
the plot, the method and the reason, and the report renders without it.

The picture records (``Picture``, ``BenchmarkPictures``, ``PairData``) live in :mod:`.picture_types`,
which :mod:`.pair_drawings` (the example pairs) uses too; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq

from matchmill.geometry.homography import MMA_THRESHOLDS
from matchmill.manifests.storage import join, url_to_fs

from .picture_types import BenchmarkPictures, PairData, Picture, pairs_url
from .report import MethodReport, Report, slug

__all__ = ["DEFAULT_CONF", "BenchmarkPictures", "PairData", "Picture", "benchmark_pictures", "read_pairs",
           "report_pictures"]

#: Defaults of the report's pictures (one comment per key).
DEFAULT_CONF: dict = {
    "pairs_to_draw": 3,  # example pairs drawn per benchmark (same pairs for every method)
    "max_lines": 100,  # matches drawn per pair at most
    "max_side": 480,  # longer side of each drawn image, px
}


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
    # lazy: matplotlib / cv2 only when drawing (`matchmill report` without pictures never loads them)
    from .pair_drawings import draw_example_pairs
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
