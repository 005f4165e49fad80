"""Render the report model as Markdown and as one self-contained HTML page.

The HTML has its style inline, no script, no external resource: pictures are PNG files next to
it, linked by relative names. Every text that comes from the history (method names, dataset
paths, hashes) is escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import re
from collections.abc import Mapping

from .picture_types import BenchmarkPictures, Picture
from .report import MethodReport, MetricComparison, Report, RunInfo, metric_sort_key

Pictures = Mapping[tuple[str, str], BenchmarkPictures]

_CSS = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 24px auto; max-width: 1320px;
       padding: 0 16px; color: #1d232a; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
code, td.code { font-family: "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.meta { color: #57606a; font-size: 0.9em; }
.banner { padding: 10px 14px; border-radius: 6px; font-weight: bold; margin: 14px 0; }
.banner.bad { background: #ffebe9; border: 1px solid #cf222e; color: #a40e26; }
.banner.good { background: #dafbe1; border: 1px solid #2da44e; color: #116329; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.86em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; white-space: nowrap; }
th.num, td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.code { white-space: nowrap; }
td.path { overflow-wrap: anywhere; max-width: 380px; }
tr.regressed td { background: #ffebe9; }
.bad { color: #cf222e; font-weight: bold; }
td.good { color: #1a7f37; }
.flag { color: #fff; background: #cf222e; border-radius: 4px; padding: 0 6px; font-size: 0.85em; white-space: nowrap;
        font-weight: bold; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.pairs { display: grid; gap: 16px; align-items: start; }
.side > .figures { flex: 1 1 560px; flex-direction: column; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; }
figure img { border: 1px solid #d0d7de; max-width: 100%; display: block; }
figcaption { font-size: 0.85em; color: #57606a; max-width: 640px; margin-top: 4px; }
details.method { margin: 6px 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px 10px; }
details.method summary { cursor: pointer; font-weight: bold; }
.missing { color: #7d4e00; background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 6px;
           overflow-wrap: anywhere; }
"""


def fmt(value: float | None) -> str:
    """A metric value: ``—`` when absent, whole numbers >= 2 plainly, then 1 decimal from 100 on,
    2 from 10 on, otherwise 4 (so fractions line up: 1.0000, 0.3333)."""
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if float(value).is_integer() and abs(value) >= 2:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.4f}"


def fmt_delta(comparison: MetricComparison) -> str:
    """Signed change latest - previous, same precision as :func:`fmt`; empty when either is absent."""
    delta = comparison.delta
    if delta is None:
        return ""
    if delta == 0:
        return "0"
    return ("+" if delta > 0 else "") + fmt(delta)


def fmt_date(date: _dt.datetime) -> str:
    return date.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(date, _dt.datetime) else str(date)


def status_text(comparison: MetricComparison) -> str:
    if comparison.regressed:
        return "REGRESSION: " + comparison.reason
    if comparison.previous is None:
        return "new"
    return ""


def _hashes(info: RunInfo) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(info.model_hashes.items())) or "—"


def _run_fields(info: RunInfo | None) -> list[str]:
    if info is None:
        return ["(no previous run)", "", "", "", "", "", ""]
    pairs = "—" if info.num_pairs is None else str(info.num_pairs)
    return [info.run_id, fmt_date(info.date), info.code_version or "—", info.config_hash or "—",
            _hashes(info), pairs, info.out_url or "—"]


_RUN_LABELS = ["run id", "date", "code version", "config hash", "model hashes", "pairs", "out"]


def _overview_metrics(methods: list[MethodReport]) -> list[str]:
    seen: dict[str, None] = {}
    for m in methods:
        for c in m.metrics:
            seen.setdefault(c.metric, None)
    return sorted(seen, key=metric_sort_key)


def _comparison(method: MethodReport, metric: str) -> MetricComparison | None:
    return next((c for c in method.metrics if c.metric == metric), None)


