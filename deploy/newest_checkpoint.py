"""Print the URL of the newest checkpoint file under a folder on any fsspec storage.

The weekly benchmark job (deploy/raycronjob.yaml) runs it once, on the driver, and passes the
printed URL to every worker as ``refine.weights=<url>`` (weights load straight from object storage),
so all actors of a run use the same checkpoint even if training writes a new one meanwhile.

Usage:  python deploy/newest_checkpoint.py s3://bucket/patch2pix/checkpoints [--suffix .safetensors]

"Newest" is the latest modification time the store reports (S3 ``LastModified``, GCS ``updated``,
local ``mtime``); equal times are broken by the later path name. Exit code 2 with one line on
stderr when the folder is missing or holds no matching file.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def newest_checkpoint(folder_url: str, suffix: str = ".safetensors") -> str:
    """URL of the newest file ending in ``suffix`` anywhere under ``folder_url``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no such file (message names both).
    """
    fs, root = fsspec.core.url_to_fs(folder_url)
    if not fs.exists(root):
        raise FileNotFoundError(f"checkpoint folder {folder_url} does not exist")
    found = {path: info for path, info in fs.find(root, detail=True).items()
             if path.endswith(suffix) and info.get("type", "file") == "file"}
    if not found:
        raise FileNotFoundError(f"no *{suffix} file under {folder_url}")
    path = max(found, key=lambda p: (modified_seconds(found[p]), p))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fs.unstrip_protocol(path) if protocol not in ("file", "local") else f"file://{path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder_url", help="folder holding checkpoints (any fsspec URL), searched recursively")
    parser.add_argument("--suffix", default=".safetensors", help="checkpoint file ending (default .safetensors)")
    args = parser.parse_args(argv)
    try:
        print(newest_checkpoint(args.folder_url, args.suffix))
    except FileNotFoundError as exc:
        print(f"newest_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
