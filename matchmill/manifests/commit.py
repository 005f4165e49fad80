"""Stage directories, part files and the commit marker.

Layout of one stage under a run URL::

    <run>/<stage>/_STARTED.json      config hash of the attempt in progress (written first)
    <run>/<stage>/part-<id>.parquet  complete part files, each published atomically
    <run>/<stage>/_COMMITTED.json    written last: config hash, schema version, rows, code version,
                                     the name and size of every part it covers and, for a stage
                                     whose rows point at tensor artifacts (extract), their sizes

A reader trusts a stage only when ``_COMMITTED.json`` exists and its config hash matches, and a
rerun trusts its parts only when :func:`check_parts` finds them as committed (same names and
sizes, every artifact present at its size; with ``deep``, every page's checksum verified).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.version import __version__

from .artifacts import ARTIFACT_SUFFIX, artifact_folder, resolve_artifact, run_relative
from .schemas import MANIFESTS, SCHEMA_VERSION, STATUS_FAILED
from .storage import (
    ManifestError,
    exists,
    file_sizes,
    join,
    list_files,
    read_bytes,
    read_manifest,
    remove_tree,
    tree_sizes,
    url_to_fs,
    write_bytes_atomic,
)

COMMIT_MARKER = "_COMMITTED.json"
START_MARKER = "_STARTED.json"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code that wrote a commit or a benchmark row: ``matchmill.__version__``, plus
    ``+git-<describe>`` when the source is a git checkout (the one definition: commit markers and
    the benchmark history record the same string)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        described = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{__version__}+git-{described}" if described else __version__


@dataclass
class CommitInfo:
    """What a committed stage promises about its content."""

    stage: str
    manifest: str
    config_hash: str
    rows: int
    failed: int
    schema_version: int = SCHEMA_VERSION
    code_version: str = field(default_factory=code_version)
    seconds: float = 0.0
    committed_at: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)  # part file name -> bytes, as committed (empty: older markers)
    artifacts: dict = field(default_factory=dict)  # artifact (relative to the run) -> bytes, for rows with one


def stage_url(run_url: str, stage: str) -> str:
    return join(run_url, stage)


def read_commit(run_url: str, stage: str) -> CommitInfo | None:
    url = join(stage_url(run_url, stage), COMMIT_MARKER)
    if not exists(url):
        return None
    try:
        data = json.loads(read_bytes(url))
        return CommitInfo(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ManifestError(f"{url}: corrupt commit marker ({exc})") from exc


def write_commit(run_url: str, info: CommitInfo) -> None:
    url = join(stage_url(run_url, info.stage), COMMIT_MARKER)
    write_bytes_atomic(url, json.dumps(asdict(info), indent=2, sort_keys=True).encode())


def read_started(run_url: str, stage: str) -> str | None:
    """Config hash of an attempt that started this stage, or None."""
    url = join(stage_url(run_url, stage), START_MARKER)
    if not exists(url):
        return None
    try:
        return json.loads(read_bytes(url))["config_hash"]
    except (json.JSONDecodeError, KeyError):
        return None


def write_started(run_url: str, stage: str, config_hash: str) -> None:
    url = join(stage_url(run_url, stage), START_MARKER)
    payload = {"stage": stage, "config_hash": config_hash, "started_at": time.time()}
    write_bytes_atomic(url, json.dumps(payload).encode())


def reset_stage(run_url: str, stage: str) -> None:
    """Remove a stage's parts and markers (its config changed, so its rows are stale)."""
    remove_tree(stage_url(run_url, stage))


def part_files(run_url: str, stage: str) -> list[str]:
    """URLs of a stage's part files: every ``*.parquet`` in its folder while it is uncommitted;
    once committed, only those its marker's inventory lists (a file dropped in later is never
    read; ``matchmill status`` names it stray). Markers without an inventory: every file."""
    files = list_files(stage_url(run_url, stage))
    try:
        commit = read_commit(run_url, stage)
    except ManifestError:
        return files
    if commit is None or not commit.parts:
        return files
    return [url for url in files if url.rsplit("/", 1)[-1] in commit.parts]


def check_parts(run_url: str, stage: str, manifest: str, commit: CommitInfo, deep: bool = True) -> dict[str, str]:
    """What is wrong with a committed stage's part files: ``{part name: problem}``, empty when
    they are as committed.

    Found from one listing: a part that is missing, whose size changed (truncated, appended to,
    rewritten) or that the commit does not cover. With ``deep``, every other part is also read
    whole, which verifies its Parquet footer and each page's CRC32 (a byte flipped in place keeps
    the size), and the rows of all parts must add up to the committed count.
    """
    sizes = file_sizes(stage_url(run_url, stage))
    problems = check_artifacts(run_url, stage, manifest, commit)  # part problems below take precedence
    if commit.parts:
        for name, size in sorted(commit.parts.items()):
            if name not in sizes:
                problems[name] = "is missing"
            elif sizes[name] != size:
                problems[name] = f"has {sizes[name]} bytes where the commit recorded {size} (truncated or rewritten)"
        for name in sorted(sizes.keys() - commit.parts.keys()):
            problems[name] = "is not covered by the commit (written after it)"
    if deep:
        rows = 0
        for name in sorted(sizes.keys() - problems.keys()):
            try:
                rows += read_manifest(join(stage_url(run_url, stage), name), manifest).num_rows
            except ManifestError as exc:
                problems[name] = f"is unreadable: {str(exc).split(': ', 1)[-1]}"
        if not problems and rows != commit.rows:
            problems["(all parts)"] = f"hold {rows} rows where the commit recorded {commit.rows}"
    return problems


