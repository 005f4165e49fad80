"""Training data from manifests: where a manifest is, its rows, the held-out split, image loading.

A manifest is named by one URL (any fsspec storage), in any of these forms:

- a run URL (``file:///runs/demo``): its ``pairs/`` or ``images/`` stage folder is used;
- a stage folder holding ``part-*.parquet`` files (``file:///runs/demo/pairs``);
- one ``.parquet`` file with the PAIRS or IMAGES schema (e.g. ``matchmill bench``'s pairs, or the
  mined-pairs manifest of ``matchmill mine``);
- a SuperGlue-style ``.txt`` pairs list (``name0 name1 [rot0 rot1 K0 K1 T_0to1]``) with
  ``data.images_dir``.

The driver only *inspects* a manifest (:func:`inspect_manifest`: row counts, whether pose ground
truth is there), so that a bad job fails before Ray starts; each worker then reads the rows itself
(:func:`read_pair_rows`, :func:`read_image_rows`: keys, paths and small matrices, not pixels) and
loads the images it needs, lazily, through :class:`ImageCache`.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from matchmill.config import ConfigError
from matchmill.datasets.image_io import ImageError, load_image
from matchmill.datasets.pairs_file import read_pairs_file
from matchmill.geometry.pair_metrics import has_pose_gt
from matchmill.manifests.schemas import PAIRS, STATUS_OK
from matchmill.manifests.storage import ManifestError, list_files, read_manifest, url_to_fs

__all__ = [
    "ManifestSummary",
    "locate_manifest",
    "inspect_manifest",
    "read_pair_rows",
    "read_image_rows",
    "is_held_out",
    "split_rows",
    "ImageCache",
]

PAIR_COLUMNS = ["pair_id", "scene", "image0", "image1", "path0", "path1", "K0", "K1", "T_0to1", "crop0", "crop1", "status"]
IMAGE_COLUMNS = ["image_id", "scene", "path", "crop", "status"]


@dataclass(frozen=True)
class ManifestSummary:
    """What the driver learns about a manifest before training starts."""

    url: str  # the URL as given
    kind: str  # "pairs" | "images"
    files: tuple[str, ...]  # Parquet part URLs, or the one .txt list
    rows: int  # rows in all
    ok_rows: int  # rows with status "ok"
    pose_rows: int  # ok pairs rows with K0, K1 and T_0to1 (0 for images manifests)
    scenes: int = 0  # distinct scene names among the ok rows
    mined: bool = False  # a mined-pairs manifest (matchmill mine): pairs without ground truth

    def no_pose_reason(self) -> str:
        """Why the manifest has no pose ground truth, for the error of a task that needs it."""
        if self.mined:
            return (f"{self.url} is a mined-pairs manifest (matchmill mine): mined pairs are pairs the SfM "
                    "model did not connect and carry no ground truth (K0, K1, T_0to1); use them as PUMP's "
                    "unsupervised data (matchmill train pump, pump.u_fraction > 0)")
        return f"{self.url} has no pairs with pose ground truth (K0, K1, T_0to1)"


def _schema_kind(url: str) -> str:
    """``"pairs"`` or ``"images"`` from a Parquet file's column names."""
    import pyarrow.parquet as pq

    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
    except FileNotFoundError as exc:
        raise ConfigError(f"{url}: file not found") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{url}: not a readable Parquet file ({exc})") from exc
    if "pair_id" in names:
        return "pairs"
    if "image_id" in names:
        return "images"
    raise ConfigError(f"{url}: neither a pairs nor an images manifest (columns {names[:8]})")


def locate_manifest(url: str, want: tuple[str, ...], where: str) -> tuple[str, tuple[str, ...]]:
    """Find the files of a manifest.

    Args:
        url: any of the forms in the module docstring.
        want: acceptable kinds, in order of preference (``("pairs",)``, ``("images", "pairs")``).
        where: the config key naming it (for messages), e.g. ``data.pairs``.

    Returns:
        ``(kind, files)``.

    Raises:
        ConfigError: the URL does not exist, holds no manifest, or the wrong kind.
    """
    if not url:
        raise ConfigError(f"{where}: required (a {' or '.join(want)} manifest URL)")
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise ConfigError(f"{where}: {url} does not exist")
    if fs.isfile(path):
        if path.endswith(".txt"):
            if "pairs" not in want:
                raise ConfigError(f"{where}: {url} is a pairs list, expected a {' or '.join(want)} manifest")
            return "pairs", (url,)
        kind = _schema_kind(url)
        if kind not in want:
            raise ConfigError(f"{where}: {url} is a {kind} manifest, expected {' or '.join(want)}")
        return kind, (url,)
    parts = list_files(url)
    if parts:
        kind = _schema_kind(parts[0])
        if kind not in want:
            raise ConfigError(f"{where}: {url} holds a {kind} manifest, expected {' or '.join(want)}")
        return kind, tuple(parts)
    for kind in want:  # a run URL: its stage folder (a mine run's pairs are its mined pairs, not its candidates)
        folders = ("mine", kind) if kind == "pairs" else (kind,)
        for folder in folders:
            sub = url.rstrip("/") + "/" + folder
            if not fs.exists(posixpath.join(path, folder)):
                continue
            files = tuple(list_files(sub))
            if files:
                return kind, files
    raise ConfigError(f"{where}: {url} holds no {' or '.join(want)} manifest (no part-*.parquet files)")


