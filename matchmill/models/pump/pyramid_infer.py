"""PUMP correlation pyramid, inference form (spec ``pump.md`` §3.2 steps 2-5), memory-bounded on CPU.

Written from the spec, not from any reference implementation. Same maths as ``pyramid_train`` on
the full-resolution grids (no crop, no sub-sampling): atomic patches are the 4x4 pixel cells of
img1 (descriptor at pixel ``4i + 2``), the target is every pixel of img2. Differences in form:

- levels are stored **rectified** (``max(x, 0)^p``, which commutes with the max-pool), so stored
  level l equals ``rectify(C^l)`` of ``pyramid_train.build_pyramid`` run with ``border=0, sub=1``;
- stop rule: a further level is built while the current target side (min of h, w) is
  ``> min_shape`` (5), fewer than ``levels`` levels exist and some parent weight is non-zero;
- the top-down pass (DeepMatching back-tracking, :func:`iter_final_level0`) adds to every child
  entry that wins a parent's 3x3 pooling window the best bonus of its (up to 4) parents,
  ``c[m*] <- c_orig[m*] + max(0, max_p C^l_p[q - s])``; the arg-max is taken on the bottom-up values,
  and (``legacy_window``) the last row/column of the child map is excluded from it, as in the
  released code. After the pass, level 0 holds the best-path scores used for match extraction.

Memory (``n1 = (H1/4)(W1/4)`` atomic patches, ``n2 = H2 W2`` target pixels, ``b`` bytes per value
of ``dtype``; the level-0 volume C0 has ``n1 n2`` entries, one "C0 row" = one row of patches,
``(W1/4) n2`` entries):

- **stored whole**: levels >= 2, ``(H1/4 + 1)(W1/4 + 1) n2 (1/16 + 1/64 + ...)`` ~ ``n1 n2 / 12``
  entries (the descriptors are the caller's);
- **chunked, recomputed, never whole**: level 0 (C0) and level 1 (``~ n1 n2 / 4`` entries). A chunk is
  ``chunk_rows`` rows of atomic patches. Bottom-up, each chunk of level-2 rows recomputes its C0 rows
  from the descriptors (one matmul), pools and aggregates them into level-1 rows, and those into
  level-2 rows (the two level-1 rows shared with the next chunk are carried over). Top-down, each
  chunk recomputes its C0 rows once more, rebuilds and back-tracks its level-1 rows from level 2,
  back-tracks the C0 rows from them and hands them to the match extraction (one level-1 row is
  carried to the next chunk). Rectification, pooling and back-tracking work a block of maps at a
  time, so their temporaries stay small. Workspace ~ ``WORKSPACE_ROWS_FACTOR * (chunk_rows + 1)``
  C0 rows;
- so **peak ~ n1 n2 b / 12 + 3 (chunk_rows + 1) (W1/4) n2 b**, and ``chunk_rows`` is the largest
  that keeps this under ``memory_budget_mb`` (at least one row: a budget below the stored levels
  plus about two C0 rows is exceeded, never refused). Measured (``benchmarks/pump_dense_memory.py``,
  float32, peak RSS increase): 320x240 both, budget 512 MB -> 4 rows, 425 MB; budget 64 MB -> 1 row,
  273 MB (stored levels 121 MB); 240x180 both, 512 MB -> 14 rows, 447 MB; unchunked 756 MB (~1.7 x C0).
- the price of chunking is time: C0 is computed twice (bottom-up and top-down) plus one shared row
  per chunk and pass; 1-row chunks measured 1.2-1.3x the CPU time of the largest chunks.

Against the official README formula ``W1 H1 W2 H2 * 1.333 * 2 / 16`` bytes, i.e. C0 and all upper
levels held at once in float16 (``n1 n2 * 4/3`` entries, ``2.67 n1 n2`` bytes): here the part that
grows with ``n1 n2`` without chunking is ``n1 n2 * 4 / 12 = 0.33 n1 n2`` bytes in float32 (1/8 of the
official figure; 1/16 in float16), and the rest is the budgeted workspace. E.g. 320x240 both:
official 0.94 GB, C0 alone 1.4 GB in float32, here 121 MB stored + workspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .pyramid_train import (
    CELL,
    CELL_CENTRE,
    QUADRANTS,
    quadrant_weights,
    aggregate_children,
    child_offset,
    parent_grid_shape,
    pool_target,
)

__all__ = [
    "WORKSPACE_ROWS_FACTOR",
    "InferencePyramid",
    "plan_levels",
    "build_inference_pyramid",
    "level0_rows",
    "level1_rows",
    "iter_final_level0",
]

WORKSPACE_ROWS_FACTOR = 3.0
"""Workspace per chunk row, in units of one C0 row (``(W1/4) H2 W2`` values), counted on ``rows + 1``:
the C0 rows (one shared with the neighbouring chunk), the level-1 rows and their pooled copies, the
bonus maps, plus allocator slack. ``benchmarks/pump_dense_memory.py`` measured 1.9 to 2.9."""


@dataclass
class InferencePyramid:
    """Bottom-up state of one single-scale pyramid (level 0 and 1 are recomputed on demand).

    Attributes:
        atoms: ``(ny * nx, C)`` atomic patch descriptors of img1 (row-major cells).
        target: ``(C, H2 * W2)`` descriptors of every img2 pixel.
        grid: ``(ny, nx)`` atomic cells.
        target_shape: ``(H2, W2)``.
        sizes: target ``(h_l, w_l)`` of every level, ``sizes[0] = (H2, W2)``.
        weights: ``(Py, Px)`` float64 patch weights of every level, ``weights[0]`` all ones.
        stored: levels >= 2, ``stored[l] = (Py, Px, h_l, w_l)`` rectified maps (keys 2..L).
        rectify_power: p.
        border_exponent: beta.
        chunk_rows: level-0 patch rows processed at once.
        legacy_window: exclude the last row/column of a child map from the back-tracking arg-max.
    """

    atoms: Tensor
    target: Tensor
    grid: tuple[int, int]
    target_shape: tuple[int, int]
    sizes: list[tuple[int, int]]
    weights: list[Tensor]
    rectify_power: float
    border_exponent: float
    chunk_rows: int
    legacy_window: bool = True
    stored: dict[int, Tensor] = field(default_factory=dict)

    @property
    def top_level(self) -> int:
        """Index L of the top level (0 when the target is too small for any level)."""
        return len(self.sizes) - 1

    def stored_bytes(self) -> int:
        """Bytes held by the stored levels (>= 2)."""
        return sum(t.numel() * t.element_size() for t in self.stored.values())


def plan_levels(
    grid: tuple[int, int], target_shape: tuple[int, int], max_levels: int, min_shape: int
) -> tuple[list[tuple[int, int]], list[Tensor]]:
    """Target sizes and patch weights of every level, before any correlation is computed.

    Args:
        grid: ``(ny, nx)`` atomic cells.
        target_shape: ``(H2, W2)``.
        max_levels: cap on the number of levels above 0.
        min_shape: no level is built from a level whose target side is ``<= min_shape``.

    Returns:
        ``sizes`` ``[(h_0, w_0), ..., (h_L, w_L)]`` and ``weights`` ``[(ny, nx), ..., (Py, Px)]`` float64.
    """
    sizes = [tuple(target_shape)]
    weights = [torch.ones(grid, dtype=torch.float64)]
    while len(sizes) - 1 < max_levels and min(sizes[-1]) > min_shape and bool((weights[-1] > 0).any()):
        level = len(sizes)
        py, px = parent_grid_shape(level, tuple(weights[-1].shape))
        quad_w = quadrant_weights(weights[-1], level, (0, py), px)
        new_w = sum(quad_w.values())
        if not bool((new_w > 0).any()):
            break
        sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
        weights.append(new_w)
    return sizes, weights  # type: ignore[return-value]


_RECTIFY_BLOCK = 1 << 20  # elements per square-root temporary of rectify_ (4 MB in float32)


def rectify_(x: Tensor, power: float) -> Tensor:
    """In place ``max(x, 0)^power`` (no autograd).

    For the default 1.5 it computes ``x * sqrt(x)`` (faster than ``pow``) block by block, so the
    square-root temporary stays small instead of doubling the chunk.
    """
    x.clamp_(min=0)
    if power != 1.5:
        return x.pow_(power)
    if not x.is_contiguous():
        return x.mul_(x.sqrt())
    flat = x.view(-1)
    for start in range(0, flat.numel(), _RECTIFY_BLOCK):
        block = flat[start : start + _RECTIFY_BLOCK]
        block.mul_(block.sqrt())
    return x


def level0_rows(pyr: InferencePyramid, i0: int, i1: int, rectified: bool = True) -> Tensor:
    """C0 for atomic patch rows ``[i0, i1)`` (clipped to the grid), rectified unless ``rectified=False``.

    Returns:
        ``(i1 - i0, nx, H2, W2)`` in the pyramid dtype.
    """
    ny, nx = pyr.grid
    i0, i1 = max(i0, 0), min(i1, ny)
    corr = pyr.atoms[i0 * nx : i1 * nx] @ pyr.target
    if rectified:
        rectify_(corr, pyr.rectify_power)
    return corr.view(i1 - i0, nx, *pyr.target_shape)


def _map_blocks(n_maps: int, map_size: int) -> Iterator[tuple[int, int]]:
    """Ranges of maps holding about ``_RECTIFY_BLOCK * 4`` entries each (bounds per-block temporaries)."""
    return _chunks(n_maps, max(1, (4 * _RECTIFY_BLOCK) // max(map_size, 1)))


def _pool_in_blocks(children: Tensor) -> Tensor:
    """:func:`pool_target` of ``(n, Cx, h, w)`` maps, a block of maps at a time (small temporaries)."""
    n, cx, h, w = children.shape
    maps = children.reshape(n * cx, h, w)
    out = children.new_empty(n * cx, (h + 1) // 2, (w + 1) // 2)
    for m0, m1 in _map_blocks(n * cx, h * w):
        out[m0:m1] = pool_target(maps[m0:m1])
    return out.view(n, cx, *out.shape[-2:])


def _next_level_rows(
    children: Tensor, child_weights: Tensor, level: int, rows: tuple[int, int], start: int, pyr: InferencePyramid, rectified: bool = True
) -> Tensor:
    """Rows ``rows`` of level ``level`` (rectified) from child rows starting at ``start``: pool, aggregate, rectify.

    ``rectified=False`` means the children are raw C0 rows: they are rectified after the pooling
    (same values, a quarter of the work, since the max-pool commutes with the rectification).
    """
    pooled = _pool_in_blocks(children)
    if not rectified:
        rectify_(pooled, pyr.rectify_power)
    values, _ = aggregate_children(pooled[None], child_weights, level, pyr.border_exponent, rows, start)
    return rectify_(values[0], pyr.rectify_power)


def level1_rows(
    pyr: InferencePyramid, u0: int, u1: int, c0: Tensor | None = None, c0_start: int = 0, c0_rectified: bool = True
) -> Tensor:
    """Bottom-up rectified level 1 for parent rows ``[u0, u1)`` (clipped to the grid).

    Args:
        pyr: the pyramid (needs ``top_level >= 1``).
        u0, u1: parent rows.
        c0: optional precomputed C0 rows covering ``[u0 - 1, u1)`` (clipped), starting at ``c0_start``.
        c0_start: absolute patch row of ``c0[0]``.
        c0_rectified: whether ``c0`` is already rectified.

    Returns:
        ``(u1 - u0, nx + 1, h_1, w_1)``.
    """
    py = pyr.grid[0] + 1
    u0, u1 = max(u0, 0), min(u1, py)
    a, b = max(u0 - 1, 0), min(u1, pyr.grid[0])
    if c0 is None:
        c0, c0_start, c0_rectified = level0_rows(pyr, a, b, rectified=False), a, False
    return _next_level_rows(c0, pyr.weights[0], 1, (u0, u1), c0_start, pyr, rectified=c0_rectified)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _choose_chunk_rows(
    grid: tuple[int, int], target_shape: tuple[int, int], sizes: list, weights: list, budget_mb: float, itemsize: int
) -> int:
    """Patch rows per chunk so that stored levels + workspace fit in ``budget_mb`` (0 = no chunking).

    Model (fitted on ``benchmarks/pump_dense_memory.py``): peak = stored + FACTOR * (rows + 1) * row_bytes.
    """
    ny, nx = grid
    if budget_mb <= 0:
        return ny
    stored = sum(w.numel() * h * ww for w, (h, ww) in zip(weights[2:], sizes[2:])) * itemsize
    row_bytes = nx * target_shape[0] * target_shape[1] * itemsize * WORKSPACE_ROWS_FACTOR
    free = budget_mb * 2**20 - stored
    return int(min(ny, max(1, free // row_bytes - 1)))


def build_inference_pyramid(
    desc1: Tensor,
    desc2: Tensor,
    levels: int = 99,
    min_shape: int = 5,
    rectify_power: float = 1.5,
    border_exponent: float = 0.9,
    memory_budget_mb: float = 512.0,
    dtype: torch.dtype = torch.float32,
    legacy_window: bool = True,
) -> InferencePyramid:
    """Bottom-up pass (spec §3.2 steps 2-4); stores levels >= 2, chunked over atomic patch rows.

    Args:
        desc1: ``(C, H1, W1)`` dense unit descriptors of img1 (``H1, W1 >= 4``).
        desc2: ``(C, H2, W2)`` dense unit descriptors of img2.
        levels: cap on the number of levels above 0.
        min_shape: stop once the target side is ``<= min_shape``.
        rectify_power: p of ``max(x, 0)^p``.
        border_exponent: beta of the border normalisation.
        memory_budget_mb: target peak of the pyramid (stored levels + chunk workspace); 0 = no chunking.
        dtype: storage and compute dtype (float32 on CPU; float16 halves memory but is slow on CPU).
        legacy_window: see :class:`InferencePyramid`.

    Returns:
        the :class:`InferencePyramid` (levels >= 2 filled).
    """
    if desc1.ndim != 3 or desc2.ndim != 3:
        raise ValueError(f"descriptor maps must be (C, H, W), got {tuple(desc1.shape)} and {tuple(desc2.shape)}")
    if desc1.shape[0] != desc2.shape[0]:
        raise ValueError(f"descriptor channels differ: img1 {desc1.shape[0]}, img2 {desc2.shape[0]}")
    c, h1, w1 = desc1.shape
    ny, nx = h1 // CELL, w1 // CELL
    if ny == 0 or nx == 0:
        raise ValueError(f"img1 descriptor map {h1}x{w1} holds no {CELL}x{CELL} atomic patch")
    atoms = desc1[:, CELL_CENTRE : ny * CELL : CELL, CELL_CENTRE : nx * CELL : CELL]
    atoms = atoms.reshape(c, ny * nx).t().to(dtype).contiguous()
    target = desc2.reshape(c, -1).to(dtype).contiguous()
    sizes, weights = plan_levels((ny, nx), tuple(desc2.shape[-2:]), levels, min_shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = _choose_chunk_rows((ny, nx), tuple(desc2.shape[-2:]), sizes, weights, memory_budget_mb, itemsize)
    pyr = InferencePyramid(
        atoms, target, (ny, nx), tuple(desc2.shape[-2:]), sizes, weights, rectify_power, border_exponent, chunk, legacy_window
    )
    if pyr.top_level >= 2:
        _build_level2(pyr)
    for level in range(3, pyr.top_level + 1):
        _build_stored_level(pyr, level)
    return pyr


def _build_level2(pyr: InferencePyramid) -> None:
    """Level 2 from level-1 rows recomputed from C0 rows, chunk by chunk.

    Level-2 rows ``[u0, u1)`` need level-1 rows ``[u0 - 1, u1 + 1)``; the two rows shared with the
    next chunk are carried over, so each chunk recomputes only ``u1 - u0 + 1`` C0 rows.
    """
    py, px = pyr.weights[2].shape
    out = torch.empty(py, px, *pyr.sizes[2], dtype=pyr.atoms.dtype)
    carry, carry_start = None, 0  # level-1 rows [carry_start, carry_start + len(carry)) already built
    for u0, u1 in _chunks(py, pyr.chunk_rows):
        a, b = max(u0 - 1, 0), min(u1 + 1, py)  # level-1 rows (children of level-2 rows u +- 1)
        have = a if carry is None else carry_start + carry.shape[0]
        fresh = level1_rows(pyr, have, b) if have < b else None
        parts = ([carry[a - carry_start :]] if carry is not None else []) + ([fresh] if fresh is not None else [])
        l1 = torch.cat(parts) if len(parts) > 1 else parts[0]
        out[u0:u1] = _next_level_rows(l1, pyr.weights[1], 2, (u0, u1), a, pyr)
        carry_start = max(u1 - 1, a)
        carry = l1[carry_start - a :].clone()
        del l1, fresh, parts
    pyr.stored[2] = out


def _build_stored_level(pyr: InferencePyramid, level: int) -> None:
    """Level ``level`` >= 3 from the stored level below, chunked over parent rows."""
    below = pyr.stored[level - 1]
    py, px = pyr.weights[level].shape
    g = 2 ** (level - 2)
    out = torch.empty(py, px, *pyr.sizes[level], dtype=below.dtype)
    rows = max(1, pyr.chunk_rows * 4 ** (level - 1) // 2)  # same workspace as a level-0 chunk, roughly
    for u0, u1 in _chunks(py, rows):
        a, b = max(u0 - g, 0), min(u1 + g, py)
        out[u0:u1] = _next_level_rows(below[a:b], pyr.weights[level - 1], level, (u0, u1), a, pyr)
    pyr.stored[level] = out


def _parent_bonus(parents: Tensor, parent_start: int, parent_grid: tuple[int, int], level: int, child_rows: tuple[int, int], child_cols: int) -> Tensor:
    """Best parent value each child cell fed: ``max(0, max_p C^l_p[q - s_c])``.

    Args:
        parents: ``(m, Px, h, w)`` rectified level-``level`` rows starting at ``parent_start``.
        parent_grid: ``(Py, Px)`` of the whole level.
        level: parent level (>= 1).
        child_rows: ``(i0, i1)`` child rows.
        child_cols: child grid width.

    Returns:
        ``(i1 - i0, child_cols, h, w)``.
    """
    i0, i1 = child_rows
    py, px = parent_grid
    m, h, w = parents.shape[0], *parents.shape[-2:]
    bonus = parents.new_zeros(i1 - i0, child_cols, h, w)
    for quad in QUADRANTS:
        dy, dx = child_offset(level, quad)
        # child (i, j) is the quadrant-``quad`` child of parent (i - dy, j - dx)
        r0, r1 = max(i0 - dy, 0), min(i1 - dy, py)
        c0, c1 = max(-dx, 0), min(child_cols - dx, px)
        if r0 >= r1 or c0 >= c1:
            continue
        if r0 < parent_start or r1 > parent_start + m:
            raise ValueError(f"parent rows {r0}..{r1} are not in the given slice {parent_start}..{parent_start + m}")
        sy, sx = quad
        if h - abs(sy) <= 0 or w - abs(sx) <= 0:
            continue
        # child target cell q fed parent cell q - s
        src = parents[r0 - parent_start : r1 - parent_start, c0:c1, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)]
        dst = bonus[r0 + dy - i0 : r1 + dy - i0, c0 + dx : c1 + dx, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)]
        torch.maximum(dst, src, out=dst)
    return bonus


def _backtrack(children: Tensor, bonus: Tensor, legacy_window: bool) -> None:
    """In place: each winning entry of a 3x3/s2 pooling window gets its original value + the window's bonus.

    Processed a block of maps at a time, so the int64 pooling indices stay small.

    Args:
        children: ``(n, Cx, h, w)`` contiguous rectified child maps (modified in place).
        bonus: ``(n, Cx, ceil(h/2), ceil(w/2))`` per parent-cell bonus.
        legacy_window: exclude the last row/column from the arg-max search (when the map has > 1 of them).
    """
    n, cx, h, w = children.shape
    if bonus.shape != (n, cx, (h + 1) // 2, (w + 1) // 2):
        raise ValueError(f"bonus {tuple(bonus.shape)} does not match the pooled size of children {tuple(children.shape)}")
    maps, bonus_maps = children.view(n * cx, h, w), bonus.reshape(n * cx, -1)
    for m0, m1 in _map_blocks(n * cx, h * w):
        block = maps[m0:m1]
        saved_row = block[:, -1, :].clone() if legacy_window and h > 1 else None
        saved_col = block[:, :, -1].clone() if legacy_window and w > 1 else None
        if saved_row is not None:
            block[:, -1, :] = -math.inf
        if saved_col is not None:
            block[:, :, -1] = -math.inf
        _, idx = F.max_pool2d(block[None], kernel_size=3, stride=2, padding=1, return_indices=True)
        if saved_col is not None:
            block[:, :, -1] = saved_col
        if saved_row is not None:
            block[:, -1, :] = saved_row
        plane = block.view(m1 - m0, h * w)
        idx = idx.view(m1 - m0, -1)
        winners = plane.gather(1, idx) + bonus_maps[m0:m1]
        plane.scatter_reduce_(1, idx, winners, reduce="amax")


def _backtrack_stored(pyr: InferencePyramid) -> None:
    """Top-down pass over the stored levels: level l-1 <- level l for l = L .. 3."""
    for level in range(pyr.top_level, 2, -1):
        parents, children = pyr.stored[level], pyr.stored[level - 1]
        rows = max(1, pyr.chunk_rows * 4 ** (level - 2) // 2)
        for i0, i1 in _chunks(children.shape[0], rows):
            bonus = _parent_bonus(parents, 0, tuple(parents.shape[:2]), level, (i0, i1), children.shape[1])
            _backtrack(children[i0:i1], bonus, pyr.legacy_window)


def iter_final_level0(pyr: InferencePyramid) -> Iterator[tuple[int, Tensor]]:
    """Top-down pass (spec §3.2 step 5), yielding the final level 0 chunk by chunk.

    Back-tracks the stored levels first, then, per chunk of atomic patch rows, recomputes the rows of
    C0 and level 1 it needs, back-tracks level 1 from level 2 and level 0 from level 1.
    Consumes the pyramid (stored levels are modified in place).

    Yields:
        ``(i0, rows)`` with ``rows`` ``(n, nx, H2, W2)`` final scores of patch rows ``[i0, i0 + n)``.
    """
    ny, nx = pyr.grid
    _backtrack_stored(pyr)
    carry = None  # back-tracked level-1 row i0, shared with the previous chunk (its last row)
    for i0, i1 in _chunks(ny, pyr.chunk_rows):
        if pyr.top_level == 0:
            yield i0, level0_rows(pyr, i0, i1)
            continue
        # level-1 rows [first, i1 + 1) are new; they need C0 rows [first - 1, i1 + 1)
        first = i0 if carry is None else i0 + 1
        a, b = max(first - 1, 0), min(i1 + 1, ny)
        c0 = level0_rows(pyr, a, b)
        fresh = level1_rows(pyr, first, i1 + 1, c0, a)
        if pyr.top_level >= 2:
            l2 = pyr.stored[2]
            bonus = _parent_bonus(l2, 0, tuple(l2.shape[:2]), 2, (first, first + fresh.shape[0]), fresh.shape[1])
            _backtrack(fresh, bonus, pyr.legacy_window)
        l1 = fresh if carry is None else torch.cat([carry, fresh])
        rows = c0[i0 - a : i1 - a]
        bonus = _parent_bonus(l1, i0, (ny + 1, nx + 1), 1, (i0, i1), nx)
        carry = l1[-1:].clone()  # level-1 row i1 = the next chunk's first parent row
        del l1, fresh
        _backtrack(rows, bonus, pyr.legacy_window)
        yield i0, rows