#: Column through which a manifest's rows point at their tensor artifact.
ARTIFACT_COLUMN = "artifact_uri"


def _artifact_key(run_url: str, uri: str) -> str:
    """An artifact's name in a commit marker: relative to the run (see :func:`run_relative`)."""
    return run_relative(run_url, uri)


def _artifact_uri(run_url: str, key: str) -> str:
    """The URL of an artifact named ``key`` in a commit marker (the inverse of :func:`_artifact_key`)."""
    return resolve_artifact(run_url, key)


def _artifact_rows(run_url: str, stage: str, manifest: str) -> dict[str, list[tuple[str, str]]]:
    """``{part name: [(image id, artifact URI), ...]}`` of the rows that have an artifact (parts
    that cannot be read are left to :func:`check_parts`)."""
    schema, key = MANIFESTS[manifest][:2]
    if ARTIFACT_COLUMN not in schema.names:
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    for url in part_files(run_url, stage):
        try:
            table = read_manifest(url, manifest, [key, ARTIFACT_COLUMN])
        except ManifestError:
            continue
        out[url.rsplit("/", 1)[-1]] = [(k, resolve_artifact(run_url, uri)) for k, uri in zip(
            table.column(key).to_pylist(), table.column(ARTIFACT_COLUMN).to_pylist()) if uri]
    return out


def _listed_artifacts(uris: set[str]) -> dict[str, int]:
    """``{artifact URI: bytes}`` of what exists, from one recursive listing per artifact folder."""
    sizes: dict[str, int] = {}
    for root in sorted({artifact_folder(uri) for uri in uris}):
        sizes.update({join(root, rel): size for rel, size in tree_sizes(root, ARTIFACT_SUFFIX).items()})
    return sizes


def artifact_sizes(run_url: str, stage: str, manifest: str) -> dict[str, int]:
    """``{artifact: bytes}`` of every artifact the stage's rows point at, for its commit marker
    (empty for a manifest without artifacts)."""
    uris = {uri for rows in _artifact_rows(run_url, stage, manifest).values() for _, uri in rows}
    listed = _listed_artifacts(uris) if uris else {}
    return {_artifact_key(run_url, uri): listed[uri] for uri in sorted(uris) if uri in listed}


def check_artifacts(run_url: str, stage: str, manifest: str, commit: CommitInfo) -> dict[str, str]:
    """``{part name: problem}`` for the parts holding rows whose artifact is missing or no longer
    has its committed size (one listing; bytes changed in place are caught by each array's CRC32
    when it is read). Redoing such a part writes its artifacts again."""
    if not commit.artifacts:
        return {}
    recorded = {_artifact_uri(run_url, key): size for key, size in commit.artifacts.items()}
    listed = _listed_artifacts(set(recorded))
    bad = {uri: "is missing" if uri not in listed else
           f"has {listed[uri]} bytes where the commit recorded {size} (truncated or rewritten)"
           for uri, size in recorded.items() if listed.get(uri) != size}
    if not bad:
        return {}
    problems: dict[str, str] = {}
    for name, rows in _artifact_rows(run_url, stage, manifest).items():
        hits = [f"holds {image_id}, whose artifact {_artifact_key(run_url, uri)} {bad[uri]}"
                for image_id, uri in rows if uri in bad]
        if hits:
            problems[name] = hits[0] + (f" (and {len(hits) - 1} more damaged artifacts)" if len(hits) > 1 else "")
    return problems


#: What :func:`storage_failed_parts` says of such a part (the runner recognises its repairs by it).
STORAGE_FAILED = "failed by a storage error, not by its data"
#: Set in ``CommitInfo.extra`` by versions that stop a stage on a storage error instead of failing
#: its rows: such a commit holds no storage failures, and its parts are not read for them.
STORAGE_STOPS = "storage_errors_stop"
#: errno values of storage failing (EPERM, EIO, EAGAIN, EACCES, EBUSY, ENOSPC, EROFS, EPIPE,
#: ECONNRESET, ETIMEDOUT, ECONNREFUSED, EDQUOT), as the error texts of older versions name them.
_STORAGE_ERRNOS = {1, 5, 11, 13, 16, 28, 30, 32, 104, 110, 111, 122}
_STORAGE_ERROR_TEXT = re.compile(r"\b(?:OSError|IOError|PermissionError|ConnectionResetError|ConnectionError|"
                                 r"BrokenPipeError|TimeoutError): \[Errno (\d+)\]")


