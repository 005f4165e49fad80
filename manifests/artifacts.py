"""Tensor artifacts: named numpy arrays stored as safetensors files on any fsspec URL.

Artifacts are content-addressed by the producing stage's config hash and the image id, so two
configurations never overwrite each other and a rerun with the same config finds its files.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .storage import join, read_bytes, url_to_fs, write_bytes_atomic


def artifact_url(root_url: str, config_hash: str, image_id: str) -> str:
    """``<root>/artifacts/<hash12>/<sha1(image_id)[:2]>/<sha1(image_id)>.safetensors``."""
    digest = hashlib.sha1(image_id.encode()).hexdigest()
    return join(root_url, "artifacts", config_hash[:12], digest[:2], f"{digest}.safetensors")


def write_artifact(url: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write arrays (any shape, numeric dtype) atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    write_bytes_atomic(url, st_save(arrays, metadata=metadata))


def read_artifact(url: str) -> dict[str, np.ndarray]:
    """All arrays of an artifact (single arrays by byte range: :class:`ArtifactReader`)."""
    return st_load(read_bytes(url))


#: safetensors dtype names -> numpy dtypes (the ones our artifacts use, and their neighbours).
_DTYPES = {
    "F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None,
    "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
    "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_,
}


class ArtifactReader:
    """Reads single arrays of a safetensors artifact by byte range on any fsspec URL.

    The safetensors layout is an 8-byte little-endian header length, a JSON header
    ``{name: {dtype, shape, data_offsets: [begin, end]}}`` and the data; only the header and the
    requested arrays' bytes are read (a dense-map proposer that needs one scale of three reads a
    third of the file).
    """

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = url_to_fs(url)
        with self.fs.open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError(f"{url}: not a safetensors artifact (header of {length} bytes)")
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header
        self.data_start = 8 + length

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entry(key)["shape"])

    def nbytes(self, key: str) -> int:
        begin, end = self._entry(key)["data_offsets"]
        return int(end - begin)

    def read(self, key: str) -> np.ndarray:
        entry = self._entry(key)
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{self.url}: {key} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        with self.fs.open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise ValueError(f"{self.url}: truncated artifact ({key} has {len(data)} of {end - begin} bytes)")
        return np.frombuffer(data, dtype=dtype).reshape(entry["shape"])

    def _entry(self, key: str) -> dict:
        if key not in self.header:
            raise KeyError(f"{self.url}: artifact has no array {key!r} (has: {', '.join(sorted(self.header))})")
        return self.header[key]
