"""Tensor artifacts: named numpy arrays stored as safetensors files on any fsspec URL.

A manifest references an artifact relative to its run (:func:`artifact_path`), and readers resolve
it against the run they read (:func:`resolve_artifact`), so a run can be moved or copied.

Artifacts are content-addressed by the producing stage's config hash and the image id, so two
configurations never overwrite each other and a rerun with the same config finds its files.

The header's metadata is one entry, ``matchmill``: sorted JSON of the writer's metadata and
``crc32`` (``{array name: crc}``). One entry, because safetensors writes a metadata map in hash
order, which would make the same features differ in bytes between two processes. Each CRC32 is checked
whenever the array is read: bytes changed at rest raise :class:`ArtifactDamaged` naming the file
and the array, never silently wrong features. (Artifacts written before that have no checksums and
are read as before.) A rerun also finds missing or resized artifacts from one listing
(:func:`matchmill.manifests.commit.check_artifacts`).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .storage import join, read_bytes, url_to_fs, with_retries, write_bytes_atomic


ARTIFACT_SUFFIX = ".safetensors"


def artifact_path(config_hash: str, image_id: str) -> str:
    """``artifacts/<hash12>/<sha1(image_id)[:2]>/<sha1(image_id)>.safetensors``: where an artifact
    lies relative to its run, and what a manifest's ``artifact_uri`` holds (so a run can be moved
    or copied; :func:`resolve_artifact` finds it again)."""
    digest = hashlib.sha1(image_id.encode()).hexdigest()
    return f"artifacts/{config_hash[:12]}/{digest[:2]}/{digest}{ARTIFACT_SUFFIX}"


def artifact_url(root_url: str, config_hash: str, image_id: str) -> str:
    """``<root>/`` + :func:`artifact_path`."""
    return join(root_url, artifact_path(config_hash, image_id))


#: The run-relative tail of an absolute artifact URI written by an older version.
_RUN_RELATIVE = re.compile(r"(?:^|/)(artifacts/[^/]+/[^/]+/[^/]+" + re.escape(ARTIFACT_SUFFIX) + r")$")


def resolve_artifact(run_url: str, uri: str) -> str:
    """The URL of the artifact that a row of the run at ``run_url`` references as ``uri``.

    ``uri`` is relative to the run (``artifacts/...``, what extract writes). Older versions wrote
    absolute URIs; one inside the run is used as is, one outside it (the run was moved or copied
    since) is read at the same place inside this run, never at the old one: a copy must not read,
    nor depend on, the original's files. An absolute URI that is not an artifact path raises
    :class:`ArtifactOutsideRun`."""
    if "://" not in uri and not uri.startswith("/"):
        return join(run_url, uri)
    if uri.startswith(run_url.rstrip("/") + "/"):
        return uri
    found = _RUN_RELATIVE.search(uri)
    if found is None:
        raise ArtifactOutsideRun(f"artifact {uri} lies outside the run {run_url} and is not an artifact path of "
                                 f"a run; rerun extract with --overwrite")
    return join(run_url, found.group(1))


def run_relative(run_url: str, uri: str) -> str:
    """``uri`` as a path relative to the run (the inverse of :func:`resolve_artifact`)."""
    url = resolve_artifact(run_url, uri)
    return url[len(run_url.rstrip("/")) + 1:]


def artifact_folder(url: str) -> str:
    """The ``<root>/artifacts/<hash12>`` folder of an :func:`artifact_url` (the stage config's own)."""
    return url.rsplit("/", 2)[0]


class ArtifactDamaged(ValueError):
    """An artifact's bytes are not those that were written (truncated, or changed at rest)."""


class ArtifactOutsideRun(ValueError):
    """A manifest row references an artifact outside the run that holds it."""


#: The one metadata entry (sorted JSON), and its key of the per-array checksums.
METADATA_KEY = "matchmill"
CRC_KEY = "crc32"


def _crc(data: bytes | np.ndarray) -> int:
    """CRC32 of an array's stored bytes (C order, as safetensors writes them)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return zlib.crc32(data) & 0xFFFFFFFF


def write_artifact(url: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write arrays (any shape, numeric dtype) atomically, with each array's CRC32 in the metadata."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    ours = {**(metadata or {}), CRC_KEY: {k: _crc(v) for k, v in arrays.items()}}
    write_bytes_atomic(url, st_save(arrays, metadata={METADATA_KEY: json.dumps(ours, sort_keys=True)}))


def _check_crc(url: str, key: str, data, crcs: dict[str, int]) -> None:
    if key in crcs and _crc(data) != crcs[key]:
        raise ArtifactDamaged(f"{url}: array {key!r} fails its CRC32 check (the file changed after it was "
                              f"written); delete the file and rerun to extract it again")


def _crcs(url: str, metadata: dict | None) -> dict[str, int]:
    try:
        ours = json.loads((metadata or {}).get(METADATA_KEY, "{}"))
        return {k: int(v) for k, v in ours.get(CRC_KEY, {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ArtifactDamaged(f"{url}: unreadable checksums in the header ({exc})") from exc


def read_artifact(url: str) -> dict[str, np.ndarray]:
    """All arrays of an artifact, each checked against its CRC32 (single arrays by byte range:
    :class:`ArtifactReader`)."""
    data = read_bytes(url)
    try:
        arrays = st_load(data)
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + length]).get("__metadata__")
    except Exception as exc:  # safetensors raises its own error type on a bad header or short data
        raise ArtifactDamaged(f"{url}: not a readable safetensors artifact ({exc})") from exc
    crcs = _crcs(url, metadata)
    for key, array in arrays.items():
        _check_crc(url, key, array, crcs)
    return arrays


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
        header, length = with_retries(self._read_header, "read", url, writing=False)
        self.crcs = _crcs(url, header.pop("__metadata__", None))
        self.header: dict[str, dict] = header
        self.data_start = 8 + length

    def _read_header(self) -> tuple[dict, int]:
        url = self.url
        with self.fs.open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ArtifactDamaged(f"{url}: not a safetensors artifact ({len(head)} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                raise ArtifactDamaged(f"{url}: not a safetensors artifact (header of {length} bytes)")
            try:
                return json.loads(f.read(length)), length
            except ValueError as exc:
                raise ArtifactDamaged(f"{url}: unreadable safetensors header ({exc})") from exc

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

        def read() -> bytes:
            with self.fs.open(self.path, "rb") as f:
                f.seek(self.data_start + begin)
                return f.read(end - begin)

        data = with_retries(read, "read", self.url, writing=False)
        if len(data) != end - begin:
            raise ArtifactDamaged(f"{self.url}: truncated artifact ({key} has {len(data)} of {end - begin} bytes)")
        _check_crc(self.url, key, data, self.crcs)
        return np.frombuffer(data, dtype=dtype).reshape(entry["shape"])

    def _entry(self, key: str) -> dict:
        if key not in self.header:
            raise KeyError(f"{self.url}: artifact has no array {key!r} (has: {', '.join(sorted(self.header))})")
        return self.header[key]
