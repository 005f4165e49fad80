"""``matchmill report HISTORY_URL --out DIR``: Markdown + HTML report of the benchmark history.

Exit codes: 0 rendered; 1 rendered and ``--fail-on-regression`` with at least one regression;
2 the history is missing, empty or unreadable (one error line, raised as ManifestError /
StorageError and printed by ``matchmill.cli.main``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from matchmill.manifests.storage import check_writable, join, write_bytes_atomic

from .benchmarks.arguments import non_negative_int
from .report.figures import DEFAULT_CONF as PICTURE_CONF
from .report.figures import report_pictures
from .report.render import fmt, render_html, render_markdown
from .report.report import Report, load_report, parse_tolerances

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report was written and what it found."""

    markdown_url: str
    html_url: str
    report: Report
    missing: list[str]


def write_report(history_url: str, out_url: str, tolerances: dict[str, float] | None = None,
                 pairs_to_draw: int = PICTURE_CONF["pairs_to_draw"]) -> ReportFiles:
    """Build the report of ``history_url`` and write report.md, report.html and the PNGs to ``out_url``.

    Raises:
        ManifestError: the history is missing, empty or unreadable.
        StorageError: ``out_url`` or ``history_url`` cannot be opened.
    """
    report = load_report(history_url, tolerances)
    check_writable(out_url)
    pictures = report_pictures(report, out_url, {"pairs_to_draw": pairs_to_draw})
    markdown_url, html_url = join(out_url, MARKDOWN_FILE), join(out_url, HTML_FILE)
    write_bytes_atomic(markdown_url, render_markdown(report, pictures).encode())
    write_bytes_atomic(html_url, render_html(report, pictures).encode())
    missing = [note for pics in pictures.values() for note in pics.missing]
    return ReportFiles(markdown_url, html_url, report, missing)


def _tolerance_spec(text: str) -> str:
    try:
        parse_tolerances([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``matchmill`` command line."""
    parser = subparsers.add_parser(
        "report", help="Markdown + HTML report of a benchmark history, with a regression check",
        description="Render the benchmark history at HISTORY_URL (a folder of Parquet parts, any fsspec URL) as "
                    "report.md and report.html with PNG figures in --out; compare each method's latest run with "
                    "its previous one and flag metrics that got worse by more than the tolerance.",
    )
    parser.add_argument("history_url", help="benchmark history folder (the HISTORY of matchmill bench)")
    parser.add_argument("--out", required=True, help="output folder (any fsspec URL)")
    parser.add_argument("--tolerance", action="append", type=_tolerance_spec, default=[], metavar="[PREFIX=]X",
                        help="absolute tolerance in metric units: X for every metric, PREFIX=X for metrics whose "
                             "name starts with PREFIX (longest prefix wins; repeatable). Defaults: 0.01 for "
                             "fractions (mma, homography_acc, auc), 5 for mean match counts, 0 for num_failed")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit with code 1 when any metric regressed")
    parser.add_argument("--pairs-to-draw", type=non_negative_int, default=PICTURE_CONF["pairs_to_draw"],
                        metavar="N",
                        help=f"example pairs drawn per benchmark (default {PICTURE_CONF['pairs_to_draw']})")
    parser.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    files = write_report(args.history_url, args.out, parse_tolerances(args.tolerance), args.pairs_to_draw)
    print(f"report: {files.html_url}")
    print(f"report: {files.markdown_url}")
    for note in files.missing:
        print(f"missing: {note}")
    regressions = files.report.regressions
    for method, c in regressions:
        print(f"REGRESSION {method.benchmark} {method.dataset} {method.method} {c.metric}: "
              f"{fmt(c.previous)} -> {fmt(c.latest)}: {c.reason}")
    print(f"{len(regressions)} regression(s) in {len(files.report.methods)} method run(s)")
    return 1 if regressions and args.fail_on_regression else 0
