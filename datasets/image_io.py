"""Image loading with the checks a batch job needs: every failure names the file and the reason."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from matchmill.geometry.frames import resize_max, to_original  # noqa: F401 - frame conversions live in geometry/frames.py
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
