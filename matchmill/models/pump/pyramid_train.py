"""PUMP correlation pyramid, training form (spec ``pump.md`` §2.2 a-d). Differentiable end to end.

Written from the spec and the paper's supplementary, not from any reference implementation.

Terms (one direction A -> B; grids are positions of the sub-sampled descriptor maps):

- **grid**: a dense descriptor map cropped by ``border`` on each side and sub-sampled with stride
  ``sub`` (:func:`subsample_grid`). Training uses border 16, sub 2 (256 px -> 112); inference uses
  border 0, sub 1 (the full-resolution map).
- **atomic patch**: a 4x4 cell of A's grid, represented by the descriptor at in-cell index 2
  (grid positions 2, 6, 10, ...) -> an ``(ny, nx)`` grid of cells (:func:`atomic_descriptors`).
- **C0**: ``(B, ny, nx, h, w)`` dot products of every atomic patch with every B grid position.
- **level l >= 1**: parents live on the ``(ny+1, nx+1)`` *corners* of the atomic cells (not
  sub-sampled in the source dims). Level-1 parent ``(u, v)`` has the up to 4 cells
  ``(u-1|u, v-1|v)`` as children; a level-l >= 2 parent has the level-(l-1) parents
  ``(u +- g, v +- g)``, ``g = 2^(l-2)``. Patch side at level l = ``4 * 2^l`` grid units.
- **one level step** (:func:`pyramid_step`): 3x3 / stride 2 / pad 1 max-pool of every child's map over
  the target, rectification ``max(x, 0)^p``, then the 4-children aggregation
  (:func:`aggregate_children`): a child in quadrant ``s = (s_y, s_x)`` in ``{-1, +1}^2`` of its
  parent contributes its map at ``q + s`` to the parent's cell ``q``, weighted by its weight ``w_c``;

      C_p(q) = sum_c w_c R_c(q + s_c) / (W_p^(1 - beta) * V_p(q)^beta)

  with ``W_p`` the sum of the weights of the existing children (= the parent's weight for the next
  level), ``V_p(q)`` the sum over children whose ``q + s_c`` is inside the map, ``beta`` the
  border-normalisation exponent (0.9); ``V_p(q) = 0`` gives 0. Atomic patches weigh 1.
- **stop rule** (:func:`build_pyramid`): after the level whose target side drops below
  ``2 * atleast`` (10), after ``max_levels`` levels, or when every parent weight is 0. With 256 px
  crops: target 112 -> 56 -> 28 -> 14 -> 7, levels 1..4, top ``(B, 29, 29, 7, 7)``.

The level values returned here are the *unrectified* aggregates ``C^l``; the next level (and the
uniqueness loss) rectify them. Max-pool and rectification commute, so the inference form
(``pyramid_infer``), which rectifies before pooling and stores ``max(C^l, 0)^p``, holds exactly
``rectify(C^l)`` of this module for the same grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PyramidLevel",
    "QUADRANTS",
    "subsample_grid",
    "atomic_descriptors",
    "initial_correlation",
    "rectify",
    "pool_target",
    "child_offset",
    "parent_grid_shape",
    "quadrant_weights",
    "border_normaliser",
    "aggregate_children",
    "pyramid_step",
    "build_pyramid",
]

QUADRANTS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 1), (1, -1), (1, 1))
"""Quadrant ``(s_y, s_x)`` of a child relative to its parent; also its target-side shift in cells."""

CELL = 4  # atomic patch side in grid units
CELL_CENTRE = 2  # in-cell index of the descriptor representing an atomic patch


@dataclass
class PyramidLevel:
    """One pyramid level.

    Attributes:
        level: 0 for C0 (atomic patches), l >= 1 for parents.
        values: ``(B, Py, Px, h, w)`` correlation maps (unrectified aggregates in the training form).
        weights: ``(Py, Px)`` patch weights (number of atomic patches below, 0 = no patch).
    """

    level: int
    values: Tensor
    weights: Tensor


def subsample_grid(desc: Tensor, border: int, sub: int) -> Tensor:
    """Crop ``border`` positions on each side and keep every ``sub``-th one (spec §2.2 a).

    Args:
        desc: ``(B, C, H, W)`` dense descriptors.
        border: pixels dropped on each side (>= 0).
        sub: stride (>= 1).

    Returns:
        ``(B, C, ceil((H - 2 border) / sub), ceil((W - 2 border) / sub))``.
    """
    if desc.ndim != 4:
        raise ValueError(f"descriptor map must be (B, C, H, W), got shape {tuple(desc.shape)}")
    if border < 0 or sub < 1:
        raise ValueError(f"need border >= 0 and sub >= 1, got border={border}, sub={sub}")
    h, w = desc.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"descriptor map {h}x{w} is too small for a border of {border} px on each side")
    return desc[:, :, border : h - border : sub, border : w - border : sub]


def atomic_descriptors(grid: Tensor) -> Tensor:
    """One descriptor per 4x4 cell of the grid, taken at in-cell index 2 (spec §2.2 b).

    Args:
        grid: ``(B, C, h, w)`` with ``h, w >= 4``; trailing rows/columns that do not fill a cell are ignored.

    Returns:
        ``(B, C, h // 4, w // 4)``.
    """
    h, w = grid.shape[-2:]
    ny, nx = h // CELL, w // CELL
    if ny == 0 or nx == 0:
        raise ValueError(f"grid {h}x{w} holds no {CELL}x{CELL} atomic patch")
    return grid[:, :, CELL_CENTRE : ny * CELL : CELL, CELL_CENTRE : nx * CELL : CELL]


def initial_correlation(atoms: Tensor, target: Tensor) -> Tensor:
    """Dot products of every atomic patch with every target position (spec §2.2 c).

    Args:
        atoms: ``(B, C, ny, nx)``.
        target: ``(B, C, h, w)``.

    Returns:
        ``(B, ny, nx, h, w)`` C0 (no rectification).
    """
    if atoms.shape[:2] != target.shape[:2]:
        raise ValueError(f"atoms {tuple(atoms.shape)} and target {tuple(target.shape)} differ in batch or channels")
    b, c, ny, nx = atoms.shape
    h, w = target.shape[-2:]
    corr = torch.bmm(atoms.reshape(b, c, ny * nx).transpose(1, 2), target.reshape(b, c, h * w))
    return corr.view(b, ny, nx, h, w)


def rectify(x: Tensor, power: float) -> Tensor:
    """``max(x, 0) ** power`` (the pyramid's non-linearity; gradient 0 at and below 0)."""
    return x.clamp(min=0).pow(power)


def pool_target(x: Tensor) -> Tensor:
    """3x3 / stride 2 / pad 1 max-pool over the last two (target) dims of every map.

    Uses ``F.max_pool2d`` when autograd is recording (gradient to the arg-max) and a faster
    separable strided maximum otherwise (same values: a max is exact).

    Args:
        x: ``(..., h, w)``.

    Returns:
        ``(..., ceil(h / 2), ceil(w / 2))``; output cell ``q`` is the window centred on input ``2q``.
    """
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    if torch.is_grad_enabled() and x.requires_grad:
        pooled = F.max_pool2d(x.reshape(1, -1, h, w), kernel_size=3, stride=2, padding=1)
        return pooled.reshape(*lead, *pooled.shape[-2:])
    return _pool_rows(_pool_rows(x, -2), -1)


def _pool_rows(x: Tensor, dim: int) -> Tensor:
    """Max over inputs ``2q - 1, 2q, 2q + 1`` (those inside) along ``dim`` -> size ``ceil(n / 2)`` (no autograd)."""
    n = x.shape[dim]
    out_n = (n + 1) // 2
    moved = x.transpose(dim, -1)
    out = moved[..., 0::2].clone()  # inputs 2q
    odd = moved[..., 1::2]  # inputs 2q + 1 for q < n // 2
    head = out[..., : n // 2]
    torch.maximum(head, odd, out=head)
    if out_n > 1:  # inputs 2q - 1 for q >= 1
        tail = out[..., 1:]
        torch.maximum(tail, odd[..., : out_n - 1], out=tail)
    return out.transpose(dim, -1)


def child_offset(level: int, quadrant: tuple[int, int]) -> tuple[int, int]:
    """Source-grid offset from a level-``level`` parent ``(u, v)`` to its child in ``quadrant``.

    Level 1: the child cell is ``(u + dy, v + dx)`` with ``d = -1`` for ``s = -1`` and 0 for ``+1``.
    Level l >= 2: ``(u + s_y g, v + s_x g)``, ``g = 2^(l-2)``.
    """
    if level < 1:
        raise ValueError(f"parents exist from level 1 on, got level {level}")
    if level == 1:
        return tuple(-1 if s < 0 else 0 for s in quadrant)  # type: ignore[return-value]
    g = 2 ** (level - 2)
    return quadrant[0] * g, quadrant[1] * g


def parent_grid_shape(level: int, child_grid: tuple[int, int]) -> tuple[int, int]:
    """Parent grid of ``level`` given its child grid: cells + 1 at level 1, unchanged above."""
    return (child_grid[0] + 1, child_grid[1] + 1) if level == 1 else tuple(child_grid)  # type: ignore[return-value]


def quadrant_weights(
    child_weights: Tensor, level: int, parent_rows: tuple[int, int], parent_cols: int
) -> dict[tuple[int, int], Tensor]:
    """Per quadrant, the ``(rows, parent_cols)`` weight of each parent's child (0 where it does not exist)."""
    cy, cx = child_weights.shape
    u = torch.arange(*parent_rows, device=child_weights.device)
    v = torch.arange(parent_cols, device=child_weights.device)
    out = {}
    for quad in QUADRANTS:
        dy, dx = child_offset(level, quad)
        ry, rx = u + dy, v + dx
        oky, okx = (ry >= 0) & (ry < cy), (rx >= 0) & (rx < cx)
        wq = child_weights[ry.clamp(0, cy - 1)][:, rx.clamp(0, cx - 1)]
        out[quad] = wq * (oky[:, None] & okx[None, :]).to(wq.dtype)
    return out


def _border_regions(size: int) -> list[tuple[slice, dict[int, float]]]:
    """Target rows (or columns) split by which shifts ``q + s`` stay inside: ``[(slice, {s: 0|1})]``.

    The middle region (every shift valid) is omitted: its border factor is 1.
    """
    if size == 1:
        return [(slice(0, 1), {-1: 0.0, 1: 0.0})]
    return [(slice(0, 1), {-1: 0.0, 1: 1.0}), (slice(size - 1, size), {-1: 1.0, 1: 0.0})]


def border_normaliser(
    child_weights: Tensor,
    level: int,
    target_shape: tuple[int, int],
    border_exponent: float,
    parent_rows: tuple[int, int] | None = None,
) -> tuple[dict[tuple[int, int], Tensor], list[tuple[slice, slice, Tensor]], Tensor]:
    """Normalisation terms of :func:`aggregate_children`, written so that every factor stays O(1).

    ``sum_c w_c R_c / (W^(1-beta) V^beta) = sum_c (w_c / W) R_c * (W / V(q))^beta``. Inside the target
    map every shift is valid, ``V = W`` and the factor is 1; it differs only on the first/last target
    row and column, so the factor is returned per border region.

    Args:
        child_weights: ``(Cy, Cx)`` weights of the child grid.
        level: parent level (>= 1).
        target_shape: ``(h, w)`` of the pooled child maps.
        border_exponent: beta (1 = average of the valid terms, 0 = no border compensation).
        parent_rows: ``(u0, u1)`` slice of parent rows (default: all).

    Returns:
        relative weights ``w_c / W`` per quadrant ``{(s_y, s_x): (u1 - u0, Px)}`` (float64), border
        regions ``[(rows, cols, factor (u1 - u0, Px) float64)]`` with ``factor = (W / V)^beta`` or 0
        where ``V = 0``, and parent weights ``W`` ``(u1 - u0, Px)`` (float64).
    """
    py, px = parent_grid_shape(level, tuple(child_weights.shape))
    rows = parent_rows or (0, py)
    h, w = target_shape
    quad_w = quadrant_weights(child_weights.to(torch.float64), level, rows, px)
    total = sum(quad_w.values())
    relative = {quad: wq / total.clamp(min=1e-300) for quad, wq in quad_w.items()}
    every = {-1: 1.0, 1: 1.0}
    row_regions = _border_regions(h) + ([(slice(1, h - 1), every)] if h > 2 else [])
    col_regions = _border_regions(w) + ([(slice(1, w - 1), every)] if w > 2 else [])
    regions = []
    for ys, my in row_regions:
        for xs, mx in col_regions:
            if my is every and mx is every:
                continue
            valid = sum(relative[(sy, sx)] * (my[sy] * mx[sx]) for sy, sx in QUADRANTS)  # V / W
            factor = torch.where(valid > 0, valid.clamp(min=1e-300).pow(-border_exponent), torch.zeros_like(valid))
            regions.append((ys, xs, factor))
    return relative, regions, total


def aggregate_children(
    children: Tensor,
    child_weights: Tensor,
    level: int,
    border_exponent: float,
    parent_rows: tuple[int, int] | None = None,
    child_row_start: int = 0,
) -> tuple[Tensor, Tensor]:
    """4-children aggregation with quadrant shifts, weights and border normalisation.

    Args:
        children: ``(B, n, Cx, h, w)`` pooled and rectified child maps for child rows
            ``child_row_start .. child_row_start + n`` (all rows by default). It must hold every existing
            child row of the requested parent rows.
        child_weights: ``(Cy, Cx)`` weights of the whole child grid.
        level: parent level (>= 1).
        border_exponent: beta of the border normalisation.
        parent_rows: ``(u0, u1)`` parent rows to compute (default: all).
        child_row_start: absolute index of ``children[:, 0]``.

    Returns:
        ``(B, u1 - u0, Px, h, w)`` parent maps (unrectified) and ``(u1 - u0, Px)`` parent weights (float64).
    """
    if children.ndim != 5:
        raise ValueError(f"children must be (B, rows, Cx, h, w), got shape {tuple(children.shape)}")
    cy, cx = child_weights.shape
    if children.shape[2] != cx:
        raise ValueError(f"children have {children.shape[2]} columns, child weights {cx}")
    py, px = parent_grid_shape(level, (cy, cx))
    u0, u1 = parent_rows or (0, py)
    b, n, _, h, w = children.shape
    relative, regions, parent_w = border_normaliser(child_weights, level, (h, w), border_exponent, (u0, u1))
    total = children.new_zeros(b, u1 - u0, px, h, w)
    for quad in QUADRANTS:
        dy, dx = child_offset(level, quad)
        sy, sx = quad
        # absolute child rows/cols feeding parent rows [u0, u1) and all parent columns, clipped to the grid
        r0, r1 = max(u0 + dy, 0), min(u1 + dy, cy)
        c0, c1 = max(dx, 0), min(px + dx, cx)
        if r0 >= r1 or c0 >= c1 or h - abs(sy) <= 0 or w - abs(sx) <= 0:
            continue
        if r0 < child_row_start or r1 > child_row_start + n:
            raise ValueError(
                f"child rows {r0}..{r1} needed for parent rows {u0}..{u1} are not in the given slice "
                f"{child_row_start}..{child_row_start + n}"
            )
        # parent (r - dy, c - dx) at target q takes child (r, c) at q + s
        src = children[
            :, r0 - child_row_start : r1 - child_row_start, c0:c1, max(sy, 0) : h + min(sy, 0), max(sx, 0) : w + min(sx, 0)
        ]
        weight = relative[quad][r0 - dy - u0 : r1 - dy - u0, c0 - dx : c1 - dx].to(children.dtype)
        dst = total[:, r0 - dy - u0 : r1 - dy - u0, c0 - dx : c1 - dx, max(-sy, 0) : h + min(-sy, 0), max(-sx, 0) : w + min(-sx, 0)]
        dst.addcmul_(src, weight[None, :, :, None, None])
    for ys, xs, factor in regions:
        total[:, :, :, ys, xs] *= factor.to(children.dtype)[None, :, :, None, None]
    return total, parent_w


def pyramid_step(prev: Tensor, prev_weights: Tensor, level: int, rectify_power: float, border_exponent: float) -> PyramidLevel:
    """Level ``level`` from level ``level - 1``: pool over the target, rectify, aggregate.

    Args:
        prev: ``(B, Cy, Cx, h, w)`` unrectified level ``level - 1`` (C0 for level 1).
        prev_weights: ``(Cy, Cx)``.
        level: >= 1.
        rectify_power: p of ``max(x, 0)^p``.
        border_exponent: beta.

    Returns:
        the new :class:`PyramidLevel`, values ``(B, Py, Px, ceil(h/2), ceil(w/2))``.
    """
    pooled = rectify(pool_target(prev), rectify_power)
    values, weights = aggregate_children(pooled, prev_weights, level, border_exponent)
    return PyramidLevel(level, values, weights)


def build_pyramid(
    c0: Tensor,
    rectify_power: float = 1.5,
    border_exponent: float = 0.9,
    atleast: int = 5,
    max_levels: int = 99,
) -> list[PyramidLevel]:
    """Bottom-up pyramid from C0 (spec §2.2 d), differentiable.

    Args:
        c0: ``(B, ny, nx, h, w)`` initial correlation.
        rectify_power: p of the rectification (1.5).
        border_exponent: beta of the border normalisation (0.9).
        atleast: stop after the level whose target side (min of h, w) is below ``2 * atleast``.
        max_levels: upper bound on the number of levels above C0.

    Returns:
        ``[level 0 (C0, weights 1), level 1, ..., level L]``; at least one level above C0.
    """
    if c0.ndim != 5:
        raise ValueError(f"C0 must be (B, ny, nx, h, w), got shape {tuple(c0.shape)}")
    if max_levels < 1:
        raise ValueError(f"max_levels must be >= 1, got {max_levels}")
    levels = [PyramidLevel(0, c0, torch.ones(c0.shape[1:3], dtype=torch.float64, device=c0.device))]
    for level in range(1, max_levels + 1):
        prev = levels[-1]
        levels.append(pyramid_step(prev.values, prev.weights, level, rectify_power, border_exponent))
        side = min(levels[-1].values.shape[-2:])
        if side < 2 * atleast or not bool((levels[-1].weights > 0).any()):
            break
    return levels
