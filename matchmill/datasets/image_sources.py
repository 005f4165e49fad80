"""The images a pair strategy chooses from: the registered images of MegaDepth-layout scenes, or
every image file of a plain folder.

A :class:`SourceImage` carries what the strategies need and nothing else: its id and path, its
intrinsics and pose when an SfM model knows them, and the ids of the 3D points it observes (for
the "share fewer than N SfM points" rule of mining). An image whose file is missing, or whose
name contains ``|`` (the pair-id separator), keeps its place with ``error`` set, so the pair stage
can report it as a failed row instead of dropping it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matchmill.config import ConfigError
from matchmill.manifests.schemas import normalize_image_id
from matchmill.manifests.storage import full_url, is_local, url_to_fs

from .colmap_scene import has_colmap_model, read_colmap_scene
from .image_io import DEFAULT_MAX_PIXELS, ImageError, load_image
from .megadepth import crop_to_aspect

#: Image file name endings (lower case): those the folder source lists, and, in this order, those
#: HPatches / Oxford tries for an image index (:func:`matchmill.datasets.hpatches.find_image` takes
#: the first that exists, so ``.ppm``, the HPatches format, comes first).
IMAGE_EXTENSIONS: tuple[str, ...] = (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class SourceImage:
    """One image a pair strategy may use.

    Attributes:
        image_id: stable key (``<scene>/<name>`` for scenes, the relative path for folders).
        scene: scene name; images of one scene share an SfM model (None for a flat folder).
        path: absolute path of the file.
        K: (3, 3) OpenCV-convention intrinsics, None when unknown.
        cam_from_world: (4, 4) pose in the scene model's frame, None when unknown.
        crop: ``[w, h]`` region kept (MegaDepth recipe), None = whole image.
        point_ids: (P,) int64 sorted ids of the observed 3D points, None without an SfM model.
        error: why the image cannot be used (missing file), None when it can.
    """

    image_id: str
    scene: str | None
    path: str
    K: np.ndarray | None = None
    cam_from_world: np.ndarray | None = None
    crop: list[int] | None = None
    point_ids: np.ndarray | None = None
    error: str | None = None

    @property
    def has_model(self) -> bool:
        return self.point_ids is not None


def folder_images(root: str | os.PathLike) -> list[SourceImage]:
    """Every image file under ``root`` (a local folder or any fsspec URL; recursive, sorted,
    hidden entries skipped).

    ``image_id`` is the path relative to ``root`` with ``/`` separators; ``scene`` is its first
    folder (None for files directly in ``root``); ``path`` is absolute (or the file's URL).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """

    fs, base = url_to_fs(os.fspath(root))
    if not fs.isdir(base):
        raise FileNotFoundError(f"data.root {os.fspath(root)!r} is not a folder (data.source=folder)")
    base = base.rstrip("/")
    out = []
    for path in fs.find(base):
        rel = path[len(base):].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")) or not rel.lower().endswith(IMAGE_EXTENSIONS):
            continue
        scene = rel.split("/", 1)[0] if "/" in rel else None
        url = os.path.abspath(path) if is_local(fs) else full_url(fs, path)
        out.append(SourceImage(rel, scene, url, error=_id_error(rel, url)))
    out.sort(key=lambda im: im.image_id)
    return out


def check_folder_images(root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, needed: int = 2) -> int:
    """Refuse, before anything is written, a folder with fewer than ``needed`` usable images: no file
    with an image ending (:data:`IMAGE_EXTENSIONS`, any case, subfolders included), or image files of
    which fewer than ``needed`` decode. Files are decoded in id order only until ``needed`` of them
    have (one or two reads for a good folder); the others are left to the images stage.

    Returns:
        the number of image files listed.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ConfigError: one line naming the folder and the endings looked for (and, for files that
            exist but do not decode, how many and the first reason).
    """
    images = folder_images(root)
    where = f"data.root {os.fspath(root)!r}"
    endings = ", ".join(IMAGE_EXTENSIONS)
    if not images:
        fs, base = url_to_fs(os.fspath(root))
        others = sum(1 for path in fs.find(base)
                     if not any(part.startswith(".") for part in path[len(base.rstrip("/")):].split("/")))
        raise ConfigError(f"{where}: no image file to match (data.source=folder looks for {endings}, any case, "
                          f"subfolders included; found {others} other file(s))")
    readable, first_error = [], None
    for im in images:
        if im.error is None:
            try:
                load_image(im.path, max_pixels)
            except ImageError as exc:
                first_error = first_error or str(exc)
                continue
            readable.append(im.image_id)
            if len(readable) >= needed:
                return len(images)
        else:
            first_error = first_error or im.error
    found = f"{len(readable)} readable ({', '.join(readable)})" if readable else "none readable"
    problem = f"; first problem: {first_error}" if first_error else ""
    raise ConfigError(f"{where}: {len(images)} image file(s), {found}; matching needs at least {needed} "
                      f"(looked for {endings}{problem})")


def _id_error(image_id: str, path: str) -> str | None:
    """Why ``image_id`` cannot key an image (a ``|``, the pair-id separator, in the file name), else
    None: such an image becomes one failed row and pairs with nothing."""

    try:
        normalize_image_id(image_id)
    except ValueError as exc:
        return f"pairs: {path}: {exc}"
    return None


def scene_images(root: str | os.PathLike, scene: str, conf: dict, require_model: bool) -> list[SourceImage]:
    """The images of one MegaDepth-layout scene ``<root>/<scene>/{images, sparse}``.

    With a COLMAP model: its registered images (K, pose, observed point ids, the MegaDepth crop);
    a registered image whose file is missing gets ``error``. Without one: ``require_model``
    raises, else the files of ``<scene>/<images_dir>`` without K, pose or points.

    Args:
        conf: the pairs section (``images_dir``, ``sparse_dir``, ``crop_aspect``).

    Raises:
        ValueError: no model and ``require_model``, or an unreadable model (naming the folder).
    """

    scene_dir = Path(root) / scene
    images_dir = scene_dir / conf["images_dir"]
    sparse = scene_dir / conf["sparse_dir"]
    if not has_colmap_model(sparse):
        if require_model:
            raise ValueError(
                f"scene {scene!r}: no COLMAP model in {sparse}; pairs.max_shared_points needs one "
                "(set pairs.sfm_fallback: true to use retrieval alone for such scenes)")
        return [SourceImage(f"{scene}/{im.image_id}", scene, im.path, error=im.error) for im in folder_images(images_dir)]
    model = read_colmap_scene(sparse)
    out = []
    for im in model.images:
        path = os.path.abspath(images_dir / im.name)
        error = None if os.path.isfile(path) else f"pairs: {path}: file not found (registered in {sparse})"
        image_id = _normal_or_raw(f"{scene}/{im.name}")
        out.append(SourceImage(
            image_id, scene, path, error=error or _id_error(image_id, path), K=im.K, cam_from_world=im.cam_from_world,
            crop=list(crop_to_aspect(im.width, im.height, conf["crop_aspect"])),
            point_ids=im.point3D_ids))
    return out


def _normal_or_raw(image_id: str) -> str:
    """The normalised id (``scene/./a.jpg`` -> ``scene/a.jpg``), or the id as is when it is refused
    (:func:`_id_error` then says why)."""

    try:
        return normalize_image_id(image_id)
    except ValueError:
        return image_id


def list_scene_folders(root: str | os.PathLike, conf: dict) -> list[str]:
    """Scene names under ``root``: ``conf["scenes"]``, else every subfolder with an images folder
    or a COLMAP model (sorted), minus ``conf["exclude_scenes"]``."""

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {str(root)!r} is not a folder")
    excluded = set(conf["exclude_scenes"] or [])
    if conf["scenes"] is not None:
        names = list(conf["scenes"])
        for name in names:
            if not (root / name).is_dir():
                raise ValueError(f"pairs.scenes: scene {name!r} is not a folder under {root}")
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (
            (p / conf["images_dir"]).is_dir() or has_colmap_model(p / conf["sparse_dir"])))
    names = [n for n in names if n not in excluded]
    if not names:
        raise ValueError(f"no scene folder (with <scene>/{conf['images_dir']} or a COLMAP model) under {root}")
    return names
