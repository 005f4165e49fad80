"""Copy a dataset folder from object storage to a local folder (init container of the benchmark pods).

Benchmarks whose pair listing reads local folders (``matchmill bench hpatches ROOT``) need ROOT on
every pod at the same path: deploy/raycronjob.yaml runs this in an init container of the head and
of every worker, into an emptyDir mounted at /data.

Usage:  python deploy/sync_data.py s3://bucket/data/hpatches /data/hpatches

Prints one line (files, bytes); exit code 2 with one line on stderr when the source is missing or
empty.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import fsspec


def sync_folder(src_url: str, dest: str | os.PathLike) -> tuple[int, int]:
    """Copy every file under ``src_url`` to ``dest`` keeping relative paths; returns (files, bytes).

    Files already present with the same size are skipped, so a restarted init container resumes.

    Raises:
        FileNotFoundError: ``src_url`` does not exist or holds no file (message names it).
    """
    fs, root = fsspec.core.url_to_fs(src_url)
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset folder {src_url} does not exist")
    files = {p: info for p, info in fs.find(root, detail=True).items() if info.get("type", "file") == "file"}
    if not files:
        raise FileNotFoundError(f"dataset folder {src_url} holds no file")
    dest = Path(dest)
    copied = total = 0
    prefix = root.rstrip("/") + "/"
    for path, info in sorted(files.items()):
        local = dest / path[len(prefix):]
        size = int(info.get("size") or 0)
        total += size
        if local.is_file() and local.stat().st_size == size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        fs.get_file(path, str(part))
        part.replace(local)
        copied += 1
    return len(files), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src_url", help="dataset folder on any fsspec storage (s3://..., gs://..., file://...)")
    parser.add_argument("dest", help="local folder (created)")
    args = parser.parse_args(argv)
    try:
        files, size = sync_folder(args.src_url, args.dest)
    except FileNotFoundError as exc:
        print(f"sync_data: error: {exc}", file=sys.stderr)
        return 2
    print(f"synced {files} files ({size / 1e6:.1f} MB) from {args.src_url} to {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
