"""Draw a pair's matches side by side: inliers green, outliers red (OpenCV, no display needed).

A pair that verify did not verify (fewer than ``verify.min_inliers`` inliers) has its inliers
drawn grey instead of green, and a title (when given) in red says why.

Used by ``matchmill viz matches`` and by ``matchmill report`` for its example pairs
(:mod:`matchmill.evaluation.report.pair_drawings`); it imports nothing of :mod:`matchmill.evaluation`.
"""

from __future__ import annotations

import cv2
import numpy as np

from matchmill.manifests.storage import write_bytes_atomic

#: RGB colours of the drawing.
INLIER_RGB: tuple[int, int, int] = (40, 200, 60)
OUTLIER_RGB: tuple[int, int, int] = (230, 40, 40)
UNKNOWN_RGB: tuple[int, int, int] = (250, 200, 30)  # matches drawn without an inlier mask
UNVERIFIED_RGB: tuple[int, int, int] = (150, 150, 150)  # inliers of a pair verify did not verify
TITLE_RGB: dict[bool, tuple[int, int, int]] = {True: (20, 120, 30), False: (200, 30, 30)}  # title text: verified or not

#: Defaults of :func:`draw_matches` (one comment per key).
DEFAULT_CONF: dict = {
    "max_lines": 300,  # draw at most this many matches (a seeded, inlier-proportional subsample)
    "max_side": None,  # downscale so the longer side of each image is at most this (None: keep)
    "gap": 8,  # white pixels between the two images
    "thickness": 1,  # line thickness in pixels (after downscaling)
    "seed": 0,  # seed of the subsample, so the same pair always draws the same lines
}


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"draw_matches: {name} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"draw_matches: {name} must have shape (H, W, 3) or (H, W), got {image.shape}")
    return image


def _check_matches(matches: np.ndarray, inliers: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    matches = np.asarray(matches, dtype=np.float64)
    if matches.size == 0:
        matches = matches.reshape(0, 4)
    if matches.ndim != 2 or matches.shape[1] != 4:
        raise ValueError(f"draw_matches: matches must have shape (N, 4) as x0, y0, x1, y1, got {matches.shape}")
    if not np.isfinite(matches).all():
        bad = int((~np.isfinite(matches).all(axis=1)).sum())
        raise ValueError(f"draw_matches: matches has {bad} row(s) with nan or inf coordinates")
    if inliers is None:
        return matches, None
    inliers = np.asarray(inliers)
    if inliers.dtype != np.bool_:
        raise ValueError(f"draw_matches: inliers must be bool, got {inliers.dtype}")
    if inliers.shape != (len(matches),):
        raise ValueError(f"draw_matches: inliers must have shape ({len(matches)},) like matches, got {inliers.shape}")
    return matches, inliers


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    longest = max(image.shape[:2])
    if not max_side or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def subsample(num: int, max_lines: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_lines`` of ``num`` matches, seeded (uniform, so the
    inlier / outlier proportion of the drawing follows the pair's)."""
    if max_lines < 0:
        raise ValueError(f"draw_matches: max_lines must be >= 0, got {max_lines}")
    if num <= max_lines:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, size=max_lines, replace=False))


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    matches: np.ndarray,
    inliers: np.ndarray | None = None,
    out_png: str | None = None,
    max_lines: int = DEFAULT_CONF["max_lines"],
    max_side: int | None = DEFAULT_CONF["max_side"],
    gap: int = DEFAULT_CONF["gap"],
    thickness: int = DEFAULT_CONF["thickness"],
    seed: int = DEFAULT_CONF["seed"],
    verified: bool | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Both images side by side with a line per match, under an optional title line.

    Args:
        image0: (H0, W0, 3) uint8 RGB (or (H0, W0) gray).
        image1: (H1, W1, 3) uint8 RGB (or (H1, W1) gray).
        matches: (N, 4) x0, y0, x1, y1 in the pixels of ``image0`` / ``image1``.
        inliers: (N,) bool; inliers are drawn green, outliers red (outliers first, so inliers
            stay visible); None draws every match yellow.
        out_png: optional fsspec URL or path; the drawing is written there as PNG (atomically).
        max_lines: draw at most this many matches (seeded uniform subsample).
        max_side: downscale each image so its longer side is at most this (None: full size).
        gap: white columns between the images.
        thickness: line thickness in pixels.
        seed: seed of the subsample.
        verified: False draws the inliers grey (the pair has no verified model) instead of green;
            None or True: green.
        title: a line of text drawn in a white band above the images (red when ``verified`` is
            False, else dark green), or None for no band.

    Returns:
        (t + max(h0, h1), w0 + gap + w1, 3) uint8 RGB canvas, h/w after downscaling, t the
        title band's height (0 without a title).
    """
    image0, image1 = _as_rgb(image0, "image0"), _as_rgb(image1, "image1")
    matches, inliers = _check_matches(matches, inliers)
    image0, scale0 = _downscale(image0, max_side)
    image1, scale1 = _downscale(image1, max_side)
    (h0, w0), (h1, w1) = image0.shape[:2], image1.shape[:2]
    canvas = np.full((max(h0, h1), w0 + gap + w1, 3), 255, np.uint8)
    canvas[:h0, :w0] = image0
    canvas[:h1, w0 + gap:] = image1

    keep = subsample(len(matches), max_lines, seed)
    points0 = matches[keep, :2] * scale0
    points1 = matches[keep, 2:] * scale1 + np.array([w0 + gap, 0.0])
    if inliers is None:
        layers = [(np.ones(len(keep), bool), UNKNOWN_RGB)]
    else:
        kept_inliers = inliers[keep]
        layers = [(~kept_inliers, OUTLIER_RGB), (kept_inliers, UNVERIFIED_RGB if verified is False else INLIER_RGB)]
    for mask, colour in layers:
        for p0, p1 in zip(points0[mask], points1[mask]):
            a, b = tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1)
            cv2.line(canvas, a, b, colour, thickness, cv2.LINE_AA)
            cv2.circle(canvas, a, thickness + 1, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, b, thickness + 1, colour, -1, cv2.LINE_AA)
    if title is not None:
        canvas = _with_title(canvas, title, TITLE_RGB[verified is not False])
    if out_png is not None:
        write_png(out_png, canvas)
    return canvas


def _with_title(canvas: np.ndarray, title: str, colour: tuple[int, int, int]) -> np.ndarray:
    """``canvas`` (H, W, 3) under a white band (T, W, 3) holding ``title``, shrunk to fit the width."""
    font, scale, weight = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1
    (w, h), base = cv2.getTextSize(title, font, scale, weight)
    if w > canvas.shape[1] - 8:
        scale *= (canvas.shape[1] - 8) / w
        (w, h), base = cv2.getTextSize(title, font, scale, weight)
    band = np.full((h + base + 10, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (4, h + 5), font, scale, colour, weight, cv2.LINE_AA)
    return np.concatenate([band, canvas], axis=0)


def write_png(url: str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG to a path or fsspec URL."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{url}: PNG encoding failed for an image of shape {image.shape}")
    write_bytes_atomic(url, encoded.tobytes())
