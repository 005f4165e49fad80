"""Localisation-aware loss of NCNet's 4D volume: negative log-likelihood of the true cell.

NCNet's weak loss (:func:`matchmill.training.ncnet_task.match_scores`) rewards a *peaked* soft
assignment whatever cell the peak is on. With a correspondence oracle (:mod:`.pair_truth`) each
visible cell of image A has a true cell in B; this loss is ``-log p(true B cell | A cell)`` under the
same soft assignment NCNet's matcher uses (softmax over B's cells of the filtered volume), the
same from B to A, each averaged over the cells that have a target, and the two directions averaged.
Cells without a target (not visible, no depth, outside the other frame) do not contribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NCNET_LOSSES", "true_cell_nll"]

#: Values of ``ncnet.loss``.
NCNET_LOSSES = ("weak", "nll", "weak+nll")


def _direction_nll(logp: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of ``-logp[b, i, target[b, i]]`` over cells with ``target >= 0`` and their count.

    Args:
        logp: (B, n_from, n_to) log-probabilities over the ``to`` cells.
        target: (B, n_from) int64, -1 = no target.
    """
    valid = target >= 0
    picked = logp.gather(2, target.clamp(min=0).unsqueeze(2)).squeeze(2)
    return -(picked * valid).sum(), valid.sum()


def true_cell_nll(corr: Tensor, target_a2b: Tensor, target_b2a: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Mean NLL of the true cells in both directions (module docstring).

    Args:
        corr: (B, 1, hA, wA, hB, wB) filtered volume (NCNet ``forward``'s ``corr``).
        target_a2b: (B, hA * wA) int64 row-major B cell of each A cell, -1 where none.
        target_b2a: (B, hB * wB) int64 row-major A cell of each B cell, -1 where none.

    Returns:
        The scalar loss (0 with a gradient of 0 when no cell has a target) and floats to log:
        ``nll_a2b``, ``nll_b2a``, ``top1`` (share of target cells whose argmax is the true cell,
        both directions) and ``cells`` (target cells counted); 0.0 for a direction without targets.
    """
    if corr.ndim != 6 or corr.shape[1] != 1:
        raise ValueError(f"corr must have shape (B, 1, hA, wA, hB, wB), got {tuple(corr.shape)}")
    b, _, ha, wa, hb, wb = corr.shape
    n_a, n_b = ha * wa, hb * wb
    for name, t, n in (("target_a2b", target_a2b, n_a), ("target_b2a", target_b2a, n_b)):
        if tuple(t.shape) != (b, n) or t.dtype != torch.int64:
            raise ValueError(f"{name} must be an int64 tensor of shape ({b}, {n}), got {t.dtype} {tuple(t.shape)}")
        if bool((t >= n).any()) or bool((t < -1).any()):
            raise ValueError(f"{name} values must be in [-1, {n}), got [{int(t.min())}, {int(t.max())}]")
    flat = corr.reshape(b, n_a, n_b).float()
    logp_a2b = F.log_softmax(flat, dim=2)  # over B's cells, per A cell
    logp_b2a = F.log_softmax(flat, dim=1).transpose(1, 2)  # over A's cells, per B cell: (B, n_b, n_a)
    sum_a, cnt_a = _direction_nll(logp_a2b, target_a2b)
    sum_b, cnt_b = _direction_nll(logp_b2a, target_b2a)
    parts_loss = []
    for s, c in ((sum_a, cnt_a), (sum_b, cnt_b)):
        if int(c) > 0:
            parts_loss.append(s / c)
    loss = torch.stack(parts_loss).mean() if parts_loss else flat.sum() * 0.0
    with torch.no_grad():
        hits = ((logp_a2b.argmax(2) == target_a2b) & (target_a2b >= 0)).sum() + \
               ((logp_b2a.argmax(2) == target_b2a) & (target_b2a >= 0)).sum()
        cells = int(cnt_a + cnt_b)
        parts = {
            "nll_a2b": float(sum_a / cnt_a) if int(cnt_a) else 0.0,
            "nll_b2a": float(sum_b / cnt_b) if int(cnt_b) else 0.0,
            "top1": float(hits) / cells if cells else 0.0,
            "cells": float(cells),
        }
    return loss, parts
