"""Subcommands ``run | mine | show | gc | export | compare | demo-data`` of the ``matchmill`` command
line (matchmill/cli.py holds the parser, the common error handling, the exit codes and ``status``,
which reads training runs too).

Exit codes of ``run`` and ``mine``: 0 done; 1 done, but a stage's failed rows exceed
``max_failed_fraction`` (default 0: any failed row; the rows are kept, ``matchmill show RUN STAGE
--failed`` lists them); 2, 3, 130 and 143 as every command (matchmill/cli.py).
"""

from __future__ import annotations

import argparse
import sys

from matchmill.config import ConfigError

from .config import load_config
from .graph import MINE_GRAPH
from .verbosity import add_verbose_argument


def register(sub: argparse._SubParsersAction) -> None:
    """Add the pipeline's subcommands; ``run`` and ``mine`` are ``interruptible`` (Ctrl-C / SIGTERM:
    one line, exit 130 / 143)."""
    run = sub.add_parser("run", help="run or resume a job", description=(
        "Run the job a YAML file describes (pairs, images, extract, propose, refine, verify, metrics), or resume it: "
        "committed stages are kept, so rerunning the same command continues where it stopped. "
        "Example: matchmill run configs/demo.yaml run_name=demo-4k extract.max_keypoints=4096"))
    _job_arguments(run, "configs/demo.yaml", "extract.method=sift storage=file:///x")
    run.set_defaults(func=cmd_run, interruptible=True)

    mine = sub.add_parser("mine", help="mine pairs the SfM model missed: retrieval candidates, matched, verified, "
                                       "accepted into a mined-pairs manifest (train pump's U data)",
                          description="Mine image pairs an SfM model missed: retrieval candidates are matched and "
                                      "verified, and the accepted ones written as a mined-pairs manifest that "
                                      "matchmill train pump reads. Example: matchmill mine configs/mine.yaml "
                                      "data.root=/data/megadepth")
    _job_arguments(mine, "configs/mine.yaml", "data.root=/data/megadepth mine.min_inliers=40")
    mine.set_defaults(func=cmd_mine, interruptible=True)

    show = sub.add_parser("show", help="first rows of a stage's manifest", description=(
        "Print the first rows of one stage's manifest of a run (--failed: only failed rows, each error in full). "
        "Example: matchmill show demo verify -n 5"))
    show.add_argument("run_url")
    show.add_argument("stage")
    show.add_argument("-n", "--rows", type=int, default=10)
    show.add_argument("--failed", action="store_true", help="only failed rows")
    show.add_argument("--columns", default=None, metavar="A,B,...",
                      help="columns to print, in this order, cells in full (all: every column); default: a few "
                           "per stage (key, counts, times, status) fitted to the terminal's width")
    show.add_argument("--all", action="store_const", const="all", dest="columns", help="every column (--columns all)")
    show.set_defaults(func=cmd_show)

    gc = sub.add_parser("gc", help="remove what no committed stage of a run uses (old artifacts, stray temp files)",
                        description="Remove the files of a run that no committed stage uses (artifacts of replaced "
                                    "stages, stray temporary files). Example: matchmill gc demo --dry-run")
    gc.add_argument("run_url")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--partial", action="store_true", help="also remove uncommitted (partial) stages")
    gc.set_defaults(func=cmd_gc)

    export = sub.add_parser("export", help="write a run's verified matches as hloc keypoints.h5 / matches.h5, "
                                           "or a COLMAP database (--format colmap)",
                            description="Write a run's verified matches for SfM tools: hloc's keypoints.h5, "
                                        "matches.h5 and pairs.txt, or a COLMAP database.db (--format colmap). "
                                        "Example: matchmill export demo out/colmap --format colmap")
    export.add_argument("run_url")
    export.add_argument("out", help="output folder (any fsspec URL)")
    export.add_argument("--format", choices=("hloc", "colmap"), default="hloc",
                        help="hloc: keypoints.h5 + matches.h5; colmap: database.db for COLMAP's mapper")
    export.add_argument("--image-root", default=None,
                        help="name images by their path relative to this folder (hloc default: the run's image "
                             "ids; colmap default: the deepest folder holding every image)")
    export.add_argument("--stage", default="verify", help="stage to export (default: verify)")
    export.add_argument("--all-matches", action="store_true", help="keep RANSAC outliers too")
    export.add_argument("--keypoints", choices=("auto", "native", "matches"), default="auto",
                        help="hloc: native = the extractor's own keypoints, scores and descriptors, every inlier "
                             "kept (sparse chains with the identity refiner); matches = rebuilt from the match "
                             "coordinates (quantised); auto (default): native when the chain allows it")
    export.add_argument("--no-quantize", action="store_true",
                        help="keypoints rebuilt from matches: do not merge them across pairs")
    export.add_argument("--radius", type=float, default=4.0, help="quantisation merge radius (px)")
    export.add_argument("--min-score", type=float, default=0.0, help="drop matches scoring below this")
    export.add_argument("--cell", type=int, default=48, help="quantisation grid cell (px)")
    export.add_argument("--coordinates", choices=("hloc", "colmap"), default="hloc",
                        help="hloc: pixel centres at integers (hloc adds 0.5 itself); colmap: +0.5")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an export of another run or format in OUT (never files that are not an export's)")
    export.set_defaults(func=cmd_export)

    compare = sub.add_parser("compare", help="metrics of several runs side by side (e.g. the demo's SIFT and learned runs)",
                             description="Print the metrics of several runs side by side, one column per run. "
                                         "Example: matchmill compare demo demo-learned (make demo compares its "
                                         "SIFT and learned runs this way)")
    compare.add_argument("run_urls", nargs="+")
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo-data", help="write the embedded demo scene (MegaDepth format)",
                          description="Render the synthetic demo scene (images, depth maps, a COLMAP model: the MegaDepth "
                                      "layout) into a folder; data.source=demo does this on first use. "
                                      "Example: matchmill demo-data /tmp/demo --seed 1")
    demo.add_argument("out")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cameras", type=int, default=14)
    demo.add_argument("--width", type=int, default=320)
    demo.add_argument("--height", type=int, default=240)
    demo.set_defaults(func=cmd_demo_data)


