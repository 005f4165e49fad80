"""Pair lists in the SuperGlue "pairs with GT" text format, and the pair-row builders.

One pair per line, whitespace separated::

    name0 name1 [rot0 rot1 [K0(9) K1(9) T_0to1(16)]]

- ``name0 name1`` only: a pair without ground truth (e.g. mining).
- ``rot0 rot1`` are EXIF rotations (multiples of 90 degrees). Non-zero rotations are **rejected
  as failed rows** for now: using them correctly requires rotating the images, K and T together.
- K0, K1 (3x3) and T_0to1 (4x4) are row-major; T maps camera-0 to camera-1 coordinates
  (x1 = R x0 + t); K in pixels of the stored images.
- Blank lines and lines starting with ``#`` are ignored.

A malformed line never raises: it becomes a row with ``status="failed"`` and an ``error`` naming
the file and the line number, so it stays visible in every later stage. So does a **self-pair**
(``a a``: an image with itself has no geometry to estimate): a failed row keyed ``a|a``, error
``"<path>:<line>: self-pair: ..."``.

Image names are image ids after :func:`~matchmill.manifests.schemas.normalize_image_id`
(``./a.jpg`` and ``a.jpg`` are one image, so ``./a.jpg a.jpg`` is a self-pair). A name containing
``|`` (the pair-id separator: ``p.jpg|q.jpg r.jpg`` and ``p.jpg q.jpg|r.jpg`` would share the key
``p.jpg|q.jpg|r.jpg``) or leaving the images folder (``../x.jpg``) gives a failed row keyed by
its location ``<path>:<line>``, error ``"<path>:<line>: image name ... contains '|' ..."``.

Pairs are **ordered**: the key is ``image0|image1`` and the ground truth ``T_0to1`` maps camera 0
to camera 1, so ``b a`` after ``a b`` is another pair (the MegaDepth recipe keeps both on purpose,
``pairs.symmetric``). A line repeating an earlier line's pair (same names, same order) is a
**duplicate**: it is dropped, the first line wins, and a warning names both lines
(``"<path>:<line>: duplicate pair a|b (first on line <n>); dropped"``), so every key is unique
and the pair is matched once.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..manifests.schemas import PAIR_FIELDS, STATUS_FAILED, STATUS_OK, make_pair_id, normalize_image_id
from ..manifests.storage import url_to_fs

log = logging.getLogger(__name__)

#: Column names of a pairs-manifest row, in schema order.
PAIR_ROW_KEYS: tuple[str, ...] = tuple(f.name for f in PAIR_FIELDS) + ("status", "error")

#: Token counts of a valid line: names; names + rotations; names + rotations + K0, K1, T.
_VALID_TOKEN_COUNTS = (2, 4, 2 + 2 + 9 + 9 + 16)

#: Tolerance on R^T R = I and on the fixed rows of K and T.
_MATRIX_TOL = 1e-3


def join_path(base: str | os.PathLike, name: str) -> str:
    """Absolute local path, or URL join when ``base`` is an fsspec URL (``scheme://...``)."""
    base = os.fspath(base)
    if "://" in base:
        return posixpath.join(base, name)
    return os.path.abspath(os.path.join(base, name))


def _flat(m: np.ndarray | Sequence[float] | None) -> list[float] | None:
    """Row-major flat list of python floats, or None."""
    return None if m is None else [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def pair_row(
    image0: str,
    image1: str,
    path0: str,
    path1: str,
    *,
    scene: str | None = None,
    K0: np.ndarray | None = None,
    K1: np.ndarray | None = None,
    T_0to1: np.ndarray | None = None,
    H_0to1: np.ndarray | None = None,
    overlap: float | None = None,
    crop0: list[int] | None = None,
    crop1: list[int] | None = None,
    similarity: float | None = None,
    shared_points: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A pairs-manifest row (exactly PAIR_ROW_KEYS); ``error`` set -> status "failed", no GT."""
    failed = error is not None
    row = {
        "pair_id": make_pair_id(image0, image1),
        "scene": scene,
        "image0": image0,
        "image1": image1,
        "path0": path0,
        "path1": path1,
        "K0": None if failed else _flat(K0),
        "K1": None if failed else _flat(K1),
        "T_0to1": None if failed else _flat(T_0to1),
        "H_0to1": None if failed else _flat(H_0to1),
        "overlap": None if failed else overlap,
        "crop0": crop0,
        "crop1": crop1,
        "similarity": None if similarity is None else float(similarity),
        "shared_points": None if shared_points is None else int(shared_points),
        "status": STATUS_FAILED if failed else STATUS_OK,
        "error": error,
    }
    return row


def check_intrinsics(K: np.ndarray, name: str) -> None:
    """Raise ValueError unless K (3, 3) is finite with positive focals and last row (0, 0, 1)."""
    if not np.isfinite(K).all():
        raise ValueError(f"{name} has non-finite values (NaN/inf): {_flat(K)}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name} has non-positive focal lengths fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=_MATRIX_TOL) or abs(K[1, 0]) > _MATRIX_TOL:
        raise ValueError(f"{name} is not an upper-triangular intrinsics matrix: {_flat(K)}")


def check_pose(T: np.ndarray, name: str = "T_0to1") -> None:
    """Raise ValueError unless T (4, 4) is finite, rigid (R^T R = I, det R = 1), last row 0 0 0 1."""
    if not np.isfinite(T).all():
        raise ValueError(f"{name} has non-finite values (NaN/inf)")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=_MATRIX_TOL):
        raise ValueError(f"{name} last row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > _MATRIX_TOL or np.linalg.det(R) <= 0:
        raise ValueError(f"{name} rotation block is not a rotation matrix")


def _parse_rotation(token: str, name: str) -> int:
    """EXIF rotation token -> int; ValueError when not an integer."""
    value = float(token)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name}={token!r} is not an integer rotation")
    return int(value)


def _parse_gt(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K0 (3, 3), K1 (3, 3), T_0to1 (4, 4)) from the 34 numeric tokens; ValueError if invalid."""
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"non-numeric ground truth ({exc})") from None
    K0, K1, T = values[:9].reshape(3, 3), values[9:18].reshape(3, 3), values[18:].reshape(4, 4)
    check_intrinsics(K0, "K0")
    check_intrinsics(K1, "K1")
    check_pose(T)
    return K0, K1, T


def _parse_line(tokens: list[str], images_dir: str, where: str, scene: str | None) -> dict[str, Any]:
    """One pair row from a tokenised line; failures become failed rows mentioning ``where``."""
    image0 = tokens[0] if tokens else ""
    image1 = tokens[1] if len(tokens) > 1 else ""
    usable, bad_name = len(tokens) >= 2, None
    path0, path1 = join_path(images_dir, image0), join_path(images_dir, image1)
    if usable:  # one id per file: ./a.jpg is a.jpg; a '|' would make two pairs one key
        try:
            image0 = normalize_image_id(image0)
            path0 = join_path(images_dir, image0)
        except ValueError as exc:  # a refused name stays in the error only: no image to extract
            usable, bad_name, image0, path0 = False, str(exc), "", ""
        try:
            image1 = normalize_image_id(image1)
            path1 = join_path(images_dir, image1)
        except ValueError as exc:
            usable, bad_name, image1, path1 = False, bad_name or str(exc), "", ""

    def failed(msg: str) -> dict[str, Any]:
        row = pair_row(image0, image1, path0, path1, scene=scene, error=f"{where}: {msg}")
        if not usable:  # no usable names: key the row by its location instead
            row["pair_id"] = where
        return row

    if len(tokens) not in _VALID_TOKEN_COUNTS:
        return failed(f"expected {' or '.join(map(str, _VALID_TOKEN_COUNTS))} fields, got {len(tokens)}")
    if bad_name is not None:
        return failed(bad_name)
    if image0 == image1:
        return failed(f"self-pair: {image0} is paired with itself (no relative geometry to estimate)")
    K0 = K1 = T = None
    try:
        if len(tokens) >= 4:
            rot0, rot1 = _parse_rotation(tokens[2], "rot0"), _parse_rotation(tokens[3], "rot1")
            if rot0 != 0 or rot1 != 0:
                return failed(f"EXIF rotation rot0={rot0} rot1={rot1} is not supported (only 0)")
        if len(tokens) == _VALID_TOKEN_COUNTS[-1]:
            K0, K1, T = _parse_gt(tokens[4:])
    except ValueError as exc:
        return failed(str(exc))
    return pair_row(image0, image1, path0, path1, scene=scene, K0=K0, K1=K1, T_0to1=T)


def _normal_or_raw(name: str) -> str:
    """:func:`normalize_image_id` of ``name``, or ``name`` itself when it is refused."""
    try:
        return normalize_image_id(name)
    except ValueError:
        return name


def _scene_of(image0: str) -> str | None:
    """First path component of an image name with a folder, else None."""
    head = image0.replace("\\", "/").split("/", 1)
    return head[0] if len(head) == 2 else None


def read_pairs_file(path: str | os.PathLike, images_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse a SuperGlue-format pairs file into pairs-manifest rows (PAIR_ROW_KEYS).

    Args:
        path: the text file (local path or fsspec URL).
        images_dir: folder the image names are relative to (local path or fsspec URL).

    Returns:
        One row per non-comment line, in file order, duplicates dropped (see the module
        docstring); image ids are the names as written, ``path0``/``path1`` absolute (or URLs);
        malformed lines and self-pairs give failed rows whose error reads
        ``"<path>:<line>: <reason>"``.

    Raises:
        FileNotFoundError: the pairs file itself does not exist.
    """
    return list(iter_pairs_file(path, images_dir))


def iter_pairs_file(path: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of :func:`read_pairs_file` one at a time: the file is read line by line, so a
    pairs list of any length costs the caller one row plus the set of keys seen (to drop
    duplicates, each with a warning naming its line and the first one)."""

    path = os.fspath(path)
    images_dir = os.fspath(images_dir)
    first_line: dict[str, int] = {}
    fs, inner = url_to_fs(path)  # not fsspec.open: a local name with '::' is not a URL chain
    with fs.open(inner, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            tokens = text.split()
            row = _parse_line(tokens, images_dir, f"{path}:{lineno}", _scene_of(_normal_or_raw(tokens[0])))
            key = row["pair_id"]
            if key in first_line:
                log.warning("%s:%d: duplicate pair %s (first on line %d); dropped", path, lineno, key, first_line[key])
                continue
            first_line[key] = lineno
            yield row
