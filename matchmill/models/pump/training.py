"""One PUMP optimisation step on a mixed batch of synthetic (S) and real (U) pairs, spec ``pump.md`` §2.1, §2.5.

    total = AP loss (S samples: finite H) + pump_weight (0.3) * PUMP unsupervised loss (U samples: NaN H)

An empty part contributes 0. Both images of every pair go through the net in one ``(2B, 3, S, S)``
forward (BatchNorm in train mode sees the whole batch). Optimiser: Adam, constant lr 1e-4,
weight decay 5e-4 (L2 added to the gradient, as ``torch.optim.Adam`` does). The paper's
memory trick (per-loss backward to detached descriptors, AP in chunks of 256 queries) is not
needed for correctness and is left out.

Pure PyTorch; the Ray Train loop, data loading and checkpoints live elsewhere and call these.
The PUMP unsupervised loss is :func:`matchmill.models.pump.unsupervised_loss.unsupervised_loss`,
computed only when a batch holds U samples.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks

from .ap_loss import ap_loss
from .net_io import normalize_images
from .synthetic import TrainingPair
from .unsupervised_loss import unsupervised_loss

__all__ = ["TRAIN_CONF", "merge_conf", "make_optimizer", "collate_pairs", "compute_losses", "training_step"]

TRAIN_CONF: dict[str, Any] = {
    "lr": 1e-4,  # Adam learning rate, constant (paper: 1e-4, no schedule)
    "weight_decay": 5e-4,  # Adam weight decay (paper: 5e-4)
    "pump_weight": 0.3,  # weight of the unsupervised PUMP loss on U samples (paper: 0.3; AP weight is 1)
    "ap": None,  # overrides of matchmill.models.pump.ap_loss.AP_CONF (queries, radii, bins)
    "pump": None,  # conf passed to unsupervised_loss (None = its defaults)
}


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`TRAIN_CONF` updated with ``conf`` (ValueError on unknown keys)."""
    out = strict_merge(TRAIN_CONF, conf, "PUMP training")
    if float(out["lr"]) <= 0 or float(out["weight_decay"]) < 0 or float(out["pump_weight"]) < 0:
        raise ValueError(f"PUMP training conf needs lr > 0, weight_decay >= 0, pump_weight >= 0, got {out}")
    return out


def make_optimizer(net: nn.Module, conf: Mapping[str, Any] | None = None) -> torch.optim.Adam:
    """Adam over the trainable parameters with ``lr`` and ``weight_decay`` from :data:`TRAIN_CONF`."""
    c = merge_conf(conf)
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))


