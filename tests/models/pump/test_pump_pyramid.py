"""PUMP correlation pyramid: training form vs a slow loop reference (values and gradients),
inference form vs training form, top-down back-tracking vs a loop reference, chunked vs unchunked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matchmill.models.pump.dense_match import match_single_scale
from matchmill.models.pump.pyramid_infer import build_inference_pyramid, iter_final_level0, level0_rows, level1_rows
from matchmill.models.pump.pyramid_train import (
    atomic_descriptors,
    build_pyramid,
    initial_correlation,
    rectify,
    subsample_grid,
)

P, BETA = 1.5, 0.9
QUADS = [(-1, -1), (-1, 1), (1, -1), (1, 1)]


# ----------------------------------------------------------------------------- slow references


def ref_pool(m: torch.Tensor) -> torch.Tensor:
    """3x3/s2/p1 max-pool of one (h, w) map with explicit loops (autograd through torch.max)."""
    h, w = m.shape
    oh, ow = math.ceil(h / 2), math.ceil(w / 2)
    rows = []
    for qy in range(oh):
        row = []
        for qx in range(ow):
            window = [m[y, x] for y in range(2 * qy - 1, 2 * qy + 2) for x in range(2 * qx - 1, 2 * qx + 2) if 0 <= y < h and 0 <= x < w]
            row.append(torch.stack(window).max())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_children(level: int, u: int, v: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """[(child index, quadrant)] of parent (u, v), straight from the spec's wording."""
    out = []
    for sy, sx in QUADS:
        if level == 1:
            child = (u - 1 if sy < 0 else u, v - 1 if sx < 0 else v)
        else:
            g = 2 ** (level - 2)
            child = (u + sy * g, v + sx * g)
        out.append((child, (sy, sx)))
    return out


