"""``matchmill bench card``: the model card's accuracy + cost table, every row from one command.

For every method preset (:data:`matchmill.methods.presets.PRESETS`, read at run time)
and every reference dataset it runs the ordinary benchmark machinery
(:func:`matchmill.evaluation.benchmarks.run.run_bench`: one pipeline run per method and dataset,
resumable, results in ``OUT/<dataset>/...``), measures each chain's CPU cost in a child process
of its own (:mod:`.card_cost`), and writes::

    OUT/card.md                       the card's tables (printed too)
    OUT/card.json                     every number of the tables, the parameters, per-cell errors
    OUT/<dataset>/summary.json ...    what ``matchmill bench`` writes (runs, per-pair Parquet, bench.json)
    OUT/cost/<method>.json            the cost measurement of one method (reused while its key holds)
    OUT/inputs/                       inputs the card generates (the MegaDepth pair as a pairs file)

Datasets: :data:`.card_datasets.DATASETS` (``--data`` is the folder of ``../shared/data``, read
in place, never copied); CPU cost: :mod:`.card_cost`; the markdown: :mod:`.card_markdown`.

A dataset whose folder is missing is reported as ``absent`` (the demo rows still run); a method
that fails on a dataset is reported in its cell, and the other cells still run.

Exit codes: 0 every cell and cost ran (absent datasets included); 1 some cell or cost measurement
failed (named in the card; the others still ran); 2 bad options (unknown method / dataset, bad
override, an OUT of another card), one line, nothing run.

One OUT folder holds one card configuration (pairs, resize, overrides, random init): rerunning
the same command resumes it; a command with other parameters is refused with one line (exit 2)
before anything runs, since its runs would collide with the committed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from matchmill.config import ConfigError
from matchmill.evaluation.benchmarks import history as hist
from matchmill.evaluation.benchmarks.arguments import positive_int
from matchmill.evaluation.benchmarks.method_config import default_history_url, method_config, to_url
from matchmill.evaluation.benchmarks.run import BenchRequest, run_bench, subsample_evenly
from matchmill.manifests.commit import code_version
from matchmill.methods.presets import PRESETS, UnregisteredMethodError

from .card_cost import COST_PAIRS, COST_THREADS, COST_WHAT, run_cost
from .card_datasets import (
    DATASET_KEYS, DATASETS, DEMO_HEIGHT, DEMO_PAIRS, DEMO_WIDTH, EXTRA_KEYS, METRICS, REAL_PAIRS, DatasetAbsent,
    demo_facts, demo_scenes_dir, heldout_demo_pairs, list_dataset_pairs,
)
from .card_markdown import build_card_markdown

__all__ = ["DEFAULT_METHODS", "CardRequest", "random_init_overrides", "run_card"]

CARD_VERSION = 1

#: The presets of the card, in row order (those missing from PRESETS at run time are skipped).
DEFAULT_METHODS = ("sift", "pump", "pump-sift-mnn", "pump-ncnet-patch2pix", "pump-ncnet", "patch2pix")


def random_init_overrides(methods: Sequence[str], presets: dict[str, dict[str, Any]]) -> list[str]:
    """``<preset>:<stage>.weights=null`` for every weights key the presets set (a seeded random init)."""
    return [f"{m}:{key}=null" for m in methods for key in presets[m] if key.endswith(".weights")]


def weights_of(conf: dict) -> dict[str, str]:
    """``{"<stage>.<method>": weights reference | "init-seed-<n>"}`` of a resolved config."""
    out = {}
    for stage in ("extract", "propose", "refine"):
        sec = conf[stage]
        if "weights" in sec:
            out[f"{stage}.{sec['method']}"] = str(sec["weights"]) if sec["weights"] else f"init-seed-{sec.get('init_seed', 0)}"
    return out


def chain_of(conf: dict) -> str:
    return " -> ".join(f"{s}={conf[s]['method']}" for s in ("extract", "propose", "refine"))



@dataclass
class CardRequest:
    out: str
    data: str = "../shared/data"
    methods: Sequence[str] | None = None
    datasets: Sequence[str] | None = None
    max_pairs: int | None = None
    quick: bool = False
    resize: int = 640
    demo_resize: int = DEMO_WIDTH
    demo_seeds: Sequence[int] | None = None
    random_init: bool = False
    overrides: Sequence[str] = ()
    base_config: str | None = None
    address: str | None = None
    history: str | None = "default"  # "default" = OUT/../history.parquet; None = none
    cost: bool = True
    cost_pairs: int | None = None
    command: str = "matchmill bench card"


def _local_out(out: str) -> Path:
    if "://" in out and not out.startswith("file://"):
        raise ConfigError(f"--out {out!r}: the card writes local files (card.md, inputs); give a folder")
    return Path(out[len("file://"):] if out.startswith("file://") else out).resolve()


def _params(req: CardRequest, data_root: Path) -> dict[str, Any]:
    """What decides the card's pair lists and configs (a rerun must match it to resume)."""
    return {"data": str(data_root), "quick": req.quick, "max_pairs": req.max_pairs, "resize": req.resize,
            "demo_resize": req.demo_resize, "demo_seeds": list(req.demo_seeds) if req.demo_seeds else None,
            "random_init": req.random_init, "overrides": list(req.overrides), "config": req.base_config}


