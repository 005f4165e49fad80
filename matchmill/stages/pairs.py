"""Pairs stage (driver side): build the pairs manifest from the configured data source."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from matchmill.config import ConfigError
from matchmill.datasets.colmap_scene import check_scene_cameras as check_cameras
from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.hpatches import list_hpatches_pairs, list_oxford_pairs
from matchmill.datasets.image_sources import check_folder_images, folder_images, list_scene_folders, scene_images
from matchmill.datasets.megadepth import DEFAULT_BOUNDS, DEFAULT_CONF, list_scenes, select_megadepth_pairs
from matchmill.datasets.pair_strategies import (
    STRATEGY_BOUNDS,
    STRATEGY_DEFAULTS,
    choose_strategy,
    exhaustive_pairs,
    failed_image_row,
    retrieval_pairs,
    sequential_pairs,
    whiten,
)
from matchmill.datasets.pairs_file import iter_pairs_file
from matchmill.manifests.schemas import PAIRS, STATUS_FAILED, STATUS_OK, make_pair_id, normalize_image_id
from matchmill.manifests.storage import conform, read_manifest, url_to_fs

from .global_descriptors import describe_images

log = logging.getLogger(__name__)

_MATRIX_SIZES = {"K0": 9, "K1": 9, "T_0to1": 16, "H_0to1": 9}


#: The pairs section: the strategy keys (matchmill/datasets/pair_strategies.py), then the MegaDepth
#: covisibility recipe's keys (matchmill/datasets/megadepth.py), each commented next to its code.
STAGE_DEFAULTS: dict = {**STRATEGY_DEFAULTS, **DEFAULT_CONF}
#: Bounds of the section's numbers, declared beside each half's defaults.
STAGE_BOUNDS: dict = {**STRATEGY_BOUNDS, **DEFAULT_BOUNDS}
#: Sources whose images a strategy other than covisibility pairs (the others list their pairs).
IMAGE_SOURCES = ("demo", "megadepth", "folder")

#: Pair dicts converted to Arrow at a time (bounds the driver's Python objects per pair).
CHUNK_ROWS = 1024


def demo_root(conf: dict) -> Path:
    """Where the generated demo scene lives; generated on first use."""
    data = conf["data"]
    if data["root"]:
        return Path(data["root"])
    cache = Path(os.environ.get("MATCHMILL_CACHE", Path.home() / ".cache" / "matchmill"))
    root = cache / f"demo-seed{conf['seed']}-{data['demo_num_cameras']}cams-{data['demo_width']}x{data['demo_height']}"
    n, groups = int(data["demo_num_cameras"]), int(data.get("demo_sfm_groups", 1))
    if groups > 1:
        root = root.with_name(root.name + f"-sfm{groups}")
    ensure_demo_scene(  # a no-op when the same scene (and generator version) is already there
        root,
        seed=conf["seed"],
        num_cameras=n,
        width=data["demo_width"],
        height=data["demo_height"],
        sfm_groups=[i * groups // n for i in range(n)] if groups > 1 else None,
    )
    return root


def check_source(conf: dict) -> None:
    """Fail (FileNotFoundError naming the key) when the data source cannot be read; writes nothing.

    Called by the runner before any stage is touched, so a wrong ``data.root`` never costs a
    committed stage. Scene sources also have their COLMAP cameras vetted here
    (:func:`check_scene_cameras`); a folder source must hold two readable images
    (:func:`~matchmill.datasets.image_sources.check_folder_images`)."""
    data = conf["data"]
    source = data["source"]

    def must_exist(key: str) -> None:
        value = data[key]
        fs, path = url_to_fs(str(value))
        if not fs.exists(path):
            raise FileNotFoundError(f"data.{key} {str(value)!r} does not exist (data.source={source})")

    if source in ("megadepth", "hpatches", "oxford", "folder") or (source == "demo" and data["root"]):
        must_exist("root")
    if source == "folder":
        check_folder_images(data["root"], int(data["max_image_pixels"]))
    if source == "pairs_file":
        must_exist("pairs_file")
        if data["images_dir"]:
            must_exist("images_dir")
    if source == "megadepth" or (source == "demo" and data["root"]):
        check_scene_cameras(Path(data["root"]), conf["pairs"])


def check_scene_cameras(root: Path, pairs_conf: dict) -> None:
    """Refuse, before any work, a scene whose COLMAP model has a camera pair selection cannot use.

    Every scene pair selection will read (:func:`matchmill.datasets.megadepth.list_scenes`) is
    checked from its cameras file alone (:func:`matchmill.datasets.colmap_scene.check_scene_cameras`).

    The whole run stops (ConfigError: exit 2, one line naming the scene, camera id, model and the
    supported list; also for a cameras file that cannot be read) rather than skipping the scene: a fisheye, OpenCV or distorted radial camera
    read as a pinhole ``K`` gives wrong ground-truth poses, wrong Sampson filtering and wrong
    verification for every pair of the scene with no error anywhere, and silently skipping it
    would shrink the dataset behind the user's back. The user decides: undistort the scene
    (``colmap image_undistorter``) or list it in ``pairs.exclude_scenes``.
    """
    try:
        names = list_scenes(root, pairs_conf)  # the scenes pair selection will read, each with a model
    except ValueError:
        return  # a missing root or a named scene without a model: the pairs stage names it
    for scene in names:
        sparse = root / scene / pairs_conf["sparse_dir"]
        try:
            check_cameras(sparse, scene)
        except ValueError as exc:  # an unsupported camera, or an unreadable cameras file
            raise ConfigError(str(exc)) from None


def source_rows(conf: dict, run_url: str | None = None) -> Iterable[dict]:
    """Pair dicts (PAIRS field names) from ``data.source`` (pairs files are streamed)."""
    data = conf["data"]
    source = data["source"]
    if conf["pairs"]["strategy"] != "covisibility":
        return strategy_rows(conf, run_url)
    pairs_conf = {k: v for k, v in conf["pairs"].items() if k not in STRATEGY_DEFAULTS}
    pairs_conf["seed"] = conf["pairs"].get("seed", conf["seed"])
    if source in ("demo", "megadepth"):
        root = demo_root(conf) if source == "demo" else Path(data["root"])
        if not root.exists():
            raise FileNotFoundError(f"data.root {str(root)!r} does not exist")
        return select_megadepth_pairs(root, pairs_conf)
    if source == "hpatches":
        return list_hpatches_pairs(data["root"], sequences=data["sequences"])
    if source == "oxford":
        return list_oxford_pairs(data["root"])
    if source == "pairs_file":
        if str(data["pairs_file"]).endswith(".parquet"):  # a ready PAIRS manifest (any GT kind)
            table = read_manifest(str(data["pairs_file"]), "pairs")
            return (row for batch in table.to_batches(max_chunksize=CHUNK_ROWS) for row in batch.to_pylist())
        return iter_pairs_file(data["pairs_file"], data["images_dir"] or data["root"] or ".")
    raise ValueError(f"data.source: unknown source {source!r}")


def source_images(conf: dict) -> list:
    """The images a strategy pairs: every image file of a folder, or the scenes' images (with
    their SfM models; a scene without one is an error when the SfM rule needs it, unless
    ``pairs.sfm_fallback``)."""
    data, pc = conf["data"], conf["pairs"]
    if data["source"] == "folder":
        if pc["max_shared_points"] is not None and not pc["sfm_fallback"]:
            raise ValueError("pairs.max_shared_points needs a COLMAP model and data.source=folder has none "
                             "(set pairs.max_shared_points: null, or pairs.sfm_fallback: true for retrieval alone)")
        return folder_images(data["root"])
    root = demo_root(conf) if data["source"] == "demo" else Path(data["root"])
    require = pc["max_shared_points"] is not None and not pc["sfm_fallback"]
    images = []
    for scene in list_scene_folders(root, pc):
        images += scene_images(root, scene, pc, require_model=require)
    return images


def strategy_rows(conf: dict, run_url: str | None = None) -> Iterable[dict]:
    """Rows of the retrieval / exhaustive / sequential strategies over :func:`source_images`;
    an image that cannot be read becomes one failed row (key ``<id>|<id>``) and pairs with
    nothing. Logs one line of counts (images, pairs compared, excluded by the SfM rule, kept)."""
    pc = conf["pairs"]
    source = conf["data"]["source"]
    if source not in IMAGE_SOURCES:
        raise ValueError(f"pairs.strategy={pc['strategy']} pairs the images of data.source "
                         f"{'|'.join(IMAGE_SOURCES)}; data.source={source} lists its own pairs")
    images = source_images(conf)
    if pc["strategy"] == "auto":
        count = sum(im.error is None for im in images)
        pc = {**pc, "strategy": choose_strategy(count, pc)}
        log.info("pairs (auto): %d images, exhaustive_max %d: %s", count, pc["exhaustive_max"], pc["strategy"])
    if pc["strategy"] == "retrieval":
        X, errors = describe_images(images, pc["global"], run_url, int(conf["data"]["max_image_pixels"]),
                                    execution=conf["extract"])
        ok = [i for i in range(len(images)) if i not in errors]
        if ok:
            W = whiten(X[ok], pc["whiten"])
            X = np.zeros((len(images), W.shape[1]), np.float32)
            X[ok] = W
        stats: dict[str, int] = {}
        usable = [im if i not in errors else _with_error(im, errors[i]) for i, im in enumerate(images)]
        yield from (failed_image_row(images[i], errors[i]) for i in sorted(errors))
        yield from retrieval_pairs(usable, X, pc, stats)
        log.info("pairs (retrieval): %d images (%d unreadable), %d pairs compared, %d linked in SfM excluded, "
                 "%d candidates", len(images), len(errors), stats["compared"], stats["excluded_sfm"], stats["candidates"])
        return
    broken = [(i, im) for i, im in enumerate(images) if im.error is not None]
    yield from (failed_image_row(im, im.error) for _, im in broken)
    if pc["strategy"] == "exhaustive":
        yield from exhaustive_pairs(images, pc["scope"])
    else:
        yield from sequential_pairs(images, int(pc["window"]), pc["loop_every"], pc["scope"])


def _with_error(im, error: str):
    return replace(im, error=error)


def check_row(row: dict) -> str | None:
    """Return an error text when a pair row cannot be used, else None."""
    for key, size in _MATRIX_SIZES.items():
        value = row.get(key)
        if value is None:
            continue
        if len(value) != size:
            return f"{key} has {len(value)} values, expected {size}"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            return f"{key} contains NaN or infinite values"
    for key in ("image0", "image1", "path0", "path1"):
        if not row.get(key):
            return f"missing {key}"
    return None


def normalize_ids(row: dict) -> dict:
    """``row`` with its image ids in their one form (:func:`normalize_image_id`: ``./a.jpg`` is
    ``a.jpg``) and its pair id rebuilt from them, whatever the source (a pairs file, a ready
    parquet manifest, a folder, a COLMAP model); a name holding ``|`` or leaving its root fails
    the row. Failed rows keep their key (it may be a location such as ``pairs.txt:3``)."""
    if row.get("status", STATUS_OK) != STATUS_OK:
        return row
    image0, image1 = row.get("image0"), row.get("image1")
    if not image0 or not image1:
        return row  # check_row names the missing id
    try:
        ids = normalize_image_id(image0), normalize_image_id(image1)
    except ValueError as exc:
        return {**row, "status": STATUS_FAILED, "error": f"pairs: {row['pair_id']}: {exc}"}
    if ids == (image0, image1):
        return row
    if ids[0] == ids[1]:
        return {**row, "status": STATUS_FAILED, "error": f"pairs: {row['pair_id']}: self-pair: {image0} and {image1} "
                                                          f"are one image ({ids[0]})"}
    key = make_pair_id(*ids) if row["pair_id"] == make_pair_id(image0, image1) else row["pair_id"]
    return {**row, "pair_id": key, "image0": ids[0], "image1": ids[1]}


def build(conf: dict, run_url: str | None = None) -> Iterator[pa.Table]:
    """The pairs stage: PAIRS tables streamed from ``data.source`` (see :func:`iter_pair_tables`)."""
    return iter_pair_tables(conf, run_url=run_url)


def build_pairs(conf: dict) -> pa.Table:
    """Collect, check and de-duplicate pair rows into a PAIRS table."""
    return pa.concat_tables(list(iter_pair_tables(conf)))


def iter_pair_tables(conf: dict, chunk_rows: int = CHUNK_ROWS, run_url: str | None = None) -> Iterator[pa.Table]:
    """:func:`build_pairs` as PAIRS tables of at most ``chunk_rows`` rows (at least one table).

    The driver holds one chunk of pair dicts at a time plus the set of pair ids seen (for
    de-duplication), so its memory hardly grows with the length of a streamed pairs file."""
    rows, seen, emitted = [], set(), False
    for row in source_rows(conf, run_url):
        row = normalize_ids(row)
        if row["pair_id"] in seen:
            log.warning("duplicate pair %s dropped", row["pair_id"])
            continue
        seen.add(row["pair_id"])
        if row.get("status", STATUS_OK) == STATUS_OK:
            error = check_row(row)
            if error:
                row = {**row, "status": STATUS_FAILED, "error": f"pairs: {row['pair_id']}: {error}"}
        rows.append({**{"status": STATUS_OK, "error": None}, **row})
        if len(rows) >= chunk_rows:
            yield conform(pa.Table.from_pylist(rows, schema=PAIRS), PAIRS, where="pairs")
            rows, emitted = [], True
    if rows or not emitted:
        table = pa.Table.from_pylist(rows, schema=PAIRS) if rows else PAIRS.empty_table()
        yield conform(table, PAIRS, where="pairs")
