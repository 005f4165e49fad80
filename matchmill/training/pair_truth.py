"""Ground-truth correspondences of training pair rows, for the losses that need them.

A pairs-manifest row (:mod:`.manifest_data`: ``pair_id``, ``path0/1``, ``crop0/1``, ``K0``, ``K1``,
``T_0to1``, optionally ``H_0to1``) over a demo / MegaDepth-layout scene gets its oracle
(:mod:`matchmill.datasets.demo.oracle`):

- ``H_0to1`` present: :class:`HomographyOracle`;
- else ``K0``, ``K1``, ``T_0to1`` and both depth maps ``<scene>/depths/<image stem>.h5`` next to
  ``<scene>/images/<image>`` (:func:`depth_path`): :class:`DepthOracle` with camera 0 at the origin
  and camera 1 at ``T_0to1`` (x_cam1 = R x_cam0 + t; only the relative pose matters). Each depth map
  is cropped like its image (``crop = [w, h]``, top-left).

Coordinates are *network* frames: the whole (cropped) image resized to the task's ``size``
(:func:`matchmill.models.patch2pix_training.resize_image`), so :meth:`PairOracle.resized` applies.

:class:`PairTruth` caches the oracle of each pair (bounded LRU; building one reads two depth maps)
and the per-cell targets of :meth:`PairTruth.cell_targets`, and counts pairs it has to skip: no
ground truth in the row, unreadable depth, or no visible overlap (``min_visible_cells``) ->
``None`` and one log line per pair; the caller draws another pair and training goes on.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from matchmill.datasets.demo.oracle import DepthOracle, HomographyOracle, PairOracle, View
from matchmill.geometry.pair_metrics import has_homography_gt, has_pose_gt
from matchmill.manifests.storage import url_to_fs

log = logging.getLogger(__name__)

__all__ = ["CellTargets", "PairTruth", "depth_path", "row_has_truth", "first_rows_with_truth"]


def depth_path(image_path: str) -> str | None:
    """``<scene>/depths/<stem>.h5`` of ``<scene>/images/<name>`` (MegaDepth layout), or None when the
    image is not in an ``images`` folder. Sub-folders below ``images`` are kept."""
    parts = str(image_path).replace("\\", "/").split("/")
    if "images" not in parts[:-1]:
        return None
    i = len(parts) - 1 - parts[::-1].index("images", 1)  # the last "images" folder
    stem = posixpath.splitext(parts[-1])[0] + ".h5"
    return "/".join(parts[:i] + ["depths"] + parts[i + 1 : -1] + [stem])


def _exists(path: str | None) -> bool:
    if path is None:
        return False
    fs, inner = url_to_fs(path)
    return bool(fs.exists(inner))


def row_has_truth(row: Mapping[str, Any]) -> bool:
    """True when the row has a homography, or a pose and both depth maps on storage."""
    if has_homography_gt(row):
        return True
    return has_pose_gt(row) and _exists(depth_path(row["path0"])) and _exists(depth_path(row["path1"]))


def first_rows_with_truth(rows: list[Mapping[str, Any]], limit: int = 64) -> int:
    """How many of the first ``limit`` rows have ground truth (:func:`row_has_truth`); the driver's
    cheap check that a loss needing truth can be trained at all."""
    return sum(1 for r in rows[:limit] if row_has_truth(r))


def _read_depth(path: str) -> np.ndarray:
    """(H, W) float32 z-depth from dataset ``"depth"`` of an h5 file on any fsspec storage."""
    import h5py  # lazy: only the supervised losses read depth maps

    fs, inner = url_to_fs(path)
    with fs.open(inner, "rb") as f, h5py.File(f, "r") as h5:
        return np.asarray(h5["depth"], dtype=np.float32)


def _crop(depth: np.ndarray, crop: Any) -> np.ndarray:
    if crop:
        return depth[: int(crop[1]), : int(crop[0])]
    return depth


@dataclass(frozen=True)
class CellTargets:
    """True cells of a pair on the NC grid (stride ``stride`` px of the network frame).

    Attributes:
        a2b: (hA * wA,) int64 row-major index of the B cell holding the true match of each A cell's
            centre, -1 where not visible.
        b2a: (hB * wB,) int64, the same from B to A.
        grid_a, grid_b: (h, w) of each grid.
    """

    a2b: np.ndarray
    b2a: np.ndarray
    grid_a: tuple[int, int]
    grid_b: tuple[int, int]

    @property
    def visible_cells(self) -> int:
        """Cells with a target, both directions together."""
        return int((self.a2b >= 0).sum() + (self.b2a >= 0).sum())


def _cells_of(oracle: PairOracle, grid0: tuple[int, int], grid1: tuple[int, int], stride: int) -> np.ndarray:
    """(h0 * w0,) int64: B cell (row-major on ``grid1``) of each cell centre of ``grid0``, -1 where not visible."""
    h0, w0 = grid0
    h1, w1 = grid1
    gx, gy = np.meshgrid(np.arange(w0, dtype=np.float64), np.arange(h0, dtype=np.float64))
    centres = np.stack([gx.ravel(), gy.ravel()], 1) * stride + (stride - 1) / 2.0  # cell covers [s*i - .5, s*i + s - .5]
    xy1, visible = oracle.true_match(centres)
    with np.errstate(invalid="ignore"):
        cx = np.floor((np.nan_to_num(xy1[:, 0], nan=-1.0) + 0.5) / stride).astype(np.int64)
        cy = np.floor((np.nan_to_num(xy1[:, 1], nan=-1.0) + 0.5) / stride).astype(np.int64)
    ok = visible & (cx >= 0) & (cx < w1) & (cy >= 0) & (cy < h1)
    return np.where(ok, cy * w1 + cx, -1)


class PairTruth:
    """Oracles and targets of training rows, cached per pair (see the module docstring).

    Args:
        max_pairs: oracles kept (each holds two depth maps: 16 MegaDepth pairs ~ 250 MB).
        max_targets: cell targets kept (a few kB each).
        min_visible_cells: fewer target cells (both directions) than this -> the pair is skipped.
        conf: :data:`matchmill.datasets.demo.oracle.ORACLE_DEFAULTS` overrides.
    """

    def __init__(self, max_pairs: int = 16, min_visible_cells: int = 1, conf: Mapping[str, Any] | None = None,
                 max_targets: int = 4096) -> None:
        self.max_pairs = int(max_pairs)
        self.max_targets = int(max_targets)
        self.min_visible_cells = int(min_visible_cells)
        self.conf = dict(conf or {})
        self._oracles: OrderedDict[str, PairOracle | str] = OrderedDict()
        self._cells: OrderedDict[tuple, CellTargets | None] = OrderedDict()
        self.skipped: Counter[str] = Counter()  # reason -> pairs skipped (each pair counted once)
        self._skipped_ids: set[str] = set()

    def _skip(self, pair_id: str, reason: str) -> None:
        if pair_id not in self._skipped_ids:
            self._skipped_ids.add(pair_id)
            self.skipped[reason] += 1
            log.info("pair truth: skipping %s (%s); %d pairs skipped so far", pair_id, reason, len(self._skipped_ids))

    @property
    def num_skipped(self) -> int:
        return len(self._skipped_ids)

    def _remember(self, cache: OrderedDict, key, value, limit: int) -> None:
        cache[key] = value
        while len(cache) > limit:
            cache.popitem(last=False)

    def oracle(self, row: Mapping[str, Any], size0: tuple[int, int], size1: tuple[int, int]) -> PairOracle | None:
        """The oracle of ``row`` in original (cropped) image frames ``size0`` / ``size1`` (W, H); None
        (counted in :attr:`skipped`) when the row has no usable ground truth."""
        pid = str(row["pair_id"])
        if pid in self._oracles:
            self._oracles.move_to_end(pid)
            found = self._oracles[pid]
            return None if isinstance(found, str) else found
        try:
            found = self._build(row, tuple(size0), tuple(size1))
        except (OSError, KeyError, ValueError) as exc:  # unreadable depth file, bad matrices
            found = f"no usable ground truth: {type(exc).__name__}: {exc}"
        if isinstance(found, str):
            self._skip(pid, found.split(":")[0])
        self._remember(self._oracles, pid, found, self.max_pairs)
        return None if isinstance(found, str) else found

    def _build(self, row: Mapping[str, Any], size0: tuple[int, int], size1: tuple[int, int]) -> PairOracle | str:
        if has_homography_gt(row):
            return HomographyOracle(np.asarray(row["H_0to1"], np.float64).reshape(3, 3), size0, size1)
        if not has_pose_gt(row):
            return "no ground truth in the row (K0, K1, T_0to1 or H_0to1)"
        p0, p1 = depth_path(row["path0"]), depth_path(row["path1"])
        if p0 is None or p1 is None:
            return "no ground truth: images are not in a <scene>/images folder (no depth maps)"
        d0, d1 = _crop(_read_depth(p0), row.get("crop0")), _crop(_read_depth(p1), row.get("crop1"))
        for d, size, p in ((d0, size0, p0), (d1, size1, p1)):
            if (d.shape[1], d.shape[0]) != size:
                return f"no ground truth: depth map {p} is {d.shape[1]}x{d.shape[0]}, its image {size[0]}x{size[1]}"
        K0 = np.asarray(row["K0"], np.float64).reshape(3, 3)
        K1 = np.asarray(row["K1"], np.float64).reshape(3, 3)
        T = np.asarray(row["T_0to1"], np.float64).reshape(4, 4)
        blank0 = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), d0.shape + (3,))  # the oracle never reads pixels
        blank1 = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), d1.shape + (3,))
        view0 = View(blank0, d0, K0, np.eye(3), np.zeros(3))
        view1 = View(blank1, d1, K1, T[:3, :3], T[:3, 3])
        return DepthOracle(view0, view1, self.conf)

    def cell_targets(self, row: Mapping[str, Any], size0: tuple[int, int], size1: tuple[int, int],
                     net_size: tuple[int, int], stride: int) -> CellTargets | None:
        """True cells of ``row`` on the NC grids (both directions).

        Args:
            size0, size1: (W, H) of the original (cropped) images.
            net_size: (W, H) both images are resized to (multiples of ``stride``).
            stride: pixels per NC cell in the network frame (f4's 8 x the 4D max-pool's ksize).

        Returns:
            :class:`CellTargets`, or None (counted) when there is no ground truth or fewer than
            ``min_visible_cells`` visible cells.
        """
        W, H = int(net_size[0]), int(net_size[1])
        if stride < 1 or W % stride or H % stride:
            raise ValueError(f"net_size {net_size} must be a multiple of the cell stride {stride}")
        key = (str(row["pair_id"]), tuple(size0), tuple(size1), (W, H), int(stride))
        if key in self._cells:
            self._cells.move_to_end(key)
            return self._cells[key]
        base = self.oracle(row, size0, size1)
        targets = None
        if base is not None:
            oracle = base.resized((W, H), (W, H))
            grid = (H // stride, W // stride)
            targets = CellTargets(_cells_of(oracle, grid, grid, stride), _cells_of(oracle.reverse(), grid, grid, stride),
                                  grid, grid)
            if targets.visible_cells < self.min_visible_cells:
                self._skip(key[0], "no visible overlap")
                targets = None
        self._remember(self._cells, key, targets, self.max_targets)
        return targets
