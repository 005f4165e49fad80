"""Which device a net runs on, and mixed precision there.

:func:`choose_device` gives ``cuda:<i>`` inside a Ray actor that Ray gave GPUs (Ray sets
``CUDA_VISIBLE_DEVICES``, so the actor's GPU is index 0 of the visible ones), or in any process that
asks for a GPU and sees one; otherwise the CPU. Asking for a GPU where no CUDA device is visible
raises :class:`DeviceError` with one line naming what asked, instead of silently running on CPU.

:func:`autocast` is ``torch.autocast("cuda", dtype=...)`` for ``amp`` = ``"bf16"`` / ``"fp16"`` on a
CUDA device and a no-op elsewhere (``"none"``, or the CPU, where the nets always run in float32).

Ray is never imported here: a process that has not imported it cannot be a Ray worker. torch is
imported when a device is chosen, not with this module (config validation reads AMP_CHOICES and
must not pay torch's import).
"""

from __future__ import annotations

import contextlib
import sys
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["AMP_CHOICES", "DeviceError", "autocast", "check_amp", "choose_device", "ray_gpu_ids"]

#: Values of the stage methods' ``amp`` key.
AMP_CHOICES = ("none", "bf16", "fp16")



class DeviceError(RuntimeError):
    """A GPU was asked for but no CUDA device is visible; the one-line message names what asked."""


def ray_gpu_ids() -> list:
    """GPU ids Ray assigned to this worker / actor; ``[]`` outside an initialised Ray (ray not imported)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    return list(ray.get_gpu_ids())


def choose_device(want_gpu: bool | float | None = None, what: str | None = None) -> "torch.device":
    """The device for a net of this process.

    Args:
        want_gpu: truthy (e.g. the stage's ``num_gpus`` > 0): a GPU is required; ``None`` / falsy: use
            a GPU only if Ray gave this actor one.
        what: who asked, for the error message, e.g. ``"extract.num_gpus=1"``.

    Returns:
        ``cuda:<current device>`` (index 0 of ``CUDA_VISIBLE_DEVICES`` in a Ray GPU actor) or ``cpu``.

    Raises:
        DeviceError: ``want_gpu`` is truthy and ``torch.cuda.is_available()`` is False.
    """
    import torch

    cuda = torch.cuda.is_available()
    if want_gpu and not cuda:
        asked = what or f"a GPU (want_gpu={want_gpu!r})"
        hint = f"set {what.split('=')[0].strip()}=0" if what and "=" in what else "ask for no GPU"
        raise DeviceError(
            f"{asked} but no CUDA device is visible to this actor (torch.cuda.is_available() is False); "
            f"{hint} to run on CPU"
        )
    if cuda and (want_gpu or ray_gpu_ids()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_amp(amp: str) -> str:
    """``amp`` if it is one of :data:`AMP_CHOICES`, else ValueError naming the value."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp: {amp!r} is not one of {'|'.join(AMP_CHOICES)}")
    return amp


def autocast(device: "torch.device", amp: str) -> AbstractContextManager:
    """Mixed-precision context for a forward pass on ``device``.

    Args:
        device: where the net runs.
        amp: ``"none"`` | ``"bf16"`` | ``"fp16"`` (checked on every device).

    Returns:
        ``torch.autocast("cuda", dtype=bfloat16 | float16)`` on CUDA with bf16 / fp16; otherwise
        :func:`contextlib.nullcontext` (float32 as usual).
    """
    check_amp(amp)
    import torch

    if torch.device(device).type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])
