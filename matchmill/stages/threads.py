"""Keep an actor within the CPUs Ray reserved for it (OpenCV and PyTorch default to all cores)."""

from __future__ import annotations

import math
import sys


def limit_threads(num_cpus: float) -> int:
    """Set OpenCV's (and, when loaded, PyTorch's) thread pools to the actor's CPU reservation
    (rounded up, at least 1); returns the count. Never imports torch: a classical actor stays
    torch-free."""
    import cv2

    threads = max(1, math.ceil(float(num_cpus) - 1e-9))
    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def limit_torch_threads(num_cpus: float) -> None:
    """Call after importing torch in an actor whose method needs it."""
    import torch

    torch.set_num_threads(max(1, math.ceil(float(num_cpus) - 1e-9)))