# ----------------------------------------------------------------------------------------- Markdown


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md_escape(text: object) -> str:
    """Markdown-safe text (also inside table cells): markup characters backslash-escaped,
    newlines flattened, so history text can neither break a table nor inject HTML."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _md_picture(p: Picture) -> list[str]:
    caption = f"*{md_escape(p.title)}*: {md_escape(p.caption)}" if p.caption else ""
    return [f"![{md_escape(p.title)}]({p.file})", "", caption, ""]


def render_markdown(report: Report, pictures: Pictures) -> str:
    """The report as GitHub-flavoured Markdown; pictures linked by their relative file names."""
    out = ["# matchmill benchmark report", "",
           f"History: {md_escape(report.history_url)} · generated {fmt_date(report.generated_at)} · "
           f"{len(report.methods)} method run(s)", ""]
    regressions = report.regressions
    if regressions:
        out += [f"**{len(regressions)} regression(s)** against the previous run:", ""]
        out += _md_table(["benchmark", "dataset", "method", "metric", "previous", "latest", "delta", "why"],
                         [[m.benchmark, m.dataset, m.method, c.metric, fmt(c.previous), fmt(c.latest),
                           fmt_delta(c), c.reason] for m, c in regressions])
    else:
        out += ["**No regression** against the previous runs.", ""]
    for benchmark, dataset, methods in report.benchmarks():
        pics = pictures.get((benchmark, dataset), BenchmarkPictures())
        out += [f"## {md_escape(benchmark)} — {md_escape(dataset)}", "",
                "Latest value of each metric per method:", ""]
        rows = []
        for metric in _overview_metrics(methods):
            row = [metric]
            for m in methods:
                c = _comparison(m, metric)
                row.append("—" if c is None else fmt(c.latest) + (" ▼ REGRESSION" if c.regressed else ""))
            rows.append(row)
        out += _md_table(["metric"] + [m.method for m in methods], rows)
        for p in pics.curves:
            out += _md_picture(p)
        for note in pics.missing:
            out += [f"> Missing: {md_escape(note)}", ""]
        for m in methods:
            out += [f"### {md_escape(m.method)}", ""]
            out += _md_table(["", "latest", "previous"],
                             [[label, a, b] for label, a, b in zip(_RUN_LABELS, _run_fields(m.latest),
                                                                   _run_fields(m.previous))])
            if m.changed:
                out += [f"Changed since the previous run: {', '.join(m.changed)}", ""]
            out += _md_table(["metric", "previous", "latest", "delta", "tolerance", "status"],
                             [[c.metric, fmt(c.previous), fmt(c.latest), fmt_delta(c), f"{c.tolerance:g}",
                               status_text(c)] for c in m.metrics])
        for p in pics.matches:
            out += _md_picture(p)
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------- HTML

Cell = tuple[str, str]  # (css class, already-escaped html)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: list[Cell], rows: list[tuple[str, list[Cell]]], table_class: str = "") -> str:
    """``header``: (css class, label) per column; ``rows``: (row class, cells)."""
    head = "".join(f'<th class="{cls}">{_e(label)}</th>' for cls, label in header)
    body = "".join(
        f'<tr class="{row_class}">' + "".join(f'<td class="{cls}">{cell}</td>' for cls, cell in cells) + "</tr>"
        for row_class, cells in rows
    )
    return f'<table class="{table_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_picture(p: Picture) -> str:
    caption = f"<b>{_e(p.title)}</b>" + (f" — {_e(p.caption)}" if p.caption else "")
    return (f'<figure class="{_e(p.kind)}"><img src="{_e(p.file)}" alt="{_e(p.title)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _flag(c: MetricComparison) -> str:
    return f' <span class="flag" title="{_e(c.reason)}">▼ regression</span>' if c.regressed else ""


def _delta_class(c: MetricComparison) -> str:
    if c.regressed:
        return "num bad"
    delta = c.delta
    if delta is None or delta == 0 or c.direction == "info":
        return "num"
    better = delta > 0 if c.direction == "higher" else delta < 0
    return "num good" if better else "num"


def _html_regressions(report: Report) -> list[str]:
    regressions = report.regressions
    if not regressions:
        return ['<div class="banner good" id="regressions">No regression against the previous runs</div>']
    header = [("", "benchmark"), ("", "dataset"), ("", "method"), ("", "metric"), ("num", "previous"),
              ("num", "latest"), ("num", "delta"), ("", "why")]
    rows = [("regressed", [("code", _e(m.benchmark)), ("path", _e(m.dataset)), ("code", _e(m.method)),
                           ("code", _e(c.metric)), ("num", fmt(c.previous)), ("num bad", fmt(c.latest)),
                           ("num bad", fmt_delta(c)), ("", _e(c.reason))])
            for m, c in regressions]
    return [f'<div class="banner bad" id="regressions">{len(regressions)} regression(s) against the previous run</div>',
            _html_table(header, rows, "regressions")]


def _html_overview(methods: list[MethodReport]) -> str:
    rows = []
    for metric in _overview_metrics(methods):
        cells: list[Cell] = [("code", _e(metric))]
        for m in methods:
            c = _comparison(m, metric)
            if c is None:
                cells.append(("num", "—"))
            else:
                cells.append(("num bad" if c.regressed else "num", _e(fmt(c.latest)) + _flag(c)))
        rows.append(("", cells))
    return _html_table([("", "metric")] + [("num", m.method) for m in methods], rows, "overview")


def _html_method(m: MethodReport) -> str:
    run_rows = [("", [("", _e(label)), ("path", _e(a)), ("path", _e(b))])
                for label, a, b in zip(_RUN_LABELS, _run_fields(m.latest), _run_fields(m.previous))]
    metric_rows = [
        ("regressed" if c.regressed else "",
         [("code", _e(c.metric)), ("num", fmt(c.previous)), ("num", fmt(c.latest)), (_delta_class(c), fmt_delta(c)),
          ("num", f"{c.tolerance:g}"), ("", (_flag(c) + " " + _e(c.reason)) if c.regressed else _e(status_text(c)))])
        for c in m.metrics
    ]
    count = len(m.regressions)
    summary = f"{_e(m.method)}: latest run <code>{_e(m.latest.run_id)}</code>" + (
        f' — <span class="bad">{count} regression(s)</span>' if count else " — no regression")
    changed = f'<p class="meta">Changed since the previous run: {_e(", ".join(m.changed))}</p>' if m.changed else ""
    return (f'<details class="method"{" open" if count else ""}><summary>{summary}</summary>'
            + _html_table([("", ""), ("", "latest"), ("", "previous")], run_rows, "runs") + changed
            + _html_table([("", "metric"), ("num", "previous"), ("num", "latest"), ("num", "delta"),
                           ("num", "tolerance"), ("", "status")], metric_rows, "metrics")
            + "</details>")


def render_html(report: Report, pictures: Pictures) -> str:
    """The report as one HTML page (inline CSS, no script, no external resource)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>matchmill benchmark report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>matchmill benchmark report</h1>",
             f'<p class="meta">History <code>{_e(report.history_url)}</code> · generated '
             f"{_e(fmt_date(report.generated_at))} · {len(report.methods)} method run(s)</p>"]
    parts += _html_regressions(report)
    for benchmark, dataset, methods in report.benchmarks():
        pics = pictures.get((benchmark, dataset), BenchmarkPictures())
        parts.append(f"<h2>{_e(benchmark)} on <code>{_e(dataset)}</code></h2>")
        parts.append('<div class="side">' + _html_overview(methods)
                     + '<div class="figures">' + "".join(_html_picture(p) for p in pics.curves) + "</div></div>")
        for note in pics.missing:
            parts.append(f'<p class="missing">Missing: {_e(note)}</p>')
        parts.append("<h3>Runs compared (latest vs previous)</h3>")
        parts += [_html_method(m) for m in methods]
        if pics.matches:
            parts.append("<h3>Matches on example pairs (inliers green, outliers red)</h3>")
            columns = len({p.method for p in pics.matches})
            parts.append(f'<div class="pairs" style="grid-template-columns: repeat({columns}, minmax(0, 1fr))">'
                         + "".join(_html_picture(p) for p in pics.matches) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
