"""Keep an actor within the CPUs Ray reserved for it (OpenCV and PyTorch default to all cores)."""

from __future__ import annotations


def limit_threads(num_cpus: float) -> int:
    """Set OpenCV's and PyTorch's thread pools to the actor's CPU reservation; returns the count."""
    import cv2
    import torch

    threads = max(1, int(num_cpus))
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    return threads