def is_storage_failure(error: str | None) -> bool:
    """Whether a failed row's error text is the storage failing (``extract: OSError: [Errno 28] No
    space left on device``, or a pair row that inherited it) rather than its data."""
    return any(int(m.group(1)) in _STORAGE_ERRNOS for m in _STORAGE_ERROR_TEXT.finditer(error or ""))


def storage_failed_parts(run_url: str, stage: str, manifest: str, commit: CommitInfo) -> dict[str, str]:
    """``{part name: problem}`` for the parts holding rows that an older version committed as
    failed because storage failed (the current one stops the stage instead): redoing those parts
    retries them. Reads the parts' status and error columns only when the commit counts failures."""
    schema, key = MANIFESTS[manifest][:2]
    if not commit.failed or commit.extra.get(STORAGE_STOPS) or "error" not in schema.names:
        return {}
    problems: dict[str, str] = {}
    for url in part_files(run_url, stage):
        try:
            table = read_manifest(url, manifest, [key, "status", "error"]).to_pydict()
        except ManifestError:
            continue  # left to check_parts
        hits = [(k, e) for k, status, e in zip(table[key], table["status"], table["error"])
                if status == STATUS_FAILED and is_storage_failure(e)]
        if hits:
            more = f" (and {len(hits) - 1} more such rows)" if len(hits) > 1 else ""
            problems[url.rsplit("/", 1)[-1]] = f"holds {hits[0][0]}, {STORAGE_FAILED} ({hits[0][1]}){more}"
    return problems


def remove_parts(run_url: str, stage: str, names: list[str]) -> None:
    """Delete the named part files of a stage (those :func:`check_parts` found wrong)."""
    for name in names:
        url = join(stage_url(run_url, stage), name)
        if exists(url):
            remove_tree(url)


def part_name(keys: list[str]) -> str:
    """Deterministic part file name from the keys it holds (a retried batch overwrites itself)."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


#: Names of the parts matchmill writes: :func:`part_name` (Ray stages) and ``part-00000.parquet``
#: (driver stages, numbered). Anything else in a stage folder was put there by someone else.
PART_NAME = re.compile(r"part-(?:[0-9a-f]{20}|[0-9]{5,})\.parquet")

#: Parquet key-value metadata stamped into every part: the stage and the config hash it was
#: computed under (a resumed stage refuses parts of another config, see runner.check_stage_folders).
STAMP_STAGE = "matchmill.stage"
STAMP_CONFIG = "matchmill.config_hash"


def is_part_name(name: str) -> bool:
    """Whether a file name (no folder) is one matchmill gives its parts."""
    return PART_NAME.fullmatch(name) is not None


def part_stamp(stage: str, config_hash: str) -> dict[str, str]:
    """The key-value metadata written into a stage's parts (:func:`storage.write_manifest`)."""
    return {STAMP_STAGE: stage, STAMP_CONFIG: config_hash}


def read_part_stamp(url: str) -> dict[str, str]:
    """The stamp of a part (``{}`` for parts written before stamps existed), from its footer only."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        meta = pq.read_metadata(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.decode() in (STAMP_STAGE, STAMP_CONFIG)}


def read_stage(run_url: str, stage: str, manifest: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Concatenate all part files of a stage (validated); the manifest is the stage's own unless given."""
    manifest = manifest or stage
    schema = MANIFESTS[manifest][0]
    tables = [read_manifest(url, manifest, columns) for url in part_files(run_url, stage)]
    if not tables:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(tables)


def image_sizes(run_url: str) -> dict[str, tuple[int, int]]:
    """``{image id: (width, height)}`` (original pixels) from the run's committed extract manifest;
    {} without one. Failed rows and rows without a size are left out: a failed image's size is
    not trusted (the exports refuse an image without one, the mine stage's spread counts 0)."""
    if read_commit(run_url, "extract") is None:
        return {}
    rows = read_stage(run_url, "extract", columns=["image_id", "status", "width", "height"]).to_pylist()
    return {r["image_id"]: (int(r["width"]), int(r["height"])) for r in rows
            if r["status"] != STATUS_FAILED and r["width"] and r["height"]}


def committed_keys(run_url: str, stage: str, manifest: str, key: str) -> tuple[set[str], list[str]]:
    """Keys already written by complete parts, and the URLs of parts that were unreadable.

    Unreadable parts (a crash mid-write on a store without atomic rename, a file truncated or
    corrupted at rest) are reported so that the caller can delete them and redo their keys.
    """
    done: set[str] = set()
    broken: list[str] = []
    for url in part_files(run_url, stage):
        try:  # read whole: every page's checksum is verified, not only the key column's
            table = read_manifest(url, manifest)
        except ManifestError:
            broken.append(url)
            continue
        done.update(table.column(key).to_pylist())
    return done, broken
