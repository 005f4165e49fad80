"""Single-scale dense PUMP matching (spec ``pump.md`` §3.2 steps 2-6) and per-pixel pyramid maps.

Written from the spec, not from any reference implementation. The pyramid itself lives in
``pyramid_infer`` (memory-bounded, chunked over atomic patch rows); this module extracts matches
from the final (back-tracked) level 0:

- img1 side: for every atomic patch (4x4 cell ``(i, j)``, descriptor pixel ``(4j+2, 4i+2)``) the
  arg-max over all img2 pixels;
- img2 side: for every 4x4 block of img2 pixels the arg-max over all (patch, pixel-in-block) pairs
  (computed as the per-pixel best patch, then the best pixel of the block);
- exact reciprocity: keep a patch's match when its img2 pixel's block chose the same (patch, pixel).

So at most one match per 4x4 cell of img1 and per 4x4 block of img2. Coordinates are pixel
indices of the descriptor maps (the caller maps them back to the images). Ties resolve to the
first patch / first pixel in row-major order, whatever the chunking, so results do not depend on
``memory_budget_mb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from matchmill.config import merge_conf
from .pyramid_infer import InferencePyramid, build_inference_pyramid, iter_final_level0, level0_rows, level1_rows
from .pyramid_train import CELL, CELL_CENTRE

__all__ = [
    "DEFAULT_CONF",
    "SideCandidates",
    "match_single_scale",
    "single_scale_candidates",
    "pyramid_maps_for_pixel",
    "build_pyramid_from_conf",
]

DEFAULT_CONF: dict = {
    "levels": 99,  # cap on pyramid levels above the atomic patches (99 = until the stop rule)
    "min_shape": 5,  # no further level once the target map side is <= min_shape
    "nlpow": 1.5,  # rectification power max(x, 0)^p between levels (DeepMatching used 1.4)
    "border": 0.9,  # border-normalisation exponent beta (1 = mean of the valid children, 0 = none)
    "memory_budget_mb": 512.0,  # peak pyramid memory target on CPU (stored levels + chunk workspace); 0 = unchunked
    "dtype": "float32",  # pyramid dtype: float32 (CPU) or float16 (half memory; slow on CPU, GPU default upstream)
    "legacy_window": True,  # exclude the last row/column of a child map from the back-tracking arg-max (upstream quirk)
    "min_desc_std": 1e-6,  # a map whose per-channel spatial std is below this everywhere is degenerate -> no matches
}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
_EMPTY = np.zeros((0, 5), dtype=np.float32)


def _check_maps(desc1: Tensor, desc2: Tensor) -> None:
    for name, desc in (("desc1", desc1), ("desc2", desc2)):
        if not isinstance(desc, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (C, H, W), got {type(desc).__name__}")
        if desc.ndim != 3:
            raise ValueError(f"{name} must be a (C, H, W) descriptor map, got shape {tuple(desc.shape)}")
        if not desc.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {desc.dtype}")
        if not bool(torch.isfinite(desc).all()):
            raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    if desc1.shape[0] != desc2.shape[0]:
        raise ValueError(f"descriptor channels differ: desc1 has {desc1.shape[0]}, desc2 has {desc2.shape[0]}")


def _is_degenerate(desc: Tensor, min_std: float) -> bool:
    """True when the map is smaller than one 4x4 cell or (spatially) constant."""
    if desc.shape[1] < CELL or desc.shape[2] < CELL:
        return True
    return float(desc.flatten(1).float().std(dim=1).max()) < min_std


def build_pyramid_from_conf(desc1: Tensor, desc2: Tensor, conf: dict) -> InferencePyramid:
    """:func:`pyramid_infer.build_inference_pyramid` with the keys of a merged :data:`DEFAULT_CONF`."""
    if conf["dtype"] not in _DTYPES:
        raise ValueError(f"PUMP dense match dtype must be one of {sorted(_DTYPES)}, got {conf['dtype']!r}")
    return build_inference_pyramid(
        desc1,
        desc2,
        levels=int(conf["levels"]),
        min_shape=int(conf["min_shape"]),
        rectify_power=float(conf["nlpow"]),
        border_exponent=float(conf["border"]),
        memory_budget_mb=float(conf["memory_budget_mb"]),
        dtype=_DTYPES[conf["dtype"]],
        legacy_window=bool(conf["legacy_window"]),
    )


@dataclass
class SideCandidates:
    """Raw per-side candidates of one single-scale run (spec §3.2 step 6, before reciprocity).

    Attributes:
        side1: ``(P, 5)`` float32 ``[x1, y1, x2, y2, score]``, the best img2 pixel of every atomic patch.
        key1: ``(P,)`` int64 ``patch * H2 W2 + pixel`` of each row of ``side1``.
        side2: ``(K, 5)`` float32, the best (patch, pixel) of every 4x4 img2 block.
        key2: ``(K,)`` int64 keys of ``side2``.
        grid: ``(ny, nx)`` atomic cells; target_shape: ``(H2, W2)``.
    """

    side1: np.ndarray
    key1: np.ndarray
    side2: np.ndarray
    key2: np.ndarray
    grid: tuple[int, int]
    target_shape: tuple[int, int]

    def reciprocal(self) -> np.ndarray:
        """``(N, 5)`` rows of ``side1`` whose (patch, pixel) key was also chosen by their img2 block."""
        return self.side1[np.isin(self.key1, self.key2)]


def single_scale_candidates(desc1: Tensor, desc2: Tensor, conf: dict | None = None) -> SideCandidates | None:
    """Build the pyramid, back-track it and return both sides' arg-max candidates.

    Args:
        desc1: ``(C, H1, W1)`` unit descriptors of img1 (the atomic-patch image).
        desc2: ``(C, H2, W2)`` unit descriptors of img2.
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        the :class:`SideCandidates`, or None when either map is smaller than 4x4 or spatially constant.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "PUMP dense match")
    _check_maps(desc1, desc2)
    if _is_degenerate(desc1, conf["min_desc_std"]) or _is_degenerate(desc2, conf["min_desc_std"]):
        return None
    with torch.no_grad():
        return _extract_candidates(build_pyramid_from_conf(desc1, desc2, conf))


