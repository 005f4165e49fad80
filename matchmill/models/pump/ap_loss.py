"""Pixel-wise AP loss on synthetic homography pairs (PUMP's self-supervised "S" loss), spec ``pump.md`` §2.3.

Differentiable average precision by soft histogram binning, descriptors only (no reliability).
For each query pixel ``q`` of img1, with ``g = round(H q)`` its ground-truth pixel in img2:

- positives: the 13 img2 pixels within ``pos_radius`` = 2 of ``g``;
- negatives: the 104 img2 pixels in the ring ``4 <= r <= 7`` around ``g``;
- distractors: random img2 pixels shared by all queries; those closer than 4 px to ``g`` get score 0;
- scores: cosine similarities ``desc1[q] . desc2[p]`` (descriptors are unit vectors);
- AP over 20 triangular bins centred at 1, 18/19, ..., 0 (the top bin also takes scores >= 1, the
  bottom bin scores <= 0): per bin the soft counts of all and of positive candidates, precision =
  cumsum(positives) / cumsum(all) from high to low similarity, AP = sum_k precision_k * pos_k / sum(pos).

Loss = mean over valid queries of ``1 - AP``. A query is invalid (ignored) when its ``g`` falls
outside img2 or ``H`` is not finite; a positive / negative candidate outside img2 is dropped from
its query's counts. With no valid query at all the loss is 0 (still connected to the graph).

Pixel convention: OpenCV pixel centres; ``H`` maps img1 pixels to img2 pixels. Queries are the
same positions for every batch item (as in the reference); ``H`` differs per item.

Memory: the gathered candidates are ``(B, C, Q, 117)`` floats (B=8, Q=784, C=128: ~0.4 GB in fp32,
twice that with gradients); scores and bins are ``(B, Q, 117 + D)``. CPU sizes are far smaller.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks

from .net_io import check_descriptors

__all__ = ["AP_CONF", "merge_conf", "ring_offsets", "sample_queries", "soft_ap", "pixel_ap", "ap_loss"]

AP_CONF: dict[str, Any] = {
    "border": 16,  # queries lie at least this many px inside img1's border (paper: 16)
    "num_queries": None,  # query pixels per batch; None = (H - 2 border)(W - 2 border) / 64 (784 at 256 x 256)
    "pos_radius": 2.0,  # positives: img2 pixels within this distance of the GT pixel (13 px)
    "neg_radii": (4.0, 7.0),  # negatives: img2 pixels with inner <= distance <= outer (104 px)
    "num_distractors": None,  # random img2 pixels per batch scored against every query; None = num_queries
    "distractor_min_dist": 4.0,  # a distractor closer than this to the GT pixel gets score 0
    "num_bins": 20,  # triangular histogram bins over [0, 1]
}

_EPS = 1e-12


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`AP_CONF` updated with ``conf``, validated (ValueError naming the key)."""
    out = strict_merge(AP_CONF, conf, "AP loss")
    inner, outer = (float(v) for v in out["neg_radii"])
    if not 0 <= float(out["pos_radius"]) < inner <= outer:
        raise ValueError(f"AP loss conf needs 0 <= pos_radius < neg_radii[0] <= neg_radii[1], got {out['pos_radius']}, {out['neg_radii']}")
    if int(out["num_bins"]) < 2 or int(out["border"]) < 0:
        raise ValueError("AP loss conf needs num_bins >= 2 and border >= 0")
    for key in ("num_queries", "num_distractors"):
        if out[key] is not None and int(out[key]) < 0:
            raise ValueError(f"AP loss conf '{key}' must be >= 0 or None, got {out[key]}")
    return out


