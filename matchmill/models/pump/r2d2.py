"""R2D2-style descriptor backbone (``Quad_L2Net`` layout, "dilated" full-resolution mode), descriptors only.

Written from ``docs/specs/pump.md`` §1.2; the alternative backbone of the supplementary's Table A. Same
call contract as :class:`matchmill.models.pump.convmixer.PumpConvMixer`: ImageNet-normalised
``(B, 3, H, W)`` in, ``(B, 128, H, W)`` unit descriptors out.

Layers (BatchNorm without affine parameters; "dilated" mode: no conv is strided, each stride 2 of
the original layout doubles the dilation of the convs that follow it, so the output keeps the
input resolution and any H, W is accepted):

    ====  ==========  ============  ========  ==================
    #     kernel      channels      dilation  then
    ====  ==========  ============  ========  ==================
    0     3x3         3 -> 32       1         BN, ReLU
    1     3x3         32 -> 32      1         BN, ReLU
    2     3x3         32 -> 64      1         BN, ReLU  (stride 2 -> dilation x2)
    3     3x3         64 -> 64      2         BN, ReLU
    4     3x3         64 -> 128     2         BN, ReLU  (stride 2 -> dilation x2)
    5     3x3         128 -> 128    4         BN, ReLU
    6     2x2         128 -> 128    4         BN        (stride 2 -> dilation x2)
    7     2x2         128 -> 128    8         BN        (stride 2 -> dilation x2)
    8     2x2         128 -> 128    16        (none)
    ====  ==========  ============  ========  ==================

then per-pixel L2 normalisation. 484,000 parameters (spec: "descriptor-only params 484,000").
The three 2x2 convs replace L2-Net's final 8x8 conv on the 4x-subsampled map, so in the strided
layout each has stride 2 ("every stride is converted to a growing dilation"): dilations 4, 8,
16. Receptive field 1 + 2 * (1 + 1 + 1 + 2 + 2 + 4) + 4 + 8 + 16 = 51 px (the spec's "~32-40 px"
estimate leaves out these three strides). R2D2's reliability / repeatability heads are not
built: PUMP trains descriptors only.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks
from matchmill.models.weights import load_weights

from .net_io import check_image_batch

__all__ = ["DEFAULT_CONF", "R2D2Net", "merge_conf"]

DEFAULT_CONF: dict[str, Any] = {
    "mchan": 4,  # channel multiplier: widths 8*mchan, 8*mchan, 16*mchan, 16*mchan, 32*mchan, ... (R2D2 "Quad": 4)
    "out_dim": 128,  # descriptor channels (R2D2 / PUMP: 128)
    "weights": None,  # optional .pth / .safetensors state dict of this module, loaded weights-only
    "strict": True,  # loading `weights`: fail on missing or unexpected keys (mis-shaped keys always fail)
}

# (kernel, channel multiple of 8*mchan (0 = out_dim), stride of the original layout, BN, ReLU)
_LAYOUT: tuple[tuple[int, int, int, bool, bool], ...] = (
    (3, 1, 1, True, True),
    (3, 1, 1, True, True),
    (3, 2, 2, True, True),
    (3, 2, 1, True, True),
    (3, 4, 2, True, True),
    (3, 4, 1, True, True),
    (2, 0, 2, True, False),
    (2, 0, 2, True, False),
    (2, 0, 2, False, False),
)


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_CONF` updated with ``conf``, validated (ValueError on unknown keys / bad values)."""
    out = strict_merge(DEFAULT_CONF, conf, "R2D2Net")
    for key in ("mchan", "out_dim"):
        if int(out[key]) < 1:
            raise ValueError(f"R2D2Net conf '{key}' must be a positive integer, got {out[key]!r}")
    return out


class R2D2Net(nn.Module):
    """R2D2 ``Quad_L2Net`` descriptor trunk in dilated (full-resolution) mode.

    Args:
        conf: overrides of :data:`DEFAULT_CONF`.

    Shape:
        - Input: :math:`(B, 3, H, W)` float, ImageNet-normalised RGB, any ``H, W >= 1``.
        - Output: :math:`(B, D, H, W)`, unit L2 norm per pixel, ``D = out_dim``.
    """

    #: Its entry in matchmill/models/official_checkpoints.py (which official checkpoint layouts it reads).
    checkpoint_kind = "r2d2net"

    default_conf = DEFAULT_CONF

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(conf)
        base, out_dim = 8 * int(self.conf["mchan"]), int(self.conf["out_dim"])
        layers: list[nn.Module] = []
        in_ch, dilation = 3, 1
        for kernel, mult, stride, bn, relu in _LAYOUT:
            out_ch = base * mult if mult else out_dim
            # 'same' output size: total padding (k - 1) * d, even for every layer of this layout
            layers.append(nn.Conv2d(in_ch, out_ch, kernel, padding=(kernel - 1) * dilation // 2, dilation=dilation))
            if bn:
                layers.append(nn.BatchNorm2d(out_ch, affine=False))
            if relu:
                layers.append(nn.ReLU(inplace=True))
            in_ch, dilation = out_ch, dilation * stride
        self.layers = nn.Sequential(*layers)
        if self.conf["weights"] is not None:
            load_weights(self, self.conf["weights"], strict=bool(self.conf["strict"]))

    @property
    def multiple(self) -> int:
        """Input H and W must be multiples of this: 1 (any size)."""
        return 1

    @property
    def descriptor_dim(self) -> int:
        """Output channels D."""
        return int(self.conf["out_dim"])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised RGB -> ``(B, D, H, W)`` unit descriptors."""
        check_image_batch(x, "R2D2Net", self.multiple)
        f = self.layers(x)
        if f.shape[2:] != x.shape[2:]:  # cannot happen with this layout; guards edits of _LAYOUT
            raise RuntimeError(f"R2D2Net output {tuple(f.shape)} lost the input resolution {tuple(x.shape)}")
        return F.normalize(f, p=2, dim=1)
