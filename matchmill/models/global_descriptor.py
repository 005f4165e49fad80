"""Image-level descriptor for retrieval: GeM-pooled PUMP descriptors (pure PyTorch, no storage).

Why this descriptor: it needs no downloaded weights (PUMP is trained by the project, self-
supervised) and reuses the net the extract stage already runs. PUMP's dense descriptors are unit
vectors with signed components, so plain GeM (which needs non-negative inputs) is applied to the
positive and the negative parts separately and the two poolings are concatenated:

    g_r = l2norm([GeM_p(relu(d_r)), GeM_p(relu(-d_r))])   with  GeM_p(x) = (mean_hw x^p)^(1/p)

for each cell ``d_r`` of a ``grid x grid`` split of the dense map of the image resized so that
its longer side is ``max_size``; ``g = l2norm(concat_r g_r)``. The similarity of two images is the
dot product of their ``g`` (cosine, in [-1, 1]). The grid keeps the coarse layout: on a 20-image
demo scene (seed 1000) the correlation of similarity with the depth-reprojection overlap of the
pairs is 0.43 for one global GeM and 0.55 with the 2 x 2 grid (whitening on the collection
lowered it to 0.12-0.24, so it is off by default).

Known limit: the descriptor pools texture statistics. Two places built from the same materials
(brick, paving) look alike to it; the matching + verification that follow retrieval decide.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.geometry.frames import resize_max
from matchmill.models.pump.convmixer import DEFAULT_CONF as NET_CONF
from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized
from matchmill.models.pump.extract import run_padded
from matchmill.models.resnet import normalize_image
from matchmill.models.weights import load_weights

DEFAULT_CONF: dict[str, Any] = {
    "weights": "shipped:pump-convmixer-cpu",  # PUMP ConvMixer weights (shipped:NAME, path or URL); None = random init
    "cpu_sized": True,  # width-128 ConvMixer (must match the weights)
    "max_size": 320,  # longer image side (px) the net sees; smaller = faster, coarser
    "gem_p": 3.0,  # GeM exponent (1 = average pooling, large = max pooling)
    "grid": 2,  # GeM per cell of a grid x grid split, concatenated (1 = one global pooling)
}


def gem_signed(desc: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Signed GeM pooling.

    Args:
        desc: ``(B, D, H, W)`` dense descriptors.
        p: GeM exponent (>= 1).

    Returns:
        ``(B, 2 D)`` unit vectors: GeM of the positive parts, then of the negative parts.
    """
    if desc.ndim != 4:
        raise ValueError(f"gem_signed expects (B, D, H, W), got {tuple(desc.shape)}")
    if not p >= 1.0:
        raise ValueError(f"gem_p must be >= 1, got {p}")
    parts = [desc.clamp(min=0), (-desc).clamp(min=0)]
    pooled = [x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p) for x in parts]
    return F.normalize(torch.cat(pooled, dim=1), dim=1)


def gem_grid(desc: Tensor, p: float = 3.0, grid: int = 2) -> Tensor:
    """:func:`gem_signed` of each cell of a ``grid x grid`` split of ``desc`` ``(B, D, H, W)``.

    Returns:
        ``(B, 2 D grid^2)`` unit vectors (cells in row-major order).
    """
    B, D, H, W = desc.shape
    if grid < 1 or H < grid or W < grid:
        raise ValueError(f"gem_grid: grid {grid} does not fit a {W}x{H} map")
    cells = [gem_signed(desc[:, :, a * H // grid:(a + 1) * H // grid, b * W // grid:(b + 1) * W // grid], p)
             for a in range(grid) for b in range(grid)]
    return F.normalize(torch.cat(cells, dim=1), dim=1)


class GlobalDescriptor:
    """``(H, W, 3)`` uint8 RGB image -> ``(2 D grid^2,)`` float32 unit vector (see module docstring)."""

    def __init__(self, conf: Mapping[str, Any] | None = None, device: torch.device | str = "cpu") -> None:
        unknown = sorted(set(conf or {}) - set(DEFAULT_CONF))
        if unknown:
            raise ValueError(f"global descriptor: unknown keys {unknown} (known: {sorted(DEFAULT_CONF)})")
        self.conf = {**DEFAULT_CONF, **(conf or {})}
        if int(self.conf["max_size"]) < 32:
            raise ValueError(f"global descriptor: max_size must be >= 32, got {self.conf['max_size']}")
        torch.manual_seed(0)
        net_conf = cpu_sized(NET_CONF) if self.conf["cpu_sized"] else dict(NET_CONF)
        self.net: nn.Module = PumpConvMixer(net_conf).eval()
        if self.conf["weights"]:
            load_weights(self.net, self.conf["weights"])
        self.device = torch.device(device)
        self.net.to(self.device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"global descriptor expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
        small, _ = resize_max(image, int(self.conf["max_size"]))
        x = normalize_image(small).to(self.device)
        desc = run_padded(self.net, x)  # (1, D, h, w)
        pooled = gem_grid(desc.float(), float(self.conf["gem_p"]), int(self.conf["grid"]))
        return pooled[0].cpu().numpy().astype(np.float32)
