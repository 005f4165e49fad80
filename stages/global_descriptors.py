"""Global descriptors of a run's images, for the retrieval pair strategy (pairs stage, driver side).

The pairs stage needs them before any pair exists (extraction runs per image of the pairs
manifest), so they are computed here, once per image, in the driver process with the CPU-sized
PUMP net (about 0.1 s per 320 px image on one core). They are kept under
``<run>/_retrieval/<key>.npz`` (``key``: the descriptor config and the image list), so a rerun
that only changes ``per_image`` or the mining rule does not read the images again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from matchmill.datasets.image_sources import SourceImage

log = logging.getLogger(__name__)


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


def describe_images(images: Sequence[SourceImage], gconf: dict | None, run_url: str | None,
                    max_pixels: int) -> tuple[np.ndarray, dict[int, str]]:
    """Descriptors of ``images`` (those without ``error``).

    Returns:
        ``(X, errors)``: X (N, D) float32 unit rows (zeros for images that failed) and
        ``{index: error text}`` of the images that could not be read.
    """
    from matchmill.datasets.image_io import ImageError, load_image
    from matchmill.models.global_descriptor import DEFAULT_CONF, GlobalDescriptor
    from matchmill.stages.threads import limit_threads

    conf = {**DEFAULT_CONF, **(gconf or {})}
    key = cache_key(images, conf)
    cached = _read_cache(run_url, key, len(images))
    if cached is not None:
        return cached
    limit_threads(max(1, os.cpu_count() or 1))
    model = GlobalDescriptor(conf)
    rows: list[np.ndarray | None] = []
    errors: dict[int, str] = {}
    for i, im in enumerate(images):
        if im.error is not None:
            errors[i] = im.error
            rows.append(None)
            continue
        try:
            rows.append(model(load_image(im.path, max_pixels)))
        except ImageError as exc:
            errors[i] = f"pairs: {exc}"
            rows.append(None)
    dim = next((len(r) for r in rows if r is not None), 1)
    X = np.stack([r if r is not None else np.zeros(dim, np.float32) for r in rows]) if rows else np.zeros((0, dim), np.float32)
    _write_cache(run_url, key, X, errors)
    return X, errors


def _cache_url(run_url: str, key: str) -> str:
    return run_url.rstrip("/") + f"/_retrieval/{key}.npz"


def _read_cache(run_url: str | None, key: str, n: int) -> tuple[np.ndarray, dict[int, str]] | None:
    if not run_url:
        return None
    from matchmill.manifests.storage import read_bytes

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
    from matchmill.manifests.storage import write_bytes_atomic

    buf = io.BytesIO()
    idx = sorted(errors)
    np.savez(buf, X=X, error_index=np.array(idx, np.int64), error_text=np.array([errors[i] for i in idx], dtype=str))
    write_bytes_atomic(_cache_url(run_url, key), buf.getvalue())
