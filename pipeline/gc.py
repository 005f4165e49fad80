"""``matchmill gc RUN``: remove what no committed stage of a run uses.

A rerun never deletes committed work (see runner.py), so replaced configs leave things behind:
- artifact folders ``<run>/artifacts/<hash12>/`` of extract configs other than the committed one;
- ``.tmp-*`` files of writes interrupted before their atomic rename;
- with ``partial=True``: stage folders that were started but never committed.
Committed stages, their parts and the artifacts their manifest references are never touched.
"""

from __future__ import annotations

import posixpath

from matchmill.manifests.commit import read_commit, read_started, stage_url
from matchmill.manifests.storage import StorageError, exists, full_url, url_to_fs

from .graph import ALL_STAGES


def collect_garbage(run_url: str, dry_run: bool = False, partial: bool = False) -> tuple[list[str], int]:
    """Remove (or with ``dry_run`` only list) unused items; returns their URLs and bytes freed."""
    if not exists(run_url):
        raise StorageError(f"run {run_url!r} does not exist")
    fs, root = url_to_fs(run_url)
    doomed: list[str] = []
    extract = read_commit(run_url, "extract")
    keep = {extract.config_hash[:12]} if extract else set()
    if not extract and read_started(run_url, "extract") and not partial:
        keep.add(read_started(run_url, "extract")[:12])  # an extract in progress keeps its artifacts
    artifacts = posixpath.join(root, "artifacts")
    if fs.exists(artifacts):
        for path in fs.ls(artifacts, detail=False):
            if posixpath.basename(path.rstrip("/")) not in keep:
                doomed.append(path)
    for path in fs.find(root):
        if posixpath.basename(path).startswith(".tmp-"):
            doomed.append(path)
    if partial:
        for spec in ALL_STAGES:
            if read_commit(run_url, spec.name) is None and read_started(run_url, spec.name) is not None:
                doomed.append(url_to_fs(stage_url(run_url, spec.name))[1])
    freed = 0
    for path in doomed:
        freed += sum(fs.du(path, total=False).values()) if fs.isdir(path) else fs.size(path)
        if not dry_run:
            fs.rm(path, recursive=True)
    return [full_url(fs, p) for p in doomed], freed



