"""Command line: ``matchmill run | mine | status | show | gc | compare | export | demo-data``.

Exit codes of ``run``: 0 done; 1 done, but a stage's failed rows exceed ``max_failed_fraction``
(default 0: any failed row; the rows are kept, ``matchmill show RUN STAGE --failed`` lists them);
2 config, storage or data-source problem, or committed results of another config in the way
(stopped before any work; ``--overwrite`` replaces them); 3 stopped by a storage error that
persisted over retries (disk full, read-only, access denied, I/O or connection errors): the
stage in progress was not committed and no row was marked failed for it, so a rerun resumes.
Also 2: the run is in use by another writer (its lease, manifests/lease.py), or the run's stage
folders hold files it did not write (pipeline/stray.py); 130 / 143: stopped by Ctrl-C / SIGTERM,
one line, nothing committed is lost (a rerun resumes).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from matchmill.manifests.storage import ManifestError, StorageError, StorageUnavailable

from .config import ConfigError, check_unique_overrides, load_config

# Modules that add their own subcommands: each has ``register(subparsers)`` which adds parsers and
# sets ``func=<callable(args) -> int>`` as the parser default. One line per module.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "matchmill.viz.cli",
    "matchmill.evaluation.report_cli",
    "matchmill.evaluation.cli",
    "matchmill.training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchmill", description="Batch image matching on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a job")
    _job_arguments(run, "configs/demo.yaml", "extract.method=sift storage=file:///x")

    mine = sub.add_parser("mine", help="mine pairs the SfM model missed: retrieval candidates, matched, verified, "
                                       "accepted into a mined-pairs manifest (train pump's U data)")
    _job_arguments(mine, "configs/mine.yaml", "data.root=/data/megadepth mine.min_inliers=40")

    status = sub.add_parser("status", help="stages of a run (committed or not, rows, failures, metrics) or a training run (step, validation, checkpoints)")
    status.add_argument("run_url")

    show = sub.add_parser("show", help="first rows of a stage's manifest")
    show.add_argument("run_url")
    show.add_argument("stage")
    show.add_argument("-n", "--rows", type=int, default=10)
    show.add_argument("--failed", action="store_true", help="only failed rows")

    gc = sub.add_parser("gc", help="remove what no committed stage of a run uses (old artifacts, stray temp files)")
    gc.add_argument("run_url")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--partial", action="store_true", help="also remove uncommitted (partial) stages")

    export = sub.add_parser("export", help="write a run's verified matches as hloc keypoints.h5 / matches.h5, "
                                           "or a COLMAP database (--format colmap)")
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

    compare = sub.add_parser("compare", help="metrics of several runs side by side (e.g. the demo's SIFT and learned runs)")
    compare.add_argument("run_urls", nargs="+")

    demo = sub.add_parser("demo-data", help="write the embedded demo scene (MegaDepth format)")
    demo.add_argument("out")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cameras", type=int, default=14)
    demo.add_argument("--width", type=int, default=320)
    demo.add_argument("--height", type=int, default=240)

    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _job_arguments(parser: argparse.ArgumentParser, example: str, overrides: str) -> None:
    """The arguments ``run`` and ``mine`` share: the job file, overrides and how to run it."""
    parser.add_argument("config", help=f"YAML job file (e.g. {example})")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {overrides}")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    parser.add_argument("--until", default=None, help="stop after this stage commits (e.g. extract)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace stages committed with another config (default: refuse and touch nothing)")
    # SUPPRESS: unless given here, ``matchmill -v run`` keeps the top-level flag's value
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show Ray's own INFO logs too (same as matchmill -v run)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides written after an option (``--until extract a.b=1``) land here
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command in ("run", "mine"):
        catch_interrupts()
    try:
        check_unique_overrides(getattr(args, "overrides", None) or [])
        if args.command == "run":
            return cmd_run(args)
        if args.command == "mine":
            return cmd_mine(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "demo-data":
            return cmd_demo_data(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "gc":
            return cmd_gc(args)
        if args.command == "compare":
            from .status import compare_runs

            print(compare_runs(args.run_urls))
            return 0
        if getattr(args, "func", None) is not None:
            return int(args.func(args))
    except StorageUnavailable as exc:
        print(f"matchmill: error: {storage_stop_message(exc)}", file=sys.stderr)
        return 3
    except (ConfigError, StorageError, ManifestError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"matchmill: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.command not in ("run", "mine"):
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 143 if getattr(exc, "signum", None) == signal.SIGTERM else 130
    except SystemExit as exc:  # SIGTERM while ray.init runs meets Ray's own handler: sys.exit(15)
        if args.command not in ("run", "mine") or exc.code != signal.SIGTERM:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 143
    except Exception as exc:  # noqa: BLE001 - resource errors etc.: one line, not a traceback
        from .runtime import ResourceError

        if isinstance(exc, ResourceError):
            print(f"matchmill: error: {exc}", file=sys.stderr)
            return 2
        raise
    return 1


def storage_stop_message(exc: StorageUnavailable) -> str:
    """The one line of exit code 3."""
    what = f"stage{'s' if ',' in exc.stage else ''} {exc.stage}" if exc.stage else "the stage in progress"
    return (f"storage: {exc}; nothing of {what} was committed; free space or fix access, "
            "then rerun to resume")


#: What ``run`` / ``mine`` print when stopped by Ctrl-C (exit 130) or SIGTERM (exit 143).
INTERRUPTED = "matchmill: interrupted; rerun the same command to resume (committed stages and complete parts are kept)"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received by ``run`` / ``mine``: raised in the main thread, so the run's
    ``finally`` blocks release its lease and stop the Ray it started (runner.run_pipeline)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def catch_interrupts() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (one line and exit 130 / 143 in :func:`main`).

    Native libraries replace a process's SIGTERM handler with a stack dump: pycolmap's glog when
    imported (so it is imported first, here) and Ray's core worker in ``ray.init`` (undone by
    runtime.init_ray, which puts these handlers back)."""
    try:
        import pycolmap  # noqa: F401 - for its import-time signal handler, see above
    except ImportError:
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


