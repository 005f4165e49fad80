"""Image loading with the checks a batch job needs: every failure names the file and the reason.

What :func:`load_image` does with each kind of input (each failure is an :class:`ImageError`
whose message starts with the path; the extract stage turns it into a failed row):

- missing file: ``file not found``; a directory (local, or a prefix on an object store):
  ``is a directory, not an image file``; an empty file: ``empty file (0 bytes)``;
- a header PIL cannot parse: ``not a readable image``; more pixels than ``max_pixels`` (read from
  the header, before decoding: a decompression bomb never allocates): ``exceeds the limit``;
- a JPEG cut short (no end-of-image marker after its last scan): ``truncated JPEG``. OpenCV's
  libjpeg decodes such a file with the missing part filled grey and only a warning on stderr, so
  it is checked from the markers before decoding;
- any other data OpenCV cannot decode: ``corrupt or truncated image data``.

Kinds that are read, not refused: 16-bit images (PNG / TIFF) are scaled to 8 bit by their high
byte (OpenCV's conversion: 65535 -> 255, ``257 * v`` -> ``v`` exactly, never wrapped or clipped);
greyscale images are replicated to three channels when RGB is asked for (and colour ones
converted when greyscale is); an alpha channel is dropped.

EXIF orientation is ignored, as COLMAP and pycolmap do: an image is its stored pixels (a JPEG
tagged "rotate 90" with 320x240 stored pixels is read as 240 rows x 320 columns), so keypoints,
sizes and exports agree with the database COLMAP builds from the same file. OpenCV's default
would rotate it; :func:`image_size` (the header) and every decode here use the stored frame.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from matchmill.manifests.storage import StorageUnavailable, read_bytes, url_to_fs

#: Default pixel limit (w*h) above which an image is refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image cannot be used; the message names the path and the reason."""


_JPEG_SOI = b"\xff\xd8\xff"  # start of image, followed by the first marker's 0xff
_JPEG_SOS = b"\xff\xda"  # start of scan: entropy-coded data follows (never contains 0xff 0xd9)
_JPEG_EOI = b"\xff\xd9"  # end of image


def jpeg_truncated(data: bytes) -> bool:
    """Whether ``data``, a JPEG stream, lacks an end-of-image marker after its last scan.

    Entropy-coded data stuffs every 0xff with 0x00, so an EOI can only follow the last SOS when
    the file is complete (bytes after the EOI, as some cameras append, do not matter). An EXIF
    thumbnail's own SOS / EOI come before the main image's SOS and are ignored by the rule."""
    if not data.startswith(_JPEG_SOI):
        return False
    last_scan = data.rfind(_JPEG_SOS)
    return last_scan < 0 or data.find(_JPEG_EOI, last_scan + 2) < 0


def _read(path: str) -> bytes:
    """The bytes of ``path``; ImageError naming it when missing, a directory or unreadable."""
    try:
        return read_bytes(path)
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory, not an image file") from exc
    except FileNotFoundError as exc:
        if _is_dir(path):  # object stores: a "folder" is a prefix, and opening it reads "not found"
            raise ImageError(f"{path}: is a directory, not an image file") from exc
        raise ImageError(f"{path}: file not found") from exc
    except (OSError, StorageUnavailable) as exc:  # storage errors were retried first (read_bytes)
        raise ImageError(f"{path}: cannot read ({exc})") from exc


def _is_dir(path: str) -> bool:
    """Whether ``path`` names a directory (False when that cannot be told)."""

    try:
        fs, inner = url_to_fs(path)
        return bool(fs.isdir(inner))
    except Exception:  # noqa: BLE001 - only used to word an error better
        return False


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
        (H, W, 3) uint8 RGB, or (H, W) uint8 when ``grayscale``, whatever the file's bit depth
        and channels (see the module docstring).

    Raises:
        ImageError: missing, a directory, empty, corrupt, a truncated JPEG or over ``max_pixels``
            (checked from the header before decoding, so a decompression bomb never allocates).
    """
    data = _read(path)
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
    if jpeg_truncated(data):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker after the last scan; "
                         f"{len(data)} bytes): the file was cut short")
    flag = (cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ImageError(f"{path}: corrupt or truncated image data")
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image
