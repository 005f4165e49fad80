"""``matchmill bench card``: the model card's accuracy + cost table, every row from one command.

For every method preset (:data:`matchmill.evaluation.methods.METHOD_PRESETS`, read at run time)
and every reference dataset it runs the ordinary benchmark machinery (:func:`.run.run_bench`: one
pipeline run per method and dataset, resumable, results in ``OUT/<dataset>/...``), measures each
chain's CPU cost in a child process of its own, and writes::

    OUT/card.md                       the card's tables (printed too)
    OUT/card.json                     every number of the tables, the parameters, per-cell errors
    OUT/<dataset>/summary.json ...    what ``matchmill bench`` writes (runs, per-pair Parquet, bench.json)
    OUT/cost/<method>.json            the cost measurement of one method (reused while its key holds)
    OUT/inputs/                       inputs the card generates (the MegaDepth pair as a pairs file)

Datasets (:data:`DATASETS`; ``--data`` is the folder of ``../shared/data``, read in place, never
copied):

- ``demo-heldout``: demo scenes of the held-out seeds (:data:`~matchmill.datasets.training_set.HELD_OUT_SEEDS`,
  never used for training, which starts at seed 1000), 14 cameras at 320x240, rendered into the
  matchmill cache; pairs selected as :func:`~matchmill.datasets.training_set.write_training_set`
  does (Patch2Pix's MegaDepth selection over the folder of scenes) -> pose AUC@5/10/20;
- ``hpatches-v_wormhole``, ``oxford-graf`` -> homography accuracy @1/3/5 px and MMA@3;
- ``megadepth-pair`` (``cameras_converted.json`` -> a SuperGlue pairs file in ``OUT/inputs``),
  ``kitti-seq00``, ``scannet-sample`` (their ``pairs_with_gt.txt``) -> pose AUC@5/10/20.

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
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from matchmill.pipeline.config import ConfigError

from .arguments import positive_int

__all__ = [
    "DATASETS", "DEFAULT_METHODS", "CardDataset", "build_card_markdown", "heldout_demo_pairs",
    "random_init_overrides", "run_card", "write_megadepth_pairs_file",
]

CARD_VERSION = 1

#: The presets of the card, in row order (those missing from METHOD_PRESETS at run time are skipped).
DEFAULT_METHODS = ("sift", "pump", "pump-sift-mnn", "pump-ncnet-patch2pix", "pump-ncnet", "patch2pix")

#: Demo scenes of the card: fixed so that every card evaluates the same images.
DEMO_NUM_CAMERAS, DEMO_WIDTH, DEMO_HEIGHT = 14, 320, 240
DEMO_MAX_PAIRS_PER_SCENE = 60  # as write_training_set

#: Pairs per dataset: (default, --quick); None = every pair of the dataset.
DEMO_PAIRS = (30, 6)
REAL_PAIRS = (None, 3)
COST_PAIRS = (5, 3)
COST_THREADS = 2
COST_TIMEOUT_S = 1800

#: The metrics of each kind of dataset: (summary key, label), values are fractions.
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "pose": (("auc@5", "AUC@5"), ("auc@10", "AUC@10"), ("auc@20", "AUC@20")),
    "homography": (("homography_acc@1", "H@1px"), ("homography_acc@3", "H@3px"), ("homography_acc@5", "H@5px"),
                   ("mma@3", "MMA@3")),
}
#: Extra summary keys kept in card.json per cell.
EXTRA_KEYS = ("num_pairs", "num_failed", "num_matches_mean", "num_inliers_mean", "resize_max")


@dataclass(frozen=True)
class CardDataset:
    """One column group of the card.

    Attributes:
        key: folder under OUT and key in card.json.
        title: column header.
        benchmark: the bench it runs as (run.BENCHMARKS; recorded in the history).
        kind: "pose" | "homography" (selects METRICS).
        folder: path under ``--data``; None = generated (the demo scenes).
    """

    key: str
    title: str
    benchmark: str
    kind: str
    folder: str | None

    @property
    def is_demo(self) -> bool:
        return self.folder is None


DATASETS: tuple[CardDataset, ...] = (
    CardDataset("demo-heldout", "demo held-out", "pose", "pose", None),
    CardDataset("hpatches-v_wormhole", "HPatches v_wormhole", "hpatches", "homography", "hpatches/v_wormhole"),
    CardDataset("oxford-graf", "Oxford graf", "oxford", "homography", "oxford_graf"),
    CardDataset("megadepth-pair", "MegaDepth pair", "pose", "pose", "megadepth_pair"),
    CardDataset("kitti-seq00", "KITTI seq 00", "pose", "pose", "kitti_seq00"),
    CardDataset("scannet-sample", "ScanNet sample", "pose", "pose", "scannet_sample"),
)
DATASET_KEYS = tuple(d.key for d in DATASETS)


class DatasetAbsent(Exception):
    """The dataset's folder is not there: its cells say ``absent``."""


