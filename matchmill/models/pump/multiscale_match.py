"""Multi-scale dense PUMP matching over stored descriptor maps (spec ``pump.md`` §3.2, multi-scale wrapper).

Written from the spec, not from any reference implementation.

For every relative scale ``s = 2^(k/2)`` in ``[min_scale, max_scale]`` (default ``1/max_scale``),
img1 is taken at scale ``min(s, 1)`` and img2 at ``min(1/s, 1)``: the stored map of that scale
(within ``scale_tol``) is used. **A relative scale whose map is missing on either side is skipped**
(the extract stage stores 2^(-k/4) scales down to a minimum, so with ``max_scale <= 1 / minimum``
every scale is available); if no scale at all can run, a ValueError lists the available ones.
The image with the larger short side (in the scale-1 frame) is the atomic-patch image of every run
(``swap``); results are swapped back. All runs use the same number of pyramid levels (``levels``, 0
= ``floor(log2(min(mean side 1, mean side 2) / 4))``) so that their path scores are comparable.

Merge (a simplification of the spec's, documented): each run's raw per-side candidates (img1 side:
one per atomic patch; img2 side: one per 4x4 img2 block) are mapped to the scale-1 frames with the
pixel-centre rule ``x = (x_s + 0.5) W / w - 0.5``. Accumulator 1 is a grid of ``grid_step`` (2 px)
bins over img1; each img1-side candidate lands in the single bin holding its img1 position and a bin
keeps its highest-scoring candidate (first run wins ties). Accumulator 2 does the same with the
img2-side candidates binned by their img2 position. The spec's merge also lets a candidate fill
the bins of neighbouring 4-px cells within 8 px (nearest first); we do not, so sparse-scale runs
fill fewer bins. Final reciprocity: a candidate is kept when it won a bin in both accumulators
(same run, same patch, same pixel - identical 4-tuples).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from torch import Tensor

from matchmill.config import merge_conf
from .dense_match import DEFAULT_CONF as SINGLE_SCALE_CONF
from .dense_match import single_scale_candidates

__all__ = ["DEFAULT_CONF", "relative_scales", "auto_levels", "match_multiscale"]

DEFAULT_CONF: dict = {
    **SINGLE_SCALE_CONF,  # every pyramid key of dense_match.DEFAULT_CONF (commented there), passed to each run
    "levels": 0,  # pyramid levels of every run; 0 = floor(log2(min(mean side img1, mean side img2) / 4))
    "max_scale": 2.0,  # largest relative scale img2/img1 searched (spec default 4; CPU default 2 -> 5 runs)
    "min_scale": None,  # smallest relative scale; None = 1 / max_scale
    "swap": True,  # the image with the larger short side is the atomic-patch image of every run
    "scale_tol": 0.02,  # relative tolerance when looking up a stored map of a wanted scale
    "grid_step": 2,  # accumulator bin side in scale-1 pixels (spec: 2)
}

_EMPTY = np.zeros((0, 5), dtype=np.float32)
_RUN_STRIDE = 1 << 40  # candidate key = run * _RUN_STRIDE + (patch * H2 W2 + pixel)


def relative_scales(min_scale: float, max_scale: float) -> list[float]:
    """``2^(k/2)`` for every integer k with ``min_scale <= 2^(k/2) <= max_scale`` (1e-6 slack), ascending."""
    if not 0 < min_scale <= 1 <= max_scale:
        raise ValueError(f"need 0 < min_scale <= 1 <= max_scale, got min_scale={min_scale}, max_scale={max_scale}")
    k0 = math.ceil(2 * math.log2(min_scale) - 1e-6)
    k1 = math.floor(2 * math.log2(max_scale) + 1e-6)
    return [2 ** (k / 2) for k in range(k0, k1 + 1)]


def auto_levels(size1: tuple[int, int], size2: tuple[int, int]) -> int:
    """``floor(log2(min(mean side 1, mean side 2) / 4))``, at least 1 (spec §3.2 multi-scale default)."""
    side = min(sum(size1) / 2, sum(size2) / 2)
    return max(1, int(math.floor(math.log2(max(side / 4, 1.0)))))


def _check_maps(maps: Sequence[tuple[float, Tensor]], name: str) -> None:
    if len(maps) == 0:
        raise ValueError(f"{name}: no descriptor maps given")
    for k, item in enumerate(maps):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"{name}[{k}] must be a (scale, (C, h, w) tensor) pair, got {type(item).__name__}")
        scale, desc = item
        if not (isinstance(desc, Tensor) and desc.ndim == 3):
            raise ValueError(f"{name}[{k}] map must be a (C, h, w) tensor, got {getattr(desc, 'shape', type(desc).__name__)}")
        if not (isinstance(scale, (int, float)) and 0 < float(scale) <= 1 + 1e-6):
            raise ValueError(f"{name}[{k}] scale must be in (0, 1], got {scale!r}")


def _check_size(size: tuple[int, int], name: str) -> None:
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name} must be (W, H) > 0, got {size}")


def _pick(maps: Sequence[tuple[float, Tensor]], scale: float, tol: float) -> Tensor | None:
    """The stored map whose scale is within ``tol`` (relative) of ``scale``, the closest one; None if none."""
    best = min(maps, key=lambda m: abs(float(m[0]) - scale))
    return best[1] if abs(float(best[0]) - scale) <= tol * scale else None


def _to_full(xy: np.ndarray, map_wh: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel-centre mapping from a ``(w, h)`` map to the ``(W, H)`` scale-1 frame: ``(x + 0.5) W / w - 0.5``."""
    ratio = np.array([size[0] / map_wh[0], size[1] / map_wh[1]], dtype=np.float64)
    return (xy.astype(np.float64) + 0.5) * ratio - 0.5


