"""One pose pair at the network size, through a frozen backbone: what NCNet and Patch2Pix train and
validate on.

Frames follow :mod:`matchmill.models.patch2pix_training`: an optional right/bottom crop, then a
resize of each image to ``size = (W, H)`` (multiples of 16) with ``K' = A K`` (pixel-centre
convention), so that poses and epipolar geometry hold in the network frame.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from matchmill.config import ConfigError
from matchmill.models.backbones import BACKBONES
from matchmill.models.backbones import build_backbone as build_pyramid
from matchmill.models.patch2pix_training import resize_image, scale_intrinsics
from matchmill.models.resnet import normalize_image

from .checkpoints import weights_file
from .validation import PoseSample, pose_metrics

__all__ = ["build_backbone", "check_backbone", "NetworkPair", "network_pair", "check_size", "validate_on_pose_pairs"]


def check_size(size: Sequence[int], where: str) -> tuple[int, int]:
    if not isinstance(size, (list, tuple)) or len(size) != 2 or any(not isinstance(v, int) or v % 16 or v < 32 for v in size):
        raise ConfigError(f"{where}: expected [W, H], each a multiple of 16 and >= 32, got {size!r}")
    return int(size[0]), int(size[1])


def check_backbone(conf: dict, section: str) -> None:
    """ConfigError unless ``<section>.backbone`` is a known backbone and ``backbone_conf`` a mapping or null."""
    if conf["backbone"] not in BACKBONES:
        raise ConfigError(f"{section}.backbone: {conf['backbone']!r} is not one of {', '.join(BACKBONES)}")
    if conf["backbone_conf"] is not None and not isinstance(conf["backbone_conf"], dict):
        raise ConfigError(f"{section}.backbone_conf: expected a mapping of overrides or null, got {conf['backbone_conf']!r}")


def build_backbone(conf: dict, device: torch.device) -> nn.Module:
    """The frozen feature pyramid of a task's conf (eval mode, no grad), from
    :func:`matchmill.models.backbones.build_backbone`: ``backbone`` (resnet34 | pump),
    ``backbone_weights`` (None = seeded random init), ``backbone_seed``, ``backbone_conf``."""
    weights = weights_file(conf["backbone_weights"]) if conf["backbone_weights"] else None
    return build_pyramid(conf["backbone"], weights, int(conf["backbone_seed"]), conf.get("backbone_conf")).to(device)


class NetworkPair:
    """Pyramids ``feats0`` / ``feats1`` (5 levels, ``(1, C, h, w)``), scaled ``K0``, ``K1``, ``T`` and size."""

    def __init__(self, feats0, feats1, K0, K1, T, size, key: str) -> None:
        self.feats0, self.feats1 = feats0, feats1
        self.K0, self.K1, self.T = K0, K1, T
        self.size = size
        self.key = key


def _resize(image: np.ndarray, K: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    return resize_image(image, size), (scale_intrinsics(K, (size[0] / w, size[1] / h)) if K else None)


@torch.no_grad()
def network_pair(row: dict, image0: np.ndarray, image1: np.ndarray, backbone: nn.Module,
                 size: tuple[int, int], device: torch.device) -> NetworkPair:
    """Resize both images of a pairs-manifest row to ``size`` and run the frozen backbone."""
    (im0, K0), (im1, K1) = _resize(image0, row["K0"], size), _resize(image1, row["K1"], size)
    f0 = [f for f in backbone(normalize_image(im0).to(device))]
    f1 = [f for f in backbone(normalize_image(im1).to(device))]
    T = np.asarray(row["T_0to1"], np.float64).reshape(4, 4) if row.get("T_0to1") else None
    return NetworkPair(f0, f1, K0, K1, T, size, row["pair_id"])


@torch.no_grad()
def validate_on_pose_pairs(task, net: nn.Module, rows: Sequence[dict], backbone: nn.Module, size: tuple[int, int],
                           matches_of: Callable[["NetworkPair"], torch.Tensor], ransac_px: float) -> dict[str, float]:
    """Pose AUC and Sampson error (:func:`.validation.pose_metrics`) of ``matches_of(pair)`` — ``(N, 4)``
    network-frame matches — over held-out pose pairs; ``net`` runs in eval mode, its mode restored.
    Pairs whose images cannot be read are left out (and counted by ``task.load``)."""
    was = net.training
    net.eval()
    samples = []
    try:
        for row in rows:
            a, b = task.load(row["path0"], row["crop0"]), task.load(row["path1"], row["crop1"])
            if a is None or b is None:
                continue
            pair = network_pair(row, a, b, backbone, size, task.device)
            samples.append(PoseSample(matches_of(pair).float().cpu().numpy(), pair.K0, pair.K1, pair.T))
    finally:
        net.train(was)
    return pose_metrics(samples, ransac_px=ransac_px)