def ring_offsets(r_min: float, r_max: float) -> Tensor:
    """``(K, 2)`` integer (dx, dy) offsets with ``r_min <= sqrt(dx^2 + dy^2) <= r_max``, row-major order."""
    n = int(r_max)
    d = torch.arange(-n, n + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    r2 = (dx * dx + dy * dy).float()
    keep = (r2 >= r_min * r_min - 1e-9) & (r2 <= r_max * r_max + 1e-9)
    return torch.stack([dx[keep], dy[keep]], dim=1)


def sample_queries(height: int, width: int, conf: Mapping[str, Any] | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``(Q, 2)`` int64 (x, y) query pixels of img1, uniform inside the border.

    ``Q = conf["num_queries"]`` or ``(H - 2 border)(W - 2 border) // 64``.
    """
    c = merge_conf(conf)
    b = int(c["border"])
    if height - 2 * b < 1 or width - 2 * b < 1:
        raise ValueError(f"image {width}x{height} leaves no query pixel inside a {b} px border")
    q = c["num_queries"]
    q = int(q) if q is not None else max(1, (height - 2 * b) * (width - 2 * b) // 64)
    xs = torch.randint(b, width - b, (q,), generator=generator)
    ys = torch.randint(b, height - b, (q,), generator=generator)
    return torch.stack([xs, ys], dim=1)


def soft_ap(scores: Tensor, is_pos: Tensor, valid: Tensor, num_bins: int = 20) -> Tensor:
    """Differentiable AP by triangular soft binning (see module docstring).

    A score ``s`` sits at ``t = (1 - s)(n - 1)`` on the bin axis (clamped to ``[0, n - 1]``, so the
    top bin takes ``s >= 1`` and the bottom bin ``s <= 0``) and gives weight ``1 - frac(t)`` to bin
    ``floor(t)`` and ``frac(t)`` to the next: exactly the triangular kernels
    ``max(0, 1 - |s - c_k| (n - 1))``, accumulated with two scatter-adds instead of an
    ``(..., K, n)`` weight tensor.

    Args:
        scores: ``(..., K)`` similarities.
        is_pos: ``(..., K)`` bool (broadcastable), True for positives.
        valid: ``(..., K)`` bool (broadcastable), False drops a candidate.
        num_bins: bins with centres ``1, 1 - 1/(n-1), ..., 0``.

    Returns:
        ``(...)`` AP in [0, 1] (0 when a row has no valid positive).
    """
    n = int(num_bins)
    t = ((1.0 - scores) * (n - 1)).clamp(0.0, n - 1.0)
    lo = t.detach().floor().clamp(max=n - 2).long()
    frac = t - lo.to(t.dtype)
    weight = torch.broadcast_to(valid, scores.shape).to(scores.dtype)
    pos_weight = weight * torch.broadcast_to(is_pos, scores.shape).to(scores.dtype)
    bins = scores.new_zeros(*scores.shape[:-1], n)

    def histogram(w: Tensor) -> Tensor:
        return bins.scatter_add(-1, lo, (1.0 - frac) * w).scatter_add(-1, lo + 1, frac * w)

    all_per_bin, pos_per_bin = histogram(weight), histogram(pos_weight)
    precision = pos_per_bin.cumsum(-1) / (all_per_bin.cumsum(-1) + _EPS)
    return (precision * pos_per_bin).sum(-1) / (pos_per_bin.sum(-1) + _EPS)


def _gather_rows(desc: Tensor, index: Tensor) -> Tensor:
    """``(B, C, H, W)`` descriptors at flat pixel indices ``(B, N)`` -> ``(B, N, C)``.

    Row copies with ``index_select`` (backward: ``index_add_``), much faster on CPU than an
    element-wise ``gather``; the ``(B * H * W, C)`` view is free for channels-last maps.
    """
    B, C, h, w = desc.shape
    rows = desc.permute(0, 2, 3, 1).reshape(B * h * w, C)
    offset = torch.arange(B, device=index.device).view(B, 1) * (h * w)
    return rows.index_select(0, (index + offset).reshape(-1)).view(B, index.shape[1], C)


def _check_inputs(desc1: Tensor, desc2: Tensor, H: Tensor) -> None:
    check_descriptors(desc1, "desc1")
    check_descriptors(desc2, "desc2")
    if desc1.shape != desc2.shape:
        raise ValueError(f"desc1 and desc2 must have the same (B, C, H, W) shape, got {tuple(desc1.shape)} and {tuple(desc2.shape)}")
    if not isinstance(H, Tensor) or tuple(H.shape) != (desc1.shape[0], 3, 3):
        shape = tuple(H.shape) if isinstance(H, Tensor) else type(H).__name__
        raise ValueError(f"H must be a (B, 3, 3) tensor with B = {desc1.shape[0]}, got {shape}")


def pixel_ap(
    desc1: Tensor,
    desc2: Tensor,
    H: Tensor,
    queries: Tensor,
    distractors: Tensor,
    conf: Mapping[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """AP of every query of every batch item.

    Args:
        desc1, desc2: ``(B, C, H, W)`` unit descriptors of img1 and img2.
        H: ``(B, 3, 3)`` img1 px -> img2 px.
        queries: ``(Q, 2)`` int64 (x, y) pixels of img1 (inside the image).
        distractors: ``(D, 2)`` int64 (x, y) pixels of img2.
        conf: overrides of :data:`AP_CONF` (radii, bins).

    Returns:
        ``ap`` ``(B, Q)`` and ``valid`` ``(B, Q)`` bool (GT pixel inside img2, H finite).
    """
    c = merge_conf(conf)
    _check_inputs(desc1, desc2, H)
    B, C, h, w = desc1.shape
    dev = desc1.device
    queries, distractors = queries.to(dev).long(), distractors.to(dev).long()
    if queries.ndim != 2 or queries.shape[1] != 2 or distractors.ndim != 2 or distractors.shape[1] != 2:
        raise ValueError(f"queries and distractors must be (N, 2) pixel arrays, got {tuple(queries.shape)}, {tuple(distractors.shape)}")
    qx, qy = queries[:, 0], queries[:, 1]
    if len(queries) and (qx.min() < 0 or qx.max() >= w or qy.min() < 0 or qy.max() >= h):
        raise ValueError(f"query pixels must lie inside img1 ({w}x{h})")
    Q = len(queries)

    # ground truth in img2, rounded to the pixel
    Hd = H.to(device=dev, dtype=torch.float64)
    pts = torch.cat([queries.double(), torch.ones(Q, 1, dtype=torch.float64, device=dev)], dim=1)  # (Q, 3)
    proj = torch.einsum("bij,qj->bqi", Hd, pts)
    gt = proj[..., :2] / proj[..., 2:3]  # (B, Q, 2)
    finite = torch.isfinite(gt).all(-1)
    gt = torch.where(finite.unsqueeze(-1), gt, torch.zeros_like(gt)).round()
    valid = finite & (gt[..., 0] >= 0) & (gt[..., 0] <= w - 1) & (gt[..., 1] >= 0) & (gt[..., 1] <= h - 1)
    gt = gt.long()

    # local candidates: positives then the negative ring
    pos_off = ring_offsets(0.0, float(c["pos_radius"])).to(dev)
    neg_off = ring_offsets(*(float(v) for v in c["neg_radii"])).to(dev)
    offsets = torch.cat([pos_off, neg_off])  # (K, 2)
    cand = gt.unsqueeze(2) + offsets  # (B, Q, K, 2)
    cand_ok = (cand[..., 0] >= 0) & (cand[..., 0] < w) & (cand[..., 1] >= 0) & (cand[..., 1] < h)
    cx, cy = cand[..., 0].clamp(0, w - 1), cand[..., 1].clamp(0, h - 1)

    # whole descriptor rows gathered from (B, h*w, C) views (free for channels-last maps); gather's
    # backward is a scatter-add, and the scores are batched matrix products
    K = offsets.shape[0]
    qdesc = _gather_rows(desc1, (qy * w + qx).expand(B, -1))  # (B, Q, C)
    local = _gather_rows(desc2, (cy * w + cx).reshape(B, Q * K)).view(B * Q, K, C)
    local_scores = torch.bmm(local, qdesc.reshape(B * Q, C, 1)).view(B, Q, K)

    ddesc = _gather_rows(desc2, (distractors[:, 1] * w + distractors[:, 0]).expand(B, -1))  # (B, D, C)
    dist_scores = torch.bmm(qdesc, ddesc.transpose(1, 2))  # (B, Q, D)
    delta = distractors.view(1, 1, -1, 2) - gt.unsqueeze(2)  # (B, Q, D, 2) integer pixels
    near = (delta * delta).sum(-1) < float(c["distractor_min_dist"]) ** 2
    dist_scores = dist_scores.masked_fill(near, 0.0)

    scores = torch.cat([local_scores, dist_scores], dim=-1)
    is_pos = torch.zeros(scores.shape[-1], dtype=torch.bool, device=dev)
    is_pos[: len(pos_off)] = True
    cand_valid = torch.cat([cand_ok, torch.ones_like(dist_scores, dtype=torch.bool)], dim=-1)
    ap = soft_ap(scores, is_pos, cand_valid, int(c["num_bins"]))
    return ap, valid


def ap_loss(
    desc1: Tensor,
    desc2: Tensor,
    H: Tensor,
    conf: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    *,
    queries: Tensor | None = None,
) -> Tensor:
    """Mean ``1 - AP`` over the valid queries (see module docstring).

    Args:
        desc1, desc2: ``(B, C, H, W)`` unit descriptors of img1 and img2 (same shape).
        H: ``(B, 3, 3)`` img1 px -> img2 px (finite: synthetic pairs only).
        conf: overrides of :data:`AP_CONF`.
        generator: torch generator drawing the queries and distractors (None: global RNG).
        queries: optional fixed ``(Q, 2)`` int64 (x, y) query pixels instead of random ones.

    Returns:
        Scalar loss in [0, 1]; 0 when no query is valid.
    """
    c = merge_conf(conf)
    _check_inputs(desc1, desc2, H)
    B, _, h, w = desc1.shape
    if queries is None:
        queries = sample_queries(h, w, c, generator)
    n_dist = c["num_distractors"]
    n_dist = int(n_dist) if n_dist is not None else len(queries)
    distractors = torch.stack(
        [torch.randint(0, w, (n_dist,), generator=generator), torch.randint(0, h, (n_dist,), generator=generator)], dim=1
    )
    ap, valid = pixel_ap(desc1, desc2, H, queries, distractors, c)
    if not bool(valid.any()):
        return (desc1.sum() + desc2.sum()) * 0.0
    return (1.0 - ap)[valid].mean()
