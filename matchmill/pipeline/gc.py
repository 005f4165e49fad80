"""``matchmill gc RUN``: remove what no committed stage of a run uses.

A rerun never deletes committed work (see runner.py), so replaced configs leave things behind:
- artifact folders ``<run>/artifacts/<hash12>/`` of extract configs other than the committed one;
- ``.tmp-*`` files of writes interrupted before their atomic rename;
- with ``partial=True``: stage folders that were started but never committed.
Committed stages, their parts and the artifacts their manifest references are never touched.

gc works on one run and only inside it: the URL must be a run (a folder holding a stage folder
with a ``_STARTED.json`` or ``_COMMITTED.json`` marker), else it refuses (a storage root holding
runs is named as such). It looks only where a run writes: its stage folders (not into a run
nested there), ``artifacts/<hash12>/`` (folders named like an artifact hash; any other folder
under ``artifacts/`` is left alone), ``_retrieval/`` and the run folder itself; a folder it does
not know is never entered. The run's writer lease (``_lease.json``) is never removed.
"""

from __future__ import annotations

import posixpath
import re

from matchmill.manifests.commit import COMMIT_MARKER, START_MARKER, read_commit, read_started, stage_url
from matchmill.manifests.lease import acquire_lease
from matchmill.manifests.storage import StorageError, exists, full_url, url_to_fs

from .graph import ALL_STAGES

#: Folders of a run besides its stage folders: tensor artifacts (matchmill/manifests/artifacts.py) and the
#: retrieval descriptor cache (matchmill/stages/global_descriptors.py).
ARTIFACTS = "artifacts"
RUN_FOLDERS = (ARTIFACTS, "_retrieval")
#: The run's writer lease (matchmill/manifests/lease.py); gc never removes it, nor a temp file of it.
LEASE_FILE = "_lease.json"
TMP_PREFIX = ".tmp-"
#: An artifact folder is named by the first 12 hex digits of the extract config hash (artifact_url).
ARTIFACT_HASH = re.compile(r"^[0-9a-f]{12}$")
#: Storage-root listings name at most this many runs (and look at at most ``_ROOT_SCAN`` folders).
_NAMED_RUNS, _ROOT_SCAN = 5, 200


class NotARunError(StorageError):
    """The URL given to gc is not a run: a storage root, a stage folder or any other folder."""


def _entries(fs, path: str) -> list[dict]:
    fs.invalidate_cache(path)
    try:
        return fs.ls(path, detail=True)
    except FileNotFoundError:
        return []


def _name(entry: dict) -> str:
    return posixpath.basename(entry["name"].rstrip("/"))


def _is_dir(entry: dict) -> bool:
    return entry.get("type") == "directory"


def is_run(fs, path: str) -> bool:
    """Whether ``path`` holds a stage folder (a name of :data:`ALL_STAGES`) with a started or commit marker."""
    stages = {spec.name for spec in ALL_STAGES}
    for entry in _entries(fs, path):
        if _is_dir(entry) and _name(entry) in stages:
            if any(_name(e) in (START_MARKER, COMMIT_MARKER) for e in _entries(fs, entry["name"])):
                return True
    return False


def check_run(run_url: str) -> None:
    """Raise :class:`NotARunError` (one line) unless ``run_url`` is a run."""
    if not exists(run_url):
        raise StorageError(f"run {run_url!r} does not exist")
    fs, root = url_to_fs(run_url)
    if is_run(fs, root):
        return
    folders = [e for e in _entries(fs, root) if _is_dir(e) and not _name(e).startswith(".")][:_ROOT_SCAN]
    runs = sorted(_name(e) for e in folders if is_run(fs, e["name"]))
    if runs:
        shown = ", ".join(runs[:_NAMED_RUNS]) + (f" and {len(runs) - _NAMED_RUNS} more" if len(runs) > _NAMED_RUNS else "")
        raise NotARunError(f"{run_url} is a storage root holding runs {shown}; name one run "
                           f"(e.g. matchmill gc {run_url.rstrip('/')}/{runs[0]}); nothing removed")
    raise NotARunError(f"{run_url} is not a matchmill run (no stage folder with a {START_MARKER} or "
                       f"{COMMIT_MARKER} marker); nothing removed")


def _temp_files(fs, path: str, recurse: bool) -> list[str]:
    """``.tmp-*`` files under ``path``; with ``recurse`` also in its subfolders, except a nested run."""
    out = []
    for entry in _entries(fs, path):
        name = _name(entry)
        if _is_dir(entry):
            if recurse and not is_run(fs, entry["name"]):
                out += _temp_files(fs, entry["name"], recurse)
        elif name.startswith(TMP_PREFIX) and not name.endswith(LEASE_FILE):
            out.append(entry["name"])
    return out


def find_garbage(run_url: str, partial: bool = False) -> tuple[list[str], int]:
    """What :func:`collect_garbage` would remove: URLs and their bytes (nothing is touched).

    Raises:
        NotARunError: ``run_url`` is not a run."""
    check_run(run_url)
    fs, root = url_to_fs(run_url)
    doomed: list[str] = []
    extract = read_commit(run_url, "extract")
    keep = {extract.config_hash[:12]} if extract else set()
    if not extract and read_started(run_url, "extract") and not partial:
        keep.add(read_started(run_url, "extract")[:12])  # an extract in progress keeps its artifacts
    artifacts = posixpath.join(root, ARTIFACTS)
    for entry in _entries(fs, artifacts):
        name = _name(entry)
        if _is_dir(entry) and ARTIFACT_HASH.match(name):
            if name not in keep:
                doomed.append(entry["name"])
            else:
                doomed += _temp_files(fs, entry["name"], recurse=True)
    doomed += _temp_files(fs, root, recurse=False)
    doomed += _temp_files(fs, posixpath.join(root, "_retrieval"), recurse=False)
    stage_folders = {spec.name for spec in ALL_STAGES}
    for entry in _entries(fs, root):
        if _is_dir(entry) and _name(entry) in stage_folders:
            doomed += _temp_files(fs, entry["name"], recurse=True)
    if partial:
        for spec in ALL_STAGES:
            if read_commit(run_url, spec.name) is None and read_started(run_url, spec.name) is not None:
                folder = url_to_fs(stage_url(run_url, spec.name))[1]
                doomed = [p for p in doomed if not p.startswith(folder.rstrip("/") + "/")] + [folder]
    doomed = [p for p in doomed if posixpath.basename(p.rstrip("/")) != LEASE_FILE]
    freed = sum(sum(fs.du(p, total=False).values()) if fs.isdir(p) else fs.size(p) for p in doomed)
    return [full_url(fs, p) for p in doomed], freed


def collect_garbage(run_url: str, dry_run: bool = False, partial: bool = False) -> tuple[list[str], int]:
    """Remove (or with ``dry_run`` only list) unused items; returns their URLs and bytes freed.

    Removing takes the run's writer lease (``matchmill/manifests/lease.py``) first, so a gc never races a
    ``matchmill run`` of the same run: while a run writes, gc refuses in one line naming it.

    Raises:
        NotARunError: ``run_url`` is not a run (nothing is removed).
        LeaseError: another process holds the run (nothing is removed)."""
    if dry_run:
        return find_garbage(run_url, partial)
    check_run(run_url)
    with acquire_lease(run_url, command="matchmill gc", heartbeat=False):
        urls, freed = find_garbage(run_url, partial)
        fs, _ = url_to_fs(run_url)
        for url in urls:
            fs.rm(url_to_fs(url)[1], recursive=True)
    return urls, freed
