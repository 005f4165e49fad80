"""PUMP inference helpers for the extract stage: multi-scale dense descriptor maps, sampling at keypoints.

Spec ``pump.md`` §3.1 (R2D2's multi-scale protocol, supplementary §B): the image is resized by
``s = 2^(-k/4)`` from 1 down to 0.3 (7 scales), the net runs on each, and a keypoint's descriptor
is read from the dense map of one scale.

Frames. OpenCV pixel centres. A map of scale ``s`` has size ``h = round(H s)``, ``w = round(W s)``
(``H, W`` = the scale-1 image) and the scale-1 pixel ``x`` sits at
``x_s = (x + 0.5) * w / W - 0.5`` (same for y), the mapping ``cv2.resize`` and bilinear
``align_corners=False`` interpolation use. Resizing is bilinear with antialiasing (like R2D2's PIL
resize), on the normalised image.

Divisibility. The ConvMixer needs ``H, W`` multiples of 4: :func:`run_padded` pads the input
right / bottom by edge replication and crops the output back, so every map has exactly the
resized image's size and pixel coordinates are unchanged.

Scale choice per keypoint (``SAMPLE_CONF["mode"]``):

- ``"size"`` (default when sizes are given): the detector size ``d`` asks for scale
  ``ref_size / d`` (R2D2's convention: a keypoint found at scale ``s`` has size ``32 / s``); the
  available scale nearest to it in log2 is used, so requests beyond the range are clipped to its
  ends. ``ref_size`` is the size of a keypoint the detector finds at scale 1 and depends on the
  detector: :data:`REF_SIZES` (``"r2d2"``: 32, the default; ``"sift"``: :data:`SIFT_REF_SIZE`).
- ``"finest"`` (or no sizes): the largest available scale (1 with the default scales).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import merge_conf
from matchmill.models.resnet import normalize_image

from .convmixer import PumpConvMixer, cpu_sized
from .r2d2 import R2D2Net

__all__ = [
    "SAMPLE_CONF",
    "SIFT_REF_SIZE",
    "REF_SIZES",
    "build_descriptor_net",
    "descriptor_scales",
    "run_padded",
    "dense_descriptors",
    "choose_scale_indices",
    "sample_at_keypoints",
]

SAMPLE_CONF: dict[str, Any] = {
    "mode": "size",  # "size": scale nearest (log2) to ref_size / keypoint size; "finest": largest scale only
    "ref_size": 32.0,  # detector size that maps to scale 1 (R2D2: size = 32 / detection scale); see REF_SIZES
}

#: ``ref_size`` for OpenCV SIFT keypoint sizes (``cv2.KeyPoint.size``, "diameter of the meaningful
#: keypoint neighborhood"). OpenCV's SIFT sets ``size = 2 * sigma``, ``sigma`` the keypoint's
#: Gaussian scale in image pixels (``sigma0 * 2^((layer + offset) / nOctaveLayers) * 2^octave``,
#: ``sigma0 = 1.6``, halved back for the 2x-upsampled first octave). The native-resolution octave
#: starts at ``sigma0``, so a keypoint detected at scale 1 has size ``2 * 1.6 = 3.2``, and one of
#: size ``d`` is the same structure as a size-3.2 keypoint of the image resized by ``3.2 / d``:
#: the analogue of R2D2's 32 (``size = 32 / s``). Sizes below 3.2 (the upsampled octave) ask for
#: scales above 1 and get the finest scale. R2D2's 32 applied to SIFT sizes (mostly 2-10 px)
#: would send almost every keypoint to scale 1.
SIFT_REF_SIZE: float = 2.0 * 1.6

#: ``ref_size`` per detector whose keypoint sizes are passed to :func:`sample_at_keypoints`.
REF_SIZES: dict[str, float] = {"r2d2": 32.0, "sift": SIFT_REF_SIZE}


def build_descriptor_net(arch: str = "convmixer", conf: Mapping[str, Any] | None = None, cpu: bool = False) -> nn.Module:
    """A PUMP descriptor net in eval mode.

    Args:
        arch: ``"convmixer"`` (:class:`~matchmill.models.pump.convmixer.PumpConvMixer`) or ``"r2d2"``
            (:class:`~matchmill.models.pump.r2d2.R2D2Net`).
        conf: the net's conf overrides (e.g. ``{"weights": "pump.safetensors"}``).
        cpu: ConvMixer only: use :func:`~matchmill.models.pump.convmixer.cpu_sized` (width 128).
    """
    if arch == "convmixer":
        return PumpConvMixer(cpu_sized(conf) if cpu else conf).eval()
    if arch == "r2d2":
        if cpu:
            raise ValueError("cpu=True applies to the convmixer only (the R2D2 net is already small)")
        return R2D2Net(conf).eval()
    raise ValueError(f"unknown PUMP descriptor arch {arch!r}; expected 'convmixer' or 'r2d2'")


def descriptor_scales(min_scale: float = 0.3, max_scale: float = 1.0, step_exponent: int = 4) -> list[float]:
    """Scales ``2^(-k / step_exponent)`` (integer k) within ``[min_scale, max_scale]``, largest first.

    Defaults give R2D2's "down to 30%" pyramid: 1, 0.841, 0.707, 0.595, 0.5, 0.420, 0.354.
    """
    if not (0 < min_scale <= max_scale) or int(step_exponent) < 1:
        raise ValueError(f"need 0 < min_scale <= max_scale and step_exponent >= 1, got {min_scale}, {max_scale}, {step_exponent}")
    n = int(step_exponent)
    k_first = math.ceil(-n * math.log2(max_scale) - 1e-9)
    k_last = math.floor(-n * math.log2(min_scale) + 1e-9)
    return [2.0 ** (-k / n) for k in range(k_first, k_last + 1)]


def run_padded(net: nn.Module, x: Tensor) -> Tensor:
    """Run ``net`` on ``(B, 3, H, W)`` of any size: pad right / bottom to ``net.multiple`` (edge replicate), crop back.

    Returns:
        ``(B, D, H, W)``; pixel (x, y) of the output describes input pixel (x, y).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    m = int(getattr(net, "multiple", 1))
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return net(x)[..., :h, :w]


