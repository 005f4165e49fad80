"""PUMP unsupervised loss: correlation pyramid + uniqueness (spec ``pump.md`` §2.2, supplementary §A).

Per direction A -> B: sub-sample both descriptor maps (crop ``border``, stride ``sub``), correlate
A's atomic patches with every B grid position (C0), build the pyramid (``pyramid_train``), then
score the top ("consolidated") level with :func:`uniqueness_loss`. The final loss averages A -> B
and B -> A. Range ``[-1, 0]``; -1 only in the limit ``eps -> 0`` with every top-level row one-hot.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from matchmill.config import merge_conf
from .pyramid_train import atomic_descriptors, build_pyramid, initial_correlation, rectify, subsample_grid

__all__ = ["DEFAULT_CONF", "uniqueness_loss", "pyramid_top", "unsupervised_loss"]

DEFAULT_CONF: dict = {
    "eps": 0.03,  # added to each top-level row's L1 norm before normalising (lets unmatched patches stay low)
    "atleast": 5,  # stop the pyramid after the level whose target side drops below 2 * atleast
    "sub": 2,  # stride of the prior sub-sampling of both descriptor maps (training atomic patch = 8x8 px)
    "border": 16,  # pixels cropped on each side of both maps before sub-sampling
    "rectify_p": 1.5,  # rectification power max(x, 0)^p inside the pyramid and on the top level
    "border_exponent": 0.9,  # beta of the border normalisation W^(1-beta) V(q)^beta (1 = mean of valid terms)
    "both_directions": True,  # average A->B and B->A (the released "way='12'"); False = A->B only
}


def uniqueness_loss(top: Tensor, eps: float = 0.03, rectify_power: float = 1.5) -> Tensor:
    """Uniqueness loss of a consolidated correlation volume (spec §2.2 e).

    ``T = max(top, 0)^p``, each parent's row (its ``h * w`` map) is L1-normalised with an epsilon,
    ``T~ = T / (sum(T) + eps)``, and the loss is ``-mean_{b, p} sum_q T~^2``.

    For a one-hot row of value ``v`` the row term is ``(v^p / (v^p + eps))^2``; for ``v = 1`` and
    ``eps = 0.03`` the loss is ``-(1 / 1.03)^2 = -0.942596...``, and ``-1`` as ``eps -> 0``. Mass
    spread evenly over ``k`` cells gives ``-k (t / (k t + eps))^2`` (about ``-1/k``), so the loss
    rises as mass spreads and falls as it concentrates (supplementary §A).

    Args:
        top: ``(B, P, h, w)`` top-level maps, P parents (unrectified).
        eps: L1 normalisation epsilon (>= 0).
        rectify_power: p of the rectification.

    Returns:
        scalar tensor in ``[-1, 0]``.
    """
    if top.ndim != 4:
        raise ValueError(f"top level must be (B, P, h, w), got shape {tuple(top.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rows = rectify(top, rectify_power).flatten(2)  # (B, P, h*w)
    normalised = rows / (rows.sum(dim=2, keepdim=True) + eps)
    return -normalised.pow(2).sum(dim=2).mean()


def pyramid_top(desc_a: Tensor, desc_b: Tensor, conf: Mapping) -> Tensor:
    """Top level of the A -> B training pyramid.

    Args:
        desc_a: ``(B, C, H, W)`` unit descriptors of the patch image A.
        desc_b: ``(B, C, H', W')`` unit descriptors of the target image B.
        conf: a full :data:`DEFAULT_CONF`-shaped config.

    Returns:
        ``(B, Py * Px, h_L, w_L)`` unrectified top level.
    """
    grid_a = subsample_grid(desc_a, conf["border"], conf["sub"])
    grid_b = subsample_grid(desc_b, conf["border"], conf["sub"])
    c0 = initial_correlation(atomic_descriptors(grid_a), grid_b)
    top = build_pyramid(c0, conf["rectify_p"], conf["border_exponent"], conf["atleast"])[-1].values
    return top.flatten(1, 2)


def unsupervised_loss(desc_a: Tensor, desc_b: Tensor, conf: dict | None = None) -> Tensor:
    """PUMP unsupervised loss of a batch of real pairs, both directions averaged.

    Args:
        desc_a: ``(B, C, H, W)`` unit descriptors of the first images.
        desc_b: ``(B, C, H, W)`` unit descriptors of the second images (same B and C; H, W may differ).
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        scalar tensor in ``[-1, 0]`` (differentiable w.r.t. both maps).
    """
    conf = merge_conf(DEFAULT_CONF, conf, "PUMP unsupervised loss")
    for name, desc in (("desc_a", desc_a), ("desc_b", desc_b)):
        if desc.ndim != 4:
            raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(desc.shape)}")
    if desc_a.shape[:2] != desc_b.shape[:2]:
        raise ValueError(f"desc_a {tuple(desc_a.shape)} and desc_b {tuple(desc_b.shape)} differ in batch or channels")
    loss = uniqueness_loss(pyramid_top(desc_a, desc_b, conf), conf["eps"], conf["rectify_p"])
    if conf["both_directions"]:
        loss = 0.5 * (loss + uniqueness_loss(pyramid_top(desc_b, desc_a, conf), conf["eps"], conf["rectify_p"]))
    return loss