def _read_table(files: tuple[str, ...], kind: str, columns: list[str], images_dir: str | None) -> pa.Table:
    if len(files) == 1 and files[0].endswith(".txt"):
        if not images_dir:
            raise ConfigError(f"data.images_dir: required to read the pairs list {files[0]}")
        rows = read_pairs_file(files[0], images_dir)
        table = pa.Table.from_pylist(rows, schema=PAIRS) if rows else PAIRS.empty_table()
        return table.select(columns)
    try:
        tables = [read_manifest(f, kind, columns) for f in files]
    except ManifestError as exc:
        raise ConfigError(str(exc)) from exc
    return pa.concat_tables(tables) if tables else pa.schema([]).empty_table()


def inspect_manifest(url: str, want: tuple[str, ...], where: str, images_dir: str | None = None) -> ManifestSummary:
    """Row counts of a manifest, reading only its small columns (no image is opened)."""
    kind, files = locate_manifest(url, want, where)
    cols = ["status", "scene", "K0", "K1", "T_0to1"] if kind == "pairs" else ["status", "scene"]
    table = _read_table(files, kind, cols, images_dir)
    status = table.column("status").to_pylist()
    ok = [s == STATUS_OK for s in status]
    pose = 0
    if kind == "pairs":
        rows = table.select(["K0", "K1", "T_0to1"]).to_pylist()
        pose = sum(1 for row, good in zip(rows, ok) if good and has_pose_gt(row))
    scenes = len({sc for sc, good in zip(table.column("scene").to_pylist(), ok) if good})
    mined = bool(files) and files[0].endswith(".parquet") and "chain_hash" in _column_names(files[0])
    return ManifestSummary(url, kind, files, len(status), sum(ok), pose, scenes, mined)


def _column_names(url: str) -> list[str]:
    import pyarrow.parquet as pq

    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.names


def read_pair_rows(url: str, where: str, images_dir: str | None = None) -> list[dict[str, Any]]:
    """The ok rows of a pairs manifest (keys, paths, K, T, crops; no pixels), sorted by ``pair_id``."""
    _, files = locate_manifest(url, ("pairs",), where)
    rows = _read_table(files, "pairs", PAIR_COLUMNS, images_dir).to_pylist()
    return sorted((r for r in rows if r["status"] == STATUS_OK), key=lambda r: r["pair_id"])


def read_image_rows(url: str, where: str, images_dir: str | None = None) -> list[dict[str, Any]]:
    """Unique images (``image_id``, ``scene``, ``path``, ``crop``) of an images or pairs manifest, sorted by id."""
    kind, files = locate_manifest(url, ("images", "pairs"), where)
    if kind == "images":
        rows = [r for r in _read_table(files, kind, IMAGE_COLUMNS, images_dir).to_pylist() if r["status"] == STATUS_OK]
    else:
        rows = {}
        for r in _read_table(files, kind, PAIR_COLUMNS, images_dir).to_pylist():
            if r["status"] != STATUS_OK:
                continue
            for i in ("0", "1"):
                rows.setdefault(r["image" + i], {"image_id": r["image" + i], "scene": r["scene"],
                                                  "path": r["path" + i], "crop": r["crop" + i]})
        rows = list(rows.values())
    return sorted(rows, key=lambda r: r["image_id"])


def is_held_out(key: str, fraction: float) -> bool:
    """Deterministic hold-out by key hash: the same key is held out in every run and worker."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
    return h < fraction


def split_rows(rows: list[dict], key: str, fraction: float) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) by :func:`is_held_out`; with at least one of each when >= 2 rows
    and ``fraction > 0`` (the row with the smallest hash moves over if the split left one side empty)."""
    train = [r for r in rows if not is_held_out(r[key], fraction)]
    val = [r for r in rows if is_held_out(r[key], fraction)]
    if fraction > 0 and len(rows) >= 2 and (not train or not val):
        order = sorted(rows, key=lambda r: hashlib.sha1(r[key].encode()).hexdigest())
        val, train = order[:1], order[1:]
        if not train:
            train, val = order[1:], order[:1]
    return train, val


class ImageCache:
    """Bounded LRU cache of decoded images (``(H, W, 3)`` uint8 RGB, cropped to ``crop``).

    A path that cannot be read is remembered with its error and raises
    :class:`matchmill.datasets.image_io.ImageError` every time, without reading it again.
    """

    def __init__(self, max_pixels: int, max_bytes: int = 512 * 2**20) -> None:
        self.max_pixels = int(max_pixels)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.bad: dict[str, str] = {}

    def get(self, path: str, crop: list[int] | None = None) -> np.ndarray:
        if path in self.bad:
            raise ImageError(self.bad[path])
        if path in self._items:
            self._items.move_to_end(path)
            image = self._items[path]
        else:
            try:
                image = load_image(path, self.max_pixels)
            except ImageError as exc:
                self.bad[path] = str(exc)
                raise
            self._items[path] = image
            self._bytes += image.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        if crop:
            image = image[: int(crop[1]), : int(crop[0])]
        return np.ascontiguousarray(image)
