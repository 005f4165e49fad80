"""Feature-pyramid backbones that NCNet (f4) and the Patch2Pix regressors (f0..f3) read.

One place defines what a backbone is: a module whose forward maps ``(B, 3, H, W)`` ImageNet-normalised
RGB (``H, W`` multiples of 16) to five maps ``[f0, f1, f2, f3, f4]`` at the strides
:attr:`strides` with :attr:`channels` channels, and how each named backbone is built
(:func:`build_backbone`). Both the extract stage (stored maps) and the training tasks (maps on the
fly) build them here.

==========  =========================================  ====================================
backbone    levels (stride: content, channels)          weights
==========  =========================================  ====================================
resnet34    1: image 3 | 2: conv1 64 | 4: layer1 64 |   torchvision resnet34 (ImageNet) if
            8: layer2 128 | 8: layer3 256 (NC)          the user has it; else a seeded init
pump        1: image 3 | 2: head D | 4: mixer width |   PUMP's self-supervised ConvMixer
            8: mixer width pooled | 8: head D pooled    (``matchmill/weights/`` ships a CPU-sized one)
==========  =========================================  ====================================

The PUMP pyramid (:class:`PumpPyramid`) reads PUMP's descriptor net without retraining it:
f1 is the unit-normalised head output before the final upsampling (PUMP's descriptors at stride 2),
f2 the last mixer block (stride 4), f3 its 2x2 average (stride 8), and f4, the map NCNet
correlates, the 4x4 average of f1 (a stride-8 descriptor: PUMP's descriptor averaged over the
cell). The ConvMixer is trained for pixel matching (AP + uniqueness losses), which is what
ImageNet features stand in for in the Patch2Pix paper.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import merge_conf

from .pump.convmixer import DEFAULT_CONF as CONVMIXER_CONF
from .pump.convmixer import PumpConvMixer, cpu_sized
from .resnet import DEFAULT_CONF as RESNET_CONF
from .resnet import ResNet34Pyramid
from .weights import load_weights

__all__ = ["BACKBONES", "PYRAMID_CONF", "KNOWN_CHANNELS", "PumpPyramid", "build_backbone", "backbone_channels"]

#: Backbone names :func:`build_backbone` knows.
BACKBONES = ("resnet34", "pump")

#: The five level channel counts of each backbone layout (for weights whose layout must be guessed).
KNOWN_CHANNELS: dict[str, tuple[int, ...]] = {
    "resnet34": (3, 64, 64, 128, 256),
    "pump-cpu": (3, 128, 128, 128, 128),  # PumpConvMixer width 128, out_dim 128
    "pump": (3, 128, 512, 512, 128),  # the paper's width 512
}

PYRAMID_CONF: dict[str, Any] = {
    "cpu_sized": True,  # pump: the width-128 ConvMixer (CPU budget); False = the paper's width 512
    "net": None,  # pump: overrides of models.pump.convmixer.DEFAULT_CONF (width, depth, ...)
    "f3_pool": 2,  # pump: f3 = average of f2 over f3_pool x f3_pool cells (stride 4 -> 8)
    "f4_pool": 4,  # pump: f4 = average of f1 over f4_pool x f4_pool cells (stride 2 -> 8)
}


class PumpPyramid(nn.Module):
    """PUMP's ConvMixer as a 5-level pyramid (see the module docstring), frozen.

    Args:
        net: a :class:`~matchmill.models.pump.convmixer.PumpConvMixer` (patch size 4).
        conf: overrides of :data:`PYRAMID_CONF` (``f3_pool``, ``f4_pool``).

    Shape:
        - Input: :math:`(B, 3, H, W)` normalised RGB, ``H, W`` multiples of 16.
        - Output: ``[f0 (B, 3, H, W), f1 (B, D, H/2, W/2), f2 (B, w, H/4, W/4), f3 (B, w, H/8, W/8),
          f4 (B, D, H/8, W/8)]`` with ``D`` the descriptor dim and ``w`` the mixer width.
    """

    multiple = 16

    def __init__(self, net: nn.Module, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(PYRAMID_CONF, conf, "PumpPyramid")
        if int(net.conf["patch_size"]) != 4:
            raise ValueError(f"PumpPyramid needs a ConvMixer of patch size 4, got {net.conf['patch_size']}")
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    @property
    def channels(self) -> list[int]:
        d, w = int(self.net.conf["out_dim"]), int(self.net.conf["width"])
        return [3, d, w, w, d]

    @property
    def strides(self) -> list[int]:
        return [1, 2, 4, 4 * int(self.conf["f3_pool"]), 2 * int(self.conf["f4_pool"])]

    def train(self, mode: bool = True) -> "PumpPyramid":
        """Frozen: the ConvMixer (its BatchNorm statistics included) stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(f"PumpPyramid: expected (B, 3, H, W) with H, W multiples of {self.multiple}, "
                             f"got {tuple(x.shape)}")
        mixed, half = self.net.forward_levels(x)
        f1 = F.normalize(half, p=2, dim=1)
        f3 = F.avg_pool2d(mixed, int(self.conf["f3_pool"]))
        f4 = F.avg_pool2d(f1, int(self.conf["f4_pool"]))
        return [x, f1.contiguous(), mixed.contiguous(), f3.contiguous(), f4.contiguous()]


def build_backbone(name: str, weights: str | None = None, seed: int = 0,
                   conf: Mapping[str, Any] | None = None) -> nn.Module:
    """A frozen pyramid backbone in eval mode (no gradients).

    Args:
        name: ``"resnet34"`` or ``"pump"`` (:data:`BACKBONES`).
        weights: resnet34: a torchvision-layout resnet34 state dict; pump: a PumpConvMixer state dict
            (what ``matchmill train pump`` writes, or a shipped ``shipped:NAME``). None = seeded random init.
        seed: seed of the random initialisation (used before the weights are loaded).
        conf: overrides of :data:`PYRAMID_CONF` (pump only).
    """
    torch.manual_seed(int(seed))
    if name == "resnet34":
        net = ResNet34Pyramid({**RESNET_CONF, "weights": weights})
    elif name == "pump":
        c = merge_conf(PYRAMID_CONF, conf, "PumpPyramid")
        net_conf = cpu_sized(CONVMIXER_CONF) if c["cpu_sized"] else dict(CONVMIXER_CONF)
        net_conf.update(c["net"] or {})
        mixer = PumpConvMixer(net_conf)
        if weights:
            load_weights(mixer, weights, strict=True)
        net = PumpPyramid(mixer, {k: c[k] for k in ("f3_pool", "f4_pool")})
    else:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    net = net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def backbone_channels(net: nn.Module) -> list[int]:
    """The five level channel counts of a backbone built by :func:`build_backbone`."""
    return list(net.channels)