# ----------------------------------------------------------------------------- inputs


def write_megadepth_pairs_file(folder: str | Path, out_path: str | Path) -> Path:
    """The MegaDepth pair of ``folder`` (``cameras_converted.json``: per image K and camera-to-world
    ``c2w``, and ``T_0to1``) as a one-line SuperGlue pairs file
    ``name0 name1 0 0 K0(9) K1(9) T_0to1(16)`` (row-major) at ``out_path``.

    The stored ``T_0to1`` is used after checking it equals ``inv(c2w_1) @ c2w_0``.

    Raises:
        DatasetAbsent: the folder or its JSON is missing.
        ValueError: not exactly two images, or a T_0to1 inconsistent with the cameras.
    """
    import numpy as np

    folder = Path(folder)
    cams = folder / "cameras_converted.json"
    if not cams.is_file():
        raise DatasetAbsent(f"{cams} is absent")
    data = json.loads(cams.read_text())
    names = sorted(k for k, v in data.items() if isinstance(v, dict) and "K" in v and "c2w" in v)
    if len(names) != 2:
        raise ValueError(f"{cams}: expected two images with K and c2w, found {names}")
    c2w0, c2w1 = (np.asarray(data[n]["c2w"], np.float64).reshape(4, 4) for n in names)
    T = np.asarray(data["T_0to1"], np.float64).reshape(4, 4)
    expected = np.linalg.inv(c2w1) @ c2w0
    if not np.allclose(T, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max()))):
        raise ValueError(f"{cams}: T_0to1 is not inv(c2w_1) @ c2w_0 (max difference {np.abs(T - expected).max():.3g})")
    K0, K1 = (np.asarray(data[n]["K"], np.float64).reshape(3, 3) for n in names)

    def flat(m) -> str:
        return " ".join(repr(float(v)) for v in m.reshape(-1))

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{names[0]} {names[1]} 0 0 {flat(K0)} {flat(K1)} {flat(T)}\n"
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    tmp.write_text(f"# from {cams} (T_0to1 = inv(c2w_1) @ c2w_0)\n" + line)
    tmp.replace(out_path)
    return out_path


def demo_scenes_dir() -> Path:
    """Where the held-out demo scenes are rendered (the matchmill cache, like the demo job's scene)."""
    cache = Path(os.environ.get("MATCHMILL_CACHE", Path.home() / ".cache" / "matchmill"))
    return cache / f"heldout-demo-{DEMO_NUM_CAMERAS}cams-{DEMO_WIDTH}x{DEMO_HEIGHT}"


