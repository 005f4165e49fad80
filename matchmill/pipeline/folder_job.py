"""The folder recipe: the job that matches a folder of one's own photos (``matchmill match FOLDER``).

:data:`FOLDER_JOB` holds the recipe's keys as a job file writes them; ``configs/folder.yaml`` is the
same job as a file (``matchmill run configs/folder.yaml data.root=FOLDER run_name=NAME``; a test keeps
the two equal). :func:`folder_job` adds what the command line gives (the folder, ``--out``,
``--method``, ``--sequential``, overrides) and returns a user config that
:func:`matchmill.pipeline.config.resolve` validates and completes like any job file's.

Defaults chosen for real photos, not the 320 px demo scene:

- SIFT at up to 1600 px on the long side with up to 4096 keypoints (hloc's ``sift`` and
  ``superpoint_max`` settings), Lowe's ratio 0.8 with mutual nearest neighbours (hloc's ``NN-ratio``);
  a learned chain (``--method``) at 640 px, the resolution its benchmarks and model card use;
- pairs by folder size (``pairs.strategy: auto``, :func:`matchmill.datasets.pair_strategies.choose_strategy`):
  every pair up to 60 images (1770 pairs), else each image with its 20 most similar (retrieval, at most
  20 N pairs; hloc's retrieval recipes take 20-50); images in subfolders are paired with each other
  (``pairs.scope: all``);
- ``--sequential`` (video frames, ids sorted): each frame with the next 10 (hloc's
  ``pairs_from_sequential`` overlap), loop closure with ``--loop-every N``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from matchmill.config import ConfigError, check_run_name, parse_override, set_dotted, storage_root_url

#: The recipe as a job file writes it (configs/folder.yaml is the same job; storage: the default storage).
FOLDER_JOB: dict[str, Any] = {
    "preset": "sift",  # the classical chain (SIFT -> mutual NN -> identity); --method picks another preset
    "data": {
        "source": "folder",  # every image file under data.root, subfolders included
    },
    "pairs": {
        "strategy": "auto",  # exhaustive up to exhaustive_max images, else retrieval; --sequential: sequential
        "scope": "all",  # pair images of different subfolders too
        "exhaustive_max": 60,  # auto: every pair up to this many images (1770 pairs)
        "per_image": 20,  # retrieval: partners kept per image (hloc's retrieval recipes: 20-50)
        "window": 10,  # sequential: each frame with the next 10 (hloc's pairs_from_sequential overlap)
    },
    "extract": {
        "resize_max": 1600,  # long side fed to SIFT (hloc's sift preset); smaller photos are not upscaled
        "max_keypoints": 4096,  # SIFT keypoints kept per image (strongest first)
    },
    "propose": {
        "ratio": 0.8,  # Lowe's ratio test on top of mutual nearest neighbours (hloc's NN-ratio)
    },
}

#: ``extract.resize_max`` of a learned chain (``--method`` other than sift): the resolution its
#: benchmarks and model card use; 1600 px would multiply its time and memory by about six.
LEARNED_RESIZE_MAX = 640


def run_name_for(folder: str) -> str:
    """A run name from a folder's name (local path or URL): characters other than letters, digits,
    ``_``, ``.`` and ``-`` become ``-``, leading / trailing ``-`` and ``.`` are dropped
    (``My Photos/`` -> ``My-Photos``, ``.hidden`` -> ``hidden``); ``folder`` when nothing is left.
    The result passes :func:`matchmill.config.check_run_name`."""
    if "://" in folder:
        name = PurePosixPath(folder.split("://", 1)[1].rstrip("/")).name
    else:
        name = Path(folder).expanduser().resolve().name
    name = re.sub(r"[^\w.-]+", "-", name).strip("-.")
    return name or "folder"


def folder_root(folder: str) -> str:
    """``data.root`` for ``folder``: a local folder as an absolute path (so the same command from
    another working directory is the same job), a URL as it is."""
    if "://" in folder:
        return folder.rstrip("/")
    return str(Path(folder).expanduser().resolve())


def folder_job(folder: str, out: str | None = None, method: str | None = None, sequential: bool = False,
               window: int | None = None, loop_every: int | None = None, run_name: str | None = None,
               overrides: list[str] = ()) -> dict:
    """The user config ``matchmill match`` runs: :data:`FOLDER_JOB` with the command line's keys.

    Args:
        folder: the image folder (local path or fsspec URL) -> ``data.root``.
        out: ``--out``, the storage (a relative folder: the working directory's); None = the default
            storage (matchmill.config.default_storage).
        method: ``--method``, a chain preset; not sift: ``extract.resize_max`` = :data:`LEARNED_RESIZE_MAX`.
        sequential, window, loop_every: ``--sequential`` (``pairs.strategy: sequential``), its window
            and loop closure (both refused without ``sequential``).
        run_name: ``--name``; None = :func:`run_name_for` the folder.
        overrides: dotted ``key=value`` applied last (they win over everything above).

    Raises:
        ConfigError: a window or loop closure without ``sequential``, or a bad run name.
    """
    if not sequential and (window is not None or loop_every is not None):
        raise ConfigError("--window / --loop-every pair video frames: give --sequential too")
    user = copy.deepcopy(FOLDER_JOB)
    user["data"]["root"] = folder_root(folder)
    user["run_name"] = run_name if run_name is not None else run_name_for(folder)
    check_run_name(user["run_name"], key="--name" if run_name is not None else "run name (from the folder)")
    if out is not None:
        user["storage"] = storage_root_url(out)  # --out on the command line: relative to the working directory
    if method is not None:
        user["preset"] = method
        if method != "sift":
            user["extract"]["resize_max"] = LEARNED_RESIZE_MAX
    if sequential:
        user["pairs"]["strategy"] = "sequential"
        if window is not None:
            user["pairs"]["window"] = window
        if loop_every is not None:
            user["pairs"]["loop_every"] = loop_every
    for text in overrides:  # storage=./x among them: relative to the working directory, as for matchmill run
        keys, value = parse_override(text)
        set_dotted(user, keys, value)
    return user


def describe_folder(folder: str, conf: dict, count: int) -> str:
    """One line before the run: how many images, which pairs, at what resolution (``count`` images listed)."""
    from matchmill.datasets.pair_strategies import choose_strategy  # lazy: numpy / pyarrow; the CLI imports this module

    pc = conf["pairs"]
    strategy = choose_strategy(count, pc)
    if strategy == "exhaustive":
        pairs = f"every pair ({count * (count - 1) // 2})"
    elif strategy == "retrieval":
        pairs = f"{pc['per_image']} most similar per image (retrieval, at most {count * int(pc['per_image'])})"
    else:
        loop = f", loop closure every {pc['loop_every']}" if pc["loop_every"] else ""
        pairs = f"each with the next {pc['window']} (sequential{loop})"
    side = conf["extract"]["resize_max"] or "full"
    return (f"matchmill match: {count} images in {os.fspath(folder)}; pairs: {pairs}; "
            f"{conf['preset'] or conf['extract']['method']} at {side} px")