def _check_params(out: Path, params: dict[str, Any]) -> None:
    path = out / "card.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("params")
    except ValueError:
        return
    if old is None:
        return
    changed = [k for k in params if old.get(k) != params[k]]
    if changed:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {params[k]!r}" for k in changed)
        raise ConfigError(f"--out {out} holds a card made with other parameters ({what}); its committed runs "
                          "would collide: use another --out (or remove that folder)")


def _select(names: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if not names:
        return list(known)
    out = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in known:
            raise ConfigError(f"--{what}: unknown {what[:-1]} {n!r}; known: {', '.join(known)}")
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(f"--{what}: nothing selected")
    return out


def run_card(req: CardRequest, echo: Callable[[str], Any] = print) -> tuple[dict[str, Any], int]:
    """Run the card (see the module docstring); returns (card.json's dict, exit code 0 | 1).

    Raises:
        ConfigError: bad options (unknown method / dataset / override, OUT of another card), nothing run.
    """
    presets = PRESETS  # read now: the presets may change between releases
    if req.methods:
        methods = _select(req.methods, list(presets), "methods")
    else:
        methods = [m for m in DEFAULT_METHODS if m in presets]
        for m in DEFAULT_METHODS:
            if m not in presets:
                echo(f"[card] preset {m!r} is not in PRESETS: left out")
    dataset_keys = _select(req.datasets, DATASET_KEYS, "datasets")
    out = _local_out(req.out)
    data_root = Path(req.data).resolve()
    params = _params(req, data_root)
    _check_params(out, params)
    overrides = list(req.overrides) + (random_init_overrides(methods, presets) if req.random_init else [])
    history = default_history_url(str(out)) if req.history == "default" else req.history
    demo_pairs_n = req.max_pairs or DEMO_PAIRS[1 if req.quick else 0]
    real_pairs_n = req.max_pairs or REAL_PAIRS[1 if req.quick else 0]

    # every method's config once (also validates the overrides before anything runs)
    method_info: dict[str, dict[str, Any]] = {}
    for m in methods:
        try:
            conf = method_config(m, "file:///card/pairs.parquet", to_url(str(out / "cost")), presets=presets,
                                 base_config=req.base_config, resize=req.demo_resize, overrides=overrides)
            learned = any(k.endswith(".weights") for k in presets[m]) or bool(weights_of(conf))
            method_info[m] = {"chain": chain_of(conf), "weights": weights_of(conf), "learned": learned, "conf": conf}
        except UnregisteredMethodError as exc:
            method_info[m] = {"error": str(exc), "learned": False}
    out.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {
        "version": CARD_VERSION, "date": hist.utc_now().isoformat(timespec="seconds"), "command": req.command,
        "code_version": code_version(), "params": params, "methods": methods,
        "method_info": {m: {k: v for k, v in i.items() if k != "conf"} for m, i in method_info.items()},
        "datasets": [], "cost": None,
    }

    _write_card(out, card)  # records the parameters before any work (a rerun must match them)

    # the demo pairs first: the held-out demo column and the cost measurement both use them
    demo_rows: list[dict[str, Any]] | None = None
    demo_error: str | None = None
    if "demo-heldout" in dataset_keys or req.cost:
        try:
            demo_rows = heldout_demo_pairs(demo_scenes_dir(), req.demo_seeds, echo)
        except Exception as exc:  # noqa: BLE001 - reported in the demo cells
            demo_error = f"{type(exc).__name__}: {exc}"

    exit_code = 0
    if req.cost:
        card["cost"] = _run_costs(req, methods, method_info, demo_rows, demo_error, out, echo)
        if any(c.get("status") != "ok" for c in card["cost"]["methods"].values()):
            exit_code = 1

    for ds in [d for d in DATASETS if d.key in dataset_keys]:
        entry: dict[str, Any] = {"key": ds.key, "title": ds.title, "benchmark": ds.benchmark, "kind": ds.kind,
                                 "path": str(data_root / ds.folder) if ds.folder else str(demo_scenes_dir()),
                                 "status": "failed", "error": None, "methods": {}}
        card["datasets"].append(entry)
        resize = req.demo_resize if ds.is_demo else req.resize
        entry["resize"] = resize
        try:
            if ds.is_demo:
                if demo_rows is None:
                    raise RuntimeError(demo_error)
                rows, info, name = demo_facts(demo_rows)
            else:
                rows, info, name = list_dataset_pairs(ds, data_root, out, req.demo_seeds, echo)
        except DatasetAbsent as exc:
            entry.update(status="absent", error=str(exc))
            echo(f"[card] {ds.key}: absent ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001 - one dataset failing must not stop the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            echo(f"[card] {ds.key}: FAILED listing pairs: {entry['error']}")
            exit_code = 1
            continue
        picked = subsample_evenly(rows, demo_pairs_n if ds.is_demo else real_pairs_n)
        entry.update(num_pairs=len(picked), pairs_listed=len(rows), out=str(out / ds.key), dataset=name)
        runnable = [m for m in methods if "error" not in method_info[m]]
        for m in methods:
            if m not in runnable:
                entry["methods"][m] = {"status": "failed", "error": method_info[m]["error"]}
                exit_code = 1
        if not runnable:
            entry["status"] = "ok"
            continue
        request = BenchRequest(
            benchmark=ds.benchmark, dataset=name, pairs=picked, out=str(out / ds.key), methods=runnable,
            overrides=overrides, resize=resize, base_config=req.base_config, address=req.address, history=history,
            info={**info, "card_dataset": ds.key, "pairs_listed": len(rows)}, presets=presets)
        echo(f"[card] {ds.key}: {len(picked)} of {len(rows)} pairs, {len(runnable)} method(s), long side {resize} px")
        try:
            result = run_bench(request, echo=echo)
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            echo(f"[card] {ds.key}: FAILED: {entry['error']}")
            exit_code = 1
            continue
        entry["status"] = "ok"
        for r in result.methods:
            keys = [k for k, _ in METRICS[ds.kind]] + list(EXTRA_KEYS)
            entry["methods"][r.name] = {"status": r.status, "error": r.error, "seconds": round(r.seconds, 2),
                                        "metrics": {k: r.metrics.get(k) for k in keys if k in r.metrics}}
            if r.status != "ok":
                exit_code = 1
        _write_card(out, card)  # a partial card after every dataset

    markdown = _write_card(out, card)
    echo(markdown)
    return card, exit_code


def _write_card(out: Path, card: dict[str, Any]) -> str:
    markdown = build_card_markdown(card)
    for name, payload in (("card.json", json.dumps(card, indent=1, default=str)), ("card.md", markdown)):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(payload)
        tmp.replace(out / name)
    return markdown


def _run_costs(req: CardRequest, methods: list[str], method_info: dict[str, dict[str, Any]],
               demo_rows: list[dict[str, Any]] | None, demo_error: str | None, out: Path,
               echo: Callable[[str], Any]) -> dict[str, Any]:
    n = req.cost_pairs or COST_PAIRS[1 if req.quick else 0]
    pairs = subsample_evenly(demo_rows or [], n)
    results: dict[str, dict[str, Any]] = {}
    for m in methods:
        if "error" in method_info[m]:
            results[m] = {"status": "failed", "error": method_info[m]["error"]}
            continue
        if not pairs:
            results[m] = {"status": "failed", "error": f"no demo pairs to measure on ({demo_error})"}
            continue
        echo(f"[card] cost {m}: {len(pairs)} demo pairs, {COST_THREADS} threads, child process")
        results[m] = run_cost(m, method_info[m]["conf"], pairs, out)
        c = results[m]
        if c.get("status") == "ok":
            echo(f"[card] cost {m}: {c['seconds_per_pair_median']:.3f} s/pair, peak RSS {c['peak_rss_mib']:.0f} MiB"
                 + (" (reused)" if c.get("reused") else ""))
        else:
            echo(f"[card] cost {m}: FAILED: {c.get('error')}")
    loads = [c["load_average"][0] for c in results.values() if c.get("load_average")]
    load = "-" if not loads else f"{min(loads):.1f}" if min(loads) == max(loads) else f"{min(loads):.1f}-{max(loads):.1f}"
    what = COST_WHAT.format(cores=os.cpu_count(), threads=COST_THREADS, pairs=len(pairs), width=DEMO_WIDTH, height=DEMO_HEIGHT,
                            resize=req.demo_resize, load=load)
    return {"what": what, "threads": COST_THREADS, "pairs": [p["pair_id"] for p in pairs], "methods": results}


# ----------------------------------------------------------------------------- CLI


def register(sub: Any) -> None:
    """Add ``card`` to ``matchmill bench``'s subcommands."""
    card = sub.add_parser(
        "card", help="model card: every method preset on every reference dataset + CPU cost, one table",
        description="Make the model card's accuracy and cost table: every method preset on every reference "
                    "dataset (missing ones reported as absent) plus each chain's CPU cost, written to OUT/card.md and "
                    "OUT/card.json. Example: matchmill bench card --out /tmp/card --quick")
    card.add_argument("--out", required=True, help="output folder (card.md, card.json, one bench folder per dataset)")
    card.add_argument("--data", default="../shared/data",
                      help="folder of the reference datasets, read in place (default: ../shared/data); "
                           "missing datasets are reported as absent")
    card.add_argument("--methods", default=None,
                      help=f"comma-separated method presets (default: {','.join(DEFAULT_METHODS)})")
    card.add_argument("--datasets", default=None, help=f"comma-separated datasets (default: all: {','.join(DATASET_KEYS)})")
    card.add_argument("--max-pairs", type=positive_int, default=None,
                      help=f"at most N pairs per dataset, evenly spaced (default: demo {DEMO_PAIRS[0]}, others all; "
                           f"--quick: demo {DEMO_PAIRS[1]}, others {REAL_PAIRS[1]})")
    card.add_argument("--quick", action="store_true", help="fewer pairs (see --max-pairs) and cost pairs")
    card.add_argument("--resize", type=positive_int, default=640,
                      help="long image side fed to the extractors on the real-image datasets (default 640)")
    card.add_argument("--demo-resize", type=positive_int, default=DEMO_WIDTH,
                      help=f"long side on the demo scenes and in the cost measurement (default {DEMO_WIDTH}: native)")
    card.add_argument("--demo-seeds", default=None,
                      help="comma-separated held-out demo seeds (default: HELD_OUT_SEEDS = 0,1,2)")
    card.add_argument("--random-init", action="store_true",
                      help="every preset's weights set to null (seeded random init): the card without trained weights")
    card.add_argument("--no-cost", action="store_true", help="skip the CPU cost measurement")
    card.add_argument("--cost-pairs", type=positive_int, default=None,
                      help=f"demo pairs of the cost measurement (default {COST_PAIRS[0]}, --quick {COST_PAIRS[1]})")
    card.add_argument("--history", default=None,
                      help="history table URL (default: OUT/../history.parquet; 'none' = no history)")
    card.add_argument("--config", default=None, help="base YAML job file (default: built-in defaults)")
    card.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    card.add_argument("overrides", nargs="*",
                      help="dotted config overrides for every method (key=value), or one method (<preset>:key=value)")
    card.set_defaults(func=cmd_card)


def _command_of(req: CardRequest) -> str:
    """The command line that makes this card (recorded in card.json / card.md)."""
    parts = ["matchmill", "bench", "card", "--out", req.out]
    if req.data != "../shared/data":
        parts += ["--data", req.data]
    for flag, value in (("--methods", req.methods), ("--datasets", req.datasets), ("--demo-seeds", req.demo_seeds)):
        if value:
            parts += [flag, ",".join(map(str, value))]
    for flag, value, default in (("--max-pairs", req.max_pairs, None), ("--resize", req.resize, 640),
                                 ("--demo-resize", req.demo_resize, DEMO_WIDTH), ("--cost-pairs", req.cost_pairs, None),
                                 ("--config", req.base_config, None), ("--address", req.address, None)):
        if value != default:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--quick", req.quick), ("--random-init", req.random_init), ("--no-cost", not req.cost)) if on]
    if req.history != "default":
        parts += ["--history", req.history or "none"]
    return " ".join(shlex.quote(p) for p in parts + list(req.overrides))


def cmd_card(args: argparse.Namespace) -> int:
    def split(text: str | None) -> list[str] | None:
        return [t.strip() for t in text.split(",") if t.strip()] if text else None

    try:
        seeds = [int(s) for s in split(args.demo_seeds)] if args.demo_seeds else None
    except ValueError:
        raise ConfigError(f"--demo-seeds {args.demo_seeds!r}: expected comma-separated integers") from None
    history = "default" if args.history is None else (None if args.history.lower() == "none" else args.history)
    req = CardRequest(
        out=args.out, data=args.data, methods=split(args.methods), datasets=split(args.datasets),
        max_pairs=args.max_pairs, quick=args.quick, resize=args.resize, demo_resize=args.demo_resize,
        demo_seeds=seeds, random_init=args.random_init, overrides=list(args.overrides), base_config=args.config,
        address=args.address, history=history, cost=not args.no_cost, cost_pairs=args.cost_pairs,
    )
    req.command = _command_of(req)
    _, code = run_card(req)
    return code
