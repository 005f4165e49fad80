"""Device and weights glue of the learned methods: their device from the stage's ``num_gpus``,
seeded initialisation, strict weight loading, stored pyramids in, numpy out.

The stage actors pass the section's ``num_gpus`` (an execution key, outside the config hash) into
a method's conf when the method class sets ``uses_device = True`` (see
:func:`matchmill.methods.registry.build_method`). Artifacts and manifest columns are always CPU
numpy arrays, whatever device computed them. torch is imported where a method runs, never with
this module (config validation reads method classes and must not pay torch's import).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a method runs, not at config time
    import torch

from matchmill.models.device import choose_device

#: The stored pyramid levels of the ResNet34 / PUMP pyramid extractors (finest first).
LEVELS = ("f0", "f1", "f2", "f3", "f4")


def method_device(conf: Mapping, stage: str) -> torch.device:
    """``cuda:i`` / ``cpu`` for a method of ``stage`` whose conf may carry the stage's ``num_gpus``.

    Raises:
        matchmill.models.device.DeviceError: ``num_gpus > 0`` and no CUDA device is visible.
    """
    num_gpus = float(conf.get("num_gpus", 0) or 0)
    return choose_device(want_gpu=num_gpus > 0, what=f"{stage}.num_gpus={num_gpus:g}")


def no_grad(fn):
    """``torch.no_grad()`` as a decorator that imports torch when the method runs (a config check
    that reads a method's ``default_conf`` never imports torch)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch  # lazy: torch only where a method runs

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Any-device, any-float-dtype tensor -> float32 CPU numpy array (same shape)."""
    return t.detach().float().cpu().numpy()


def seeded(seed: int) -> None:
    """Seed torch's generator before a net's random initialisation (a method without weights)."""
    import torch  # lazy: torch only where a method runs

    torch.manual_seed(int(seed))


def load_state(module: torch.nn.Module, path: str | None, prefix: str = "") -> None:
    """Strictly load the weights file ``path`` (keys under ``prefix``) into ``module``; no-op for ``None``."""
    if path:
        from matchmill.models.weights import load_weights  # lazy: imports torch

        load_weights(module, path, strict=True, prefix=prefix)


def stored_pyramid(feats: Mapping[str, np.ndarray], names=LEVELS, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The stored maps ``names`` (each (C, h, w)) of one image as (1, C, h, w) float32 tensors on ``device``."""
    import torch  # lazy: torch only where a method runs

    missing = [n for n in names if n not in feats]
    if missing:
        raise ValueError(f"features lack {missing}: this method needs extract.method=resnet34")
    return [torch.from_numpy(feats[n].astype(np.float32))[None].to(device) for n in names]
