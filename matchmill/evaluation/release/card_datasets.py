"""The datasets of the model card (``matchmill bench card``) and their pair lists.

Datasets (:data:`DATASETS`; ``--data`` is the folder of ``../shared/data``, read in place, never
copied):

- ``demo-heldout``: demo scenes of the held-out seeds (:data:`~matchmill.training.training_set.HELD_OUT_SEEDS`,
  never used for training, which starts at seed 1000), 14 cameras at 320x240, rendered into the
  matchmill cache; pairs selected as :func:`~matchmill.training.training_set.write_training_set`
  does (Patch2Pix's MegaDepth selection over the folder of scenes) -> pose AUC@5/10/20;
- ``hpatches-v_wormhole``, ``oxford-graf`` -> homography accuracy @1/3/5 px and MMA@3;
- ``megadepth-pair`` (``cameras_converted.json`` -> a SuperGlue pairs file in ``OUT/inputs``),
  ``kitti-seq00``, ``scannet-sample`` (their ``pairs_with_gt.txt``) -> pose AUC@5/10/20.

A dataset whose folder is missing raises :class:`DatasetAbsent` (its cells say ``absent``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.hpatches import list_oxford_pairs
from matchmill.evaluation.benchmarks.hpatches import list_hpatches_bench_pairs
from matchmill.evaluation.benchmarks.pose import list_pose_pairs
from matchmill.manifests.schemas import STATUS_OK
from matchmill.pipeline.config import default_config
from matchmill.stages.pairs import build_pairs
from matchmill.training.training_set import HELD_OUT_SEEDS, TRAIN_SEED_START

#: Demo scenes of the card: fixed so that every card evaluates the same images.
DEMO_NUM_CAMERAS, DEMO_WIDTH, DEMO_HEIGHT = 14, 320, 240
DEMO_MAX_PAIRS_PER_SCENE = 60  # as write_training_set

#: Pairs per dataset: (default, --quick); None = every pair of the dataset.
DEMO_PAIRS = (30, 6)
REAL_PAIRS = (None, 3)
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


def write_megadepth_pairs_file(folder: str | Path, out_path: str | Path) -> Path:
    """The MegaDepth pair of ``folder`` (``cameras_converted.json``: per image K and camera-to-world
    ``c2w``, and ``T_0to1``) as a one-line SuperGlue pairs file
    ``name0 name1 0 0 K0(9) K1(9) T_0to1(16)`` (row-major) at ``out_path``.

    The stored ``T_0to1`` is used after checking it equals ``inv(c2w_1) @ c2w_0``.

    Raises:
        DatasetAbsent: the folder or its JSON is missing.
        ValueError: not exactly two images, or a T_0to1 inconsistent with the cameras.
    """
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


def demo_facts(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
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
    if ds.is_demo:
        rows = heldout_demo_pairs(demo_scenes_dir(), demo_seeds, echo)
        return demo_facts(rows)
    folder = (data_root / ds.folder).resolve()
    if not folder.is_dir():
        raise DatasetAbsent(f"{folder} is absent")
    if ds.key == "hpatches-v_wormhole":
        rows, info = list_hpatches_bench_pairs(folder.parent, d2net_subset=False, sequences=[folder.name])
    elif ds.key == "oxford-graf":
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