def collate_pairs(pairs: Sequence[TrainingPair]) -> dict[str, Tensor]:
    """Stack pairs into a batch.

    Returns:
        ``image1``, ``image2``: ``(B, S, S, 3)`` uint8; ``H``: ``(B, 3, 3)`` float64 (all NaN for U pairs).
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    sizes = {p.img1.shape for p in pairs} | {p.img2.shape for p in pairs}
    if len(sizes) != 1:
        raise ValueError(f"all crops of a batch must have the same shape, got {sorted(sizes)}")
    return {
        "image1": torch.from_numpy(np.stack([p.img1 for p in pairs])),
        "image2": torch.from_numpy(np.stack([p.img2 for p in pairs])),
        "H": torch.from_numpy(np.stack([np.asarray(p.H, np.float64) for p in pairs])),
    }


def _check_batch(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    missing = [k for k in ("image1", "image2", "H") if k not in batch]
    if missing:
        raise ValueError(f"PUMP training batch lacks {missing}; expected image1, image2 (B, S, S, 3) uint8 and H (B, 3, 3)")
    img1, img2, H = batch["image1"], batch["image2"], batch["H"]
    if img1.shape != img2.shape:
        raise ValueError(f"batch image1 and image2 shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if H.ndim != 3 or tuple(H.shape) != (img1.shape[0], 3, 3):
        raise ValueError(f"batch H must be (B, 3, 3) with B = {img1.shape[0]}, got {tuple(H.shape)}")
    finite, nan = torch.isfinite(H).all(-1).all(-1), torch.isnan(H).all(-1).all(-1)
    mixed = ~(finite | nan)
    if bool(mixed.any()):
        raise ValueError(f"batch H rows {mixed.nonzero().flatten().tolist()} are neither finite (S pair) nor all NaN (U pair)")
    return img1, img2, H


def compute_losses(
    net: nn.Module,
    batch: Mapping[str, Tensor],
    conf: Mapping[str, Any] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    detach_parts: bool = True,
) -> tuple[Tensor, dict[str, Tensor | int]]:
    """Forward both images and return ``AP (S) + pump_weight * PUMP (U)`` without stepping.

    Args:
        net: descriptor net (``(B, 3, S, S)`` normalised RGB -> ``(B, D, S, S)`` unit descriptors),
            or a wrapper of it (e.g. DDP); its train / eval mode is left as the caller set it.
        batch: ``image1``, ``image2`` ``(B, S, S, 3)`` uint8 and ``H`` ``(B, 3, 3)`` (finite for S
            pairs, all NaN for U pairs), on the net's device.
        conf: overrides of :data:`TRAIN_CONF`.
        generator: torch generator (on the batch's device) for the AP loss's query draws, or one
            per sample (``B`` of them): then the AP loss is the mean of per-sample AP losses, each
            with its own queries, so a sample's loss does not depend on the batch it is in.
        detach_parts: return ``ap_loss`` / ``pump_loss`` detached (for logging) or with their graph
            (for a caller that weights them itself, e.g. a data-parallel worker).

    Returns:
        ``total`` (scalar, differentiable) and the parts ``ap_loss``, ``pump_loss`` (scalars, 0
        for an empty part), ``num_s``, ``num_u``.
    """
    c = merge_conf(conf)
    img1, img2, H = _check_batch(batch)
    B = img1.shape[0]
    desc = net(normalize_images(torch.cat([img1, img2])))
    d1, d2 = desc[:B].float(), desc[B:].float()
    is_s = torch.isfinite(H).all(-1).all(-1)
    zero = desc.sum() * 0.0
    if not bool(is_s.any()):
        ap = zero
    elif isinstance(generator, (list, tuple)):
        if len(generator) != B:
            raise ValueError(f"got {len(generator)} generators for a batch of {B}")
        idx = is_s.nonzero().flatten().tolist()
        ap = torch.stack([ap_loss(d1[i:i + 1], d2[i:i + 1], H[i:i + 1], c["ap"], generator[i]) for i in idx]).mean()
    else:
        ap = ap_loss(d1[is_s], d2[is_s], H[is_s], c["ap"], generator)
    if bool((~is_s).any()):
        pump = unsupervised_loss(d1[~is_s], d2[~is_s], c["pump"])
    else:
        pump = zero
    total = ap + float(c["pump_weight"]) * pump
    if detach_parts:
        ap, pump = ap.detach(), pump.detach()
    parts = {"ap_loss": ap, "pump_loss": pump, "num_s": int(is_s.sum()), "num_u": int((~is_s).sum())}
    return total, parts


def training_step(
    net: nn.Module,
    batch: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    conf: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Forward both images, compute AP (S) + pump_weight * PUMP (U), backward, one optimiser step.

    Args:
        net: descriptor net (``(B, 3, S, S)`` normalised RGB -> ``(B, D, S, S)`` unit descriptors);
            put in train mode here.
        batch: ``image1``, ``image2`` ``(B, S, S, 3)`` uint8 and ``H`` ``(B, 3, 3)`` (finite for S
            pairs, all NaN for U pairs), e.g. from :func:`collate_pairs`.
        optimizer: e.g. :func:`make_optimizer`.
        conf: overrides of :data:`TRAIN_CONF`.
        generator: torch generator for the AP loss's query / distractor draws.

    Returns:
        ``loss``, ``ap_loss``, ``pump_loss`` (0.0 for an empty part), ``num_s``, ``num_u``.
    """
    net.train()
    total, parts = compute_losses(net, batch, conf, generator)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {
        "loss": float(total.detach()),
        "ap_loss": float(parts["ap_loss"]),
        "pump_loss": float(parts["pump_loss"]),
        "num_s": int(parts["num_s"]),
        "num_u": int(parts["num_u"]),
    }
