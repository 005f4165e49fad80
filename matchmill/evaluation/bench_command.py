"""``matchmill bench hpatches|pose|megadepth1500|card``: benchmark presets over the same pipeline, and the
release model card (matchmill/evaluation/release/model_card.py).

Each writes ``OUT/summary.json`` ({method: {metric: value}}), ``OUT/bench.json``,
``OUT/<method>/pairs.parquet`` and appends to the history table. Exit codes: 0 every method ran;
1 a method failed entirely (the others still ran and are in summary.json); 2 bad input (missing
ROOT / pairs file, unknown preset, invalid override), one line on stderr, nothing run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from matchmill.config import ConfigError
from matchmill.methods.presets import BASELINE, PRESETS, UnknownPresetError, select_methods

from .benchmarks.arguments import positive_int
from .benchmarks.hpatches import list_hpatches_bench_pairs
from .benchmarks.megadepth1500 import DEFAULT_RESIZE, list_megadepth1500_pairs
from .benchmarks.method_config import default_history_url
from .benchmarks.pose import check_images_exist, list_pose_pairs
from .benchmarks.run import BenchRequest, run_bench, subsample_evenly
from .release.model_card import register as register_card


def _common_options(parser: argparse.ArgumentParser, resize_help: str) -> None:
    parser.add_argument("--out", required=True, help="output folder (local path or fsspec URL)")
    parser.add_argument(
        "--methods", default="",
        help=f"comma-separated method presets besides the SIFT baseline ({', '.join(PRESETS)})",
    )
    parser.add_argument("--no-sift", action="store_true", help=f"do not run the {BASELINE!r} baseline")
    parser.add_argument(
        "--history", default=None,
        help="history table URL (default: OUT/../history.parquet, next to OUT; 'none' = no history)",
    )
    parser.add_argument("--resize", type=positive_int, default=None, help=resize_help)
    parser.add_argument("--max-pairs", type=positive_int, default=None,
                        help="evaluate at most N pairs, evenly spaced over the list")
    parser.add_argument("--config", default=None, help="base YAML job file (default: built-in defaults)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    parser.add_argument(
        "overrides", nargs="*",
        help="dotted config overrides for every method (key=value), or one method (<preset>:key=value)",
    )


def register(subparsers: Any) -> None:
    """Add ``bench`` with its ``hpatches``, ``pose``, ``megadepth1500`` and ``card`` subcommands."""
    bench = subparsers.add_parser(
        "bench", help="run a benchmark (HPatches, pose pairs, MegaDepth-1500) or the model card",
        description="Run method presets and the SIFT baseline through the same pipeline on a benchmark, write "
                    "OUT/summary.json and append to a history table; card: every preset on every reference dataset. "
                    "Example: matchmill bench hpatches ROOT --out OUT --methods pump-ncnet-patch2pix")
    sub = bench.add_subparsers(dest="benchmark", required=True)

    hp = sub.add_parser("hpatches", help="HPatches homography accuracy and MMA",
                        description="Homography accuracy and MMA of each method on HPatches sequences (image 1 "
                                    "against 2..6). Example: matchmill bench hpatches /data/hpatches --out "
                                    "bench/hpatches --methods pump-sift-mnn")
    hp.add_argument("root", help="folder of HPatches sequence folders (<seq>/1.ppm .. 6.ppm, H_1_k)")
    hp.add_argument("--all-sequences", action="store_true",
                    help="keep the 8 sequences the D2-Net protocol drops (default: 108-sequence subset)")
    hp.add_argument("--sequences", default=None, help="comma-separated sequence names (default: all)")
    hp.add_argument("--target-matches", default=None,
                    help="tune a match-score threshold per method to this mean match count, or to the "
                         "mean count of a method (e.g. 'sift'); reported as '<method>-tuned'")
    _common_options(hp, "long image side fed to the extractors (default: extract.resize_max of the config, 640)")
    hp.set_defaults(func=cmd_hpatches)

    pose = sub.add_parser("pose", help="relative pose AUC on a SuperGlue pairs-with-GT file",
                          description="Relative pose AUC@5/10/20 of each method on the pairs of a SuperGlue-format "
                                      "pairs file with ground truth. Example: matchmill bench pose pairs.txt "
                                      "--images /data/scannet --out bench/scannet")
    pose.add_argument("pairs_file", help="pairs file: name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)")
    pose.add_argument("--images", required=True, help="folder the image names are relative to")
    _common_options(pose, "long image side fed to the extractors (default: extract.resize_max of the config, 640)")
    pose.set_defaults(func=cmd_pose)

    md = sub.add_parser("megadepth1500", help="MegaDepth-1500 relative pose (LoFTR scene info)",
                        description="Relative pose AUC of each method on MegaDepth-1500, read from LoFTR's scene-info "
                                    "files. Example: matchmill bench megadepth1500 /data/megadepth --scene-info "
                                    "/data/megadepth_test_1500_scene_info --out bench/md1500")
    md.add_argument("root", help="MegaDepth root the scene-info image paths are relative to")
    md.add_argument("--scene-info", required=True, help="folder of scene-info JSON files (or one file)")
    _common_options(md, f"long image side fed to the extractors (default: {DEFAULT_RESIZE}, LoFTR)")
    md.set_defaults(func=cmd_megadepth1500)

    register_card(sub)  # ``matchmill bench card``: the model card's table (matchmill/evaluation/release/model_card.py)


def _as_config_error(fn: Callable[[], Any]) -> Any:
    """Run a pair listing; malformed inputs (ValueError) become one-line ConfigErrors (exit 2)."""
    try:
        return fn()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _history_url(args: argparse.Namespace) -> str | None:
    if args.history is None:
        return default_history_url(args.out)
    return None if args.history.lower() == "none" else args.history


def _request(args: argparse.Namespace, benchmark: str, dataset: str, rows: list, info: dict, **extra: Any):
    try:
        methods = select_methods(args.methods.split(","), include_baseline=not args.no_sift)
    except UnknownPresetError as exc:
        raise ConfigError(exc.args[0]) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    picked = subsample_evenly(rows, args.max_pairs)
    if len(picked) < len(rows):
        info = {**info, "max_pairs": args.max_pairs, "pairs_listed": len(rows)}
    if "://" not in dataset:  # the same data reached from another working directory is the same dataset
        dataset = str(Path(dataset).resolve())
    return BenchRequest(
        benchmark=benchmark, dataset=dataset, pairs=picked, out=args.out, methods=methods,
        overrides=list(args.overrides), resize=args.resize, base_config=args.config, address=args.address,
        history=_history_url(args), info=info, **extra,
    )


def _run(request) -> int:
    result = run_bench(request)
    for failed in result.failed:  # one line each; the full text is in OUT/bench.json
        message = " ".join((failed.error or "").split())
        message = message if len(message) <= 300 else message[:297] + "..."
        print(f"matchmill: bench: method {failed.name!r} failed: {message}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_hpatches(args: argparse.Namespace) -> int:
    sequences = [s for s in args.sequences.split(",") if s] if args.sequences else None
    rows, info = _as_config_error(
        lambda: list_hpatches_bench_pairs(args.root, d2net_subset=not args.all_sequences, sequences=sequences)
    )
    return _run(_request(args, "hpatches", args.root, rows, info, target_matches=args.target_matches))


def cmd_pose(args: argparse.Namespace) -> int:
    rows, info = _as_config_error(lambda: list_pose_pairs(args.pairs_file, args.images))
    return _run(_request(args, "pose", args.pairs_file, rows, info))


def cmd_megadepth1500(args: argparse.Namespace) -> int:
    rows, info = _as_config_error(lambda: list_megadepth1500_pairs(args.root, args.scene_info))
    if args.resize is None:
        args.resize = DEFAULT_RESIZE
    _as_config_error(lambda: check_images_exist(rows, f"MegaDepth root {args.root}"))
    return _run(_request(args, "megadepth1500", args.root, rows, info))
