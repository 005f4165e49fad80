"""Benchmark curves as PNG (matplotlib Agg, no display, no global pyplot state).

- MMA curve: mean matching accuracy at 1..10 px per method (from the history's mma@t values);
- homography-accuracy curve: fraction of pairs with corner error <= t, t = 1..10 px, per method
  (from per-pair corner errors; a failed estimation (inf / nan) never counts as correct);
- pose-error CDF: fraction of pairs with pose error <= x degrees, per method (failures, inf,
  stay in the denominator, so a curve ends below 1 when some pairs failed).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from matchmill.geometry.homography import MMA_THRESHOLDS
from matchmill.manifests.storage import write_bytes_atomic

#: Thresholds (px) of the MMA and homography-accuracy curves (1..10, as the history's mma@t).
PIXEL_THRESHOLDS: tuple[int, ...] = MMA_THRESHOLDS

#: Defaults of the plots (one comment per key).
DEFAULT_CONF: dict = {
    "width_in": 6.4,  # figure width in inches
    "height_in": 4.0,  # figure height in inches
    "dpi": 100,  # pixels per inch of the PNG
    "pose_max_error": 30.0,  # x range of the pose-error CDF, degrees
}

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")  # so that coinciding curves stay distinguishable


def accuracy_curve(errors: Sequence[float] | np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Fraction of ``errors`` (N,) that are <= each threshold, shape (T,); nan/inf never count.

    Raises ValueError for an empty ``errors`` (a curve over no pairs means nothing)."""
    errs = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errs.size == 0:
        raise ValueError("accuracy curve over no pairs: the error list is empty")
    errs = np.where(np.isnan(errs), np.inf, errs)
    return (errs[None, :] <= np.asarray(thresholds, dtype=np.float64)[:, None]).mean(axis=1)


def _new_figure(conf: Mapping) -> Figure:
    return Figure(figsize=(conf["width_in"], conf["height_in"]), dpi=conf["dpi"], layout="constrained")


def _save(fig: Figure, out_png: str, dpi: int) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    write_bytes_atomic(out_png, buf.getvalue())


def _check_series(series: Mapping[str, np.ndarray], length: int | None, what: str) -> dict[str, np.ndarray]:
    if not series:
        raise ValueError(f"{what}: no method to plot")
    out = {}
    for method, values in series.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if length is not None and arr.shape != (length,):
            raise ValueError(f"{what}: method {method!r} has {arr.shape[0]} values, expected {length}")
        if arr.size == 0:
            raise ValueError(f"{what}: method {method!r} has no values")
        out[method] = arr
    return out


def _style_fraction_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, frameon=True)


def plot_mma_curve(series: Mapping[str, Sequence[float]], out_png: str, title: str = "MMA",
                   thresholds: Sequence[float] = PIXEL_THRESHOLDS, conf: Mapping | None = None) -> str:
    """MMA vs threshold per method.

    Args:
        series: method -> (T,) MMA fractions at ``thresholds`` (nan where a value is missing).
        out_png: path or fsspec URL of the PNG.
    Returns:
        ``out_png``.
    """
    conf = {**DEFAULT_CONF, **(conf or {})}
    series = _check_series(series, len(thresholds), "MMA curve")
    fig = _new_figure(conf)
    ax = fig.add_subplot()
    for k, (method, values) in enumerate(sorted(series.items())):
        ax.plot(thresholds, values, marker=_MARKERS[k % len(_MARKERS)], linestyle=_LINESTYLES[k % len(_LINESTYLES)],
                label=method)
    ax.set_xticks(list(thresholds))
    _style_fraction_axes(ax, title, "threshold (px)", "mean matching accuracy")
    _save(fig, out_png, conf["dpi"])
    return out_png


def plot_homography_accuracy(corner_errors: Mapping[str, Sequence[float]], out_png: str,
                             title: str = "Homography accuracy",
                             thresholds: Sequence[float] = PIXEL_THRESHOLDS, conf: Mapping | None = None) -> str:
    """Homography accuracy vs corner-error threshold per method.

    Args:
        corner_errors: method -> (N,) per-pair mean corner errors in px (inf / nan: failed).
        out_png: path or fsspec URL of the PNG.
    Returns:
        ``out_png``.
    """
    conf = {**DEFAULT_CONF, **(conf or {})}
    corner_errors = _check_series(corner_errors, None, "homography-accuracy curve")
    fig = _new_figure(conf)
    ax = fig.add_subplot()
    for k, (method, errs) in enumerate(sorted(corner_errors.items())):
        ax.plot(thresholds, accuracy_curve(errs, thresholds), marker=_MARKERS[k % len(_MARKERS)],
                linestyle=_LINESTYLES[k % len(_LINESTYLES)], label=f"{method} ({errs.size} pairs)")
    ax.set_xticks(list(thresholds))
    _style_fraction_axes(ax, title, "corner-error threshold (px)", "fraction of pairs correct")
    _save(fig, out_png, conf["dpi"])
    return out_png


def plot_pose_error_cdf(pose_errors: Mapping[str, Sequence[float]], out_png: str,
                        title: str = "Pose-error CDF", conf: Mapping | None = None) -> str:
    """Cumulative distribution of per-pair pose errors (degrees) per method.

    Args:
        pose_errors: method -> (N,) per-pair pose errors, max(rotation, translation) in degrees;
            inf / nan (failed estimation) stay in the denominator and never count.
        out_png: path or fsspec URL of the PNG.
    Returns:
        ``out_png``.
    """
    conf = {**DEFAULT_CONF, **(conf or {})}
    pose_errors = _check_series(pose_errors, None, "pose-error CDF")
    grid = np.linspace(0.0, float(conf["pose_max_error"]), 301)
    fig = _new_figure(conf)
    ax = fig.add_subplot()
    for k, (method, errs) in enumerate(sorted(pose_errors.items())):
        failed = int((~np.isfinite(errs)).sum())
        label = f"{method} ({errs.size} pairs" + (f", {failed} failed)" if failed else ")")
        ax.plot(grid, accuracy_curve(errs, grid), linestyle=_LINESTYLES[k % len(_LINESTYLES)], label=label)
    for t in (5, 10, 20):
        if t < grid[-1]:
            ax.axvline(t, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, grid[-1])
    _style_fraction_axes(ax, title, "pose error (degrees)", "fraction of pairs")
    _save(fig, out_png, conf["dpi"])
    return out_png
