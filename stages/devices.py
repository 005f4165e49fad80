"""Device glue of the learned stage methods: their device from the stage's ``num_gpus``, numpy out.

The stage actors pass the section's ``num_gpus`` (an execution key, outside the config hash) into
a method's conf when the method class sets ``uses_device = True`` (see
:func:`matchmill.stages.registry.build_method`). Artifacts and manifest columns are always CPU
numpy arrays, whatever device computed them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a method runs, not at config time
    import torch

from matchmill.models.device import choose_device

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
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Any-device, any-float-dtype tensor -> float32 CPU numpy array (same shape)."""
    return t.detach().float().cpu().numpy()
