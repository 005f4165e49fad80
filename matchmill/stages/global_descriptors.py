"""Global descriptors of a run's images, for the retrieval pair strategy (called by the pairs stage).

The pairs stage needs them before any pair exists (extraction runs per image of the pairs
manifest), so they are computed here, once per image, with the CPU-sized PUMP net (about 0.1 s
per 320 px image on one core):

- when Ray is running (a run whose later stages need it starts Ray before the pairs stage) and
  there are at least :data:`RAY_MIN_IMAGES` images, as a Ray Data ``map_batches`` over an actor
  pool sized and placed by the **extract** section's execution keys (``actors``, ``num_cpus``,
  ``num_gpus``, ``resources``): the same workers that extract next;
- otherwise in the driver process.

They are kept under ``<run>/_retrieval/<key>.npz`` (``key``: the descriptor config and the image
list), so a rerun that only changes ``per_image`` or the mining rule does not read the images again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from matchmill.datasets.image_io import ImageError, load_image
from matchmill.datasets.image_sources import SourceImage
from matchmill.manifests.storage import read_bytes, storage_remote_args, write_bytes_atomic
from matchmill.models.device import choose_device

from .threads import limit_threads, limit_torch_threads

log = logging.getLogger(__name__)

#: Fewer images than this are described in the driver (starting actors would cost more).
RAY_MIN_IMAGES = 64


def cache_key(images: Sequence[SourceImage], gconf: dict) -> str:
    """Hash of the descriptor config and of each image's id, path and file size."""
    items = []
    for im in images:
        try:
            size = os.path.getsize(im.path)
        except OSError:
            size = -1
        items.append((im.image_id, im.path, size))
    payload = json.dumps([gconf, items], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


class Describer:
    """Image paths -> descriptors, one model per instance (a Ray Data actor or the driver's)."""

    def __init__(self, gconf: dict, max_pixels: int, num_cpus: float, num_gpus: float = 0.0) -> None:
        from matchmill.models.global_descriptor import GlobalDescriptor  # lazy: torch; only retrieval pairing needs it

        limit_threads(num_cpus)
        device = choose_device(want_gpu=float(num_gpus) > 0, what=f"extract.num_gpus={num_gpus:g}")
        self.model = GlobalDescriptor(gconf, device=device)
        limit_torch_threads(num_cpus)
        self.max_pixels = int(max_pixels)

    def describe(self, path: str) -> tuple[np.ndarray | None, str | None]:
        """``(descriptor, None)`` or ``(None, error text)`` for one image."""
        try:
            return self.model(load_image(path, self.max_pixels)), None
        except ImageError as exc:
            return None, f"pairs: {exc}"

    def __call__(self, batch):
        """Ray Data batch (pyarrow: ``index``, ``path``) -> ``index``, ``desc`` (list<float32>), ``error``."""
        descs, errors = [], []
        for path in batch.column("path").to_pylist():
            d, e = self.describe(path)
            descs.append(None if d is None else d.tolist())
            errors.append(e)
        return pa.table({"index": batch.column("index"), "desc": pa.array(descs, pa.list_(pa.float32())),
                         "error": pa.array(errors, pa.string())})


def describe_images(images: Sequence[SourceImage], gconf: dict | None, run_url: str | None,
                    max_pixels: int, execution: dict | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Descriptors of ``images`` (those without ``error``).

    Args:
        execution: the extract section (``actors``, ``num_cpus``, ``num_gpus``, ``resources``,
            ``batch_size``) for the Ray path; None = the driver.

    Returns:
        ``(X, errors)``: X (N, D) float32 unit rows (zeros for images that failed) and
        ``{index: error text}`` of the images that could not be read.
    """
    from matchmill.models.global_descriptor import DEFAULT_CONF  # lazy: torch; the pairs stage imports this module

    conf = {**DEFAULT_CONF, **(gconf or {})}
    key = cache_key(images, conf)
    cached = _read_cache(run_url, key, len(images))
    if cached is not None:
        return cached
    todo = [i for i, im in enumerate(images) if im.error is None]
    errors: dict[int, str] = {i: im.error for i, im in enumerate(images) if im.error is not None}
    if execution is not None and len(todo) >= RAY_MIN_IMAGES and _ray_running():
        found = _describe_on_ray(images, todo, conf, max_pixels, execution)
    else:
        describer = Describer(conf, max_pixels, num_cpus=max(1, os.cpu_count() or 1))
        found = {i: describer.describe(images[i].path) for i in todo}
    rows: dict[int, np.ndarray] = {}
    for i, (d, e) in found.items():
        if d is None:
            errors[i] = e
        else:
            rows[i] = d
    dim = len(next(iter(rows.values()))) if rows else 1
    X = np.zeros((len(images), dim), np.float32)
    for i, d in rows.items():
        X[i] = d
    _write_cache(run_url, key, X, errors)
    return X, errors


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _describe_on_ray(images: Sequence[SourceImage], todo: list[int], conf: dict, max_pixels: int,
                     execution: dict) -> dict[int, tuple[np.ndarray | None, str | None]]:
    """:class:`Describer` as a Ray Data actor pool with the extract section's resources."""
    import ray

    num_gpus = float(execution.get("num_gpus") or 0.0)
    num_cpus = float(execution.get("num_cpus") or 1.0)
    custom = {"resources": dict(execution["resources"])} if execution.get("resources") else {}
    # blocks made on the driver (no read or repartition task: those would wait for CPUs the pool holds)
    items = [{"index": i, "path": images[i].path} for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(todo) // 8, 64)))
    ds = ds.map_batches(
        Describer,
        fn_constructor_kwargs={"gconf": conf, "max_pixels": max_pixels, "num_cpus": num_cpus, "num_gpus": num_gpus},
        batch_size=int(execution.get("batch_size") or 4),
        compute=ray.data.ActorPoolStrategy(size=int(execution.get("actors") or 1)),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,  # None, not 0: ray#45201
        batch_format="pyarrow",
        **storage_remote_args(),  # the driver's storage endpoint / credentials (images on s3://)
        **custom,
    )
    out: dict[int, tuple[np.ndarray | None, str | None]] = {}
    for row in ds.take_all():
        d = row["desc"]
        out[int(row["index"])] = (None if d is None else np.asarray(d, np.float32), row["error"])
    log.info("global descriptors of %d images computed on Ray (%d actors)", len(todo), int(execution.get("actors") or 1))
    return out


def _cache_url(run_url: str, key: str) -> str:
    return run_url.rstrip("/") + f"/_retrieval/{key}.npz"


def _read_cache(run_url: str | None, key: str, n: int) -> tuple[np.ndarray, dict[int, str]] | None:
    if not run_url:
        return None
    try:
        data = np.load(io.BytesIO(read_bytes(_cache_url(run_url, key))), allow_pickle=False)
        X = data["X"]
        errors = {int(i): str(e) for i, e in zip(data["error_index"], data["error_text"])}
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    if len(X) != n:
        return None
    log.info("global descriptors of %d images read from the run's cache (%s)", n, key)
    return X, errors


def _write_cache(run_url: str | None, key: str, X: np.ndarray, errors: dict[int, str]) -> None:
    if not run_url:
        return
    buf = io.BytesIO()
    idx = sorted(errors)
    np.savez(buf, X=X, error_index=np.array(idx, np.int64), error_text=np.array([errors[i] for i in idx], dtype=str))
    write_bytes_atomic(_cache_url(run_url, key), buf.getvalue())
