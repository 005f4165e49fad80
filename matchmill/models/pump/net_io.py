"""What the PUMP descriptor nets share at their borders: input normalisation, shape checks, weights.

Input convention (both backbones, spec ``pump.md`` §1.1): RGB scaled to [0, 1], then ImageNet
mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225) per channel. :func:`normalize_images`
does it for a uint8 batch; :func:`matchmill.models.resnet.normalize_image` for one numpy image.

Weights are loaded by :func:`matchmill.models.weights.load_weights` (weights-only, no pickled code,
every key checked before anything is copied); :func:`load_net_weights` is its kept name here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from matchmill.models.resnet import (  # noqa: F401 - check_image_batch is part of this module's API
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_image_batch,
)
from matchmill.models.weights import load_weights, state_dict_problems  # noqa: F401 - re-exported

__all__ = [
    "check_image_batch",
    "check_descriptors",
    "normalize_images",
    "load_net_weights",
    "save_net_weights",
    "state_dict_problems",
]


def normalize_images(images: Tensor) -> Tensor:
    """uint8 RGB batch -> ImageNet-normalised float32 network input.

    Args:
        images: :math:`(B, H, W, 3)` ``uint8`` (channels last, as images are stored) or
            :math:`(B, 3, H, W)` ``uint8``.

    Returns:
        :math:`(B, 3, H, W)` float32, ``(images / 255 - mean) / std`` per channel.
    """
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (B, H, W, 3) or (B, 3, H, W), got {desc}")
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels, first or last, got shape {tuple(images.shape)}")
    x = images.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def check_descriptors(desc: Tensor, name: str, channels: int | None = None) -> None:
    """Raise ValueError unless ``desc`` is a float (B, C, H, W) tensor (with ``C == channels`` if given)."""
    if not isinstance(desc, Tensor) or desc.ndim != 4 or not desc.is_floating_point():
        shape = tuple(desc.shape) if isinstance(desc, Tensor) else type(desc).__name__
        raise ValueError(f"{name} must be a float (B, C, H, W) tensor, got {shape}")
    if channels is not None and desc.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(desc.shape)}")


def load_net_weights(net: nn.Module, source: str | Path | Mapping[str, Tensor], strict: bool = True) -> None:
    """Fill ``net`` (in place) from a weights file or a state dict; nothing is copied on error.

    Kept name of :func:`matchmill.models.weights.load_weights` (see there for the arguments).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: refused / unreadable file, or a message naming every missing / unexpected / mis-shaped key.
    """
    load_weights(net, source, strict=strict)


def save_net_weights(net: nn.Module, path: str | Path) -> Path:
    """Write ``net``'s state dict, contiguous CPU tensors, as ``.safetensors`` or (any other suffix) ``torch.save``.

    Contiguity matters: the ConvMixer keeps channels-last weights, which ``safetensors`` refuses as is.
    The file round-trips through :func:`load_net_weights` (and the nets' ``weights`` conf key).
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path
