"""Deterministic synthetic MegaDepth-format scene: the embedded default data of matchmill.

:func:`write_demo_scene` renders a small sunlit courtyard (paving-slab ground, a back facade of
weathered brickwork, a shop front and a mural, a windowed facade, a graffiti wall, two crates, a
pillar and a bench, with baked cast shadows) with a vectorised numpy ray caster from known
PINHOLE cameras on an arc around it, and writes::

    <out>/<scene>/images/<name>.jpg    8-bit colour JPEG (H, W, 3)
    <out>/<scene>/depths/<stem>.h5     dataset "depth": float32 (H, W) z-depth in metres, 0 = sky
    <out>/<scene>/sparse/              COLMAP binary model written with pycolmap
                                       (cameras, images, points3D, + rigs/frames of COLMAP 3.12+)
    <out>/<scene>/demo_scene.json      {seed, num_cameras, width, height, version, scene}
                                       (+ sfm_groups, only when given)
    <out>/<scene>/sfm_groups.json      {image name: group}, only when ``sfm_groups`` is given
    <out>/demo_scene.json              the same, for the most recently written scene

The scene folder is assembled under a temporary name and renamed into place, so when
``<out>/<scene>/demo_scene.json`` holds the requested parameters the scene is complete (see
:func:`ensure_demo_scene`).

Conventions:
- World frame: z up, metres. Cameras: OpenCV frame (x right, y down, z forward); poses are
  world-to-camera (x_cam = R x_world + t).
- Rendering uses OpenCV pixel coordinates: the centre of the top-left pixel is (0, 0), and the
  depth map value at integer pixel (u, v) is the z-depth of the ray through that point.
- The COLMAP model uses COLMAP's convention: the centre of the top-left pixel is (0.5, 0.5). Its
  principal point is therefore ``cx_opencv + 0.5`` (= W / 2 exactly here) and every ``points2D``
  entry is the OpenCV projection + 0.5. :mod:`matchmill.datasets.colmap_scene` converts back.
- Points3D are sampled on the surfaces; an observation is kept when the point projects inside
  the image and its z-depth agrees within 1 % with the rendered depth map (bilinear, away from
  depth discontinuities). Tracks have length >= 2.
- ``sfm_groups`` (one label per camera) splits the model as if SfM had reconstructed each group
  separately, in one world frame: every track is split by group and each part with >= 2
  observations becomes its own 3D point (same xyz and colour). Images of different groups then
  share no 3D point although they may overlap (ground truth for mining missed pairs); images,
  depth maps and poses are the same as without groups.

Same arguments -> byte-identical JPEGs (on one platform/numpy/OpenCV build).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .megadepth import sample_depth

#: Bump whenever the rendered content or layout changes.
DEMO_SCENE_VERSION = 2
MARKER_NAME = "demo_scene.json"
#: Per-scene {image name: SfM group} file, written only for split models.
SFM_GROUPS_NAME = "sfm_groups.json"
#: Relative tolerance of the depth test that decides whether a 3D point is seen by a camera.
VISIBILITY_REL_TOL = 0.01
#: Lightmap resolution (metres per lightmap texel); shadows are baked once per scene.
LIGHTMAP_TEXEL = 0.05
#: Ambient light and sun strength of the Lambertian shading.
AMBIENT, SUN_STRENGTH = 0.42, 0.75
#: Per-image camera degradations: defocus blur sigma in [0, max] px, noise sigma range (8-bit
#: levels), JPEG quality range.
BLUR_SIGMA_MAX, NOISE_SIGMA, JPEG_QUALITY = 1.0, (1.5, 3.5), (80, 95)
#: Range of the per-image strength of direct sunlight (1 = clear sky; the photos are taken at
#: different moments, some under thin clouds with weaker shadows).
SUN_RANGE = (0.45, 1.0)
#: Number of 3D points sampled on the surfaces (before keeping those seen by >= 2 cameras).
NUM_POINTS = 4000
_SUN = np.array([0.45, -0.55, 0.70]) / np.linalg.norm([0.45, -0.55, 0.70])  # towards the sun
_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# scene description


@dataclass(frozen=True)
class Quad:
    """A textured rectangle ``origin + a u + b v`` with ``0 <= a <= size[0]``, ``0 <= b <= size[1]``.

    Attributes:
        origin: (3,) corner in world coordinates.
        u, v: (3,) orthonormal in-plane axes.
        size: (2,) extent along u and v (metres).
        normal: (3,) unit normal used for shading (u x v or its opposite).
        texture: index into the texture list.
        texel: metres per texel of mip level 0.
        offset: (2,) texel offset so that faces sharing a texture do not look identical.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size: tuple[float, float]
    normal: np.ndarray
    texture: int
    texel: float
    offset: tuple[float, float]