def cmd_run(args: argparse.Namespace) -> int:
    from matchmill.stages.metrics import format_summary

    from .runner import run_pipeline

    conf = load_config(args.config, args.overrides)
    result = run_pipeline(conf, until=args.until, address=args.address, verbose=args.verbose,
                          overwrite=args.overwrite)
    print(f"run: {result.run_url}")
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
    """``matchmill mine``: the run graph plus the mine stage (pipeline/graph.py: MINE_GRAPH)."""
    from matchmill.stages.mine import read_report, summary_line

    from .graph import MINE_GRAPH
    from .runner import run_pipeline

    conf = load_config(args.config, args.overrides)
    if conf["pairs"]["strategy"] != "retrieval":
        raise ConfigError(f"matchmill mine: pairs.strategy is {conf['pairs']['strategy']!r}; mining needs "
                          "pairs.strategy=retrieval (with pairs.max_shared_points for pairs SfM missed; see configs/mine.yaml)")
    result = run_pipeline(conf, until=args.until, address=args.address, verbose=args.verbose,
                          overwrite=args.overwrite, graph=MINE_GRAPH)
    print(f"run: {result.run_url}")
    report = read_report(result.run_url)
    if report is not None and args.until is None:
        print(summary_line(report))
        print(f"mined pairs: {result.run_url}/mine  (matchmill train pump ... data.pairs={result.run_url}/mine "
              f"pump.u_fraction=0.25); report: {result.run_url}/mine/report.md")
    return _exit_code(result, conf)


def cmd_gc(args: argparse.Namespace) -> int:
    from .gc import collect_garbage

    removed, freed = collect_garbage(args.run_url, dry_run=args.dry_run, partial=args.partial)
    verb = "would remove" if args.dry_run else "removed"
    for url in removed:
        print(f"{verb} {url}")
    print(f"{verb} {len(removed)} item(s), {freed / 2**20:.1f} MiB")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import run_status

    print(run_status(args.run_url))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .status import show_stage

    print(show_stage(args.run_url, args.stage, rows=args.rows, failed_only=args.failed))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_hloc

    if args.format == "colmap":
        from .export_colmap import export_colmap

        summary = export_colmap(args.run_url, args.out, image_root=args.image_root, stage=args.stage,
                                radius=args.radius, cell=args.cell, min_score=args.min_score,
                                overwrite=args.overwrite)
        note = summary.pop("note")
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        print(f"keypoints: {note}")
        return 0

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


def cmd_demo_data(args: argparse.Namespace) -> int:
    from matchmill.datasets.demo_scene import write_demo_scene

    path = write_demo_scene(args.out, seed=args.seed, num_cameras=args.cameras, width=args.width, height=args.height)
    print(f"demo scene written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
