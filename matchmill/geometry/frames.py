"""Frame conversions between original image pixels and the frames the nets see: the one definition.

Frames: *original* (the image file, the frame of every manifest coordinate), *resized*
(``extract.resize_max`` applied) and *network* (both sides floored to a multiple of the net's
stride). A frame is described by its scale ``(sx, sy)`` with original = frame * s under the
pixel-centre convention: ``x_orig = (x + 0.5) * sx - 0.5`` (OpenCV pixel centres at integers).
Scales compose by multiplication (``resized`` scale times ``network`` scale).
"""

from __future__ import annotations

import cv2
import numpy as np


def to_original(points: np.ndarray, scale) -> np.ndarray:
    """(N, 2) pixels of a frame with scale ``(sx, sy)`` -> (N, 2) float32 original pixels.

    Computed in float64 and rounded once: scale (1, 1) returns the points bit for bit (a float32
    ``(x + 0.5) * 1 - 0.5`` would move them by up to one float32 step)."""
    return _rescale(points, scale, inverse=False)


def to_network(points: np.ndarray, scale) -> np.ndarray:
    """Inverse of :func:`to_original`: (N, 2) original pixels -> (N, 2) float32 pixels of the frame."""
    return _rescale(points, scale, inverse=True)


def _rescale(points: np.ndarray, scale, inverse: bool) -> np.ndarray:
    sx, sy = float(scale[0]), float(scale[1])
    pts = np.asarray(points).reshape(-1, 2)
    if sx == 1.0 and sy == 1.0:
        return pts.astype(np.float32, copy=True)
    out = pts.astype(np.float64)
    if inverse:
        out[:, 0] = (out[:, 0] + 0.5) / sx - 0.5
        out[:, 1] = (out[:, 1] + 0.5) / sy - 0.5
    else:
        out[:, 0] = (out[:, 0] + 0.5) * sx - 0.5
        out[:, 1] = (out[:, 1] + 0.5) * sy - 0.5
    return out.astype(np.float32)


def resize_max(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale (INTER_AREA) so the longer side is at most ``max_side`` (never upscale).

    Returns:
        The resized image and its scale (sx, sy) (original = resized * s).
    """
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, (1.0, 1.0)
    scale = max_side / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, (w / new_w, h / new_h)


def floor_to_multiple(width: int, height: int, multiple: int, min_cells: int = 2, what: str = "the net") -> tuple[int, int]:
    """``(W', H')``: both sides floored to a multiple of ``multiple``.

    Raises:
        ValueError: a side would be shorter than ``min_cells * multiple``.
    """
    w, h = (int(width) // multiple) * multiple, (int(height) // multiple) * multiple
    if w < min_cells * multiple or h < min_cells * multiple:
        raise ValueError(f"image {width}x{height} is too small for {what} (needs >= {min_cells * multiple}px per side)")
    return w, h


def resize_to_multiple(image: np.ndarray, multiple: int, min_cells: int = 2,
                       what: str = "the net") -> tuple[np.ndarray, np.ndarray]:
    """Resize (INTER_AREA) an (H, W, ...) image to the network frame of :func:`floor_to_multiple`.

    Returns:
        The resized image and the network frame's scale (2,) float64 relative to ``image``.
    """
    h, w = image.shape[:2]
    nw, nh = floor_to_multiple(w, h, multiple, min_cells, what)
    resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return resized, np.array([w / nw, h / nh], np.float64)
