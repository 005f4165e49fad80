"""``matchmill bench hpatches ROOT``: the HPatches pairs (1, k) with their homographies.

Pairs: every sequence folder under ROOT (names starting with ``_`` or ``.`` are skipped), pairs
(1, k) for which ``1.ppm``, ``k.ppm`` and ``H_1_k`` all exist. By default the 8 sequences the
D2-Net protocol leaves out (an image larger than 1600x1200) are dropped, so that a full
``hpatches-sequences-release`` root gives the standard 108 sequences / 540 pairs;
``--all-sequences`` keeps them. A malformed ``H_1_k`` gives a failed pair (counted, never silent).

Metrics (see :mod:`matchmill.geometry.pair_metrics`): ``homography_acc@1/3/5/10`` (pydegensac H,
2 px, mean error of image 1's four corners at its own resolution), ``homography_auc@...``,
``mma@1`` .. ``mma@10`` on all matches before RANSAC, and the same MMA / accuracy per split as
``illumination/...`` and ``viewpoint/...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from matchmill.datasets.hpatches import D2NET_EXCLUDED_SEQUENCES, read_homography_file
from matchmill.datasets.pairs_file import pair_row

_GT_FILE = re.compile(r"^H_1_(\d+)$")

#: Image extension of the HPatches release.
IMAGE_EXT = ".ppm"


def sequence_folders(root: Path) -> list[Path]:
    """Sequence folders under ``root``, sorted; names starting with ``_`` or ``.`` are skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def sequence_pairs(folder: Path) -> list[dict[str, Any]]:
    """Pair rows (1, k) of one sequence for every k with both ``k.ppm`` and ``H_1_k``, sorted by k.

    A sequence without ``1.ppm`` gives no pair. An unreadable ``H_1_k`` gives a failed row.
    """
    folder = folder.resolve()
    ref = folder / f"1{IMAGE_EXT}"
    if not ref.is_file():
        return []
    ks = sorted(int(m.group(1)) for p in folder.iterdir() if p.is_file() and (m := _GT_FILE.match(p.name)))
    rows = []
    for k in ks:
        other = folder / f"{k}{IMAGE_EXT}"
        if k == 1 or not other.is_file():
            continue
        args = (f"{folder.name}/{ref.name}", f"{folder.name}/{other.name}", str(ref), str(other))
        gt = folder / f"H_1_{k}"
        try:
            H = read_homography_file(gt)
        except (ValueError, OSError) as exc:
            rows.append(pair_row(*args, scene=folder.name, error=str(exc)))
            continue
        rows.append(pair_row(*args, scene=folder.name, H_0to1=H))
    return rows


def list_hpatches_bench_pairs(
    root: str | Path, *, d2net_subset: bool = True, sequences: list[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pair rows of an HPatches root, and facts for bench.json.

    Args:
        root: folder holding the sequence folders.
        d2net_subset: drop D2NET_EXCLUDED_SEQUENCES.
        sequences: only these sequence names (each must exist).

    Returns:
        (rows sorted by sequence then k, {"sequences": [...used], "excluded": [...dropped by the
        D2-Net rule], "without_pairs": [...folders that gave no pair]}).

    Raises:
        FileNotFoundError: ``root`` is not a folder, a requested sequence is missing, or no
            sequence gives a pair.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches root {str(root)!r} is not a directory")
    folders = sequence_folders(root)
    if sequences is not None:
        missing = sorted(set(sequences) - {f.name for f in folders})
        if missing:
            raise FileNotFoundError(f"HPatches root {str(root)!r}: sequence(s) not found: {missing}")
        folders = [f for f in folders if f.name in set(sequences)]
    excluded = [f.name for f in folders if d2net_subset and f.name in D2NET_EXCLUDED_SEQUENCES]
    rows: list[dict[str, Any]] = []
    used, empty = [], []
    for folder in folders:
        if folder.name in excluded:
            continue
        pairs = sequence_pairs(folder)
        (used if pairs else empty).append(folder.name)
        rows.extend(pairs)
    if not rows:
        raise FileNotFoundError(
            f"HPatches root {str(root)!r}: no sequence folder with 1{IMAGE_EXT}, k{IMAGE_EXT} and H_1_k"
        )
    return rows, {"sequences": used, "excluded": excluded, "without_pairs": empty}
