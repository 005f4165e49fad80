"""Drawing helpers of the demo textures: fractal noise, colour ramps, anti-aliased blobs, strokes
and text, printed posters, pasting (float32 RGB images in [0, 1], (H, W, 3)).

Every helper draws from the :class:`numpy.random.Generator` it is given, in a fixed order: the
rendered scene depends on that order (same seed -> byte-identical images).
"""

from __future__ import annotations

import cv2
import numpy as np


def fractal_noise(rng: np.random.Generator, shape, beta: float = 2.0, min_freq: float = 2.0) -> np.ndarray:
    """(H, W) float32 noise with power spectrum 1/f^beta (f in cycles per max(H, W)), zero mean,
    unit std. ``shape`` is (H, W) or an int for a square.

    Smooth noise (beta >= 2.4) of large images is synthesised at a quarter of the resolution and
    upsampled (its spectrum above that is negligible), which keeps big textures cheap.
    """
    h, w = (int(shape), int(shape)) if np.isscalar(shape) else (int(shape[0]), int(shape[1]))
    if beta >= 2.4 and min(h, w) >= 256:
        small = fractal_noise(rng, (h // 4, w // 4), beta, min_freq)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)
    white = rng.standard_normal((h, w), dtype=np.float32)
    f = np.sqrt(np.fft.fftfreq(h).astype(np.float32)[:, None] ** 2
                + np.fft.rfftfreq(w).astype(np.float32)[None, :] ** 2) * np.float32(max(h, w))
    amp = np.where(f >= min_freq, np.maximum(f, 1.0) ** np.float32(-beta / 2), np.float32(0.0))
    out = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(h, w)).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-12)


def streaks(rng: np.random.Generator, shape, stretch: int = 24) -> np.ndarray:
    """(H, W) zero-mean noise stretched vertically (rain and soot streaks)."""
    h, w = shape
    n = fractal_noise(rng, (max(h // stretch, 8), w), 1.4)
    return cv2.resize(n, (w, h), interpolation=cv2.INTER_LINEAR)


def colorize(gray: np.ndarray, c0, c1) -> np.ndarray:
    """Map (H, W) values in [0, 1] to (H, W, 3) float32 between colours c0 and c1."""
    g = np.clip(gray, 0, 1).astype(np.float32)[..., None]
    c0 = np.asarray(c0, np.float32)
    return c0 + g * (np.asarray(c1, np.float32) - c0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def as_color(c) -> tuple[float, float, float]:
    return tuple(float(x) for x in c)


def draw_blobs(img: np.ndarray, rng: np.random.Generator, count: int, rmin: float, rmax: float,
                palette: np.ndarray, alpha: float = 1.0) -> None:
    """Draw ``count`` anti-aliased filled ellipses in place (img: (H, W, 3) float32)."""
    h, w = img.shape[:2]
    layer = img.copy()
    for _ in range(count):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.uniform(rmin, rmax)), int(rng.uniform(rmin, rmax)))
        col = as_color(palette[rng.integers(len(palette))] * rng.uniform(0.7, 1.1))
        cv2.ellipse(layer, c, axes, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    img[:] = img * (1 - alpha) + layer * alpha


def draw_lines(img: np.ndarray, rng: np.random.Generator, count: int, palette: np.ndarray,
                thickness: tuple[int, int] = (1, 4), length: int | None = None) -> None:
    """Draw ``count`` anti-aliased random strokes in place (img: (H, W, 3) float32)."""
    h, w = img.shape[:2]
    length = length or min(h, w) // 3
    for _ in range(count):
        p0 = np.array([rng.integers(0, w), rng.integers(0, h)])
        p1 = p0 + rng.integers(-length, length, 2)
        cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), as_color(palette[rng.integers(len(palette))]),
                 int(rng.integers(thickness[0], thickness[1] + 1)), cv2.LINE_AA)


WORDS = ["CAFE", "OPEN", "SALE", "JAZZ", "NOON", "MARKET", "BAKERY", "LIVE", "RAY", "TICKETS",
          "CIRCUS", "POST", "HOTEL", "BAR", "FILM", "GRAND", "NORTH", "12", "47", "1908", "EXPO",
          "TAXI", "METRO", "DANCE", "BOOKS", "PIZZA", "QUIZ", "ART", "FOLK", "KIOSK"]


def draw_text(img: np.ndarray, text: str, org, height: float, color, thickness: int = 2,
          font: int = cv2.FONT_HERSHEY_DUPLEX) -> None:
    """Anti-aliased text in place (img: (H, W, 3) float32), ~``height`` texels tall, baseline-left
    corner ``org``. Drawn into an 8-bit coverage mask (cv2.putText needs 8-bit images) and blended."""
    scale, thickness = height / 27.0, max(1, int(thickness))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    pad = thickness + 2
    x0, y0 = int(org[0]) - pad, int(org[1]) - th - pad
    x1, y1 = int(org[0]) + tw + pad, int(org[1]) + base + pad
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, img.shape[1]), min(y1, img.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.putText(mask, text, (pad, th + pad), font, scale, 255, thickness, cv2.LINE_AA)
    a = (mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].astype(np.float32) / 255.0)[..., None]
    img[cy0:cy1, cx0:cx1] = img[cy0:cy1, cx0:cx1] * (1 - a) + np.asarray(color, np.float32) * a