def ref_pyramid(c0: torch.Tensor, n_levels: int) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Training pyramid for one batch item: [(values (Py, Px, h, w), weights (Py, Px))] per level."""
    ny, nx = c0.shape[:2]
    levels = [(c0, np.ones((ny, nx)))]
    for level in range(1, n_levels + 1):
        prev, prev_w = levels[-1]
        cy, cx = prev_w.shape
        pooled = {(i, j): rectify(ref_pool(prev[i, j]), P) for i in range(cy) for j in range(cx)}
        h, w = next(iter(pooled.values())).shape
        py, px = (cy + 1, cx + 1) if level == 1 else (cy, cx)
        weights = np.zeros((py, px))
        maps = []
        for u in range(py):
            row = []
            for v in range(px):
                kids = [(c, s) for c, s in ref_children(level, u, v) if 0 <= c[0] < cy and 0 <= c[1] < cx]
                total_w = sum(prev_w[c] for c, _ in kids)
                weights[u, v] = total_w
                cells = []
                for qy in range(h):
                    for qx in range(w):
                        num, valid = c0.new_zeros(()), 0.0
                        for c, (sy, sx) in kids:
                            y, x = qy + sy, qx + sx
                            if 0 <= y < h and 0 <= x < w:
                                num = num + prev_w[c] * pooled[c][y, x]
                                valid += prev_w[c]
                        cells.append(num / (total_w ** (1 - BETA) * valid**BETA) if valid > 0 else c0.new_zeros(()))
                row.append(torch.stack(cells).view(h, w))
            maps.append(torch.stack(row))
        levels.append((torch.stack(maps), weights))
    return levels


def ref_backtrack(levels: list[torch.Tensor], legacy: bool = True) -> torch.Tensor:
    """Top-down pass with loops; ``levels`` are rectified (Py, Px, h, w) maps; returns the final level 0."""
    levels = [lv.clone() for lv in levels]
    for level in range(len(levels) - 1, 0, -1):
        parents, children = levels[level], levels[level - 1]
        orig = children.clone()
        cy, cx, h, w = children.shape
        py, px = parents.shape[:2]
        for i in range(cy):
            for j in range(cx):
                # parents of child (i, j) and the child's quadrant relative to each
                mine = [((u, v), s) for u in range(py) for v in range(px) for c, s in ref_children(level, u, v) if c == (i, j)]
                for qy in range(parents.shape[2]):
                    for qx in range(parents.shape[3]):
                        best, arg = -math.inf, None
                        for y in range(2 * qy - 1, 2 * qy + 2):
                            for x in range(2 * qx - 1, 2 * qx + 2):
                                if not (0 <= y < h and 0 <= x < w):
                                    continue
                                if legacy and ((y == h - 1 and h > 1) or (x == w - 1 and w > 1)):
                                    continue
                                if orig[i, j, y, x] > best:
                                    best, arg = float(orig[i, j, y, x]), (y, x)
                        bonus = 0.0
                        for (u, v), (sy, sx) in mine:
                            ty, tx = qy - sy, qx - sx
                            if 0 <= ty < parents.shape[2] and 0 <= tx < parents.shape[3]:
                                bonus = max(bonus, float(parents[u, v, ty, tx]))
                        y, x = arg
                        children[i, j, y, x] = max(float(children[i, j, y, x]), float(orig[i, j, y, x]) + bonus)
    return levels[0]


# ----------------------------------------------------------------------------- fixtures


def unit_maps(seed: int, c: int, h: int, w: int, positive: bool = False, smooth: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    if positive:
        x = x.abs() + 0.05
    if smooth > 1:
        x = F.avg_pool2d(x, smooth, 1, smooth // 2)
    return F.normalize(x, dim=1)[0]


# ----------------------------------------------------------------------------- training form


@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (2, 2, 8, 5)])
def test_training_pyramid_values_and_gradients_match_loop_reference(shape):
    ny, nx, h, w = shape
    g = torch.Generator().manual_seed(ny * 100 + h)
    c0 = torch.randn(2, ny, nx, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    levels = build_pyramid(c0, P, BETA, atleast=1)  # stop after the level whose side < 2 -> side 1 included
    assert min(levels[-1].values.shape[-2:]) == 1 and len(levels) == 1 + math.ceil(math.log2(min(h, w)))
    probes = [torch.randn(lv.values.shape, generator=g, dtype=torch.float64) for lv in levels[1:]]
    grad = torch.autograd.grad(sum((lv.values * p).sum() for lv, p in zip(levels[1:], probes)), c0)[0]
    for b in range(2):
        c0_ref = c0.detach()[b].clone().requires_grad_(True)
        ref = ref_pyramid(c0_ref, len(levels) - 1)
        for lv, (ref_vals, ref_w), probe in zip(levels[1:], ref[1:], probes):
            torch.testing.assert_close(lv.values[b], ref_vals, rtol=1e-10, atol=1e-12)
            np.testing.assert_array_equal(lv.weights.numpy(), ref_w)
        grad_ref = torch.autograd.grad(sum((r[0] * p[b]).sum() for r, p in zip(ref[1:], probes)), c0_ref)[0]
        torch.testing.assert_close(grad[b], grad_ref, rtol=1e-9, atol=1e-12)
    assert grad.abs().sum() > 0


def test_border_parents_and_border_normalisation():
    """Corner parents have 1 child at level 1; at a border target cell only the valid children count."""
    c0 = torch.full((1, 2, 2, 8, 8), 0.5, dtype=torch.float64)
    lv1 = build_pyramid(c0, P, BETA, max_levels=1)[1]
    np.testing.assert_array_equal(lv1.weights.numpy(), [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    r = 0.5**P
    vals = lv1.values[0]
    # interior target cell of the centre parent: plain average of 4 equal maps
    assert vals[1, 1, 1, 1].item() == pytest.approx(r)
    # corner parent (0, 0), only child in quadrant (+1, +1): its shifted map is outside at the last row/col
    assert vals[0, 0, 3, 3].item() == 0.0
    assert vals[0, 0, 3, 1].item() == 0.0
    assert vals[0, 0, 0, 0].item() == pytest.approx(r)
    assert vals[0, 0, 2, 2].item() == pytest.approx(r)
    # centre parent, target cell (0, 0): 1 of 4 children valid -> r * w / (W^0.1 * w^0.9) = r * (1/4)^0.1
    assert vals[1, 1, 0, 0].item() == pytest.approx(r * 0.25**0.1)
    # beta = 1 would be the plain mean of the valid terms
    lv1_mean = build_pyramid(c0, P, 1.0, max_levels=1)[1]
    assert lv1_mean.values[0, 1, 1, 0, 0].item() == pytest.approx(r)


def test_training_stop_rule_with_256_crops():
    """256 px crops, border 16, sub 2: C0 (28, 28, 112, 112), levels 1..4 with top (29, 29, 7, 7)."""
    desc = F.normalize(torch.randn(1, 8, 256, 256), dim=1)
    grid = subsample_grid(desc, 16, 2)
    c0 = initial_correlation(atomic_descriptors(grid), grid)
    assert tuple(c0.shape) == (1, 28, 28, 112, 112)
    levels = build_pyramid(c0, P, BETA, atleast=5)
    assert [tuple(lv.values.shape[1:]) for lv in levels[1:]] == [(29, 29, 56, 56), (29, 29, 28, 28), (29, 29, 14, 14), (29, 29, 7, 7)]
    assert levels[-1].weights.max().item() == 256


# ----------------------------------------------------------------------------- inference form


def test_inference_levels_equal_rectified_training_levels():
    """Identical when the training form runs on the full-resolution maps (border 0, sub 1)."""
    d1, d2 = unit_maps(1, 8, 20, 24), unit_maps(2, 8, 22, 26)
    n_levels = 4
    grid1 = subsample_grid(d1[None], 0, 1)
    train = build_pyramid(initial_correlation(atomic_descriptors(grid1), d2[None]), P, BETA, max_levels=n_levels, atleast=0)
    pyr = build_inference_pyramid(d1, d2, levels=n_levels, min_shape=0, memory_budget_mb=0, dtype=torch.float64)
    assert pyr.top_level == n_levels == len(train) - 1
    ny = pyr.grid[0]
    torch.testing.assert_close(level0_rows(pyr, 0, ny), rectify(train[0].values[0], P), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(level1_rows(pyr, 0, ny + 1), rectify(train[1].values[0], P), rtol=1e-12, atol=1e-14)
    for level in range(2, n_levels + 1):
        torch.testing.assert_close(pyr.stored[level], rectify(train[level].values[0], P), rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(pyr.weights[level].numpy(), train[level].weights.numpy())


def test_inference_stop_rule():
    """A level is built while the current target side is > min_shape: 96 -> 48 -> 24 -> 12 -> 6 -> 3."""
    d1, d2 = unit_maps(3, 4, 32, 32), unit_maps(4, 4, 96, 100)
    pyr = build_inference_pyramid(d1, d2, min_shape=5, dtype=torch.float64)
    assert [s[0] for s in pyr.sizes] == [96, 48, 24, 12, 6, 3]
    # 4x4 cells -> 5x5 parents: level-5 children are 8 apart, no parent has one -> stop after level 4
    small = build_inference_pyramid(d1[:, :16, :16], d2, min_shape=5, dtype=torch.float64)
    assert small.top_level == 4 and (small.weights[4] > 0).any()
    assert build_inference_pyramid(d1, d2, levels=2, dtype=torch.float64).top_level == 2
    tiny = build_inference_pyramid(d1, unit_maps(5, 4, 5, 9), min_shape=5, dtype=torch.float64)
    assert tiny.top_level == 0


@pytest.mark.parametrize("legacy", [True, False])
def test_backtracking_matches_loop_reference(legacy):
    d1, d2 = unit_maps(6, 6, 12, 16, positive=True), unit_maps(7, 6, 13, 11, positive=True)
    pyr = build_inference_pyramid(d1, d2, levels=3, min_shape=0, memory_budget_mb=0, dtype=torch.float64, legacy_window=legacy)
    ny = pyr.grid[0]
    levels = [level0_rows(pyr, 0, ny), level1_rows(pyr, 0, ny + 1), pyr.stored[2].clone(), pyr.stored[3].clone()]
    expected = ref_backtrack(levels, legacy)
    final = torch.cat([rows for _, rows in iter_final_level0(pyr)])
    torch.testing.assert_close(final, expected, rtol=1e-12, atol=1e-12)
    assert (final > levels[0]).sum() > 0  # some entries got a bonus


def test_chunked_equals_unchunked():
    d1 = unit_maps(8, 16, 40, 48, smooth=5).float()
    d2 = unit_maps(9, 16, 36, 44, smooth=5).float()
    results, chunks = [], []
    for budget in (0.0, 1e-3, 1.0):
        pyr = build_inference_pyramid(d1, d2, memory_budget_mb=budget)
        chunks.append(pyr.chunk_rows)
        results.append(torch.cat([rows.clone() for _, rows in iter_final_level0(pyr)]))
    assert chunks[0] == 10 and chunks[1] == 1 and 1 < chunks[2] < 10, chunks
    for other in results[1:]:
        assert torch.equal(results[0], other)
    matches = [match_single_scale(d1, d2, {"memory_budget_mb": b}) for b in (0.0, 1e-3, 1.0)]
    assert len(matches[0]) > 0
    for other in matches[1:]:
        np.testing.assert_array_equal(matches[0], other)