def _accumulate(rows: np.ndarray, xy: np.ndarray, step: float) -> np.ndarray:
    """Indices of the rows that win their ``step``-px bin (highest score, first row on ties)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    bins = np.floor(xy / step).astype(np.int64)
    bins -= bins.min(axis=0)
    bin_id = bins[:, 1] * (int(bins[:, 0].max()) + 1) + bins[:, 0]
    # sort by bin, then by descending score, then by input order; the first of each bin wins
    order = np.lexsort((np.arange(len(rows)), -rows[:, 4].astype(np.float64), bin_id))
    first = np.ones(len(order), dtype=bool)
    first[1:] = bin_id[order][1:] != bin_id[order][:-1]
    return order[first]


def match_multiscale(
    maps1: Sequence[tuple[float, Tensor]],
    maps2: Sequence[tuple[float, Tensor]],
    size1: tuple[int, int],
    size2: tuple[int, int],
    conf: dict | None = None,
) -> np.ndarray:
    """Reciprocal dense matches over relative scales, in the scale-1 frames of both images.

    Args:
        maps1: ``[(scale, (C, h, w) descriptors of img1 resized by scale), ...]``, scales in (0, 1].
        maps2: same for img2.
        size1: ``(W, H)`` of img1's scale-1 frame (coordinates of the output's x1, y1).
        size2: ``(W, H)`` of img2's scale-1 frame.
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        ``(N, 5)`` float32 ``[x1, y1, x2, y2, score]``, sorted by (y1, x1) bin.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "PUMP multi-scale match")
    _check_maps(maps1, "maps1")
    _check_maps(maps2, "maps2")
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if conf["swap"] and min(size2) > min(size1):
        out = _match_oriented(maps2, maps1, tuple(size2), tuple(size1), conf)
        return out[:, [2, 3, 0, 1, 4]].copy()
    return _match_oriented(maps1, maps2, tuple(size1), tuple(size2), conf)


def _match_oriented(maps1, maps2, size1, size2, conf: dict) -> np.ndarray:
    """:func:`match_multiscale` with img1 as the atomic-patch image."""
    max_scale = float(conf["max_scale"])
    min_scale = 1.0 / max_scale if conf["min_scale"] is None else float(conf["min_scale"])
    single = {k: conf[k] for k in SINGLE_SCALE_CONF}
    single["levels"] = int(conf["levels"]) or auto_levels(size1, size2)
    side1, key1, side2, key2, ran, missing = [], [], [], [], [], []
    for s in relative_scales(min_scale, max_scale):
        f1, f2 = min(s, 1.0), min(1.0 / s, 1.0)
        d1, d2 = _pick(maps1, f1, conf["scale_tol"]), _pick(maps2, f2, conf["scale_tol"])
        if d1 is None or d2 is None:
            missing.append(s)
            continue
        cands = single_scale_candidates(d1, d2, single)
        ran.append(s)
        if cands is None:
            continue
        run = len(ran) - 1
        wh1, wh2 = (d1.shape[-1], d1.shape[-2]), (d2.shape[-1], d2.shape[-2])
        for rows, keys, side, out_key in ((cands.side1, cands.key1, side1, key1), (cands.side2, cands.key2, side2, key2)):
            full = np.concatenate(
                [_to_full(rows[:, 0:2], wh1, size1), _to_full(rows[:, 2:4], wh2, size2), rows[:, 4:5]], axis=1
            )
            side.append(full)
            out_key.append(keys.astype(np.int64) + run * _RUN_STRIDE)
    if not ran:
        scales1 = sorted(float(s) for s, _ in maps1)
        scales2 = sorted(float(s) for s, _ in maps2)
        raise ValueError(
            f"no relative scale in [{min_scale:g}, {max_scale:g}] has stored maps on both sides "
            f"(skipped {[round(s, 3) for s in missing]}); img1 scales {scales1}, img2 scales {scales2}"
        )
    if not side1 or not side2:
        return _EMPTY.copy()
    rows1, keys1 = np.concatenate(side1), np.concatenate(key1)
    rows2, keys2 = np.concatenate(side2), np.concatenate(key2)
    step = float(conf["grid_step"])
    win1 = _accumulate(rows1, rows1[:, 0:2], step)
    win2 = _accumulate(rows2, rows2[:, 2:4], step)
    keep = win1[np.isin(keys1[win1], keys2[win2])]
    return rows1[keep].astype(np.float32)