def random_words(rng: np.random.Generator, n: int = 1) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n))


GRAFFITI = np.array(
    [[0.85, 0.20, 0.20], [0.15, 0.45, 0.85], [0.95, 0.80, 0.15], [0.20, 0.70, 0.35],
     [0.95, 0.95, 0.92], [0.10, 0.10, 0.12], [0.65, 0.30, 0.70], [0.95, 0.55, 0.15]],
    np.float32,
)


def poster(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) printed bill: coloured paper, a picture block, a headline and lines of text."""
    bg, ink, acc = (GRAFFITI[i] for i in rng.choice(8, 3, replace=False))
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg * 0.9
    img *= (1 + 0.06 * fractal_noise(rng, (h, w), 1.5))[..., None]
    px, py = int(rng.integers(2, max(3, w // 3))), int(rng.integers(h // 4, h // 2))
    cv2.rectangle(img, (px, py), (px + int(w * rng.uniform(0.35, 0.6)), py + int(h * rng.uniform(0.2, 0.35))),
                  as_color(acc), -1, cv2.LINE_AA)
    cv2.circle(img, (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 3, 2 * h // 3))),
               int(rng.integers(max(3, w // 10), max(4, w // 4))), as_color(ink * 0.8 + acc * 0.2), -1, cv2.LINE_AA)
    draw_text(img, random_words(rng), (3, max(8, h // 5)), max(5, h // 7), ink, max(1, h // 40))
    for k in range(int(rng.integers(2, 5))):
        y = int(h * (0.72 + 0.07 * k))
        if y < h - 2:
            draw_text(img, random_words(rng, 2), (3, y), max(3, h // 18), ink, 1, cv2.FONT_HERSHEY_SIMPLEX)
    return img


def paste(img: np.ndarray, patch: np.ndarray, x0: int, y0: int, rng: np.random.Generator | None = None,
           torn: float = 0.0, alpha: float = 1.0) -> None:
    """Paste ``patch`` at (x0, y0) in place (clipped); ``torn`` > 0 removes noisy pieces."""
    H, W = img.shape[:2]
    h, w = patch.shape[:2]
    x1, y1 = min(W, x0 + w), min(H, y0 + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = np.full((y1 - y0, x1 - x0), alpha, np.float32)
    if torn > 0 and rng is not None:
        n = fractal_noise(rng, (max(h, w), max(h, w)), 2.2)[: y1 - y0, : x1 - x0]
        a *= (n > torn * 2.5 - 1.5 + np.linspace(0, 2 * torn, x1 - x0)[None, :]).astype(np.float32)
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a[..., None]) + patch[: y1 - y0, : x1 - x0] * a[..., None]
