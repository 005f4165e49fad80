"""Manifest IO over any fsspec URL: validated Parquet reads and atomic writes.

Every write goes through :func:`write_manifest`, which casts to the declared schema (so a
manifest never drifts) and publishes the file atomically: on local file systems it is written
under a temporary name and renamed; on object stores a single PUT is already atomic.
Every read goes through :func:`read_manifest`, which names the file and the column when the
content does not match the schema.

Storage failing (disk full, read-only, access denied, I/O and connection errors) is retried
(:func:`with_retries`) and then raises :class:`StorageUnavailable`, which stops a stage
uncommitted; it is never taken for bad data (a row error, or a part to redo).
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import time
import uuid
from typing import Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schemas import MANIFESTS


#: Rows per Parquet row group: readers of a slice decode only the groups it spans.
ROW_GROUP_ROWS = 1024


#: Environment variables that configure storage access (endpoint, credentials, region, fsspec's
#: own config). The driver forwards the ones it has to every Ray task and actor it starts, so a
#: worker reaches the same store as the driver even when its node's environment predates the run
#: (an embedded Ray started earlier, a cluster node started without them); see :func:`storage_env`.
STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
               "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "GOOGLE_APPLICATION_CREDENTIALS", "FSSPEC_CONFIG_DIR")


def storage_env() -> dict[str, str]:
    """This process's values of :data:`STORAGE_ENV` (only those that are set)."""
    return {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}


def storage_remote_args() -> dict:
    """Ray remote options that carry :func:`storage_env` to a task or actor (``{}`` when none is
    set: workers then start in the cluster's default environment, as before)."""
    env = storage_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


class ManifestError(ValueError):
    """A manifest file is unreadable or does not match its schema."""


class StorageError(RuntimeError):
    """A storage URL cannot be used (unreachable, missing bucket, not writable)."""


class StorageUnavailable(StorageError):
    """Reading or writing the run's storage failed, and kept failing over :data:`STORAGE_TRIES`
    tries (disk full, read-only, access denied, I/O error, connection reset...).

    Not a row's fault: the per-row error capture (matchmill/stages/rows.py) lets it through, so the stage
    stops uncommitted (a rerun resumes it) instead of committing rows as failed. ``stage`` is set
    by the driver once it knows which stage stopped."""

    stage: str | None = None


#: Tries of one storage operation before :class:`StorageUnavailable`, and the waits between
#: them (seconds; the last one repeats). Module constants: tests shorten them.
STORAGE_TRIES = 3
STORAGE_BACKOFF_S = (0.5, 1.0, 2.0)

#: Modules whose exceptions are transport failures (network, HTTP, object-store clients).
_TRANSPORT_MODULES = ("aiohttp", "botocore", "aiobotocore", "urllib3", "requests", "google.auth", "google.api_core",
                      "azure.core")
#: Read errors that mean "no such file" rather than "storage failing": not retried.
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def is_storage_error(exc: BaseException, writing: bool) -> bool:
    """Whether ``exc``, raised by a storage operation, is the storage failing (retried, then
    :class:`StorageUnavailable`) rather than the data (a missing file on read, bytes that do
    not decode: left to the caller, as before).

    Writing, every OSError is storage failing: a write is never the row's fault. Reading, an
    OSError with an errno (EIO, EACCES, ECONNRESET...), a permission, connection or timeout
    error, but not a missing file, nor pyarrow's decode errors (an OSError without errno)."""
    if isinstance(exc, StorageUnavailable):
        return False
    if isinstance(exc, OSError):
        if writing:
            return True
        if isinstance(exc, _MISSING) or exc.errno == errno.ENOENT:
            return False
        return exc.errno is not None or isinstance(exc, (PermissionError, ConnectionError, TimeoutError))
    module = type(exc).__module__ or ""
    return any(module == m or module.startswith(m + ".") for m in _TRANSPORT_MODULES)