def heldout_demo_pairs(scenes_dir: str | Path, seeds: Sequence[int] | None = None,
                       echo: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Pair rows (PAIRS manifest fields, pose ground truth) of the held-out demo scenes.

    Renders ``<scenes_dir>/heldout-s<seed>`` for every seed (a no-op when already there with the
    same parameters) and selects pairs as ``write_training_set`` does: ``build_pairs`` with
    ``data.source=megadepth`` over the folder holding the scenes (only those scenes),
    ``pairs.max_pairs_per_scene`` = 60. Rows whose selection failed are left out.

    Raises:
        ValueError: a seed is a training seed (>= TRAIN_SEED_START).
    """
    from matchmill.datasets.demo_scene import ensure_demo_scene
    from matchmill.datasets.training_set import HELD_OUT_SEEDS, TRAIN_SEED_START
    from matchmill.manifests.schemas import STATUS_OK
    from matchmill.pipeline.config import default_config
    from matchmill.stages.pairs import build_pairs

    seeds = list(HELD_OUT_SEEDS if seeds is None else seeds)
    training = [s for s in seeds if int(s) >= TRAIN_SEED_START]
    if training or not seeds:
        raise ValueError(f"demo seeds {training or seeds} are not held-out seeds (training uses >= {TRAIN_SEED_START})")
    scenes_dir = Path(scenes_dir).resolve()
    names = []
    for seed in seeds:
        name = f"heldout-s{int(seed)}"
        start = time.perf_counter()
        ensure_demo_scene(scenes_dir, seed=int(seed), num_cameras=DEMO_NUM_CAMERAS, width=DEMO_WIDTH,
                          height=DEMO_HEIGHT, scene=name)
        if time.perf_counter() - start > 1.0:
            echo(f"[card] rendered demo scene {scenes_dir / name} ({time.perf_counter() - start:.0f}s)")
        names.append(name)
    conf = default_config()
    conf["data"].update(source="megadepth", root=str(scenes_dir))
    conf["pairs"].update(max_pairs_per_scene=DEMO_MAX_PAIRS_PER_SCENE, scenes=names)
    table = build_pairs(conf)
    return [r for r in table.to_pylist() if r["status"] == STATUS_OK]


def _demo_facts(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(rows, facts for bench.json, dataset name for the history) of the held-out demo pairs."""
    seeds = sorted({int(str(r["scene"]).rsplit("-s", 1)[1]) for r in rows})
    name = f"demo-heldout:seeds={','.join(map(str, seeds))}:{DEMO_NUM_CAMERAS}cams:{DEMO_WIDTH}x{DEMO_HEIGHT}"
    return rows, {"scenes_dir": str(demo_scenes_dir()), "seeds": seeds}, name


def list_dataset_pairs(ds: CardDataset, data_root: Path, out: Path, demo_seeds: Sequence[int] | None,
                       echo: Callable[[str], Any] = print) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(pair rows, facts for bench.json, dataset name for the history) of one card dataset.

    Raises:
        DatasetAbsent: its folder is missing.
        ValueError / FileNotFoundError: the folder is there but unusable.
    """
    from .hpatches import list_hpatches_bench_pairs
    from .pose import list_pose_pairs

    if ds.is_demo:
        rows = heldout_demo_pairs(demo_scenes_dir(), demo_seeds, echo)
        return _demo_facts(rows)
    folder = (data_root / ds.folder).resolve()
    if not folder.is_dir():
        raise DatasetAbsent(f"{folder} is absent")
    if ds.key == "hpatches-v_wormhole":
        rows, info = list_hpatches_bench_pairs(folder.parent, d2net_subset=False, sequences=[folder.name])
    elif ds.key == "oxford-graf":
        from matchmill.datasets.hpatches import list_oxford_pairs

        rows, info = list_oxford_pairs(folder), {"scene": folder.name}
    elif ds.key == "megadepth-pair":
        pairs_file = write_megadepth_pairs_file(folder, out / "inputs" / "megadepth_pair_pairs.txt")
        rows, info = list_pose_pairs(pairs_file, folder)
    elif ds.key in ("kitti-seq00", "scannet-sample"):
        pairs_file = folder / "pairs_with_gt.txt"
        if not pairs_file.is_file():
            raise DatasetAbsent(f"{pairs_file} is absent")
        images = folder / "images" if (folder / "images").is_dir() else folder
        rows, info = list_pose_pairs(pairs_file, images)
    else:  # pragma: no cover - DATASETS and this function go together
        raise ValueError(f"no pair listing for card dataset {ds.key!r}")
    return rows, info, str(folder)


# ----------------------------------------------------------------------------- methods


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


# ----------------------------------------------------------------------------- cost (child process)

COST_WHAT = (
    "CPU cost, measured in a separate child process per method (`python -c`, no Ray), "
    "PyTorch / OpenCV at {threads} threads (OMP_NUM_THREADS={threads}, OMP_WAIT_POLICY=PASSIVE, no GPU), "
    "on {pairs} held-out demo pairs at {width}x{height} (extract.resize_max={resize}). "
    "Per pair: load and extract both images + propose + refine + verify (RANSAC and metrics), wall clock "
    "(time.perf_counter), median over the pairs (the first pair, with any lazy initialisation, included). "
    "Model build = constructing the four stage objects (weights loaded). Peak RSS = the child's own high-water "
    "mark (VmHWM of /proc/self/status at its end: Python, imports, models, the largest pair; getrusage ru_maxrss is "
    "in card.json too, but on Linux it carries over fork + exec and so starts at the parent's RSS). "
    "A pipeline run extracts each unique image once, so its per-pair cost is lower. "
    "1-minute load average of the machine when measured: {load} (on {cores} cores)."
)


def _cost_child() -> None:
    """Entry point of the cost child: ``python -c '...; _cost_child()' IN.json OUT.json``."""
    in_path, out_path = sys.argv[1], sys.argv[2]
    job = json.loads(Path(in_path).read_text())
    try:
        result = {"status": "ok", "error": None, **measure_cost(job["conf"], job["pairs"], int(job["threads"]))}
    except Exception as exc:  # noqa: BLE001 - reported in the cost cell
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    result.update(peak_memory())
    Path(out_path).write_text(json.dumps(result))


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident set size, MiB.

    ``peak_rss_mib``: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's own
    address space), else ``ru_maxrss``. ``ru_maxrss_mib``: ``getrusage(RUSAGE_SELF).ru_maxrss``; on
    Linux it carries over fork + exec, so for a child it is at least the RSS its parent had when it
    started the child (a 120 MiB SIFT child of a 400 MiB parent reads 400): kept for reference.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return {"peak_rss_mib": hwm if hwm is not None else ru, "ru_maxrss_mib": ru,
            "peak_rss_source": "VmHWM" if hwm is not None else "ru_maxrss"}


def measure_cost(conf: dict, pairs: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Per-pair seconds of one method's stage objects, in this process (called by the child).

    The stage objects are built the way the stage actors build them (``build_method`` with the
    section of the resolved config; the extract stage's image loading, crop and resize included).
    """
    import numpy as np

    from matchmill.stages.extract import ExtractActor
    from matchmill.stages.propose import check_matches
    from matchmill.stages.registry import build_method
    from matchmill.stages.threads import limit_threads
    from matchmill.stages.verify import VerifyActor

    for stage in ("extract", "propose", "refine", "verify"):
        conf[stage]["num_cpus"] = float(threads)
        conf[stage]["num_gpus"] = 0.0
    start = time.perf_counter()
    extractor = ExtractActor(conf, "memory://unused", "cost")  # build_method("extract", ...) + image IO
    proposer = build_method("propose", conf["propose"])
    refiner = build_method("refine", conf["refine"])
    verifier = VerifyActor(conf)
    build_seconds = time.perf_counter() - start
    limit_threads(threads)  # torch is imported by now when a method uses it
    needs_features = getattr(refiner, "needs_features", False)
    per_pair, stages, matches_n = [], {"extract": [], "propose": [], "refine": [], "verify": []}, []
    for row in pairs:
        t0 = time.perf_counter()
        feats = [extractor.compute({"path": row["path" + s], "crop": row["crop" + s]})[0] for s in ("0", "1")]
        t1 = time.perf_counter()
        matches, scores = proposer(feats[0], feats[1])
        check_matches(matches, scores, "propose")
        t2 = time.perf_counter()
        extra = {"feats0": feats[0], "feats1": feats[1], "row": row} if needs_features else {}
        matches, scores = refiner(np.asarray(matches, np.float32).reshape(-1, 4),
                                  np.asarray(scores, np.float32).reshape(-1), **extra)
        check_matches(matches, scores, "refine")
        t3 = time.perf_counter()
        verifier.verify_one({**row, "matches": np.asarray(matches).reshape(-1, 4)})
        t4 = time.perf_counter()
        per_pair.append(t4 - t0)
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name].append(seconds)
        matches_n.append(len(matches))
    return {
        "pairs": len(per_pair),
        "threads": threads,
        "seconds_per_pair_median": statistics.median(per_pair),
        "seconds_first_pair": per_pair[0],
        "seconds_per_pair": per_pair,
        "stage_seconds_median": {k: statistics.median(v) for k, v in stages.items()},
        "build_seconds": build_seconds,
        "num_matches_median": statistics.median(matches_n),
    }


