"""Where an export lands: one export per folder, published whole, never mixed with another.

An export folder ``out`` holds the files of one export (hloc: ``keypoints.h5``, ``matches.h5``,
``pairs.txt``; COLMAP: ``database.db``) and ``export.json``, written last: format, run URL,
stage, the files, and when. :class:`ExportOutput` is the one way an export writes:

1. It checks ``out`` before anything is written (:meth:`ExportOutput.check`):

   - missing or empty (hidden entries such as ``.DS_Store`` aside): written;
   - an export of the same run and format (its ``export.json`` says so, and lists every export
     file there): replaced as a whole;
   - an export of another run or format, export files that its ``export.json`` does not list (a
     stale ``database.db`` beside hloc files), or export files without ``export.json`` (written
     by a matchmill from before it, or cut short): refused with one line unless ``overwrite``;
     with it the old set is replaced as a whole (its files that the new export does not write
     are removed, so nothing stale stays beside the new files);
   - any other file or folder (not an export's): refused, with or without ``overwrite``; a
     user's file is never removed or overwritten;
   - an ``out`` that cannot be created or written: one line (:class:`StorageError`).

2. The files are written into a staging folder: ``<out>/.tmp-export-<uuid>/`` for a local
   ``out`` (the same file system, so publishing is a rename), a local temporary folder for an
   object store (h5py and sqlite need local files).

3. Only when every file is written are they published: the old ``export.json`` is removed first
   (from then on the folder claims no export until the new marker lands), each file is renamed
   (local) or put (object store: one atomic PUT each) into place, the replaced set's other files
   are removed, and ``export.json`` comes last. An error before that (a bad name found late, a
   full disk) leaves ``out`` exactly as it was.

Two exports into one folder at the same time are not arbitrated (no lock): do not.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import uuid
from datetime import datetime, timezone

from matchmill.manifests.storage import StorageError, check_writable, is_local, join, url_to_fs, write_bytes_atomic

from .common import ExportError

__all__ = ["MANIFEST_FILE", "FORMAT_FILES", "ExportOutput", "read_export_manifest"]

#: The marker every export writes last.
MANIFEST_FILE = "export.json"
#: The files of each export format.
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "hloc": ("keypoints.h5", "matches.h5", "pairs.txt"),
    "colmap": ("database.db",),
}
_EXPORT_NAMES = frozenset(n for files in FORMAT_FILES.values() for n in files) | {MANIFEST_FILE}
_STAGING_PREFIX = ".tmp-export-"


def _one_line(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _same_url(a: str, b: str) -> bool:
    """Whether two storage URLs name one place (``/x/run`` and ``file:///x/run`` do)."""
    try:
        (fa, pa_), (fb, pb) = url_to_fs(a), url_to_fs(b)
    except StorageError:
        return a == b
    return type(fa) is type(fb) and pa_.rstrip("/") == pb.rstrip("/")


def read_export_manifest(out: str) -> dict | None:
    """The ``export.json`` of the export in ``out`` as a dict, None when there is none (or it is
    not one of ours: unreadable JSON without ``format`` and ``files``)."""
    fs, path = url_to_fs(out)
    try:
        with fs.open(posixpath.join(path, MANIFEST_FILE), "rb") as f:
            data = json.loads(f.read().decode())
    except (FileNotFoundError, ValueError, UnicodeDecodeError, IsADirectoryError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or "format" not in data:
        return None
    return data


class ExportOutput:
    """Context manager: checks ``out``, yields a local staging folder, publishes on success
    (module docstring). ``with ExportOutput(out, "hloc", run_url, stage) as folder: ...`` writes
    the format's files into ``folder``; nothing reaches ``out`` if the body raises."""

    def __init__(self, out: str, fmt: str, run_url: str, stage: str, overwrite: bool = False):
        if fmt not in FORMAT_FILES:
            raise ExportError(f"unknown export format {fmt!r}; known: {sorted(FORMAT_FILES)}")
        self.out, self.fmt, self.run_url, self.stage, self.overwrite = out, fmt, run_url, stage, overwrite
        self.fs, self.path = url_to_fs(out)
        self.path = self.path.rstrip("/") or "/"
        self.local = is_local(self.fs)
        self.replaced: list[str] = []  # export files now in ``out`` that publishing replaces
        self.staging: str | None = None
        self._created = False
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ check

    def _entries(self) -> dict[str, str]:
        """``{name: "file" | "directory"}`` directly under ``out`` ({} when it does not exist)."""
        try:
            self.fs.invalidate_cache(self.path)
            if self.fs.isfile(self.path):
                raise StorageError(f"export destination {self.out!r} is a file, not a folder")
            listing = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return {}
        except (PermissionError, NotADirectoryError) as exc:
            raise StorageError(f"export destination {self.out!r} is not writable: {_one_line(exc)}") from exc
        out = {}
        for entry in listing:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if name and entry["name"].rstrip("/") != self.path:
                out[name] = entry.get("type", "file")
        return out

    def check(self) -> None:
        """Refuse (ExportError, one line) when writing would mix with or clobber what ``out``
        holds; remember which export files publishing replaces."""
        entries = {n: t for n, t in self._entries().items() if not n.startswith(".")}
        if not entries:
            self.replaced = []
            return
        old = read_export_manifest(self.out) if MANIFEST_FILE in entries else None
        foreign = sorted(n + ("/" if t == "directory" else "") for n, t in entries.items()
                         if n not in _EXPORT_NAMES or t == "directory" or (n == MANIFEST_FILE and old is None))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ExportError(f"{self.out} holds files that are not a matchmill export ({shown}); "
                              "choose an empty folder (nothing was written)")
        present = sorted(entries)
        listed = set(old["files"]) | {MANIFEST_FILE} if old else set()
        unlisted = [n for n in present if n not in listed]
        if old and old["format"] == self.fmt and _same_url(str(old.get("run", "")), self.run_url) and not unlisted:
            self.replaced = present  # a re-export of the same run: replaced as a whole
            return
        if old is None:
            what = f"{', '.join(present)} without {MANIFEST_FILE} (an older matchmill export, or one cut short)"
        else:
            what = f"{old['format']} export of run {old.get('run')} (stage {old.get('stage')})"
            if unlisted:
                what += f", and {', '.join(unlisted)} that its {MANIFEST_FILE} does not list"
        if not self.overwrite:
            raise ExportError(f"{self.out} holds an export of another run/format: {what}; "
                              "choose an empty folder or pass --overwrite")
        self.replaced = present

    # ------------------------------------------------------------------ staging and publishing

    def __enter__(self) -> str:
        self.check()
        if self.local:
            existed = os.path.isdir(self.path)
            staging = os.path.join(self.path, f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
            try:
                os.makedirs(self.path, exist_ok=True)
                self._created = not existed
                os.mkdir(staging)
            except OSError as exc:
                self._remove_created()
                raise StorageError(f"export destination {self.out!r} is not writable: {_one_line(exc)}") from exc
            self.staging = staging
        else:
            check_writable(self.out)  # StorageError, one line
            self._tmp = tempfile.TemporaryDirectory(prefix="matchmill-export-")
            self.staging = self._tmp.name
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        published = False
        try:
            if exc_type is None:
                self._publish()
                published = True
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
            elif self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            if not published:
                self._remove_created()

    def _remove_created(self) -> None:
        """Remove ``out`` again when this export created it and left it empty."""
        if self._created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass

    def _publish(self) -> None:
        assert self.staging is not None
        written = sorted(os.listdir(self.staging))
        expected = sorted(FORMAT_FILES[self.fmt])
        if written != expected:  # a bug of the writer, not of the input: never publish half a set
            raise ExportError(f"{self.fmt} export wrote {written}, expected {expected}; nothing was published")
        manifest = {
            "format": self.fmt,
            "run": self.run_url,
            "stage": self.stage,
            "files": written,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            if MANIFEST_FILE in self.replaced:  # first: until the new marker lands, no claimed export
                self.fs.rm(posixpath.join(self.path, MANIFEST_FILE))
            for name in written:
                src, dst = os.path.join(self.staging, name), posixpath.join(self.path, name)
                if self.local:
                    os.replace(src, dst)
                else:
                    self.fs.put_file(src, dst)
            for name in self.replaced:
                if name not in written and name != MANIFEST_FILE:
                    self.fs.rm(posixpath.join(self.path, name))
            write_bytes_atomic(join(self.out, MANIFEST_FILE), (json.dumps(manifest, indent=1) + "\n").encode())
        except OSError as exc:
            raise StorageError(f"export destination {self.out!r}: publishing failed: {_one_line(exc)}") from exc