def _quad(origin, u, v, size, texture, texel, offset=(0.0, 0.0), flip=False) -> Quad:
    """Quad with unit axes; the shading normal is u x v (negated with ``flip``)."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.asarray(v, float) / np.linalg.norm(v)
    n = np.cross(u, v)
    return Quad(np.asarray(origin, float), u, v, (float(size[0]), float(size[1])),
                -n if flip else n, texture, float(texel), (float(offset[0]), float(offset[1])))


@dataclass(frozen=True)
class Box:
    """Oriented box standing on the ground: ``x = center + axes.T @ p`` with ``|p| <= half``.

    Attributes:
        center: (3,) world centre; axes: (3, 3) rows = box axes in world; half: (3,) half sizes.
    """

    center: np.ndarray
    axes: np.ndarray
    half: np.ndarray


def _box(center_xy, size_xyz, yaw_deg, texture, texel, top_row: float) -> tuple[list[Quad], Box]:
    """Four vertical faces and the top of a box standing on the ground (normals outwards), and
    its oriented bounding box.

    The vertical faces wrap around the box on texture rows ``[0, sz / texel]`` with continuous
    texture columns (no face repeats another), the top uses rows from ``top_row`` on.
    """
    sx, sy, sz = size_xyz
    c = np.array([center_xy[0], center_xy[1], 0.0])
    yaw = np.deg2rad(yaw_deg)
    ex = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    ey = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    ez = np.array([0.0, 0.0, 1.0])
    corner = c - ex * sx / 2 - ey * sy / 2  # (-x, -y) bottom corner
    faces = [
        # origin, u, v, size; u x v points outwards
        (corner, ex, ez, (sx, sz)),  # -y face: ex x ez = -ey
        (corner + ex * sx, ey, ez, (sy, sz)),  # +x face: ey x ez = +ex
        (corner + ex * sx + ey * sy, -ex, ez, (sx, sz)),  # +y face: -ex x ez = +ey
        (corner + ey * sy, -ey, ez, (sy, sz)),  # -x face: -ey x ez = -ex
    ]
    quads, col = [], 0.0
    for o, u, v, sz_ in faces:
        quads.append(_quad(o, u, v, sz_, texture, texel, offset=(col, 0.0)))
        col += sz_[0] / texel
    quads.append(_quad(corner + ez * sz, ex, ey, (sx, sy), texture, texel, offset=(0.0, top_row)))  # top
    box = Box(c + ez * sz / 2, np.stack([ex, ey, ez]), np.array([sx, sy, sz]) / 2)
    return quads, box


# --------------------------------------------------------------------------------------------
# procedural textures (float32 RGB in [0, 1], (H, W, 3) with H, W multiples of 32)
#
# Every texture is at least as large as the surfaces it covers, so no surface shows the same
# texture patch twice (a wrapped texture is an exactly periodic pattern that wide-baseline
# matchers cannot disambiguate). Repetition comes only from the modelled structure: brick
# courses, paving slabs, window rows, crate planks, each varied at several scales.


def _fractal_noise(rng: np.random.Generator, shape, beta: float = 2.0, min_freq: float = 2.0) -> np.ndarray:
    """(H, W) float32 noise with power spectrum 1/f^beta (f in cycles per max(H, W)), zero mean,
    unit std. ``shape`` is (H, W) or an int for a square.

    Smooth noise (beta >= 2.4) of large images is synthesised at a quarter of the resolution and
    upsampled (its spectrum above that is negligible), which keeps big textures cheap.
    """
    h, w = (int(shape), int(shape)) if np.isscalar(shape) else (int(shape[0]), int(shape[1]))
    if beta >= 2.4 and min(h, w) >= 256:
        small = _fractal_noise(rng, (h // 4, w // 4), beta, min_freq)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)
    white = rng.standard_normal((h, w), dtype=np.float32)
    f = np.sqrt(np.fft.fftfreq(h).astype(np.float32)[:, None] ** 2
                + np.fft.rfftfreq(w).astype(np.float32)[None, :] ** 2) * np.float32(max(h, w))
    amp = np.where(f >= min_freq, np.maximum(f, 1.0) ** np.float32(-beta / 2), np.float32(0.0))
    out = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(h, w)).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-12)


def _streaks(rng: np.random.Generator, shape, stretch: int = 24) -> np.ndarray:
    """(H, W) zero-mean noise stretched vertically (rain and soot streaks)."""
    h, w = shape
    n = _fractal_noise(rng, (max(h // stretch, 8), w), 1.4)
    return cv2.resize(n, (w, h), interpolation=cv2.INTER_LINEAR)


def _colorize(gray: np.ndarray, c0, c1) -> np.ndarray:
    """Map (H, W) values in [0, 1] to (H, W, 3) float32 between colours c0 and c1."""
    g = np.clip(gray, 0, 1).astype(np.float32)[..., None]
    c0 = np.asarray(c0, np.float32)
    return c0 + g * (np.asarray(c1, np.float32) - c0)


def _jitter(rng: np.random.Generator, s: float) -> float:
    """Uniform jitter in [-s, s]."""
    return float(rng.uniform(-s, s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _col(c) -> tuple[float, float, float]:
    return tuple(float(x) for x in c)


def _draw_blobs(img: np.ndarray, rng: np.random.Generator, count: int, rmin: float, rmax: float,
                palette: np.ndarray, alpha: float = 1.0) -> None:
    """Draw ``count`` anti-aliased filled ellipses in place (img: (H, W, 3) float32)."""
    h, w = img.shape[:2]
    layer = img.copy()
    for _ in range(count):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.uniform(rmin, rmax)), int(rng.uniform(rmin, rmax)))
        col = _col(palette[rng.integers(len(palette))] * rng.uniform(0.7, 1.1))
        cv2.ellipse(layer, c, axes, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    img[:] = img * (1 - alpha) + layer * alpha


def _draw_lines(img: np.ndarray, rng: np.random.Generator, count: int, palette: np.ndarray,
                thickness: tuple[int, int] = (1, 4), length: int | None = None) -> None:
    """Draw ``count`` anti-aliased random strokes in place (img: (H, W, 3) float32)."""
    h, w = img.shape[:2]
    length = length or min(h, w) // 3
    for _ in range(count):
        p0 = np.array([rng.integers(0, w), rng.integers(0, h)])
        p1 = p0 + rng.integers(-length, length, 2)
        cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), _col(palette[rng.integers(len(palette))]),
                 int(rng.integers(thickness[0], thickness[1] + 1)), cv2.LINE_AA)


_WORDS = ["CAFE", "OPEN", "SALE", "JAZZ", "NOON", "MARKET", "BAKERY", "LIVE", "RAY", "TICKETS",
          "CIRCUS", "POST", "HOTEL", "BAR", "FILM", "GRAND", "NORTH", "12", "47", "1908", "EXPO",
          "TAXI", "METRO", "DANCE", "BOOKS", "PIZZA", "QUIZ", "ART", "FOLK", "KIOSK"]


def _text(img: np.ndarray, text: str, org, height: float, color, thickness: int = 2,
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


def _words(rng: np.random.Generator, n: int = 1) -> str:
    return " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), n))


_GRAFFITI = np.array(
    [[0.85, 0.20, 0.20], [0.15, 0.45, 0.85], [0.95, 0.80, 0.15], [0.20, 0.70, 0.35],
     [0.95, 0.95, 0.92], [0.10, 0.10, 0.12], [0.65, 0.30, 0.70], [0.95, 0.55, 0.15]],
    np.float32,
)


def _poster(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) printed bill: coloured paper, a picture block, a headline and lines of text."""
    bg, ink, acc = (_GRAFFITI[i] for i in rng.choice(8, 3, replace=False))
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg * 0.9
    img *= (1 + 0.06 * _fractal_noise(rng, (h, w), 1.5))[..., None]
    px, py = int(rng.integers(2, max(3, w // 3))), int(rng.integers(h // 4, h // 2))
    cv2.rectangle(img, (px, py), (px + int(w * rng.uniform(0.35, 0.6)), py + int(h * rng.uniform(0.2, 0.35))),
                  _col(acc), -1, cv2.LINE_AA)
    cv2.circle(img, (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 3, 2 * h // 3))),
               int(rng.integers(max(3, w // 10), max(4, w // 4))), _col(ink * 0.8 + acc * 0.2), -1, cv2.LINE_AA)
    _text(img, _words(rng), (3, max(8, h // 5)), max(5, h // 7), ink, max(1, h // 40))
    for k in range(int(rng.integers(2, 5))):
        y = int(h * (0.72 + 0.07 * k))
        if y < h - 2:
            _text(img, _words(rng, 2), (3, y), max(3, h // 18), ink, 1, cv2.FONT_HERSHEY_SIMPLEX)
    return img


def _paste(img: np.ndarray, patch: np.ndarray, x0: int, y0: int, rng: np.random.Generator | None = None,
           torn: float = 0.0, alpha: float = 1.0) -> None:
    """Paste ``patch`` at (x0, y0) in place (clipped); ``torn`` > 0 removes noisy pieces."""
    H, W = img.shape[:2]
    h, w = patch.shape[:2]
    x1, y1 = min(W, x0 + w), min(H, y0 + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = np.full((y1 - y0, x1 - x0), alpha, np.float32)
    if torn > 0 and rng is not None:
        n = _fractal_noise(rng, (max(h, w), max(h, w)), 2.2)[: y1 - y0, : x1 - x0]
        a *= (n > torn * 2.5 - 1.5 + np.linspace(0, 2 * torn, x1 - x0)[None, :]).astype(np.float32)
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a[..., None]) + patch[: y1 - y0, : x1 - x0] * a[..., None]


def _texture_paving(rng: np.random.Generator, size: int = 1600, slab: int = 32) -> np.ndarray:
    """Ground: slabs in rows with random offsets (per-slab tone, a few replaced or cracked), grout,
    stains, leaves, painted lines, a manhole cover and a drain grate."""
    n = size // slab
    tone = rng.uniform(0.72, 1.18, (n, n + 1)).astype(np.float32)
    odd = rng.random((n, n + 1)) < 0.05  # replaced slabs of another stone
    yy, xx = np.arange(size, dtype=np.int32)[:, None], np.arange(size, dtype=np.int32)[None, :]
    row_shift = rng.integers(0, slab, n).astype(np.int32)  # random bond: every row offset differently
    iy = yy // slab
    shift = row_shift[iy]
    ix = (xx + shift) // slab
    slab_tone = tone[iy, ix]
    gx, gy = (xx + shift) % slab, yy % slab
    grout = (np.minimum(gx, slab - 1 - gx) < 1.5) | (np.minimum(gy, slab - 1 - gy) < 1.5)
    noise = 0.5 + 0.12 * _fractal_noise(rng, size, 1.6) + 0.08 * _fractal_noise(rng, size, 3.0)
    base = _colorize(noise * slab_tone, (0.35, 0.33, 0.30), (0.80, 0.76, 0.68))
    m = odd[iy, ix]
    base[m] = base[m] * np.array([0.85, 0.88, 1.0], np.float32) * 0.8
    base[grout] *= 0.45
    stains = _sigmoid(4 * _fractal_noise(rng, size, 3.2) - 4)[..., None]
    base = base * (1 - 0.5 * stains) + stains * 0.5 * np.array([0.25, 0.22, 0.18], np.float32)
    _draw_lines(base, rng, 40, np.array([[0.22, 0.21, 0.19]], np.float32), (1, 2), length=20)  # cracks
    _draw_blobs(base, rng, 60, 2, 6, np.array([[0.55, 0.35, 0.12], [0.45, 0.28, 0.10], [0.6, 0.5, 0.15]],
                                                np.float32), alpha=0.9)  # leaves
    _draw_lines(base, rng, 10, np.array([[0.95, 0.9, 0.3], [0.9, 0.9, 0.9]], np.float32), (6, 10))
    for _ in range(2):  # manhole covers: a ring and a cross-hatched disc
        c = (int(rng.integers(300, 1300)), int(rng.integers(500, 1200)))
        cv2.circle(base, c, 24, (0.18, 0.17, 0.16), -1, cv2.LINE_AA)
        cv2.circle(base, c, 24, (0.35, 0.33, 0.3), 2, cv2.LINE_AA)
        for k in range(-18, 19, 6):
            cv2.line(base, (c[0] + k, c[1] - 20), (c[0] + k, c[1] + 20), (0.3, 0.28, 0.26), 1, cv2.LINE_AA)
    x0, y0 = int(rng.integers(400, 1200)), int(rng.integers(600, 1100))
    base[y0:y0 + 14, x0:x0 + 60] = (0.12, 0.12, 0.12)  # drain grate
    base[y0 + 2:y0 + 12, x0 + 2:x0 + 58:4] = (0.4, 0.4, 0.4)
    return np.clip(base, 0, 1).astype(np.float32)


def _brick_panel(rng: np.random.Generator, h: int, w: int, course: int = 20, bmin: int = 30,
                 bmax: int = 52, mortar: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Irregular bricks: course heights ``course`` +- 2, brick lengths in [bmin, bmax], random joints.

    Returns brick id (h, w) int32, mortar mask (h, w) bool and brick centres (N, 2) (x, y).
    """
    ids = np.zeros((h, w), np.int32)
    mort = np.zeros((h, w), bool)
    cols = np.arange(w)
    centres = []
    y0 = nid = 0
    while y0 < h:
        y1 = min(h, y0 + course + int(rng.integers(-2, 3)))
        edges = [-int(rng.integers(0, bmax))]
        while edges[-1] < w:
            edges.append(edges[-1] + int(rng.integers(bmin, bmax + 1)))
        e = np.array(edges)
        k = np.searchsorted(e, cols, side="right") - 1
        ids[y0:y1] = nid + k
        mort[y0:y1] = (np.minimum(cols - e[k], e[k + 1] - 1 - cols) < mortar / 2)[None, :]
        mort[max(y0, y1 - mortar):y1] = True
        centres += [((a + b) / 2, (y0 + y1) / 2) for a, b in zip(e[:-1], e[1:])]
        nid += len(e) - 1
        y0 = y1
    return ids, mort, np.array(centres, np.float32)


_BRICK_COLOURS = np.array([[0.62, 0.30, 0.20], [0.54, 0.24, 0.16], [0.70, 0.40, 0.25], [0.46, 0.29, 0.21],
                           [0.30, 0.18, 0.14], [0.74, 0.60, 0.43]], np.float32)


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) weathered brickwork: irregular bonds, brick colours from several batches, patches
    of repair, a bricked-up window with stone lintel, soot streaks, efflorescence and damp."""
    ids, mort, centres = _brick_panel(rng, h, w)
    nb = len(centres)
    kind = rng.choice(len(_BRICK_COLOURS), nb, p=[0.55, 0.25, 0.08, 0.08, 0.03, 0.01])
    col = _BRICK_COLOURS[kind] * rng.uniform(0.88, 1.1, (nb, 1)).astype(np.float32)
    col += rng.normal(0, 0.015, (nb, 3)).astype(np.float32)
    # repairs: newer, cleaner bricks in a few irregular regions
    for _ in range(2):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(40, 140), rng.uniform(30, 90)
        m = ((centres[:, 0] - cx) / rx) ** 2 + ((centres[:, 1] - cy) / ry) ** 2 < 1
        col[m] = np.array([0.78, 0.42, 0.30], np.float32) * rng.uniform(0.9, 1.08, (int(m.sum()), 1))
    # bricked-up window: darker bricks, stone lintel and sill
    bx, by = int(rng.integers(40, max(41, w - 200))), int(rng.integers(60, 160))
    bw, bh = int(rng.integers(90, 130)), int(rng.integers(140, 190))
    m = (centres[:, 0] > bx) & (centres[:, 0] < bx + bw) & (centres[:, 1] > by) & (centres[:, 1] < by + bh)
    col[m] *= np.array([0.7, 0.75, 0.8], np.float32)
    img = col[ids]
    img *= (1 + 0.16 * _fractal_noise(rng, (h, w), 3.0) + 0.08 * _fractal_noise(rng, (h, w), 1.0))[..., None]
    mortar_col = _colorize(0.5 + 0.2 * _fractal_noise(rng, (h, w), 2.0), (0.50, 0.48, 0.44), (0.80, 0.78, 0.72))
    img[mort] = mortar_col[mort]
    stone = _colorize(0.55 + 0.15 * _fractal_noise(rng, (24, bw + 40), 1.5), (0.55, 0.53, 0.48), (0.85, 0.82, 0.75))
    img[max(0, by - 24):by, bx - 20:bx + bw + 20] = stone[-min(24, by):]
    img[by + bh:by + bh + 14, bx - 10:bx + bw + 10] = stone[:14, : bw + 20] * 0.95
    # weathering: soot and rain streaks from the top, efflorescence, rising damp at the bottom
    top = np.exp(-np.arange(h, dtype=np.float32) / (0.45 * h))[:, None]
    soot = (_sigmoid(3 * _streaks(rng, (h, w)) - 1.5) * top)[..., None]
    img = img * (1 - 0.4 * soot)
    eff = _sigmoid(4 * _fractal_noise(rng, (h, w), 2.6) - 6.5)[..., None]
    img = img * (1 - 0.6 * eff) + 0.6 * eff * np.array([0.85, 0.84, 0.80], np.float32)
    edge = h - 50 + 18 * _fractal_noise(rng, (8, w), 2.0)[0]
    damp = _sigmoid((np.arange(h)[:, None] - edge[None, :]) / 4.0)[..., None]
    img = img * (1 - 0.35 * damp) * (1 - 0.15 * damp * np.array([1, 0, 1], np.float32))
    # a ghost sign: faded painted letters
    gy = int(rng.integers(60, 140))
    layer = img.copy()
    _text(layer, _words(rng), (int(rng.integers(10, max(11, w // 3))), gy), 55, (0.88, 0.86, 0.78), 7)
    img = 0.6 * img + 0.4 * layer
    return np.clip(img, 0, 1).astype(np.float32)


def _stone_strip(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) dressed stone (pilaster, coping): blocks of random height with joints."""
    img = _colorize(0.55 + 0.15 * _fractal_noise(rng, (h, w), 1.8), (0.52, 0.50, 0.46), (0.86, 0.83, 0.76))
    y = int(rng.integers(0, 40))
    while y < h:
        img[y:y + 2] *= 0.55
        y += int(rng.integers(30, 70))
    return img


def _shopfront(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) stucco shop front: upper windows with curtains, sign board with lettering, striped
    awning, shop window with a display, a panelled door, a lamp, a number plate."""
    img = _colorize(0.5 + 0.15 * _fractal_noise(rng, (h, w), 2.4), (0.72, 0.64, 0.48), (0.94, 0.88, 0.72))
    img *= (1 - 0.25 * _sigmoid(3 * _streaks(rng, (h, w)) - 2.5))[..., None]
    for k, x0 in enumerate((int(w * 0.14), int(w * 0.58))):  # upper floor windows, each different
        y0, ww, hh = 70, int(w * 0.26), 150
        img[y0 - 8:y0 + hh + 8, x0 - 8:x0 + ww + 8] = (0.92, 0.92, 0.88)
        glass = _colorize(0.45 + 0.25 * _fractal_noise(rng, (hh, ww), 2.0, 3), (0.06, 0.08, 0.12), (0.4, 0.5, 0.6))
        img[y0:y0 + hh, x0:x0 + ww] = glass
        cur = _GRAFFITI[rng.integers(8)] * 0.8
        cw = int(rng.integers(ww // 5, ww // 2))
        if k == 0:
            img[y0:y0 + hh, x0:x0 + cw] = cur
        else:
            img[y0:y0 + int(rng.integers(hh // 4, hh // 2)), x0:x0 + ww] = cur  # blind
        img[y0:y0 + hh, x0 + ww // 2 - 3:x0 + ww // 2 + 3] = (0.92, 0.92, 0.88)
        img[y0 + hh + 8:y0 + hh + 20, x0 - 16:x0 + ww + 16] = (0.78, 0.76, 0.7)  # sill
        _draw_blobs(img[y0 + hh - 10:y0 + hh + 8, x0:x0 + ww], rng, 10, 3, 8,
                    np.array([[0.2, 0.5, 0.2], [0.8, 0.2, 0.25], [0.9, 0.8, 0.2]], np.float32))
    sy0 = 270  # sign board
    board = np.array([0.10, 0.28, 0.20], np.float32) * rng.uniform(0.8, 1.2)
    img[sy0:sy0 + 60, 20:w - 20] = board
    img[sy0:sy0 + 4, 20:w - 20] = img[sy0 + 56:sy0 + 60, 20:w - 20] = (0.75, 0.62, 0.25)
    _text(img, _words(rng), (40, sy0 + 46), 36, (0.90, 0.78, 0.35), 4)
    _text(img, _words(rng), (w // 2 + 20, sy0 + 40), 24, (0.95, 0.95, 0.9), 2)
    aw = np.arange(w - 60)
    stripes = ((aw // 18) % 2).astype(np.float32)[None, :, None]  # awning
    img[sy0 + 64:sy0 + 92, 30:w - 30] = (stripes * np.array([0.75, 0.15, 0.15]) + (1 - stripes) * 0.9)[0]
    img[sy0 + 92:sy0 + 98, 30:w - 30] *= 0.5
    wx0, wy0, ww, wh = 30, 380, int(w * 0.5), 170  # shop window with a display
    img[wy0 - 6:wy0 + wh + 6, wx0 - 6:wx0 + ww + 6] = (0.2, 0.18, 0.16)
    img[wy0:wy0 + wh, wx0:wx0 + ww] = _colorize(0.35 + 0.25 * _fractal_noise(rng, (wh, ww), 2.2, 3),
                                                (0.05, 0.06, 0.08), (0.45, 0.52, 0.58))
    disp = img[wy0 + wh // 2:wy0 + wh, wx0:wx0 + ww]
    _draw_blobs(disp, rng, 18, 5, 18, _GRAFFITI, alpha=0.9)
    _text(img, _words(rng), (wx0 + 10, wy0 + 40), 22, (0.95, 0.95, 0.95), 2)
    dx0, dw = int(w * 0.64), 95  # panelled door
    img[wy0 - 20:h, dx0 - 8:dx0 + dw + 8] = (0.85, 0.83, 0.78)
    door = np.array([0.45, 0.12, 0.10], np.float32) * rng.uniform(0.8, 1.2)
    img[wy0 - 12:h, dx0:dx0 + dw] = door
    for py, ph in ((wy0, 70), (wy0 + 90, 100)):
        img[py:py + ph, dx0 + 12:dx0 + dw - 12] = door * 0.7
    cv2.circle(img, (dx0 + dw - 16, wy0 + 85), 5, (0.85, 0.75, 0.3), -1, cv2.LINE_AA)
    img[wy0 - 60:wy0 - 36, dx0 + dw + 20:dx0 + dw + 50] = (0.15, 0.2, 0.5)  # number plate
    _text(img, str(int(rng.integers(2, 99))), (dx0 + dw + 22, wy0 - 40), 16, (1, 1, 1), 2)
    cv2.circle(img, (dx0 - 30, wy0 - 50), 12, (0.95, 0.9, 0.7), -1, cv2.LINE_AA)  # lamp
    img[wy0 - 50:wy0 - 38, dx0 - 34:dx0 - 26] = (0.1, 0.1, 0.1)
    return np.clip(img, 0, 1).astype(np.float32)


def _mural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) painted mural on plaster: large shapes, waves, a sun, lettering, drips; faded."""
    base = _colorize(0.5 + 0.15 * _fractal_noise(rng, (h, w), 2.0), (0.25, 0.45, 0.50), (0.55, 0.75, 0.78))
    img = base.copy()
    for _ in range(7):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.ellipse(img, c, (int(rng.integers(30, 120)), int(rng.integers(30, 120))), float(rng.uniform(0, 180)),
                    0, 360, _col(_GRAFFITI[rng.integers(8)]), -1, cv2.LINE_AA)
    for _ in range(3):
        x = np.arange(0, w, 4)
        y = rng.uniform(0.2, 0.9) * h + rng.uniform(15, 50) * np.sin(x / rng.uniform(25, 70) + rng.uniform(0, 6))
        cv2.polylines(img, [np.stack([x, y], 1).astype(np.int32)], False, _col(_GRAFFITI[rng.integers(8)]),
                      int(rng.integers(8, 20)), cv2.LINE_AA)
    c = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(80, 200)))
    for k in range(11):  # sun with irregular rays
        ang = k * 2 * np.pi / 11 + rng.uniform(-0.2, 0.2)
        r = rng.uniform(70, 110)
        cv2.line(img, c, (int(c[0] + r * np.cos(ang)), int(c[1] + r * np.sin(ang))), (0.98, 0.75, 0.15), 6, cv2.LINE_AA)
    cv2.circle(img, c, 45, (0.98, 0.82, 0.2), -1, cv2.LINE_AA)
    cv2.circle(img, (c[0] - 14, c[1] - 8), 6, (0.1, 0.1, 0.1), -1, cv2.LINE_AA)
    cv2.circle(img, (c[0] + 14, c[1] - 8), 6, (0.1, 0.1, 0.1), -1, cv2.LINE_AA)
    cv2.ellipse(img, (c[0], c[1] + 10), (20, 12), 0, 0, 180, (0.1, 0.1, 0.1), 3, cv2.LINE_AA)
    _text(img, _words(rng), (int(rng.integers(10, max(11, w // 3))), h - 110), 60, (0.95, 0.95, 0.92), 9)
    _draw_lines(img, rng, 25, _GRAFFITI, (2, 3), length=40)
    fade = _sigmoid(3 * _fractal_noise(rng, (h, w), 2.4) - 2.0)[..., None]
    img = img * (1 - 0.6 * fade) + base * 0.6 * fade
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_back_facade(rng: np.random.Generator, shape=(640, 2048), used=(600, 2000)) -> np.ndarray:
    """The back facade (used area ``used`` = (rows, cols) texels, row 0 at the top): weathered
    brickwork on the left half, a stucco shop front and a mural on the right quarters,
    separated by stone pilasters, under a stone coping, with posters, a drainpipe and dirt."""
    h, w = used
    img = np.zeros(shape + (3,), np.float32)
    b1, b2 = int(0.50 * w), int(0.75 * w)  # section boundaries (columns)
    img[:h, :b1] = _bricks(rng, h, b1)
    img[:h, b1:b2] = _shopfront(rng, h, b2 - b1)
    img[:h, b2:w] = _mural(rng, h, w - b2)
    for x in (b1 - 12, b2 - 12):
        img[:h, x:x + 24] = _stone_strip(rng, h, 24)
    img[:18, :w] = _stone_strip(rng, w, 18).transpose(1, 0, 2)  # coping
    img[18:22, :w] *= 0.5
    for _ in range(3):  # posters on the brickwork, some torn
        ph, pw = int(rng.integers(60, 110)), int(rng.integers(45, 80))
        _paste(img, _poster(rng, ph, pw), int(rng.integers(20, b1 - pw - 20)), int(rng.integers(260, h - ph - 40)),
               rng, torn=float(rng.choice([0.0, 0.3, 0.6])))
    px = int(rng.integers(b1 // 3, 2 * b1 // 3))  # drainpipe with brackets at irregular heights
    pipe = (0.25 + 0.3 * np.sin(np.linspace(0.2, np.pi - 0.2, 10)))[None, :, None] * np.array([0.9, 0.95, 1.0])
    img[18:h, px:px + 10] = pipe
    y = 40
    while y < h - 20:
        img[y:y + 6, px - 3:px + 13] = (0.2, 0.2, 0.22)
        y += int(rng.integers(90, 170))
    edge = h - 30 + 10 * _fractal_noise(rng, (8, w), 2.0)[0]
    dirt = _sigmoid((np.arange(h)[:, None] - edge[None, :]) / 3.0)[..., None]
    img[:h, :w] *= 1 - 0.3 * dirt
    img[:h, :w] *= (1 + 0.06 * _fractal_noise(rng, (h, w), 3.0))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_windows(rng: np.random.Generator, shape=(640, 896), used=(584, 834), cell: int = 128) -> np.ndarray:
    """Plaster facade: three floors of windows on a regular grid (the repeated structure), each
    window different (curtains, blinds, shutters, plants, one boarded up, an air conditioner),
    with rain streaks under the sills; a ground floor with a door, a garage and lettering."""
    h, w = used
    img = np.zeros(shape + (3,), np.float32)
    img[:h, :w] = _colorize(0.5 + 0.15 * _fractal_noise(rng, (h, w), 2.5), (0.70, 0.62, 0.48), (0.92, 0.86, 0.72))
    refl = 0.5 + 0.25 * _fractal_noise(rng, (h, w), 2.0, min_freq=4)
    streak = _sigmoid(3 * _streaks(rng, (h, w)) - 1.0)
    frame = np.array([0.30, 0.26, 0.22], np.float32) * rng.uniform(0.8, 1.2)
    ncol = (w - 32) // cell
    boarded = (int(rng.integers(0, 3)), int(rng.integers(0, ncol)))
    for gy in range(3):
        for gx in range(ncol):
            x0, y0 = gx * cell + 32, gy * cell + 20
            x1, y1 = x0 + 64, y0 + 88
            below = (slice(y1 + 10, min(h, y1 + 70)), slice(x0, x1))
            fall = np.linspace(1, 0, below[0].stop - below[0].start)[:, None]  # streak fades downwards
            img[below] *= (1 - 0.3 * streak[below] * fall)[..., None]
            img[y0 - 5:y1 + 5, x0 - 5:x1 + 5] = frame
            img[y1 + 5:y1 + 11, x0 - 9:x1 + 9] = (0.82, 0.8, 0.75)  # sill
            if (gy, gx) == boarded:
                img[y0:y1, x0:x1] = (0.45, 0.36, 0.24)
                for k in range(y0 + 4, y1, 14):
                    img[k:k + 2, x0:x1] = (0.25, 0.2, 0.14)
                cv2.line(img, (x0, y0), (x1, y1), (0.35, 0.28, 0.2), 4, cv2.LINE_AA)
                continue
            glass = _colorize(refl[y0:y1, x0:x1], (0.08, 0.10, 0.14), (0.45, 0.55, 0.65))
            img[y0:y1, x0:x1] = glass * rng.uniform(0.7, 1.2)
            style = int(rng.choice(5, p=[0.2, 0.15, 0.1, 0.3, 0.25]))  # 3, 4: plain glass
            cur = _GRAFFITI[rng.integers(8)] * rng.uniform(0.5, 0.9)
            if style == 0:  # curtain on one side
                cw = int(rng.integers(10, 32))
                if rng.random() < 0.5:
                    img[y0:y1, x0:x0 + cw] = cur
                else:
                    img[y0:y1, x1 - cw:x1] = cur
            elif style == 1:  # blind lowered to a random height
                bh = int(rng.integers(15, 70))
                img[y0:y0 + bh, x0:x1] = cur
                img[y0 + 3:y0 + bh:6, x0:x1] *= 0.8
            elif style == 2:  # open shutters
                img[y0 - 5:y1 + 5, x0 - 30:x0 - 5] = cur
                img[y0 - 5:y1 + 5, x1 + 5:x1 + 30] = cur
                img[y0 - 5:y1 + 5:7, x0 - 30:x0 - 5] *= 0.7
                img[y0 - 5:y1 + 5:7, x1 + 5:x1 + 30] *= 0.7
            img[(y0 + y1) // 2 - 2:(y0 + y1) // 2 + 2, x0:x1] = frame
            img[y0:y1, (x0 + x1) // 2 - 2:(x0 + x1) // 2 + 2] = frame
            if rng.random() < 0.2:  # flower box
                img[y1 - 2:y1 + 8, x0 - 4:x1 + 4] = (0.35, 0.22, 0.15)
                flowers = np.array([[0.2, 0.55, 0.2], [0.85, 0.2, 0.3], [0.95, 0.85, 0.3], [0.9, 0.9, 0.95]],
                                   np.float32)
                _draw_blobs(img[y1 - 14:y1, x0 - 4:x1 + 4], rng, 12, 2, 6, flowers)
            if rng.random() < 0.12:  # air conditioner
                img[y1 + 14:y1 + 40, x0 + 10:x0 + 54] = (0.82, 0.82, 0.8)
                img[y1 + 18:y1 + 36:4, x0 + 14:x0 + 50] = (0.5, 0.5, 0.5)
    gy0 = 3 * cell + 20  # ground floor
    img[gy0:gy0 + 6, :w] = (0.55, 0.5, 0.42)
    dx = int(rng.integers(40, 120))
    img[gy0 + 14:h, dx:dx + 70] = np.array([0.15, 0.3, 0.45], np.float32) * rng.uniform(0.8, 1.2)
    img[gy0 + 26:gy0 + 70, dx + 10:dx + 60] = (0.5, 0.6, 0.7)
    gx0 = int(rng.integers(300, 420))
    gar = np.arange(gy0 + 60, h)
    img[gar, gx0:gx0 + 230] = (0.55 + 0.1 * ((gar - gy0) // 8 % 2))[:, None, None] * np.array([0.9, 0.92, 1.0])
    _text(img, _words(rng, 2), (gx0 - 10, gy0 + 45), 26, (0.2, 0.15, 0.1), 3)
    ph, pw = int(rng.integers(60, 90)), int(rng.integers(45, 60))
    _paste(img, _poster(rng, ph, pw), dx + 100, gy0 + 50, rng, torn=0.3)
    img[:h, :w] = img[:h, w - 1::-1].copy()  # the facade's u axis points to the viewer's left
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_graffiti(rng: np.random.Generator, shape=(512, 512)) -> np.ndarray:
    """Concrete with posters, blobs, strokes and tags: rich, non-repetitive texture."""
    h, w = shape
    area = h * w / 512.0**2
    img = _colorize(0.5 + 0.18 * _fractal_noise(rng, (h, w), 1.8), (0.38, 0.38, 0.40), (0.75, 0.74, 0.72))
    for _ in range(int(round(7 * area))):  # posters
        ph, pw = int(rng.integers(50, 120)), int(rng.integers(50, 120))
        _paste(img, _poster(rng, ph, pw), int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph)),
               rng, torn=float(rng.choice([0.0, 0.0, 0.4])))
    _draw_blobs(img, rng, int(40 * area), 6, 40, _GRAFFITI, alpha=0.85)
    _draw_lines(img, rng, int(50 * area), _GRAFFITI, (2, 6), length=170)
    for _ in range(int(round(3 * area))):
        _text(img, _words(rng), (int(rng.integers(0, w - 100)), int(rng.integers(40, h))), float(rng.uniform(20, 45)),
              _GRAFFITI[rng.integers(8)], int(rng.integers(3, 7)), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_crate(rng: np.random.Generator, shape=(768, 1536), base=(0.55, 0.42, 0.28),
                   stickers: float = 1.0) -> np.ndarray:
    """Boxes: wood/metal-like panels with planks of uneven width (a mildly repeated structure),
    stickers, scratches and stencilled lettering (``stickers`` scales their density)."""
    h, w = shape
    area = h * w / 512.0**2 * stickers
    grain = 0.5 + 0.2 * _fractal_noise(rng, (h, w), 2.2) + 0.1 * np.sin(np.arange(w) / 3.0)[None, :]
    img = _colorize(grain, np.asarray(base, np.float32) * 0.55, np.asarray(base, np.float32) * 1.4)
    x = int(rng.integers(0, 40))
    while x < w:  # planks of uneven width
        img[:, x] *= 0.4
        img[:, x + 1:x + 2] *= 0.6
        x += int(rng.integers(48, 80))
    _draw_blobs(img, rng, int(25 * area), 5, 22, _GRAFFITI, alpha=1.0)
    _draw_lines(img, rng, int(20 * area), _GRAFFITI[[4, 5, 0]], (1, 3), length=170)
    for _ in range(int(round(4 * area))):
        _text(img, _words(rng), (int(rng.integers(0, w - 100)), int(rng.integers(30, h))), float(rng.uniform(18, 34)),
              _GRAFFITI[[5, 0, 4]][rng.integers(3)], 3, cv2.FONT_HERSHEY_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_pillar(rng: np.random.Generator, shape=(1024, 768)) -> np.ndarray:
    """Weathered concrete pillar: formwork seams, stains, a few posters and tags."""
    h, w = shape
    img = _colorize(0.5 + 0.15 * _fractal_noise(rng, (h, w), 1.8) + 0.1 * _fractal_noise(rng, (h, w), 0.8),
                    (0.42, 0.42, 0.43), (0.76, 0.75, 0.73))
    y = int(rng.integers(20, 60))
    while y < h:  # formwork seams at uneven heights
        img[y:y + 2] *= 0.7
        y += int(rng.integers(100, 180))
    img *= (1 - 0.3 * _sigmoid(3 * _streaks(rng, (h, w)) - 2.0))[..., None]
    for _ in range(5):
        ph, pw = int(rng.integers(70, 140)), int(rng.integers(60, 120))
        _paste(img, _poster(rng, ph, pw), int(rng.integers(0, 640 - pw)), int(rng.integers(100, 700 - ph)),
               rng, torn=float(rng.choice([0.0, 0.4])))
    for _ in range(4):
        _text(img, _words(rng), (int(rng.integers(0, 540)), int(rng.integers(120, 700))), float(rng.uniform(25, 50)),
              _GRAFFITI[rng.integers(8)], int(rng.integers(3, 7)), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_bench(rng: np.random.Generator, shape=(384, 1536)) -> np.ndarray:
    """Wooden bench: horizontal slats (a repeated structure) with grain, knots and carved marks."""
    h, w = shape
    grain = 0.5 + 0.15 * _fractal_noise(rng, (h, w), 2.0) + 0.12 * _streaks(rng, (w, h), 12).T
    img = _colorize(grain, (0.30, 0.20, 0.12), (0.70, 0.52, 0.32))
    y = 0
    while y < h:
        img[y:y + 3] *= 0.35  # gaps between slats
        img[y + 3:y + 30] *= rng.uniform(0.85, 1.15)
        y += 30
    _draw_blobs(img, rng, 25, 2, 6, np.array([[0.25, 0.16, 0.1]], np.float32), alpha=0.8)  # knots
    for _ in range(8):
        _text(img, _words(rng), (int(rng.integers(0, w - 80)), int(rng.integers(20, h))), float(rng.uniform(12, 20)),
              (0.2, 0.13, 0.08), 2, cv2.FONT_HERSHEY_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def _mip_pyramid(tex: np.ndarray, levels: int = 6) -> list[np.ndarray]:
    """Texture and its box-filtered halvings (exact 2x2 averages while both sides are even)."""
    pyr = [tex]
    for _ in range(levels - 1):
        t = pyr[-1]
        if min(t.shape[:2]) < 8 or t.shape[0] % 2 or t.shape[1] % 2:
            break
        pyr.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return pyr


@dataclass
class Scene:
    """Everything the renderer needs.

    Attributes:
        quads: all textured rectangles (ground first, then walls, then box faces).
        textures: per texture a mip pyramid, list of (H / 2^l, W / 2^l, 3) float32 RGB.
        boxes: oriented boxes (exact, cheap shadow tests).
        walls: indices of the quads that are free-standing walls (shadow casters besides boxes).
        lightmaps: per quad a baked (Hl, Wl) float32 light factor (ambient + sun x unshadowed) on
            a regular grid over [0, size[0]] x [0, size[1]] (row = b, column = a).
    """

    quads: list[Quad]
    textures: list[list[np.ndarray]]
    boxes: list[Box]
    walls: list[int]
    lightmaps: list[np.ndarray] = field(default_factory=list)


def build_scene(rng: np.random.Generator) -> Scene:
    """The courtyard: quads, textures (mip pyramids), boxes.

    Layout (metres, z up): ground z=0 over [-16, 16]^2; back facade at y=8 (brickwork on its
    left part, a shop front, a mural); windowed facade at x=10; graffiti wall at x=-10; two
    crates, a pillar and a bench in the middle, positions and yaw jittered by the seed. Each
    texture covers its surfaces without repeating (see the texture section).
    """
    textures = [
        _texture_paving(rng),  # 0 ground: 1600 x 0.02 m = the whole 32 m ground
        _texture_back_facade(rng),  # 1 back facade: 2000 x 600 texels of 0.01 m used
        _texture_windows(rng),  # 2 right facade: 834 x 584 texels of 0.012 m used
        _texture_graffiti(rng, (384, 928)),  # 3 left wall: 900 x 350 texels of 0.01 m used
        _texture_crate(rng, base=(0.55, 0.42, 0.28), stickers=0.3),  # 4 crate A
        _texture_crate(rng, base=(0.30, 0.45, 0.55), stickers=0.3),  # 5 crate B
        _texture_pillar(rng),  # 6 pillar: 640 x 720 texels of 0.005 m around it
        _texture_bench(rng),  # 7 bench: 1520 x 140 texels of 0.005 m around it
    ]
    quads = [
        _quad((-16, -16, 0), (1, 0, 0), (0, 1, 0), (32, 32), 0, 0.02),
        _quad((-10, 8, 0), (1, 0, 0), (0, 0, 1), (20, 6), 1, 0.01),
        _quad((10, -2, 0), (0, 1, 0), (0, 0, 1), (10, 7), 2, 0.012, flip=True),
        _quad((-10, -1, 0), (0, 1, 0), (0, 0, 1), (9, 3.5), 3, 0.01),
    ]
    walls = [1, 2, 3]

    def jit(s: float) -> float:
        return _jitter(rng, s)

    boxes = []
    for center, size, yaw, tex, texel, top_row in [
        ((-3.5 + jit(0.3), 3.0 + jit(0.3)), (2.2, 1.8, 2.2), 20 + jit(10), 4, 0.006, 400),
        ((2.8 + jit(0.3), 4.2 + jit(0.3)), (1.6, 3.0, 1.4), -15 + jit(10), 5, 0.006, 256),
        ((0.4 + jit(0.2), 0.2 + jit(0.2)), (0.8, 0.8, 3.6), 35 + jit(10), 6, 0.005, 800),
        ((4.5 + jit(0.3), -1.0 + jit(0.3)), (3.0, 0.8, 0.7), 5 + jit(10), 7, 0.005, 180),
    ]:
        q, b = _box(center, size, yaw, tex, texel, top_row)
        quads += q
        boxes.append(b)
    scene = Scene(quads, [_mip_pyramid(t) for t in textures], boxes, walls)
    scene.lightmaps = [bake_lightmap(scene, q) for q in quads]
    return scene


# --------------------------------------------------------------------------------------------
# cameras


def look_at(center: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """(4, 4) world-to-camera pose of an OpenCV camera at ``center`` looking at ``target`` (z up)."""
    fwd = target - center
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    r = np.deg2rad(roll_deg)
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1.0]])
    T = np.eye(4)
    T[:3, :3] = Rz @ R
    T[:3, 3] = -T[:3, :3] @ center
    return T


def make_cameras(rng: np.random.Generator, num_cameras: int, width: int, height: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num_cameras`` (K (3, 3) OpenCV convention, cam_from_world (4, 4)) on an arc.

    Cameras sweep azimuths -60..60 deg around (0, 3) with uneven spacing, distance alternating
    between ~6.5 and ~13 m (scale changes up to 2x), height 1.3..4.5 m, look-at points spread
    over the courtyard (so overlap varies), and a small roll. Focal lengths vary by camera
    (horizontal FOV 40-65 deg).
    """
    center = np.array([0.0, 3.0, 0.0])
    u = np.linspace(0.0, 1.0, num_cameras)
    u = np.clip(u + rng.uniform(-0.3, 0.3, num_cameras) / max(num_cameras - 1, 1), 0, 1)
    az = np.deg2rad(-60 + 120 * u)
    phase = np.arange(num_cameras) * 2.0 * np.pi / 5.0
    dist = 9.75 + 3.25 * np.sin(phase) + rng.uniform(-0.5, 0.5, num_cameras)
    cams = []
    for i in range(num_cameras):
        pos = center + dist[i] * np.array([np.sin(az[i]), -np.cos(az[i]), 0.0])
        pos[2] = rng.uniform(1.3, 4.5)
        target = np.array([_jitter(rng, 4.0), 3.5 + _jitter(rng, 2.5), rng.uniform(0.5, 2.5)])
        pose = look_at(pos, target, roll_deg=rng.uniform(-6, 6))
        f = width / 2 / np.tan(np.deg2rad(rng.uniform(40, 65)) / 2)
        K = np.array([[f, 0, width / 2 - 0.5], [0, f * rng.uniform(0.99, 1.01), height / 2 - 0.5], [0, 0, 1]])
        cams.append((K, pose))
    return cams


# --------------------------------------------------------------------------------------------
# ray casting


def cast_rays(quads: list[Quad], origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter t (N,) of the first hit of rays ``origins + t dirs`` with ``quads`` (inf: none).

    Args:
        origins: (3,) or (N, 3); dirs: (N, 3) or (3,) (not necessarily unit). Both sides count.
    """
    origins = np.asarray(origins, float)
    dirs = np.asarray(dirs, float)
    n = max(len(origins) if origins.ndim == 2 else 1, len(dirs) if dirs.ndim == 2 else 1)
    best = np.full(n, np.inf)
    for q in quads:
        axes = np.stack([q.normal, q.u, q.v], 1)  # (3, 3) columns n, u, v
        proj = dirs @ axes  # n.d, u.d, v.d
        rel = (origins - q.origin) @ axes
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -rel[..., 0] / proj[..., 0]
            a = rel[..., 1] + t * proj[..., 1]
            b = rel[..., 2] + t * proj[..., 2]
            hit = (t > _EPS) & (a >= 0) & (a <= q.size[0]) & (b >= 0) & (b <= q.size[1])
        best = np.where(hit & (t < best), t, best)
    return best


def _grid_window(q: Quad, K: np.ndarray, T: np.ndarray, xs: np.ndarray, ys: np.ndarray
                 ) -> tuple[int, int, int, int]:
    """Index window (y0, y1, x0, x1) of the pixel grid ``ys`` x ``xs`` that can see quad ``q``.

    The projected corners bound the quad when all are in front of the camera; otherwise the whole
    grid is returned (conservative).
    """
    full = (0, len(ys), 0, len(xs))
    corners = np.array([q.origin + a * q.u + b * q.v for a in (0, q.size[0]) for b in (0, q.size[1])])
    Xc = corners @ T[:3, :3].T + T[:3, 3]
    if np.any(Xc[:, 2] < 1e-2):
        return (0, 0, 0, 0) if np.all(Xc[:, 2] < 0) else full
    px = Xc[:, 0] / Xc[:, 2] * K[0, 0] + K[0, 2]
    py = Xc[:, 1] / Xc[:, 2] * K[1, 1] + K[1, 2]
    sx, sy = xs[1] - xs[0], ys[1] - ys[0]
    x0 = int(np.clip(np.floor((px.min() - xs[0]) / sx) - 1, 0, len(xs)))
    x1 = int(np.clip(np.ceil((px.max() - xs[0]) / sx) + 2, 0, len(xs)))
    y0 = int(np.clip(np.floor((py.min() - ys[0]) / sy) - 1, 0, len(ys)))
    y1 = int(np.clip(np.ceil((py.max() - ys[0]) / sy) + 2, 0, len(ys)))
    return y0, y1, x0, x1


def cast_grid(quads: list[Quad], K: np.ndarray, T: np.ndarray, xs: np.ndarray, ys: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First hits of the camera rays through the pixel grid ``ys`` x ``xs`` (OpenCV pixels).

    Rays are ``C + t R^T K^-1 (x, y, 1)``, so ``t`` is the z-depth. Each quad is only tested in its
    screen-space window, and ``n.d`` is separable in x and y, which keeps this cheap.

    Args:
        K: (3, 3) OpenCV intrinsics; T: (4, 4) world-to-camera; xs: (W,) and ys: (H,) increasing
            uniformly spaced pixel coordinates.
    Returns:
        t (H, W) z-depth (inf: no hit), quad index (H, W) int32 (-1: none), in-quad coordinates
        a (H, W) and b (H, W) in metres.
    """
    R = T[:3, :3]
    C = -R.T @ T[:3, 3]
    dx = (xs - K[0, 2]) / K[0, 0]
    dy = (ys - K[1, 2]) / K[1, 1]
    H, W = len(ys), len(xs)
    best = np.full((H, W), np.inf)
    qid = np.full((H, W), -1, np.int32)
    A, B = np.zeros((H, W)), np.zeros((H, W))
    for k, q in enumerate(quads):
        y0, y1, x0, x1 = _grid_window(q, K, T, xs, ys)
        if y1 <= y0 or x1 <= x0:
            continue
        axes = np.stack([q.normal, q.u, q.v], 1)
        ac = R @ axes  # columns: n, u, v in camera coordinates
        rel = (C - q.origin) @ axes
        ddx, ddy = dx[None, x0:x1], dy[y0:y1, None]
        nd = ac[0, 0] * ddx + ac[1, 0] * ddy + ac[2, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -rel[0] / nd
            a = rel[1] + t * (ac[0, 1] * ddx + ac[1, 1] * ddy + ac[2, 1])
            b = rel[2] + t * (ac[0, 2] * ddx + ac[1, 2] * ddy + ac[2, 2])
            bw = best[y0:y1, x0:x1]
            hit = (t > _EPS) & (t < bw) & (a >= 0) & (a <= q.size[0]) & (b >= 0) & (b <= q.size[1])
        np.copyto(bw, t, where=hit)
        np.copyto(qid[y0:y1, x0:x1], k, where=hit)
        np.copyto(A[y0:y1, x0:x1], a, where=hit)
        np.copyto(B[y0:y1, x0:x1], b, where=hit)
    return best, qid, A, B


def in_shadow(scene: Scene, points: np.ndarray) -> np.ndarray:
    """(N,) bool: the ray from ``points`` (N, 3) towards the sun hits a box or a wall."""
    shadow = np.zeros(len(points), bool)
    for box in scene.boxes:
        # conservative cull: rays passing farther than the bounding sphere cannot hit the box
        rel = box.center - points
        along = rel @ _SUN
        radius = float(np.linalg.norm(box.half)) * 1.001 + 1e-6
        near = np.flatnonzero((along > -radius) & (np.einsum("ij,ij->i", rel, rel) - along**2 <= radius**2))
        # exact slab test in the box frame, one axis at a time
        o = (points[near] - box.center) @ box.axes.T  # (n, 3) in box coordinates
        d = box.axes @ _SUN
        tmin = np.full(len(near), _EPS)
        tmax = np.full(len(near), np.inf)
        for ax in range(3):
            if abs(d[ax]) < 1e-12:  # parallel to this slab: inside it or never
                outside = np.abs(o[:, ax]) > box.half[ax]
                tmax[outside] = -np.inf
                continue
            t1 = (-box.half[ax] - o[:, ax]) / d[ax]
            t2 = (box.half[ax] - o[:, ax]) / d[ax]
            if d[ax] < 0:
                t1, t2 = t2, t1
            np.maximum(tmin, t1, out=tmin)
            np.minimum(tmax, t2, out=tmax)
        shadow[near[tmax >= tmin]] = True
    rest = ~shadow
    if rest.any():
        t = cast_rays([scene.quads[k] for k in scene.walls], points[rest], _SUN)
        shadow[np.flatnonzero(rest)[np.isfinite(t)]] = True
    return shadow


def remap_points(img: np.ndarray, x: np.ndarray, y: np.ndarray, wrap: bool) -> np.ndarray:
    """Bilinear samples of ``img`` (H, W[, C]) float32 at pixel-centre coords x, y (N,) -> (N[, C]).

    Uses cv2.remap (wrapping or clamping at the border); points are laid out as rows of 4096.
    """
    n = len(x)
    cols = 4096
    rows = max(1, -(-n // cols))
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = x, y
    border = cv2.BORDER_WRAP if wrap else cv2.BORDER_REPLICATE
    out = cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=border)
    return out.reshape((rows * cols,) + img.shape[2:])[:n]


def _sample_texture(pyr: list[np.ndarray], s: np.ndarray, t: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Bilinear, wrapped lookup at level-0 texel coords (s, t) (N,) in mip ``level`` (N,) -> (N, 3).

    Texel (i, j) of level l covers [i, i + 1) x [j, j + 1) in level-l units (centre at +0.5).
    """
    out = np.empty((len(s), 3), np.float32)
    for lev in np.unique(level):
        m = level == lev
        sc = 0.5 ** int(lev)
        out[m] = remap_points(pyr[int(lev)], s[m] * sc - 0.5, t[m] * sc - 0.5, wrap=True)
    return out


def bake_lightmap(scene: Scene, q: Quad) -> np.ndarray:
    """(Hl, Wl) float32 light factor on a regular grid over quad ``q`` (row = b, column = a):
    AMBIENT + SUN_STRENGTH * max(n.sun, 0) where the sun is not blocked, AMBIENT otherwise."""
    lit = float(q.normal @ _SUN)
    nx = max(2, int(np.ceil(q.size[0] / LIGHTMAP_TEXEL)) + 1)
    ny = max(2, int(np.ceil(q.size[1] / LIGHTMAP_TEXEL)) + 1)
    if lit <= 0:
        return np.full((ny, nx), AMBIENT, np.float32)
    aa, bb = np.meshgrid(np.linspace(0, q.size[0], nx), np.linspace(0, q.size[1], ny))
    pts = q.origin + aa.reshape(-1, 1) * q.u + bb.reshape(-1, 1) * q.v + q.normal * 1e-3
    sun = ~in_shadow(scene, pts)
    return (AMBIENT + SUN_STRENGTH * lit * sun).astype(np.float32).reshape(ny, nx)


def _sky(dirs: np.ndarray) -> np.ndarray:
    """(N, 3) sky colour of world directions (N, 3): a vertical gradient (infinitely far)."""
    elev = np.clip(dirs[:, 2] / np.linalg.norm(dirs, axis=1), 0, 1)[:, None]
    return (np.array([0.80, 0.86, 0.93]) * (1 - elev) + np.array([0.35, 0.55, 0.85]) * elev).astype(np.float32)


def shade(scene: Scene, dirs: np.ndarray, t: np.ndarray, qid: np.ndarray, a: np.ndarray,
          b: np.ndarray, pixel_angle: float, sun: float = 1.0) -> np.ndarray:
    """(N, 3) linear RGB of N camera rays with world directions ``dirs`` (N, 3) and hits
    (t, qid, a, b) (N,) each: mip-mapped texture x baked light, sky where nothing was hit.

    ``pixel_angle`` is the angular size of one sample (radians); with the ray length and the
    obliquity it selects the mip level (isotropic approximation). ``sun`` scales the direct
    sunlight of the baked light (1 = clear sky, < 1 = thin clouds, weaker shadows).
    """
    rgb = np.empty((len(dirs), 3), np.float32)
    hit = qid >= 0
    rgb[~hit] = _sky(dirs[~hit])
    idx = np.flatnonzero(hit)
    if not len(idx):
        return rgb
    d, q_ids = dirs[idx], qid[idx]
    normals = np.stack([q.normal for q in scene.quads])[q_ids]
    dnorm = np.linalg.norm(d, axis=1)
    cosv = np.abs(np.einsum("ij,ij->i", normals, d)) / dnorm
    foot_all = t[idx] * dnorm * pixel_angle / np.sqrt(np.maximum(cosv, 0.05))
    order = np.argsort(q_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(q_ids[order])) + 1
    for grp in np.split(order, bounds):
        k = int(q_ids[grp[0]])
        q = scene.quads[k]
        pyr = scene.textures[q.texture]
        ga, gb = a[idx[grp]], b[idx[grp]]
        level = np.clip(np.floor(np.log2(np.maximum(foot_all[grp] / q.texel, 1.0))), 0, len(pyr) - 1)
        tex = _sample_texture(pyr, ga / q.texel + q.offset[0], (q.size[1] - gb) / q.texel + q.offset[1],
                              level.astype(np.int64))  # texture rows grow downwards
        lm = scene.lightmaps[k]
        light = remap_points(lm, ga * ((lm.shape[1] - 1) / q.size[0]), gb * ((lm.shape[0] - 1) / q.size[1]),
                             wrap=False)
        if sun != 1.0:
            light = AMBIENT + (light - AMBIENT) * np.float32(sun)
        rgb[idx[grp]] = tex * light[:, None]
    return rgb


def render_view(scene: Scene, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int,
                supersample: int = 2, sun: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Render one view (``sun``: strength of direct sunlight, see :func:`shade`).

    Returns:
        rgb: (H, W, 3) float32 linear colour in [0, ~1.2], mean of ``supersample``^2 regular
            sub-pixel samples per pixel.
        depth: (H, W) float32 z-depth of the rays through the pixel centres (OpenCV convention,
            pixel (u, v) at integer coordinates), 0 where nothing was hit.
    """
    t, _, _, _ = cast_grid(scene.quads, K, cam_from_world, np.arange(width, dtype=float),
                           np.arange(height, dtype=float))
    depth = np.where(np.isfinite(t), t, 0.0).astype(np.float32)

    s = supersample
    xs = (np.arange(width * s) + 0.5) / s - 0.5
    ys = (np.arange(height * s) + 0.5) / s - 0.5
    t, qid, a, b = cast_grid(scene.quads, K, cam_from_world, xs, ys)
    R = cam_from_world[:3, :3]
    gx, gy = np.meshgrid((xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1])
    dirs = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], 1) @ R  # R^T d_cam, row-wise
    rgb = shade(scene, dirs, t.ravel(), qid.ravel(), a.ravel(), b.ravel(), 1.0 / (K[0, 0] * s), sun)
    rgb = rgb.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return rgb, depth


def photometric(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 BGR after a per-image gain, white balance, gamma, vignetting, a slight
    defocus blur and sensor noise of varying strength."""
    H, W, _ = rgb.shape
    gain = rng.uniform(0.8, 1.2)
    wb = rng.uniform(0.93, 1.07, 3)
    gamma = rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (W**2 / 4 + H**2 / 4)
    vignette = (1 - rng.uniform(0.05, 0.2) * r2)[..., None]
    img = np.clip(rgb * gain * wb * vignette, 0, 1) ** (gamma / 2.2) * 255.0
    blur = rng.uniform(0.0, BLUR_SIGMA_MAX)
    if blur > 0.05:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), blur)
    img = img + rng.normal(0, rng.uniform(*NOISE_SIGMA), img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)[..., ::-1]


# --------------------------------------------------------------------------------------------
# 3D points and observations


def sample_surface_points(rng: np.random.Generator, scene: Scene, num_points: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Random points on the quads, proportional to area (the ground limited to the courtyard).

    Returns:
        xyz (M, 3) float64 world points and colours (M, 3) uint8 RGB from the textures.
    """
    quads, textures = scene.quads, scene.textures
    areas = np.array([q.size[0] * q.size[1] for q in quads])
    areas[0] = 20.0 * 14.0  # ground: only the courtyard x in [-10, 10], y in [-6, 8]
    counts = np.floor(num_points * areas / areas.sum()).astype(int)
    xyz, cols = [], []
    for k, (q, c) in enumerate(zip(quads, counts)):
        if k == 0:
            a = rng.uniform(6, 26, c)
            b = rng.uniform(10, 24, c)
        else:
            a = rng.uniform(0, q.size[0], c)
            b = rng.uniform(0, q.size[1], c)
        xyz.append(q.origin + a[:, None] * q.u + b[:, None] * q.v)
        col = _sample_texture(textures[q.texture], a / q.texel + q.offset[0],
                              (q.size[1] - b) / q.texel + q.offset[1], np.full(c, 2))
        cols.append(np.clip(col * 255, 0, 255).astype(np.uint8))
    return np.concatenate(xyz), np.concatenate(cols)


def observe(xyz: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, depth: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Which points a camera sees, and where.

    Args:
        xyz: (M, 3) world points.
        K: (3, 3) OpenCV-convention intrinsics; cam_from_world: (4, 4).
        depth: (H, W) rendered z-depth of that camera.
    Returns:
        visible (M,) bool and xy (M, 2) OpenCV pixel coordinates (meaningful where visible).
    """
    Xc = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = Xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = (Xc[:, :2] / z[:, None]) * np.diag(K)[:2] + K[:2, 2]
    xy = np.where(np.isfinite(xy), xy, -1e9)
    z_map = sample_depth(depth, xy)
    with np.errstate(invalid="ignore"):
        visible = (z > 0) & (np.abs(z - z_map) <= VISIBILITY_REL_TOL * z_map)
    return visible, xy


# --------------------------------------------------------------------------------------------
# writing


def model_tracks(visible: np.ndarray, groups: np.ndarray | None = None
                 ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """The 3D points of the COLMAP model as tracks over the sampled surface points.

    Without ``groups`` every sampled point seen by >= 2 cameras is one track. With ``groups`` the
    cameras seeing a point are split by group label and every part with >= 2 cameras is its own
    track (so no track spans two groups).

    Args:
        visible: (N, M) bool, camera i sees sampled point p.
        groups: (N,) int group label per camera, or None.
    Returns:
        tracks: (p, cameras) per model point in writing order (by p, then by group label), with
            cameras an (L,) int64 array of camera indices (L >= 2, increasing).
        kept: (N, M) bool, the observations that belong to some track.
    """
    if groups is None:
        keep = visible.sum(0) >= 2
        tracks = [(int(p), np.flatnonzero(visible[:, p])) for p in np.flatnonzero(keep)]
        return tracks, visible & keep
    groups = np.asarray(groups)
    kept = np.zeros_like(visible)
    for g in np.unique(groups):
        member = groups == g
        kept[member] = visible[member] & (visible[member].sum(0) >= 2)
    tracks = []
    for p in np.flatnonzero(kept.any(0)):
        cams = np.flatnonzero(kept[:, p])
        for g in np.unique(groups[cams]):
            tracks.append((int(p), cams[groups[cams] == g]))
    return tracks, kept


def write_colmap_model(path: Path, names: list[str], cams: list[tuple[np.ndarray, np.ndarray]],
                       width: int, height: int, xyz: np.ndarray, colors: np.ndarray,
                       visible: np.ndarray, xy: np.ndarray, groups: np.ndarray | None = None) -> None:
    """Write a COLMAP binary model with pycolmap (COLMAP pixel convention, see module doc).

    Args:
        names: N image names; cams: N (K OpenCV (3, 3), cam_from_world (4, 4)).
        xyz: (M, 3) points, colors (M, 3) uint8; visible (N, M) bool; xy (N, M, 2) OpenCV pixels.
        groups: (N,) int SfM group per camera, or None (one model); see :func:`model_tracks`.
        Only tracks of >= 2 cameras are written.
    """
    import pycolmap

    tracks, kept = model_tracks(visible, groups)
    rec = pycolmap.Reconstruction()
    obs_index: list[dict[int, int]] = []
    for i, (name, (K, T)) in enumerate(zip(names, cams)):
        cam = pycolmap.Camera.create_from_model_name(i + 1, "PINHOLE", float(K[0, 0]), width, height)
        cam.params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]  # COLMAP: pixel centre at +0.5
        rec.add_camera_with_trivial_rig(cam)
        pts = np.flatnonzero(kept[i])
        obs_index.append({int(p): k for k, p in enumerate(pts)})
        image = pycolmap.Image(name=name, keypoints=xy[i, pts] + 0.5, camera_id=i + 1, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(T[:3, :3]), T[:3, 3])
        rec.add_image_with_trivial_frame(image, pose)
    for p, track_cams in tracks:
        track = pycolmap.Track([pycolmap.TrackElement(int(i) + 1, obs_index[i][p]) for i in track_cams])
        rec.add_point3D(xyz[p], track, colors[p])
    rec.update_point_3d_errors()
    path.mkdir(parents=True, exist_ok=True)
    rec.write(str(path))


def write_depth(path: Path, depth: np.ndarray) -> None:
    """MegaDepth-style h5 with dataset ``"depth"`` (H, W) float32."""
    import h5py

    with h5py.File(path, "w", track_order=False) as f:
        f.create_dataset("depth", data=depth.astype(np.float32), compression="gzip", compression_opts=4)


def demo_scene_params(seed: int, num_cameras: int, width: int, height: int, scene: str,
                      sfm_groups: list[int] | None = None) -> dict[str, Any]:
    """The marker content identifying a generated scene (``sfm_groups`` only when given)."""
    params: dict[str, Any] = {"seed": int(seed), "num_cameras": int(num_cameras), "width": int(width),
                              "height": int(height), "version": DEMO_SCENE_VERSION, "scene": scene}
    if sfm_groups is not None:
        params["sfm_groups"] = [int(g) for g in sfm_groups]
    return params


def check_sfm_groups(sfm_groups: Any, num_cameras: int) -> list[int] | None:
    """``sfm_groups`` as a list of ints (None stays None); ValueError naming the problem when it
    is not a sequence of ``num_cameras`` integer labels (bools are not labels)."""
    if sfm_groups is None:
        return None
    if isinstance(sfm_groups, (str, bytes, dict)) or not hasattr(sfm_groups, "__len__"):
        raise ValueError(f"sfm_groups must be a list of {num_cameras} int labels, got {sfm_groups!r}")
    labels = list(sfm_groups)
    if len(labels) != num_cameras:
        raise ValueError(f"sfm_groups must have one label per camera: got {len(labels)} labels "
                         f"for num_cameras={num_cameras}")
    bad = [g for g in labels if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer))]
    if bad:
        raise ValueError(f"sfm_groups labels must be ints, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [int(g) for g in labels]


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """Contents of ``<folder>/demo_scene.json``, or None when absent/unreadable."""
    try:
        return json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def write_demo_scene(out_dir: str | Path, seed: int = 0, num_cameras: int = 14, width: int = 320,
                     height: int = 240, scene: str = "demo", sfm_groups: list[int] | None = None) -> Path:
    """Render and write the demo scene to ``<out_dir>/<scene>``; returns that folder.

    The scene is built in a temporary folder that is renamed into place, so ``<out>/<scene>`` is
    either absent or complete; it holds a copy of the marker (``<out>/<scene>/demo_scene.json``).
    ``<out>/demo_scene.json`` (the most recently written scene) is written after the rename.
    A previous demo scene of the same name is replaced; any other existing ``<out>/<scene>``
    raises FileExistsError.

    Args:
        out_dir: parent folder (created if needed).
        seed: seeds textures and layout jitter (one stream), cameras and points (another) and
            the photometric changes (one stream per image).
        num_cameras: number of images (>= 2; 12+ recommended).
        width, height: image size in pixels.
        scene: scene folder name.
        sfm_groups: one int group label per camera: split the COLMAP model by group (see the
            module doc) and write ``sfm_groups.json``; None = one model. Images, depth maps and
            poses do not depend on it.
    """
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2, got {num_cameras}")
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    if not scene or Path(scene).name != scene or scene.startswith("."):
        raise ValueError(f"scene must be a plain folder name, got {scene!r}")
    sfm_groups = check_sfm_groups(sfm_groups, num_cameras)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / scene
    if final.exists() and read_marker(final) is None:
        raise FileExistsError(f"{final} exists and is not a demo scene written by matchmill")

    rng = np.random.default_rng(seed)
    world = build_scene(np.random.default_rng([seed, 2]))  # own stream: content edits keep the cameras
    cams = make_cameras(rng, num_cameras, width, height)
    xyz, colors = sample_surface_points(rng, world, NUM_POINTS)
    names = [f"demo_{i:03d}.jpg" for i in range(num_cameras)]
    params = demo_scene_params(seed, num_cameras, width, height, scene, sfm_groups)

    tmp = out / f".{scene}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "depths").mkdir()
        visible = np.zeros((num_cameras, len(xyz)), bool)
        xy = np.zeros((num_cameras, len(xyz), 2))
        for i, (K, T) in enumerate(cams):
            sun = np.random.default_rng([seed, i, 2]).uniform(*SUN_RANGE)  # passing clouds
            rgb, depth = render_view(world, K, T, width, height, sun=sun)
            prng = np.random.default_rng([seed, i, 1])
            img = photometric(rgb, prng)
            quality = int(prng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            (tmp / "images" / names[i]).write_bytes(buf.tobytes())
            write_depth(tmp / "depths" / (Path(names[i]).stem + ".h5"), depth)
            visible[i], xy[i] = observe(xyz, K, T, depth)
        groups = None if sfm_groups is None else np.asarray(sfm_groups, np.int64)
        write_colmap_model(tmp / "sparse", names, cams, width, height, xyz, colors, visible, xy, groups)
        if sfm_groups is not None:
            _write_json_atomic(tmp / SFM_GROUPS_NAME, dict(zip(names, sfm_groups)))
        _write_json_atomic(tmp / MARKER_NAME, params)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json_atomic(out / MARKER_NAME, params)
    return final


def ensure_demo_scene(out_dir: str | Path, seed: int = 0, num_cameras: int = 14, width: int = 320,
                      height: int = 240, scene: str = "demo", sfm_groups: list[int] | None = None) -> Path:
    """``<out_dir>/<scene>``, written by :func:`write_demo_scene` unless a complete scene with
    exactly these parameters (and the current :data:`DEMO_SCENE_VERSION`) is already there."""
    sfm_groups = check_sfm_groups(sfm_groups, num_cameras)
    final = Path(out_dir) / scene
    if read_marker(final) == demo_scene_params(seed, num_cameras, width, height, scene, sfm_groups):
        return final
    return write_demo_scene(out_dir, seed, num_cameras, width, height, scene, sfm_groups)