def with_retries(op, action: str, url: str, writing: bool):
    """``op()``, tried again after a storage error (:func:`is_storage_error`) up to
    :data:`STORAGE_TRIES` times in all; raises :class:`StorageUnavailable` naming ``action`` and
    ``url`` when the error persists. Other exceptions pass through at once."""
    for attempt in range(STORAGE_TRIES):
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 - classified below; others re-raised as they are
            if not is_storage_error(exc, writing):
                raise
            if attempt + 1 >= STORAGE_TRIES:
                raise StorageUnavailable(f"could not {action} {url}: {' '.join(_describe(exc).split())} "
                                         f"(after {STORAGE_TRIES} tries)") from exc
            time.sleep(STORAGE_BACKOFF_S[min(attempt, len(STORAGE_BACKOFF_S) - 1)])
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    """``[Errno 28] No space left on device`` (the OS's words), else ``Type: message``."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def local_path_of(url: str) -> str | None:
    """The local path that ``url`` names (a bare path, ``file://`` or ``local://``), else None.

    fsspec reads ``::`` anywhere in a URL as a chain of file systems (``simplecache::s3://...``),
    so a local file named ``col::on.jpg`` would be looked up as ``col``. A local path is a chain
    only when its first ``::`` segment is a known protocol (``simplecache::/data/x``)."""
    for prefix in ("file://", "local://"):
        if url.startswith(prefix):
            return url[len(prefix):] or "/"
    if "://" in url:
        return None
    if "::" in url and url.split("::", 1)[0] in fsspec.available_protocols():
        return None
    return url


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a URL into an fsspec file system and a path on it (local paths are never read as
    fsspec chains: see :func:`local_path_of`)."""
    local = local_path_of(str(url))
    if local is not None:
        fs = fsspec.filesystem("file")
        return fs, fs._strip_protocol(local)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"storage {url!r}: cannot open ({exc})") from exc
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL components with '/', keeping the protocol prefix intact."""
    out = url.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in _protocols(fs) or "local" in _protocols(fs)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Re-attach the protocol to a bare path returned by an fsspec listing."""
    proto = _protocols(fs)[0]
    if proto in ("file", "local"):
        return "file://" + path if path.startswith("/") else path
    return f"{proto}://{path}"


def check_writable(url: str) -> None:
    """Fail fast, with one clear line, when ``url`` cannot be created and written."""
    fs, path = url_to_fs(url)
    probe = posixpath.join(path, f".probe-{uuid.uuid4().hex}")
    if not is_local(fs) and "memory" not in _protocols(fs):
        bucket = path.split("/", 1)[0]
        if not bucket:  # s3:// or s3:///runs: fsspec would treat the first folder (or nothing) as the bucket
            raise StorageError(f"storage {url!r} has no bucket: expected <protocol>://BUCKET[/PREFIX]")
        try:
            found = fs.exists(bucket)
        except Exception as exc:  # noqa: BLE001 - network / credential errors
            raise StorageError(f"storage {url!r} is unreachable: {type(exc).__name__}: {exc}") from exc
        if not found:
            raise StorageError(f"storage {url!r} is not writable: bucket {bucket!r} does not exist")
    try:
        if is_local(fs) or "memory" in _protocols(fs):
            fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as exc:  # noqa: BLE001 - any backend error means "unusable"
        raise StorageError(f"storage {url!r} is not writable: {type(exc).__name__}: {exc}") from exc


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Publish ``data`` at ``url`` so that readers see either nothing or the whole file.

    Storage errors are retried; :class:`StorageUnavailable` when they persist. A failed try
    leaves no ``.tmp-*`` file behind."""
    fs, path = url_to_fs(url)
    with_retries(lambda: _write_once(fs, path, data), "write", url, writing=True)


def _write_once(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(fs):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        try:  # a full disk still lets a file be removed
            fs.rm(tmp)
        except OSError:
            pass
        raise


def read_bytes(url: str) -> bytes:
    """The bytes of ``url``; storage errors retried (:func:`with_retries`); a missing file
    raises FileNotFoundError at once."""
    fs, path = url_to_fs(url)

    def read() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    return with_retries(read, "read", url, writing=False)


def conform(table: pa.Table, schema: pa.Schema, where: str = "table") -> pa.Table:
    """Select and cast ``table``'s columns to ``schema``; name the column that does not fit."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if field.nullable:
                columns.append(pa.nulls(table.num_rows, type=field.type))
                continue
            raise ManifestError(f"{where}: missing required column {field.name!r}")
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = _nest_flat_lists(col, field.type, f"{where}: column {field.name!r}")
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ManifestError(
                    f"{where}: column {field.name!r} has type {col.type}, expected {field.type}: {exc}"
                ) from exc
        if not field.nullable and col.null_count:
            raise ManifestError(f"{where}: column {field.name!r} has {col.null_count} null value(s)")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _nest_flat_lists(col: pa.ChunkedArray, type_: pa.DataType, where: str) -> pa.ChunkedArray:
    """A flat ``list<number>`` column (N*k values per row) as ``list<fixed_size_list<number, k>>``
    when that is the target type (how matches were stored before schema version 2); else as is."""
    if not (pa.types.is_list(type_) and pa.types.is_fixed_size_list(type_.value_type)):
        return col
    if not (pa.types.is_list(col.type) and (pa.types.is_floating(col.type.value_type) or pa.types.is_integer(col.type.value_type))):
        return col
    k = type_.value_type.list_size
    chunks = []
    for chunk in col.chunks:
        offsets = chunk.offsets.to_numpy()
        if np.any((offsets - offsets[0]) % k):
            raise ManifestError(f"{where}: a row's length is not a multiple of {k}")
        values = chunk.values.slice(offsets[0], offsets[-1] - offsets[0]).cast(type_.value_type.value_type)
        nested = pa.FixedSizeListArray.from_arrays(values, k)
        new_offsets = pa.array((offsets - offsets[0]) // k, pa.int32())
        chunks.append(pa.ListArray.from_arrays(new_offsets, nested, type=type_,
                                               mask=chunk.is_null() if chunk.null_count else None))
    return pa.chunked_array(chunks, type=type_)


def schema_of(manifest: str) -> pa.Schema:
    try:
        return MANIFESTS[manifest][0]
    except KeyError as exc:
        raise ManifestError(f"unknown manifest {manifest!r}; known: {sorted(MANIFESTS)}") from exc


def write_manifest(table: pa.Table, url: str, manifest: str, metadata: dict[str, str] | None = None) -> int:
    """Write ``table`` as one Parquet file at ``url`` after validating it; returns bytes written.
    ``metadata``: key-value pairs for the file's footer (a stage part's stamp: commit.part_stamp)."""
    schema = schema_of(manifest)
    table = conform(table, schema, where=url)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    # page checksums (CRC32 per data page): a part corrupted at rest fails its next read instead of
    # feeding wrong rows downstream (see :func:`open_parquet`)
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_page_checksum=True)
    data = buf.getvalue()
    write_bytes_atomic(url, data)
    return len(data)


def read_manifest(url: str, manifest: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Read one Parquet file (only ``columns`` when given) and check it against the schema."""
    schema = schema_of(manifest)
    if columns is not None:
        columns = list(columns)
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise ManifestError(f"{url}: {manifest} manifest has no column(s) {unknown}")
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    fs, path = url_to_fs(url)

    def read() -> pa.Table:
        with fs.open(path, "rb") as f:
            pf = open_parquet(f)
            present = [c for c in (columns or []) if c in pf.schema_arrow.names]
            return pf.read(columns=present if columns is not None else None)

    try:  # storage errors are retried, then StorageUnavailable (never "an unreadable part")
        table = with_retries(read, "read", url, writing=False)
    except FileNotFoundError as exc:
        raise ManifestError(f"{url}: file not found") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{url}: not a readable Parquet file ({exc})") from exc
    return conform(table, schema, where=url)


def open_parquet(f) -> pq.ParquetFile:
    """A Parquet file that verifies each page's CRC32 as it reads it (pages written without one,
    by older versions, are read as before)."""
    return pq.ParquetFile(f, page_checksum_verification=True)


def _fresh_listing(url: str, recursive: bool = False) -> tuple[fsspec.AbstractFileSystem, str, list[dict]]:
    """The filesystem, path and entries (``name``, ``size``, ``type``) of one fresh listing of
    ``url``: directly under it, or at any depth; none for a missing folder. Object stores cache
    listings, and other processes may have written since."""
    fs, path = url_to_fs(url)

    def listing() -> list[dict]:
        fs.invalidate_cache(path)
        return list(fs.find(path, detail=True).values()) if recursive else fs.ls(path, detail=True)

    try:
        entries = with_retries(listing, "list", url, writing=False)
    except FileNotFoundError:
        return fs, path, []
    return fs, path, entries


def _visible_files(entries: list[dict], suffix: str) -> list[dict]:
    """The entries that are files ending with ``suffix`` and not hidden."""
    out = []
    for entry in entries:
        base = posixpath.basename(entry["name"].rstrip("/"))
        if base.endswith(suffix) and not base.startswith(".") and entry.get("type", "file") == "file":
            out.append(entry)
    return out


def file_sizes(url: str, suffix: str = ".parquet") -> dict[str, int]:
    """``{file name: bytes}`` of the files directly under ``url`` ending with ``suffix`` (one fresh
    listing; hidden names skipped)."""
    _, _, entries = _fresh_listing(url)
    return {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in _visible_files(entries, suffix)}


def tree_sizes(url: str, suffix: str) -> dict[str, int]:
    """``{path relative to url: bytes}`` of every file below ``url`` (any depth) ending with
    ``suffix``: one fresh recursive listing (an object store lists a prefix in pages, not per file)."""
    _, path, entries = _fresh_listing(url, recursive=True)
    root = path.rstrip("/") + "/"
    return {e["name"][len(root):]: int(e["size"]) for e in _visible_files(entries, suffix) if e["name"].startswith(root)}


def list_files(url: str, suffix: str = ".parquet") -> list[str]:
    """Full URLs of the files directly under ``url`` that end with ``suffix``, sorted."""
    fs, _, entries = _fresh_listing(url)
    return sorted(full_url(fs, e["name"]) for e in _visible_files(entries, suffix))


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)

    def check() -> bool:
        fs.invalidate_cache(path)  # never trust a listing cached before another process wrote
        return fs.exists(path)

    return with_retries(check, "check", url, writing=False)


def remove_tree(url: str) -> None:
    fs, path = url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