def _cost_key(conf: dict, pairs: list[dict[str, Any]], threads: int) -> str:
    import hashlib

    from . import history as hist
    from .method_config import config_hash

    ids = json.dumps([p["pair_id"] for p in pairs])
    return hashlib.sha1(f"{config_hash(conf, ids)}|{threads}|{hist.code_version()}".encode()).hexdigest()[:16]


def run_cost(method: str, conf: dict, pairs: list[dict[str, Any]], out: Path, threads: int = COST_THREADS,
             timeout_s: float = COST_TIMEOUT_S) -> dict[str, Any]:
    """The cost of one method, measured in a child process (or read back from ``OUT/cost`` when
    the same config, pairs, threads and code version were measured before)."""
    cost_dir = out / "cost"
    cost_dir.mkdir(parents=True, exist_ok=True)
    key = _cost_key(conf, pairs, threads)
    cached = cost_dir / f"{method}.json"
    if cached.is_file():
        try:
            old = json.loads(cached.read_text())
            if old.get("key") == key and old.get("status") == "ok":
                return {**old, "reused": True}
        except ValueError:
            pass
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory(dir=cost_dir) as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps({"conf": conf, "pairs": pairs, "threads": threads}, default=str))
        code = "from matchmill.evaluation.model_card import _cost_child; _cost_child()"
        load = os.getloadavg()
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(in_path), str(out_path)], env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
            if out_path.is_file():
                result = json.loads(out_path.read_text())
            else:
                tail = " ".join((proc.stderr or proc.stdout or "").split())[-600:]
                result = {"status": "failed", "error": f"child exited with code {proc.returncode}: {tail}"}
        except subprocess.TimeoutExpired:
            result = {"status": "failed", "error": f"cost measurement ran past {timeout_s:.0f}s"}
        result["child_seconds"] = time.perf_counter() - start
    result.update(key=key, method=method, load_average=[round(v, 2) for v in load], reused=False)
    cached.write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- the table


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def _short(text: str | None, limit: int = 100) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pairs(n: Any) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _dataset_header(ds: dict[str, Any]) -> str:
    what = "AUC@5/10/20°" if ds["kind"] == "pose" else "H acc @1/3/5 px, MMA@3"
    facts = []
    if ds.get("status") == "ok":
        facts.append(_pairs(ds.get("num_pairs")))
        if ds.get("resize") is not None:
            facts.append(f"{ds['resize']} px")
    return f"{ds['title']}: {what} (%)" + (f" [{', '.join(facts)}]" if facts else "")