def match_single_scale(desc1: Tensor, desc2: Tensor, conf: dict | None = None) -> np.ndarray:
    """Quasi-dense reciprocal matches between two dense descriptor maps.

    Args:
        desc1: ``(C, H1, W1)`` unit descriptors of img1 (the atomic-patch image).
        desc2: ``(C, H2, W2)`` unit descriptors of img2.
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        ``(N, 5)`` float32 ``[x1, y1, x2, y2, score]`` in descriptor-map pixels, sorted by img1 cell
        (row-major); ``(0, 5)`` when either map is smaller than 4x4 or spatially constant.
    """
    cands = single_scale_candidates(desc1, desc2, conf)
    return _EMPTY.copy() if cands is None else cands.reciprocal()


def _extract_candidates(pyr: InferencePyramid) -> SideCandidates:
    """Consume the pyramid's top-down pass; best pixel per patch and best (patch, pixel) per img2 block."""
    ny, nx = pyr.grid
    h2, w2 = pyr.target_shape
    n2 = h2 * w2
    patch_val = torch.empty(ny * nx, dtype=pyr.atoms.dtype)
    patch_pix = torch.empty(ny * nx, dtype=torch.long)
    pixel_val = torch.full((n2,), -math.inf, dtype=pyr.atoms.dtype)
    pixel_patch = torch.zeros(n2, dtype=torch.long)
    for i0, rows in iter_final_level0(pyr):
        flat = rows.reshape(-1, n2)
        p0 = i0 * nx
        patch_val[p0 : p0 + flat.shape[0]], patch_pix[p0 : p0 + flat.shape[0]] = flat.max(dim=1)
        val, arg = flat.max(dim=0)
        better = val > pixel_val  # strict: an earlier chunk (lower patch index) wins ties
        pixel_val = torch.where(better, val, pixel_val)
        pixel_patch = torch.where(better, arg + p0, pixel_patch)
    patches = torch.arange(ny * nx)
    side1 = _rows(patches, patch_pix, patch_val, nx, w2)
    key1 = patches * n2 + patch_pix
    # img2 side: the best pixel of every 4x4 block (partial blocks padded with -inf)
    bh, bw = math.ceil(h2 / CELL), math.ceil(w2 / CELL)
    padded = torch.full((bh * CELL, bw * CELL), -math.inf, dtype=pixel_val.dtype)
    padded[:h2, :w2] = pixel_val.view(h2, w2)
    in_block = padded.view(bh, CELL, bw, CELL).permute(0, 2, 1, 3).reshape(bh, bw, CELL * CELL).argmax(dim=2)
    block_pix = ((torch.arange(bh)[:, None] * CELL + in_block // CELL) * w2 + torch.arange(bw)[None, :] * CELL + in_block % CELL).flatten()
    block_patch = pixel_patch[block_pix]
    side2 = _rows(block_patch, block_pix, pixel_val[block_pix], nx, w2)
    key2 = block_patch * n2 + block_pix
    ok1, ok2 = torch.isfinite(patch_val), torch.isfinite(pixel_val[block_pix])
    return SideCandidates(
        side1[ok1].numpy(), key1[ok1].numpy(), side2[ok2].numpy(), key2[ok2].numpy(), (ny, nx), (h2, w2)
    )


def _rows(patch: Tensor, pixel: Tensor, score: Tensor, nx: int, w2: int) -> Tensor:
    """``(N, 5)`` float32 ``[x1, y1, x2, y2, score]`` from patch and img2 pixel indices."""
    return torch.stack(
        [
            ((patch % nx) * CELL + CELL_CENTRE).float(),
            ((patch // nx) * CELL + CELL_CENTRE).float(),
            (pixel % w2).float(),
            (pixel // w2).float(),
            score.float(),
        ],
        dim=1,
    )


def pyramid_maps_for_pixel(desc1: Tensor, desc2: Tensor, x: float, y: float, conf: dict | None = None) -> list[dict]:
    """Bottom-up ("consolidated") correlation maps of the patches containing one img1 pixel.

    Level 0 is the atomic patch holding the pixel; level l >= 1 is the parent whose patch centre
    (pixel ``4u`` on the corner grid, cells centred at ``4i + 2``) is nearest to the pixel, among
    parents with a non-zero weight. Target cell ``q`` of level l sits at img2 pixel ``2^l q``.

    Args:
        desc1: ``(C, H1, W1)`` unit descriptors of img1.
        desc2: ``(C, H2, W2)`` unit descriptors of img2.
        x, y: img1 pixel (inside the map).
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        one dict per level ``{"level": l, "patch_size": 4 * 2^l (img1 pixels), "map": (h_l, w_l)
        float32, "top3": (3, 3) float32 [x2, y2, score] of the 3 highest cells in img2 pixels,
        rows of NaN when the map has fewer than 3 cells, "centre": (x, y) of the patch in img1}``.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "PUMP dense match")
    _check_maps(desc1, desc2)
    h1, w1 = desc1.shape[-2:]
    if not (0 <= x < w1 and 0 <= y < h1):
        raise ValueError(f"pixel ({x}, {y}) is outside img1's descriptor map ({w1}x{h1})")
    if min(h1, w1) < CELL or min(desc2.shape[-2:]) < 1:
        raise ValueError(f"maps too small for a pyramid: img1 {h1}x{w1} (needs >= 4x4), img2 {tuple(desc2.shape[-2:])}")
    out = []
    with torch.no_grad():
        pyr = build_pyramid_from_conf(desc1, desc2, conf)
        ny, nx = pyr.grid
        i, j = min(int(y) // CELL, ny - 1), min(int(x) // CELL, nx - 1)
        maps = [(level0_rows(pyr, i, i + 1)[0, j], (j * CELL + CELL_CENTRE, i * CELL + CELL_CENTRE))]
        for level in range(1, pyr.top_level + 1):
            u, v = _nearest_parent(pyr.weights[level], x, y)
            values = level1_rows(pyr, u, u + 1)[0, v] if level == 1 else pyr.stored[level][u, v]
            maps.append((values, (v * CELL, u * CELL)))
    for level, (values, centre) in enumerate(maps):
        out.append(
            {
                "level": level,
                "patch_size": CELL * 2**level,
                "map": values.float().numpy().copy(),
                "top3": _top3(values.float(), 2**level),
                "centre": centre,
            }
        )
    return out


def _nearest_parent(weights: Tensor, x: float, y: float) -> tuple[int, int]:
    """Corner-grid parent (centre at pixel ``4u``) nearest to ``(x, y)`` among non-zero weights."""
    uu, vv = torch.meshgrid(torch.arange(weights.shape[0]), torch.arange(weights.shape[1]), indexing="ij")
    dist = (uu * CELL - y).double() ** 2 + (vv * CELL - x).double() ** 2
    dist[weights <= 0] = math.inf
    flat = int(dist.flatten().argmin())
    return flat // weights.shape[1], flat % weights.shape[1]


def _top3(values: Tensor, stride: int) -> np.ndarray:
    """``(3, 3)`` [x2, y2, score] of the 3 highest cells (img2 pixels = ``stride * cell``); NaN rows if fewer cells."""
    top = np.full((3, 3), np.nan, dtype=np.float32)
    k = min(3, values.numel())
    vals, idx = values.flatten().topk(k)
    w = values.shape[1]
    top[:k, 0] = (idx % w * stride).numpy()
    top[:k, 1] = (idx // w * stride).numpy()
    top[:k, 2] = vals.numpy()
    return top
