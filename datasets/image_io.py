"""Image loading with the checks a batch job needs: every failure names the file and the reason."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from matchmill.manifests.storage import read_bytes

#: Default pixel limit (w*h) above which an image is refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image cannot be used; the message names the path and the reason."""


def image_size(data: bytes, path: str) -> tuple[int, int]:
    """(width, height) read from the header only, without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as exc:  # PIL's own guard fires before ours
        raise ImageError(f"{path}: refused, too many pixels ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad headers
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, grayscale: bool = False) -> np.ndarray:
    """Read an image from a local path or fsspec URL.

    Returns:
        (H, W, 3) uint8 RGB, or (H, W) uint8 when ``grayscale``.

    Raises:
        ImageError: missing, empty, corrupt or over ``max_pixels`` (checked from the header
            before decoding, so a decompression bomb never allocates).
    """
    try:
        data = read_bytes(path)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from exc
    if len(data) == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, with a clearer message
    try:
        width, height = image_size(data, path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
            " (data.max_image_pixels)"
        )
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ImageError(f"{path}: corrupt or truncated image data")
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def resize_max(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale so the longer side is at most ``max_side`` (never upscale).

    Returns:
        The resized image and (sx, sy) such that original = resized * s (pixel-centre scaling).
    """
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, (1.0, 1.0)
    scale = max_side / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, (w / new_w, h / new_h)


def to_original(kpts: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map (N, 2) pixel coordinates of a resized image back to the original frame.

    Uses the pixel-centre convention: x_orig = (x + 0.5) * s - 0.5.
    """
    sx, sy = scale
    out = np.asarray(kpts, dtype=np.float32).copy()
    out[:, 0] = (out[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (out[:, 1] + 0.5) * sy - 0.5
    return out
