"""Truncated ResNet34 feature pyramid (the frozen Patch2Pix / NCNet backbone).

Written from the spec (``docs/specs/patch2pix.md`` §1), not from any reference implementation.

The network is the torchvision ResNet34 layout (7x7/2 stem, 3x3/2 max-pool, BasicBlock x [3, 4, 6, 3])
cut after ``layer3``; ``layer4`` and ``fc`` are never built. With ``change_stride`` (the released
Patch2Pix model) the first block of ``layer3`` keeps stride 1, so the deepest map stays at 1/8.

Pyramid returned by :meth:`ResNet34Pyramid.forward` (index: content, channels, cumulative stride):

    ====  ============================  ====  ===================================
    idx   content                       ch    stride
    ====  ============================  ====  ===================================
    0     the normalised input image    3     1
    1     relu(bn1(conv1(x)))           64    2
    2     layer1(maxpool(f1))           64    4
    3     layer2(f2)                    128   8
    4     layer3(f3)                    256   8 (``change_stride``) else 16
    ====  ============================  ====  ===================================

Patch2Pix correlates f4 (NCNet proposals) and gathers local windows from f0..f3 (regressors).

Weights: :func:`load_torchvision_state_dict` loads a torchvision ``resnet34`` state dict (``layer4.*``/``fc.*``
ignored) through :func:`matchmill.models.weights.load_weights`; :func:`load_weights_file` is the kept
name of :func:`matchmill.models.weights.read_state_dict`. No weights are downloaded by this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from matchmill.config import merge_conf
from .weights import OPTIONAL_SUFFIXES, StateDict, load_weights, read_state_dict, state_dict_problems  # noqa: F401 - re-exported

__all__ = [
    "DEFAULT_CONF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "ResNet34Pyramid",
    "load_torchvision_state_dict",
    "load_weights_file",
    "normalize_image",
]

DEFAULT_CONF: dict = {
    "layers": [3, 4, 6],  # BasicBlock count of layer1..layer3 (ResNet34; layer4's 3 blocks are never built)
    "change_stride": True,  # layer3's first block uses stride 1 -> f4 stays at 1/8 (released Patch2Pix model)
    "frozen": True,  # no gradients, and BatchNorm always in eval mode even under .train() (see ResNet34Pyramid)
    "weights": None,  # optional path to a torchvision-layout resnet34 state dict (.pth / .safetensors)
    "strict": True,  # loading `weights`: fail on missing, unexpected or mis-shaped keys
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# keys of a torchvision resnet34 state dict that this truncated network does not have
_IGNORED_PREFIXES = ("layer4.", "fc.")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic residual block: two 3x3 convs with BN, identity or 1x1 projection shortcut.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, \\lceil H/s \\rceil, \\lceil W/s \\rceil)` with ``s = stride``
    """

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch, 1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            # torchvision key layout: downsample.0 = 1x1 conv, downsample.1 = BN
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_layer(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage: the first block may change stride / width, the rest keep them."""
    layers = [BasicBlock(in_ch, out_ch, stride)]
    layers += [BasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet34Pyramid(nn.Module):
    """Truncated ResNet34 (conv1..layer3) returning the 5-level Patch2Pix feature pyramid.

    Args:
        conf: overrides of :data:`DEFAULT_CONF` (unknown keys raise ``ValueError``).

    Shape:
        - Input: :math:`(B, 3, H, W)` float, ImageNet-normalised RGB (see :func:`normalize_image`).
        - Output: list of 5 tensors ``[f0, f1, f2, f3, f4]`` with channels :attr:`channels` and
          spatial size ``ceil(H / s), ceil(W / s)`` for the strides :attr:`strides`
          (exactly ``H / s`` when ``H, W`` are multiples of 16, as Patch2Pix's resizing guarantees).

    With ``frozen=True`` (default) parameters do not require grad and ``train()`` keeps every
    BatchNorm in eval mode. This is a deliberate deviation: the original training loop puts the frozen
    backbone in train mode, so its BN layers used batch statistics and drifted (spec §1 caveat).

    Example:
        >>> net = ResNet34Pyramid().eval()
        >>> feats = net(torch.zeros(1, 3, 64, 96))
        >>> [tuple(f.shape[1:]) for f in feats]
        [(3, 64, 96), (64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 8, 12)]
    """

    #: Its entry in matchmill/models/official_checkpoints.py (which official checkpoint layouts it reads).
    checkpoint_kind = "resnet34"

    default_conf = DEFAULT_CONF

    def __init__(self, conf: Mapping | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(DEFAULT_CONF, conf, "ResNet34Pyramid")
        layers = list(self.conf["layers"])
        if len(layers) != 3 or any(int(n) < 1 for n in layers):
            raise ValueError(f"'layers' must list 3 positive block counts (layer1..layer3), got {layers}")
        self.change_stride = bool(self.conf["change_stride"])

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, int(layers[0]), stride=1)
        self.layer2 = _make_layer(64, 128, int(layers[1]), stride=2)
        self.layer3 = _make_layer(128, 256, int(layers[2]), stride=1 if self.change_stride else 2)
        self._init_weights()

        if self.conf["weights"] is not None:
            weights = self.conf["weights"]
            load_torchvision_state_dict(self, read_state_dict(weights), strict=bool(self.conf["strict"]), where=str(weights))
        if self.conf["frozen"]:
            self.requires_grad_(False)
            self.eval()

    def _init_weights(self) -> None:
        """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def channels(self) -> list[int]:
        """Channels of the 5 pyramid levels: ``[3, 64, 64, 128, 256]``."""
        return [3, 64, 64, 128, 256]

    @property
    def strides(self) -> list[int]:
        """Cumulative strides of the 5 levels: ``[1, 2, 4, 8, 8]`` (``[1, 2, 4, 8, 16]`` without change_stride)."""
        return [1, 2, 4, 8, 8 if self.change_stride else 16]

    def train(self, mode: bool = True) -> "ResNet34Pyramid":
        """Set train mode; a frozen backbone stays in eval mode (BN uses its running statistics)."""
        return super().train(False if self.conf["frozen"] else mode)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the pyramid.

        Args:
            x: :math:`(B, 3, H, W)` floating-point, ImageNet-normalised RGB.

        Returns:
            ``[f0 (B,3,H,W), f1 (B,64,H/2,W/2), f2 (B,64,H/4,W/4), f3 (B,128,H/8,W/8),
            f4 (B,256,H/8,W/8)]`` (f4 is ``H/16, W/16`` without ``change_stride``).
        """
        check_image_batch(x, "ResNet34Pyramid")
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [x, f1, f2, f3, f4]


def check_image_batch(x: Tensor, owner: str, multiple: int = 1) -> None:
    """Raise ValueError unless ``x`` is a non-empty float (B, 3, H, W) with H, W multiples of ``multiple``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{owner}: expected a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{owner}: expected input of shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{owner}: expected a float (B, 3, H, W) tensor (see normalize_images), got {x.dtype}")
    if min(x.shape[0], x.shape[2], x.shape[3]) == 0:
        raise ValueError(f"{owner}: expected a non-empty (B, 3, H, W) tensor, got {tuple(x.shape)}")
    h, w = int(x.shape[2]), int(x.shape[3])
    if h % multiple or w % multiple:
        raise ValueError(
            f"{owner}: input H, W must be multiples of {multiple}, got {h}x{w} "
            f"(pad right/bottom first, e.g. matchmill.models.pump.extract.run_padded)"
        )


def normalize_image(image: np.ndarray) -> Tensor:
    """RGB uint8 image -> ImageNet-normalised network input.

    Args:
        image: :math:`(H, W, 3)` ``uint8`` RGB array.

    Returns:
        :math:`(1, 3, H, W)` float32 tensor, ``(image / 255 - mean) / std`` per channel.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array of shape (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict weights-only: kept name of :func:`matchmill.models.weights.read_state_dict`.

    Returns:
        ``{name: tensor}`` on CPU (a checkpoint's ``"state_dict"`` / ``"model"`` entry unwrapped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: pickled objects / code (refused), unreadable, or no tensor dict (message names the file).
    """
    return read_state_dict(path)


def load_torchvision_state_dict(
    model: ResNet34Pyramid, state_dict: Mapping[str, Tensor], strict: bool = True, where: str | None = None
) -> dict[str, list[str]]:
    """Load a torchvision ``resnet34`` state dict into the truncated network.

    Keys under ``layer4.`` and ``fc.`` are ignored; BatchNorm ``num_batches_tracked`` counters are
    optional. Values are cast to the model's dtype. An official Patch2Pix checkpoint (its
    ``extract.*`` backbone) is recognised and mapped by :func:`matchmill.models.weights.load_weights`
    (see :mod:`matchmill.models.official_checkpoints`); the returned lists describe the torchvision
    reading only.

    Args:
        model: the network to fill (in place).
        state_dict: torchvision layout, e.g. ``conv1.weight``, ``bn1.running_mean``,
            ``layer1.0.conv1.weight``, ``layer3.0.downsample.0.weight``.
        strict: if True, missing and unexpected keys are errors; if False they are reported and
            the matching keys are loaded. Mis-shaped keys are always an error.
        where: the source's name in error messages (e.g. the file it was read from).

    Returns:
        ``{"missing": [...], "unexpected": [...], "ignored": [...]}`` key lists.

    Raises:
        ValueError: naming every missing key (strict), unexpected key (strict) and every mis-shaped
            key with its expected and given shape. Nothing is loaded in that case.
    """
    expected = model.state_dict()
    ignored = sorted(k for k in state_dict if k.startswith(_IGNORED_PREFIXES))
    given = StateDict({k: v for k, v in state_dict.items() if not k.startswith(_IGNORED_PREFIXES)},
                      getattr(state_dict, "metadata", {}))  # an official checkpoint's settings are checked
    missing = sorted(k for k in expected if k not in given and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in given if k not in expected)
    load_weights(model, given, strict=strict, where=where)
    return {"missing": missing, "unexpected": unexpected, "ignored": ignored}