def format_cell(ds: dict[str, Any], method: str) -> str:
    """One cell: the metrics in percent (``a / b / c``; homography ``a / b / c, mma``), or
    ``absent`` / ``failed: ...``; failed pairs, when any, are named after the numbers."""
    if ds.get("status") == "absent":
        return "absent"
    if ds.get("status") != "ok":
        return f"failed: {_short(ds.get('error'))}"
    cell = (ds.get("methods") or {}).get(method)
    if cell is None:
        return "not run"
    if cell.get("status") != "ok":
        return f"failed: {_short(cell.get('error'))}"
    metrics = cell.get("metrics") or {}
    keys = [k for k, _ in METRICS[ds["kind"]]]
    if ds["kind"] == "pose":
        text = " / ".join(_pct(metrics.get(k)) for k in keys)
    else:
        text = " / ".join(_pct(metrics.get(k)) for k in keys[:-1]) + f", {_pct(metrics.get(keys[-1]))}"
    failed, total = metrics.get("num_failed") or 0, metrics.get("num_pairs")
    if failed:
        text += f" ({failed}/{total} pairs failed)"
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt_s(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def build_card_markdown(card: dict[str, Any]) -> str:
    """The card (card.json's dict) as markdown: the accuracy table (rows = methods, one column
    per dataset), the cost table, what each cell means, the methods and the datasets."""
    methods = list(card["methods"])
    random_init = bool(card.get("params", {}).get("random_init"))
    label = {m: f"{m} (random init)" if random_init and card.get("method_info", {}).get(m, {}).get("learned") else m
             for m in methods}
    datasets = card["datasets"]
    out = ["# matchmill model card: accuracy and cost", ""]
    if card.get("date"):
        out += [f"Generated {card['date']} by `{card.get('command', 'matchmill bench card')}` "
                f"(code {card.get('code_version', '?')}).", ""]
    out += ["## Accuracy", ""]
    header = ["method"] + [_dataset_header(ds) for ds in datasets]
    rows = [[f"`{label[m]}`"] + [format_cell(ds, m) for ds in datasets] for m in methods]
    out += _md_table(header, rows) + [""]
    out += [
        "Cells are percentages. Pose: AUC of the pose error max(angle(R), angle(t)) up to 5 / 10 / 20 degrees "
        "(OpenCV essential matrix RANSAC on all matches, 0.5 px, LoFTR protocol). Homography: fraction of pairs whose "
        "estimated H (pydegensac, 2 px) moves image 1's four corners by a mean error within 1 / 3 / 5 px, then MMA@3: "
        "the mean fraction of matches (before RANSAC) within 3 px of the ground-truth homography. A failed pair counts "
        "as a miss in every denominator and is named in its cell. `absent`: the dataset's folder is not there; "
        "`failed: ...`: the method (or the dataset's pair listing) failed, full text in card.json.",
        "",
    ]
    cost = card.get("cost")
    if cost:
        out += ["## Cost (CPU)", ""]
        header = ["method", "s / pair (median)", "extract x2", "propose", "refine", "verify", "first pair s",
                  "model build s", "peak RSS (MiB)"]
        crow = []
        for m in methods:
            c = (cost.get("methods") or {}).get(m)
            if c is None:
                crow.append([f"`{label[m]}`", "not measured"] + [""] * (len(header) - 2))
            elif c.get("status") != "ok":
                crow.append([f"`{label[m]}`", f"failed: {_short(c.get('error'))}"] + [""] * (len(header) - 3)
                            + [f"{c['peak_rss_mib']:.0f}" if c.get("peak_rss_mib") else "-"])
            else:
                st = c.get("stage_seconds_median") or {}
                crow.append([f"`{label[m]}`", _fmt_s(c.get("seconds_per_pair_median"))]
                            + [_fmt_s(st.get(k)) for k in ("extract", "propose", "refine", "verify")]
                            + [_fmt_s(c.get("seconds_first_pair")), _fmt_s(c.get("build_seconds")),
                               f"{c['peak_rss_mib']:.0f}"])
        out += _md_table(header, crow) + ["", cost.get("what", ""), ""]
    info = card.get("method_info") or {}
    if info:
        out += ["## Methods", ""]
        for m in methods:
            i = info.get(m) or {}
            if i.get("error"):
                out.append(f"- `{m}`: {_short(i['error'], 200)}")
                continue
            weights = ", ".join(f"{k}: {v}" for k, v in (i.get("weights") or {}).items()) or "no learned weights"
            out.append(f"- `{m}`: {i.get('chain', '?')}; weights {weights}")
        out.append("")
    out += ["## Datasets", ""]
    for ds in datasets:
        where = ds.get("path") or ""
        line = f"- {ds['title']} (`{ds['key']}`, {ds['benchmark']} bench): `{where}`"
        if ds.get("status") == "ok":
            line += f", {_pairs(ds.get('num_pairs'))}"
            if ds.get("pairs_listed") and ds["pairs_listed"] != ds.get("num_pairs"):
                line += f" of {ds['pairs_listed']} (evenly spaced)"
            line += f", long side {ds.get('resize')} px; results in `{ds.get('out')}`"
        elif ds.get("status") == "absent":
            line += ": absent"
        else:
            line += f": failed ({_short(ds.get('error'), 200)})"
        out.append(line)
    params = card.get("params") or {}
    if params.get("overrides"):
        out += ["", "Overrides: " + " ".join(f"`{o}`" for o in params["overrides"])]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- the command


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
    from . import history as hist
    from .method_config import default_history_url, method_config, to_url
    from .methods import METHOD_PRESETS, UnregisteredMethodError
    from .run import BenchRequest, run_bench, subsample_evenly

    presets = METHOD_PRESETS  # read now: the presets may change between releases
    if req.methods:
        methods = _select(req.methods, list(presets), "methods")
    else:
        methods = [m for m in DEFAULT_METHODS if m in presets]
        for m in DEFAULT_METHODS:
            if m not in presets:
                echo(f"[card] preset {m!r} is not in METHOD_PRESETS: left out")
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
        "code_version": hist.code_version(), "params": params, "methods": methods,
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
                rows, info, name = _demo_facts(demo_rows)
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
    from .run import subsample_evenly

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
        description=(__doc__ or "").split("\n\n")[0])
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
    import shlex

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
