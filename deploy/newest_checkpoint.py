"""Print the weights URL of the newest (or best) checkpoint of a training run on any fsspec storage.

The weekly benchmark job (deploy/raycronjob.yaml) runs it once, on the driver, and passes the
printed URL to every worker as ``refine.weights=<url>`` (weights load straight from object storage),
so all actors of a run use the same checkpoint even if training writes a new one meanwhile.

Usage:  python deploy/newest_checkpoint.py s3://bucket/train/patch2pix-megadepth [--which latest|best]
        python deploy/newest_checkpoint.py s3://bucket/some/folder --suffix .safetensors

A folder written by ``matchmill train`` (it holds ``train.json``): ``--which latest`` (default)
gives ``<checkpoint of the highest step>/model.safetensors``, read from each checkpoint's
``state.json`` (a half-uploaded checkpoint without one is skipped); ``--which best`` gives
``best/model.safetensors`` (the best validation so far). Any other folder: the newest file ending
in ``--suffix`` by the modification time the store reports (S3 ``LastModified``, GCS ``updated``,
local ``mtime``; ties broken by the later path name). Exit code 2 with one line on stderr when the
folder is missing or holds no checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import posixpath
import sys
from typing import Any

import fsspec

#: Keys under which fsspec implementations report a file's modification time.
TIME_KEYS = ("LastModified", "mtime", "updated", "last_modified", "created")


def modified_seconds(info: dict[str, Any]) -> float:
    """Modification time of an ``fs.find(..., detail=True)`` entry as POSIX seconds (0 when unknown)."""
    for key in TIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).timestamp()
    return 0.0


def _url(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fs.unstrip_protocol(path) if protocol not in ("file", "local") else f"file://{path}"


def training_checkpoint(folder_url: str, which: str = "latest") -> str | None:
    """``model.safetensors`` URL of a ``matchmill train`` run's newest-step (or best) checkpoint;
    None when ``folder_url`` is not a training run."""
    fs, root = fsspec.core.url_to_fs(folder_url)
    if not fs.exists(posixpath.join(root, "train.json")):
        return None
    if which == "best":
        path = posixpath.join(root, "best", "model.safetensors")
        if not fs.exists(path):
            raise FileNotFoundError(f"training run {folder_url} has no best/model.safetensors yet")
        return _url(fs, path)
    steps = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/")
        if entry.get("type") != "directory" or not posixpath.basename(name).startswith("checkpoint_"):
            continue
        try:
            with fs.open(posixpath.join(name, "state.json"), "rb") as f:
                step = int(json.load(f)["step"])
        except (OSError, ValueError, KeyError):
            continue  # an upload that never finished
        if fs.exists(posixpath.join(name, "model.safetensors")):
            steps.append((step, name))
    if not steps:
        raise FileNotFoundError(f"training run {folder_url} has no complete checkpoint yet")
    return _url(fs, posixpath.join(max(steps)[1], "model.safetensors"))


def newest_checkpoint(folder_url: str, suffix: str = ".safetensors", which: str = "latest") -> str:
    """URL of the newest file ending in ``suffix`` anywhere under ``folder_url``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no such file (message names both).
    """
    fs, root = fsspec.core.url_to_fs(folder_url)
    if not fs.exists(root):
        raise FileNotFoundError(f"checkpoint folder {folder_url} does not exist")
    trained = training_checkpoint(folder_url, which)
    if trained is not None:
        return trained
    found = {path: info for path, info in fs.find(root, detail=True).items()
             if path.endswith(suffix) and info.get("type", "file") == "file"}
    if not found:
        raise FileNotFoundError(f"no *{suffix} file under {folder_url}")
    path = max(found, key=lambda p: (modified_seconds(found[p]), p))
    return _url(fs, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder_url", help="a `matchmill train` run folder, or any folder holding checkpoints (any fsspec URL)")
    parser.add_argument("--which", choices=("latest", "best"), default="latest",
                        help="training runs: the highest-step checkpoint (default) or the best validation")
    parser.add_argument("--suffix", default=".safetensors", help="other folders: checkpoint file ending (default .safetensors)")
    args = parser.parse_args(argv)
    try:
        print(newest_checkpoint(args.folder_url, args.suffix, args.which))
    except FileNotFoundError as exc:
        print(f"newest_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
