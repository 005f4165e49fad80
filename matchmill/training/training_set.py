"""The data matchmill's shipped weights are trained on: rendered demo scenes and licensed photographs.

Nothing here comes from an evaluation set (HPatches, Oxford, MegaDepth, KITTI, ScanNet or anything
under ``../shared/data``). :func:`write_training_set` writes::

    <out>/scenes/train-s<seed>/...       demo scenes (MegaDepth layout: images, depths, sparse)
                                         rendered from seeds TRAIN_SEED_START .. + num_scenes - 1:
                                         each seed changes every texture, the layout jitter, the
                                         camera arc (baseline, distance, height, focal length)
                                         and the per-image sun / exposure / noise
    <out>/photos/<name>.png              photographs shipped in scikit-image's wheel (licences in
                                         PHOTOS and in <out>/photos/LICENSES.json)
    <out>/pairs.parquet                  PAIRS manifest: Patch2Pix's MegaDepth selection over the
                                         scenes (K0, K1, T_0to1 ground truth) -> NCNet, Patch2Pix,
                                         PUMP's unsupervised pairs
    <out>/images.parquet                 IMAGES manifest: every scene image + every photo -> PUMP's
                                         synthetic homography pairs
    <out>/training_set.json              the parameters (a rerun with the same ones is a no-op)

Held-out seeds: the demo job uses seed 0 (``configs/demo.yaml``); the model card's held-out demo
scenes are seeds ``HELD_OUT_SEEDS``. Training seeds start at :data:`TRAIN_SEED_START` so the two
never meet (:func:`check_held_out` refuses an overlap).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.datasets.demo import write_demo_scene
from matchmill.datasets.demo.seeds import HELD_OUT_SEEDS, TRAIN_SEED_START, check_held_out  # re-exported here
from matchmill.manifests.schemas import IMAGES, PAIRS
from matchmill.pipeline.config import default_config
from matchmill.stages.images import unique_images
from matchmill.stages.pairs import build_pairs

__all__ = ["TRAIN_SEED_START", "HELD_OUT_SEEDS", "PHOTOS", "write_training_set", "check_held_out"]

VERSION = 1  # bump when the layout or the content of a training set changes

#: scikit-image sample photographs used for PUMP's synthetic pairs: name -> licence, as stated in
#: the docstring of ``skimage.data.<name>`` (0.26). Images whose licence is not stated are left out.
PHOTOS: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "brick": "CC0 (CC0Textures, Bricks25)",
    "camera": "CC0 (photographer Lav Varshney)",
    "chelsea": "CC0 (photographer Stefan van der Walt)",
    "coffee": "CC0 (photographer Rachel Michetti)",
    "grass": "CC0 (DeviantArt, linolafett)",
    "gravel": "CC0 (CC0Textures, Gravel04)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA / HubbleSite)",
    "coins": "no known copyright restrictions (Brooklyn Museum collection)",
    "retina": "CC0 1.0 (Wikimedia Commons)",
    "text": "public domain (Wikipedia)",
    "clock": "public domain (photographer Stefan van der Walt)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
}


def _skimage_data():
    """``skimage.data``, or an ImportError saying how to get it."""
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError("the training set's photographs come from scikit-image: pip install 'matchmill[train]' "
                          "(or scikit-image), or leave them out (matchmill train-data --no-photos)") from exc
    return skimage.data


def _write_photos(out: Path) -> list[dict[str, Any]]:
    """Write the :data:`PHOTOS` as RGB PNGs; returns IMAGES rows. Skipped photos are logged."""
    skimage_data = _skimage_data()

    out.mkdir(parents=True, exist_ok=True)
    rows, licences = [], {}
    for name, licence in PHOTOS.items():
        img = np.asarray(getattr(skimage_data, name)())
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-9))).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        path = out / f"{name}.png"
        cv2.imwrite(str(path), img[..., ::-1])
        licences[name] = {"licence": licence, "source": f"skimage.data.{name}", "shape": list(img.shape)}
        rows.append({"image_id": f"photos/{name}.png", "scene": "photos", "path": str(path.resolve()),
                     "crop": None, "status": "ok", "error": None})
    (out / "LICENSES.json").write_text(json.dumps(licences, indent=1))
    return rows


def write_training_set(out: str | Path, num_scenes: int = 24, num_cameras: int = 14, width: int = 320,
                       height: int = 240, photos: bool = True, seed_start: int = TRAIN_SEED_START,
                       max_pairs_per_scene: int = 60) -> dict[str, Any]:
    """Render the training scenes, copy the photos and write the two manifests (see module docstring).

    Returns the parameters written to ``<out>/training_set.json`` plus row counts. A folder that
    already holds a training set of the same parameters is left as it is.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    out = Path(out)
    seeds = list(range(int(seed_start), int(seed_start) + int(num_scenes)))
    check_held_out(seeds)
    if photos:
        _skimage_data()  # fail before anything is written
    params = {"version": VERSION, "seeds": seeds, "num_cameras": int(num_cameras), "width": int(width),
              "height": int(height), "photos": bool(photos), "max_pairs_per_scene": int(max_pairs_per_scene)}
    marker = out / "training_set.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in params} == params:
            return done
    scenes = out / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        name = f"train-s{seed}"
        if not (scenes / name / "demo_scene.json").exists():
            write_demo_scene(scenes, seed=seed, num_cameras=num_cameras, width=width, height=height, scene=name)
    conf = default_config()
    conf["seed"] = int(seed_start)
    conf["data"].update(source="megadepth", root=str(scenes.resolve()))
    conf["pairs"]["max_pairs_per_scene"] = int(max_pairs_per_scene)
    pairs = build_pairs(conf)
    pq.write_table(pairs, out / "pairs.parquet")
    image_rows = unique_images(pairs).to_pylist()
    if photos:
        image_rows += _write_photos(out / "photos")
    elif (out / "photos").exists():
        shutil.rmtree(out / "photos")
    pq.write_table(pa.Table.from_pylist(image_rows, schema=IMAGES), out / "images.parquet")
    result = {**params, "pairs": pairs.num_rows, "images": len(image_rows),
              "pose_pairs": int(pa.compute.sum(pa.compute.equal(pairs["status"], "ok")).as_py() or 0)}
    assert pairs.schema.names == PAIRS.names
    marker.write_text(json.dumps(result, indent=1))
    return result