def dense_descriptors(net: nn.Module, image: np.ndarray, scales: Sequence[float]) -> list[tuple[float, Tensor]]:
    """Dense unit descriptor maps of ``image`` at each scale (no grad).

    Args:
        net: descriptor net in eval mode (ImageNet-normalised ``(B, 3, H, W)`` -> ``(B, D, H, W)``).
        image: ``(H, W, 3)`` uint8 RGB.
        scales: positive factors; scale ``s`` resizes to ``round(H s) x round(W s)``.

    Returns:
        ``[(s, (D, round(H s), round(W s)) float tensor on the net's device), ...]`` in the given order.
    """
    if net.training:
        raise ValueError("dense_descriptors needs the net in eval mode (BatchNorm running statistics); call net.eval()")
    scales = [float(s) for s in scales]
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    x = normalize_image(image)  # (1, 3, H, W), checks the image
    param = next(net.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    H, W = image.shape[:2]
    out: list[tuple[float, Tensor]] = []
    with torch.no_grad():
        for s in scales:
            h, w = int(round(H * s)), int(round(W * s))
            if h < 1 or w < 1:
                raise ValueError(f"scale {s} turns the {W}x{H} image into {w}x{h}; use larger scales")
            xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            desc = run_padded(net, xs)[0]
            if tuple(desc.shape[1:]) != (h, w):
                raise RuntimeError(f"descriptor map {tuple(desc.shape)} does not match the {w}x{h} input at scale {s}")
            out.append((s, desc))
    return out


def choose_scale_indices(
    available: Sequence[float], num_keypoints: int, sizes: np.ndarray | None = None, conf: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Index into ``available`` of the scale used for each keypoint (rule in the module docstring).

    Args:
        available: the maps' scales.
        num_keypoints: N.
        sizes: ``(N,)`` positive detector sizes, or None (every keypoint uses the finest scale).
        conf: overrides of :data:`SAMPLE_CONF`.

    Returns:
        ``(N,)`` int64.
    """
    c = merge_conf(SAMPLE_CONF, conf, "PUMP keypoint sampling")
    if c["mode"] not in ("size", "finest"):
        raise ValueError(f"PUMP keypoint sampling 'mode' must be 'size' or 'finest', got {c['mode']!r}")
    log_avail = np.log2(np.asarray(available, np.float64))
    if sizes is None or c["mode"] == "finest":
        return np.full(int(num_keypoints), int(np.argmax(log_avail)), np.int64)
    sizes = np.asarray(sizes, np.float64)
    if sizes.shape != (int(num_keypoints),) or not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise ValueError(f"keypoint sizes must be a ({num_keypoints},) array of positive finite numbers, got shape {sizes.shape}")
    if float(c["ref_size"]) <= 0:
        raise ValueError(f"PUMP keypoint sampling 'ref_size' must be > 0, got {c['ref_size']}")
    want = np.log2(float(c["ref_size"]) / sizes)
    return np.abs(want[:, None] - log_avail[None, :]).argmin(axis=1).astype(np.int64)


def sample_at_keypoints(
    maps: Sequence[tuple[float, Tensor]],
    keypoints: np.ndarray,
    sizes: np.ndarray | None = None,
    conf: Mapping[str, Any] | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Descriptors of keypoints, bilinearly sampled in the map of each keypoint's scale, renormalised.

    Args:
        maps: output of :func:`dense_descriptors`, ``[(s, (D, h_s, w_s)), ...]``.
        keypoints: ``(N, 2)`` (x, y) pixels of the scale-1 image.
        sizes: ``(N,)`` detector sizes in the pixels of ``keypoints`` (pick the scale, see module
            docstring; give the detector's ``ref_size`` in ``conf``, e.g. :data:`SIFT_REF_SIZE`), or
            None (finest scale).
        conf: overrides of :data:`SAMPLE_CONF`.
        image_size: ``(W, H)`` of the scale-1 image; needed unless ``maps`` holds scale 1.

    Returns:
        ``(N, D)`` float32 unit descriptors. Points outside the image read the nearest border value.
    """
    if not maps:
        raise ValueError("maps is empty; expected [(scale, (D, h, w) tensor), ...] from dense_descriptors")
    dims = {int(m.shape[0]) for _, m in maps}
    if any(m.ndim != 3 for _, m in maps) or len(dims) != 1:
        raise ValueError(f"every map must be (D, h, w) with one common D, got {[tuple(m.shape) for _, m in maps]}")
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 2 or kp.shape[1] != 2 or not np.isfinite(kp).all():
        raise ValueError(f"keypoints must be a finite (N, 2) array of (x, y) pixels, got shape {kp.shape}")
    if image_size is None:
        ones = [m for s, m in maps if abs(s - 1.0) < 1e-9]
        if not ones:
            raise ValueError("maps hold no scale-1 map; pass image_size=(W, H) of the original image")
        W, H = int(ones[0].shape[2]), int(ones[0].shape[1])
    else:
        W, H = (int(v) for v in image_size)
    idx = choose_scale_indices([s for s, _ in maps], len(kp), sizes, conf)
    D = dims.pop()
    out = np.zeros((len(kp), D), np.float32)
    for j in np.unique(idx):
        sel = np.nonzero(idx == j)[0]
        fmap = maps[int(j)][1].float()
        # align_corners=False grid: g = (x_s + 0.5) * 2 / w - 1 with x_s = (x + 0.5) w / W - 0.5, i.e. (x + 0.5) * 2 / W - 1
        g = torch.from_numpy(np.stack([(kp[sel, 0] + 0.5) * 2.0 / W - 1.0, (kp[sel, 1] + 0.5) * 2.0 / H - 1.0], axis=1))
        g = g.to(device=fmap.device, dtype=fmap.dtype).view(1, 1, -1, 2)
        vals = F.grid_sample(fmap.unsqueeze(0), g, mode="bilinear", padding_mode="border", align_corners=False)
        vals = F.normalize(vals.view(D, -1).t(), dim=1)
        out[sel] = vals.cpu().numpy().astype(np.float32)
    return out
