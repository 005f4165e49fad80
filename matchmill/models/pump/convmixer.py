"""PUMP's ConvMixer: dense, unit-norm 128-D descriptors for every pixel.

Written from ``docs/specs/pump.md`` §1.1 (a description of the released model, not its code).

Layer sequence (every conv has a bias; every activation is ReLU followed by BatchNorm):

    ==========================  ==========================================  ================
    layer                       op                                          output
    ==========================  ==========================================  ================
    stem                        5x5 conv 3 -> width/4, pad 2; ReLU; BN      (B, w/4, H, W)
    patch_embed                 4x4 conv stride 4 -> width; ReLU; BN        (B, w, H/4, W/4)
    blocks[0..depth-1]          x + BN(ReLU(dw 9x9 conv(x)))  (residual)    (B, w, H/4, W/4)
                                then BN(ReLU(1x1 conv))       (no skip)
    head                        1x1 conv -> out_dim * (p/2)^2               (B, 512, H/4, W/4)
                                PixelShuffle(p/2)                           (B, 128, H/2, W/2)
                                bilinear x2 (align_corners=False)           (B, 128, H, W)
    (output)                    L2 normalisation over channels              (B, 128, H, W)
    ==========================  ==========================================  ================

Input: ImageNet-normalised RGB (:func:`matchmill.models.pump.net_io.normalize_images` for a uint8
batch, :func:`matchmill.models.resnet.normalize_image` for one numpy image). **H and W must be
multiples of** ``patch_size`` (4); the forward raises a ValueError otherwise. Callers with other
sizes pad right/bottom and crop the output (:func:`matchmill.models.pump.extract.run_padded`),
which leaves every pixel's coordinates unchanged.

Paper size (width 512): 3,469,568 learnable parameters. :func:`cpu_sized` (width 128): 327,104.
The weights-file layout is this module's own state dict (``stem.0.weight``, ``blocks.3.pw.0.bias``,
...); the released naver/pump checkpoints (``PUMP.pt``, ``PUMP-stytrf.pt``: ``nn.Sequential`` indices)
load too, through the key map of :mod:`matchmill.models.official_checkpoints`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks
from matchmill.models.weights import load_weights

from .net_io import check_image_batch

__all__ = ["DEFAULT_CONF", "PumpConvMixer", "cpu_sized", "merge_conf"]

DEFAULT_CONF: dict[str, Any] = {
    "width": 512,  # channels of the patch embedding and of every mixer block (paper: 512)
    "stem_width": None,  # channels of the full-resolution stem; None = width // 4 (paper: 128)
    "stem_kernel": 5,  # kernel of the stem conv, stride 1, 'same' padding (paper: 5)
    "patch_size": 4,  # kernel = stride of the patch embedding; even; input H, W must be multiples of it
    "depth": 7,  # number of ConvMixer blocks (paper: 7)
    "kernel_size": 9,  # depthwise kernel of each block, odd (paper: 9)
    "out_dim": 128,  # descriptor channels (paper: 128)
    "channels_last": True,  # run the convs in channels-last memory format: same outputs, ~5x faster depthwise backward on CPU
    "weights": None,  # optional .pth / .safetensors state dict of this module, loaded weights-only
    "strict": True,  # loading `weights`: fail on missing or unexpected keys (mis-shaped keys always fail)
}


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_CONF` updated with ``conf``, validated (ValueError on unknown keys / bad values)."""
    out = strict_merge(DEFAULT_CONF, conf, "PumpConvMixer")
    for key in ("width", "stem_kernel", "patch_size", "depth", "kernel_size", "out_dim"):
        if int(out[key]) < 1:
            raise ValueError(f"PumpConvMixer conf '{key}' must be a positive integer, got {out[key]!r}")
    if out["patch_size"] % 2:
        raise ValueError(f"PumpConvMixer conf 'patch_size' must be even (pixel-shuffle by patch_size/2), got {out['patch_size']}")
    if out["kernel_size"] % 2 == 0 or out["stem_kernel"] % 2 == 0:
        raise ValueError("PumpConvMixer conf 'kernel_size' and 'stem_kernel' must be odd ('same' padding)")
    if out["stem_width"] is None:
        out["stem_width"] = max(1, int(out["width"]) // 4)
    return out


def cpu_sized(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CPU-sized variant of ``conf`` (default :data:`DEFAULT_CONF`): width 128 (stem 32), 327,104 params.

    Depth, kernels, patch size and output dimension are unchanged, so the call contract (and the
    receptive field, ~232 px) stay those of the paper model. An explicit ``stem_width`` is reset to
    ``width // 4``.
    """
    out = strict_merge(DEFAULT_CONF, conf, "PumpConvMixer")
    out["width"] = 128
    out["stem_width"] = None
    return merge_conf(out)


def _conv_relu_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """conv (bias, 'same' padding when stride 1) -> ReLU -> BatchNorm, ConvMixer's post-activation order."""
    padding = 0 if stride > 1 else kernel // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
    )


class MixerBlock(nn.Module):
    """One ConvMixer block: residual depthwise conv, then pointwise conv (no skip).

    Shape: :math:`(B, C, h, w) \\to (B, C, h, w)`.
    """

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.dw = _conv_relu_bn(width, width, kernel_size, groups=width)
        self.pw = _conv_relu_bn(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(x + self.dw(x))


class PumpConvMixer(nn.Module):
    """PUMP's ConvMixer descriptor network.

    Args:
        conf: overrides of :data:`DEFAULT_CONF` (unknown keys raise ValueError). ``weights`` loads a
            state dict of this module (errors name missing / mis-shaped keys).

    Shape:
        - Input: :math:`(B, 3, H, W)` float, ImageNet-normalised RGB, ``H, W`` multiples of
          :attr:`multiple` (= ``patch_size``).
        - Output: :math:`(B, D, H, W)`, ``D = out_dim``; every pixel's descriptor has unit L2 norm.

    Example:
        >>> net = PumpConvMixer(cpu_sized()).eval()
        >>> net(torch.zeros(1, 3, 32, 48)).shape
        torch.Size([1, 128, 32, 48])
    """

    #: Its entry in matchmill/models/official_checkpoints.py (which official checkpoint layouts it reads).
    checkpoint_kind = "convmixer"

    default_conf = DEFAULT_CONF

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(conf)
        c = self.conf
        width, patch, out_dim = int(c["width"]), int(c["patch_size"]), int(c["out_dim"])
        self.stem = _conv_relu_bn(3, int(c["stem_width"]), int(c["stem_kernel"]))
        self.patch_embed = _conv_relu_bn(int(c["stem_width"]), width, patch, stride=patch)
        self.blocks = nn.Sequential(*[MixerBlock(width, int(c["kernel_size"])) for _ in range(int(c["depth"]))])
        shuffle = patch // 2
        self.head = nn.Conv2d(width, out_dim * shuffle * shuffle, kernel_size=1)
        self.shuffle = nn.PixelShuffle(shuffle)
        if c["channels_last"]:
            self.to(memory_format=torch.channels_last)
        if c["weights"] is not None:
            load_weights(self, c["weights"], strict=bool(c["strict"]))

    @property
    def multiple(self) -> int:
        """Input H and W must be multiples of this (the patch size)."""
        return int(self.conf["patch_size"])

    @property
    def descriptor_dim(self) -> int:
        """Output channels D."""
        return int(self.conf["out_dim"])

    def forward_levels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two inner maps the dense output is made of (read by the pyramid backbone).

        Args:
            x: :math:`(B, 3, H, W)` normalised RGB, ``H, W`` multiples of :attr:`multiple`.

        Returns:
            ``mixed`` :math:`(B, width, H/p, W/p)` (the last mixer block's output, ``p = patch_size``)
            and ``half`` :math:`(B, D, 2H/p, 2W/p)` (the head after the pixel shuffle, not normalised).
        """
        check_image_batch(x, "PumpConvMixer", self.multiple)
        if self.conf["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        mixed = self.blocks(self.patch_embed(self.stem(x)))
        return mixed, self.shuffle(self.head(mixed))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised RGB -> ``(B, D, H, W)`` unit descriptors (see class docstring)."""
        _, f = self.forward_levels(x)  # (B, D, H/2, W/2)
        f = F.interpolate(f, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        return F.normalize(f, p=2, dim=1)
