"""HPatches sequences and Oxford affine scenes as pairs-manifest rows (homography GT).

HPatches layout (``hpatches-sequences-release``)::

    <root>/<seq>/1.ppm .. 6.ppm, H_1_2 .. H_1_6     (H_1_k: image 1 -> image k, 3x3 text)

Oxford affine layout (Mikolajczyk et al.)::

    <scene>/img1.ppm|png .. img6.*, H1to2p .. H1to6p

Pairs are (1, k) for every GT file ``H_1_k`` / ``H1tokp``. A pair whose GT file is malformed or
whose image is missing becomes a row with ``status="failed"`` and an ``error`` naming the file,
never an exception. Images with no GT file are not paired. Image ids are
``"<sequence>/<file name>"``; the row's ``scene`` is the sequence name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .image_sources import IMAGE_EXTENSIONS
from .pairs_file import pair_row

#: Sequences left out by the D2-Net protocol (an image larger than 1600x1200): 116 -> 108.
D2NET_EXCLUDED_SEQUENCES: frozenset[str] = frozenset(
    {
        "i_contruction",
        "i_crownnight",
        "i_dc",
        "i_pencils",
        "i_whitebuilding",
        "v_artisans",
        "v_astronautis",
        "v_talent",
    }
)

_HPATCHES_GT = re.compile(r"^H_1_(\d+)$")
_OXFORD_GT = re.compile(r"^H1to(\d+)p$")


def read_homography_file(path: str | os.PathLike) -> np.ndarray:
    """(3, 3) float64 homography from a whitespace-separated text file.

    Raises:
        ValueError: not exactly 9 numbers, non-finite values or a singular matrix; the message
            names the file.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        tokens = f.read().split()
    if len(tokens) != 9:
        raise ValueError(f"{path}: expected 9 numbers for a 3x3 homography, got {len(tokens)}")
    try:
        H = np.array([float(t) for t in tokens], dtype=np.float64).reshape(3, 3)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric homography ({exc})") from None
    if not np.isfinite(H).all():
        raise ValueError(f"{path}: homography has non-finite values")
    if not np.isfinite(np.linalg.cond(H)) or np.linalg.cond(H) > 1e15:
        raise ValueError(f"{path}: homography is singular")
    return H


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem<ext>`` for the first existing extension of
    :data:`~matchmill.datasets.image_sources.IMAGE_EXTENSIONS` (``.ppm`` first), else None."""
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _gt_files(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """(k, path) of the GT files in ``folder`` matching ``pattern``, sorted by k."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := pattern.match(p.name))]
    return sorted(found)


def _one_pair(folder: Path, scene: str, ref_stem: str, other_stem: str, gt_path: Path) -> dict[str, Any]:
    """Row (reference image, other image) with the GT in ``gt_path``; failed row on any problem."""
    ref, other = find_image(folder, ref_stem), find_image(folder, other_stem)
    path0 = ref or folder / f"{ref_stem}{IMAGE_EXTENSIONS[0]}"
    path1 = other or folder / f"{other_stem}{IMAGE_EXTENSIONS[0]}"
    args = (f"{scene}/{path0.name}", f"{scene}/{path1.name}", str(path0), str(path1))
    missing = path0 if ref is None else path1 if other is None else None
    if missing is not None:
        error = f"{gt_path}: image {missing} not found (tried {', '.join(IMAGE_EXTENSIONS)})"
        return pair_row(*args, scene=scene, error=error)
    try:
        H = read_homography_file(gt_path)
    except (ValueError, OSError) as exc:
        return pair_row(*args, scene=scene, error=str(exc))
    return pair_row(*args, scene=scene, H_0to1=H)


def _homography_pairs(
    folder: Path, scene: str, ref_stem: str, stem_of: str, pattern: re.Pattern
) -> list[dict[str, Any]]:
    """Rows (reference, k) of one sequence, sorted by k; ``stem_of`` formats an image stem from k."""
    folder = folder.resolve()
    return [
        _one_pair(folder, scene, ref_stem, stem_of.format(k=k), gt_path)
        for k, gt_path in _gt_files(folder, pattern)
    ]


def list_hpatches_pairs(
    root: str | os.PathLike,
    sequences: Iterable[str] | None = None,
    *,
    d2net_subset: bool = False,
) -> list[dict[str, Any]]:
    """Pairs (1, k) of every HPatches sequence under ``root``, as pairs-manifest rows.

    Args:
        root: folder holding the sequence folders (``i_*`` / ``v_*``).
        sequences: only these sequence names (all must exist).
        d2net_subset: leave out D2NET_EXCLUDED_SEQUENCES (the standard 108-sequence, 540-pair
            protocol). Applies to ``sequences`` too.

    Returns:
        Rows sorted by sequence then k; ``H_0to1`` is the flat row-major H_1_k.

    Raises:
        FileNotFoundError: ``root`` or a requested sequence does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches root {root} is not a directory")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if sequences is not None:
        wanted = list(sequences)
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise FileNotFoundError(f"HPatches sequences not found under {root}: {missing}")
        available = [s for s in available if s in set(wanted)]
    if d2net_subset:
        available = [s for s in available if s not in D2NET_EXCLUDED_SEQUENCES]
    rows: list[dict[str, Any]] = []
    for seq in available:
        rows.extend(_homography_pairs(root / seq, seq, "1", "{k}", _HPATCHES_GT))
    return rows


def list_oxford_pairs(root: str | os.PathLike, scene: str | None = None) -> list[dict[str, Any]]:
    """Pairs (img1, imgk) of one Oxford affine scene folder (``img1..imgN`` + ``H1tokp``).

    Args:
        root: the scene folder, e.g. ``.../oxford_graf``.
        scene: scene name used in ids (default: the folder name).

    Returns:
        Rows sorted by k, ids ``"<scene>/img1.png"`` etc.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Oxford scene {root} is not a directory")
    name = scene if scene is not None else root.resolve().name
    return _homography_pairs(root, name, "img1", "img{k}", _OXFORD_GT)