def _job_arguments(parser: argparse.ArgumentParser, example: str, overrides: str) -> None:
    """The arguments ``run`` and ``mine`` share: the job file, overrides and how to run it."""
    parser.add_argument("config", help=f"YAML job file (e.g. {example})")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {overrides}")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    parser.add_argument("--until", default=None, help="stop after this stage commits (e.g. extract)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace stages committed with another config (default: refuse and touch nothing)")
    add_verbose_argument(parser)  # the same -v as ``matchmill -v run``; the two counts add up


def cmd_run(args: argparse.Namespace) -> int:
    conf = load_config(args.config, args.overrides)
    return run_job(conf, args)


def run_job(conf: dict, args: argparse.Namespace) -> int:
    """Run (or resume) a validated job as ``matchmill run`` does (``matchmill match`` too): the
    runner prints ``run: URL`` and a line per stage, then the metrics; the exit code."""
    from matchmill.stages.metrics import format_summary  # lazy: start-up time (pydegensac, cv2)

    from .runner import run_pipeline  # lazy: start-up time

    result = run_pipeline(conf, until=args.until, address=args.address, verbose=args.verbose,
                          overwrite=args.overwrite)
    if result.metrics:
        print(format_summary(result.metrics))
    return _exit_code(result, conf)


def _exit_code(result, conf: dict) -> int:
    """1 when a stage's failed rows exceed ``max_failed_fraction`` (with a line saying where), else 0."""
    fraction, allowed = result.failed_fraction(), float(conf["max_failed_fraction"])
    if fraction > allowed:
        print(f"matchmill: {100 * fraction:.1f}% of a stage's rows failed (max_failed_fraction={allowed:g}); "
              f"see: matchmill show {result.run_url} <stage> --failed", file=sys.stderr)
        return 1
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    """``matchmill mine``: the run graph plus the mine stage (matchmill/pipeline/graph.py: MINE_GRAPH)."""
    from matchmill.stages.mine import read_report, summary_line  # lazy: start-up time

    from .runner import run_pipeline  # lazy: start-up time

    conf = load_config(args.config, args.overrides)
    if conf["pairs"]["strategy"] != "retrieval":
        raise ConfigError(f"matchmill mine: pairs.strategy is {conf['pairs']['strategy']!r}; mining needs "
                          "pairs.strategy=retrieval (with pairs.max_shared_points for pairs SfM missed; see configs/mine.yaml)")
    result = run_pipeline(conf, until=args.until, address=args.address, verbose=args.verbose,
                          overwrite=args.overwrite, graph=MINE_GRAPH)
    report = read_report(result.run_url)
    if report is not None and args.until is None:
        print(summary_line(report))
        print(f"mined pairs: {result.run_url}/mine  (matchmill train pump ... data.pairs={result.run_url}/mine "
              f"pump.u_fraction=0.25); report: {result.run_url}/mine/report.md")
    return _exit_code(result, conf)


def cmd_gc(args: argparse.Namespace) -> int:
    from .gc import collect_garbage  # lazy: start-up time

    removed, freed = collect_garbage(args.run_url, dry_run=args.dry_run, partial=args.partial)
    verb = "would remove" if args.dry_run else "removed"
    for url in removed:
        print(f"{verb} {url}")
    print(f"{verb} {len(removed)} item(s), {freed / 2**20:.1f} MiB")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .show import show_stage  # lazy: start-up time (pyarrow)

    columns = args.columns.split(",") if args.columns is not None else None
    print(show_stage(args.run_url, args.stage, rows=args.rows, failed_only=args.failed, columns=columns))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "colmap":
        from .export import export_colmap  # lazy: start-up time (h5py)

        summary = export_colmap(args.run_url, args.out, image_root=args.image_root, stage=args.stage,
                                radius=args.radius, cell=args.cell, min_score=args.min_score,
                                overwrite=args.overwrite)
        note = summary.pop("note")
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        print(f"keypoints: {note}")
        return 0

    from .export import export_hloc  # lazy: start-up time (h5py)

    summary = export_hloc(
        args.run_url,
        args.out,
        stage=args.stage,
        inliers_only=not args.all_matches,
        quantize=not args.no_quantize,
        radius=args.radius,
        cell=args.cell,
        min_score=args.min_score,
        coordinates=args.coordinates,
        image_root=args.image_root,
        keypoints=args.keypoints,
        overwrite=args.overwrite,
    )
    note = summary.pop("note")
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if summary["keypoints_from"] == "native":
        print(f"keypoints: native (the extract stage's), {summary['matches']} of {summary['input_matches']} "
              "matches kept")
    else:
        how = f"quantised at {args.radius:g} px" if summary["keypoints_from"] == "quantized" else "one per match end"
        print(f"keypoints: rebuilt from the matches ({how}), {summary['matches']} of {summary['input_matches']} "
              f"matches kept ({note})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs  # lazy: start-up time (pyarrow)

    print(compare_runs(args.run_urls))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from matchmill.datasets.demo import write_demo_scene  # lazy: start-up time (cv2)

    path = write_demo_scene(args.out, seed=args.seed, num_cameras=args.cameras, width=args.width, height=args.height)
    print(f"demo scene written to {path}")
    return 0

