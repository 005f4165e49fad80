"""Tensor artifacts: named numpy arrays stored as safetensors files on any fsspec URL.

Artifacts are content-addressed by the producing stage's config hash and the image id, so two
configurations never overwrite each other and a rerun with the same config finds its files.
"""

from __future__ import annotations

import hashlib

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .storage import join, read_bytes, write_bytes_atomic


def artifact_url(root_url: str, config_hash: str, image_id: str) -> str:
    """``<root>/artifacts/<hash12>/<sha1(image_id)[:2]>/<sha1(image_id)>.safetensors``."""
    digest = hashlib.sha1(image_id.encode()).hexdigest()
    return join(root_url, "artifacts", config_hash[:12], digest[:2], f"{digest}.safetensors")


def write_artifact(url: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write arrays (any shape, numeric dtype) atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    write_bytes_atomic(url, st_save(arrays, metadata=metadata))


def read_artifact(url: str) -> dict[str, np.ndarray]:
    return st_load(read_bytes(url))
