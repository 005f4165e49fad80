"""Deterministic synthetic MegaDepth-format scene: the embedded default data of matchmill.

:func:`write_demo_scene` renders a small sunlit courtyard (paving-slab ground, a brick facade
with a repeated pattern, a windowed facade, a graffiti wall, two crates, a pillar and a bench, with
baked cast shadows) with a vectorised numpy ray caster from known PINHOLE cameras on an arc
around it, and writes::

    <out>/<scene>/images/<name>.jpg    8-bit colour JPEG (H, W, 3)
    <out>/<scene>/depths/<stem>.h5     dataset "depth": float32 (H, W) z-depth in metres, 0 = sky
    <out>/<scene>/sparse/              COLMAP binary model written with pycolmap
                                       (cameras, images, points3D, + rigs/frames of COLMAP 3.12+)
    <out>/<scene>/demo_scene.json      {seed, num_cameras, width, height, version, scene}
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
DEMO_SCENE_VERSION = 1
MARKER_NAME = "demo_scene.json"
#: Relative tolerance of the depth test that decides whether a 3D point is seen by a camera.
VISIBILITY_REL_TOL = 0.01
#: Lightmap resolution (metres per lightmap texel); shadows are baked once per scene.
LIGHTMAP_TEXEL = 0.05
#: Ambient light and sun strength of the Lambertian shading.
AMBIENT, SUN_STRENGTH = 0.42, 0.75
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


def _box(center_xy, size_xyz, yaw_deg, texture, texel, rng: np.random.Generator) -> tuple[list[Quad], Box]:
    """Four vertical faces and the top of a box standing on the ground (normals outwards), and
    its oriented bounding box."""
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
        (corner + ez * sz, ex, ey, (sx, sy)),  # top: ex x ey = +ez
    ]
    quads = [_quad(o, u, v, sz_, texture, texel, offset=tuple(rng.uniform(0, 512, 2)))
             for o, u, v, sz_ in faces]
    box = Box(c + ez * sz / 2, np.stack([ex, ey, ez]), np.array([sx, sy, sz]) / 2)
    return quads, box


# --------------------------------------------------------------------------------------------
# procedural textures (float32 RGB in [0, 1], periodic so that wrapping shows no seam)


def _fractal_noise(rng: np.random.Generator, size: int, beta: float = 2.0, min_freq: float = 2.0) -> np.ndarray:
    """(size, size) periodic noise with power spectrum 1/f^beta, normalised to zero mean, unit std."""
    white = rng.standard_normal((size, size))
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2) * size
    amp = np.where(f >= min_freq, np.maximum(f, 1.0) ** (-beta / 2), 0.0)
    out = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(size, size))
    return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)


def _colorize(gray: np.ndarray, c0, c1) -> np.ndarray:
    """Map (H, W) values in [0, 1] to (H, W, 3) between colours c0 and c1."""
    g = np.clip(gray, 0, 1)[..., None]
    return (np.asarray(c0, np.float32) * (1 - g) + np.asarray(c1, np.float32) * g).astype(np.float32)


def _jitter(rng: np.random.Generator, s: float) -> float:
    """Uniform jitter in [-s, s]."""
    return float(rng.uniform(-s, s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_blobs(img: np.ndarray, rng: np.random.Generator, count: int, rmin: float, rmax: float,
                palette: np.ndarray, alpha: float = 1.0) -> None:
    """Draw ``count`` anti-aliased filled ellipses in place (img: (H, W, 3) float32)."""
    size = img.shape[0]
    layer = img.copy()
    for _ in range(count):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.uniform(rmin, rmax)), int(rng.uniform(rmin, rmax)))
        col = tuple(float(x) for x in palette[rng.integers(len(palette))] * rng.uniform(0.7, 1.1))
        cv2.ellipse(layer, c, axes, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    img[:] = img * (1 - alpha) + layer * alpha


def _draw_lines(img: np.ndarray, rng: np.random.Generator, count: int, palette: np.ndarray,
                thickness: tuple[int, int] = (1, 4)) -> None:
    """Draw ``count`` anti-aliased random strokes in place (img: (H, W, 3) float32)."""
    size = img.shape[0]
    for _ in range(count):
        p0 = rng.integers(0, size, 2)
        p1 = p0 + rng.integers(-size // 3, size // 3, 2)
        col = tuple(float(x) for x in palette[rng.integers(len(palette))])
        cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), col,
                 int(rng.integers(thickness[0], thickness[1] + 1)), cv2.LINE_AA)


def _texture_paving(rng: np.random.Generator, size: int = 1024, slab: int = 32) -> np.ndarray:
    """Ground: irregular slabs (per-slab tone) with grout, stains and a few painted lines."""
    n = size // slab
    tone = rng.uniform(0.75, 1.15, (n, n)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    shift = (yy // slab % 2) * (slab // 2)  # running bond
    ix = ((xx + shift) // slab) % n
    iy = yy // slab
    slab_tone = tone[iy, ix]
    gx, gy = (xx + shift) % slab, yy % slab
    grout = (np.minimum(gx, slab - 1 - gx) < 1.5) | (np.minimum(gy, slab - 1 - gy) < 1.5)
    noise = 0.5 + 0.12 * _fractal_noise(rng, size, 1.6) + 0.08 * _fractal_noise(rng, size, 3.0)
    base = _colorize(noise * slab_tone, (0.35, 0.33, 0.30), (0.80, 0.76, 0.68))
    base[grout] *= 0.45
    stains = _sigmoid(4 * _fractal_noise(rng, size, 3.2) - 4)[..., None]
    base = base * (1 - 0.5 * stains) + stains * 0.5 * np.array([0.25, 0.22, 0.18], np.float32)
    _draw_lines(base, rng, 6, np.array([[0.95, 0.9, 0.3], [0.9, 0.9, 0.9]], np.float32), (6, 10))
    return np.clip(base, 0, 1).astype(np.float32)


def _texture_bricks(rng: np.random.Generator, size: int = 512, bw: int = 64, bh: int = 32) -> np.ndarray:
    """Repeated brick pattern: small per-brick colour jitter, mortar, weathering noise."""
    ny, nx = size // bh, size // bw
    col = np.array([0.62, 0.30, 0.20], np.float32) * rng.uniform(0.85, 1.1, (ny, nx, 1)).astype(np.float32)
    col += rng.normal(0, 0.02, (ny, nx, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    shift = (yy // bh % 2) * (bw // 2)
    ix, iy = ((xx + shift) // bw) % nx, yy // bh
    img = col[iy, ix]
    gx, gy = (xx + shift) % bw, yy % bh
    mortar = (np.minimum(gx, bw - 1 - gx) < 2.5) | (np.minimum(gy, bh - 1 - gy) < 2.5)
    img[mortar] = np.array([0.72, 0.70, 0.65], np.float32)
    img = img * (1 + 0.10 * _fractal_noise(rng, size, 1.2)[..., None])
    dirt = _sigmoid(3 * _fractal_noise(rng, size, 3.0) - 2.5)[..., None]
    return np.clip(img * (1 - 0.35 * dirt), 0, 1).astype(np.float32)


def _texture_windows(rng: np.random.Generator, size: int = 512, cell: int = 128) -> np.ndarray:
    """Plaster facade with a grid of windows (frames, dark glass with reflections)."""
    img = _colorize(0.5 + 0.15 * _fractal_noise(rng, size, 2.5), (0.70, 0.62, 0.48), (0.92, 0.86, 0.72))
    refl = 0.5 + 0.25 * _fractal_noise(rng, size, 2.0, min_freq=4)
    for gy in range(size // cell):
        for gx in range(size // cell):
            x0, y0 = gx * cell + 32, gy * cell + 20
            x1, y1 = x0 + 64, y0 + 88
            img[y0 - 5:y1 + 5, x0 - 5:x1 + 5] = (0.30, 0.26, 0.22)
            glass = _colorize(refl[y0:y1, x0:x1], (0.08, 0.10, 0.14), (0.45, 0.55, 0.65))
            img[y0:y1, x0:x1] = glass * rng.uniform(0.7, 1.2)
            img[(y0 + y1) // 2 - 2:(y0 + y1) // 2 + 2, x0:x1] = (0.30, 0.26, 0.22)
            img[y0:y1, (x0 + x1) // 2 - 2:(x0 + x1) // 2 + 2] = (0.30, 0.26, 0.22)
            if rng.random() < 0.5:  # a shutter or curtain, so not every window looks alike
                img[y0:y1, x0:x0 + int(rng.integers(10, 30))] = rng.uniform(0.2, 0.8, 3)
    return np.clip(img, 0, 1).astype(np.float32)


_GRAFFITI = np.array(
    [[0.85, 0.20, 0.20], [0.15, 0.45, 0.85], [0.95, 0.80, 0.15], [0.20, 0.70, 0.35],
     [0.95, 0.95, 0.92], [0.10, 0.10, 0.12], [0.65, 0.30, 0.70], [0.95, 0.55, 0.15]],
    np.float32,
)


def _texture_graffiti(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """Concrete with posters, blobs and strokes: rich, non-repetitive texture."""
    img = _colorize(0.5 + 0.18 * _fractal_noise(rng, size, 1.8), (0.38, 0.38, 0.40), (0.75, 0.74, 0.72))
    for _ in range(7):  # posters
        x0, y0 = rng.integers(0, size - 120, 2)
        w, h = rng.integers(50, 120, 2)
        poster = _colorize(0.5 + 0.3 * _fractal_noise(rng, 128, 2.4)[:h, :w], _GRAFFITI[rng.integers(8)],
                           _GRAFFITI[rng.integers(8)])
        img[y0:y0 + h, x0:x0 + w] = poster
    _draw_blobs(img, rng, 40, 6, 40, _GRAFFITI, alpha=0.85)
    _draw_lines(img, rng, 50, _GRAFFITI, (2, 6))
    return np.clip(img, 0, 1).astype(np.float32)


def _texture_crate(rng: np.random.Generator, size: int = 512, base=(0.55, 0.42, 0.28)) -> np.ndarray:
    """Boxes: wood/metal-like panels with planks, rivets and stickers."""
    grain = 0.5 + 0.2 * _fractal_noise(rng, size, 2.2) + 0.1 * np.sin(np.arange(size) / 3.0)[None, :]
    img = _colorize(grain, np.asarray(base, np.float32) * 0.55, np.asarray(base, np.float32) * 1.4)
    plank = 64
    img[:, ::plank] *= 0.4
    img[:, 1::plank] *= 0.6
    _draw_blobs(img, rng, 25, 5, 22, _GRAFFITI, alpha=1.0)
    _draw_lines(img, rng, 20, _GRAFFITI[[4, 5, 0]], (1, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def _mip_pyramid(tex: np.ndarray, levels: int = 6) -> list[np.ndarray]:
    """Texture and its box-filtered halvings (periodic, so exact 2x2 averages keep the tiling)."""
    pyr = [tex]
    for _ in range(levels - 1):
        t = pyr[-1]
        if t.shape[0] < 8:
            break
        pyr.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return pyr


@dataclass
class Scene:
    """Everything the renderer needs.

    Attributes:
        quads: all textured rectangles (ground first, then walls, then box faces).
        textures: per texture a mip pyramid, list of (S / 2^l, S / 2^l, 3) float32 RGB.
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

    Layout (metres, z up): ground z=0 over [-16, 16]^2; brick facade at y=8 (repeated texture);
    windowed facade at x=10; graffiti wall at x=-10; two crates, a pillar and a bench in the
    middle, positions and yaw jittered by the seed.
    """
    textures = [
        _texture_paving(rng),  # 0 ground
        _texture_bricks(rng),  # 1 back facade
        _texture_windows(rng),  # 2 right facade
        _texture_graffiti(rng),  # 3 left wall, bench
        _texture_crate(rng, base=(0.55, 0.42, 0.28)),  # 4 crate A
        _texture_crate(rng, base=(0.30, 0.45, 0.55)),  # 5 crate B
        _texture_graffiti(rng),  # 6 pillar
    ]
    quads = [
        _quad((-16, -16, 0), (1, 0, 0), (0, 1, 0), (32, 32), 0, 0.02),
        _quad((-10, 8, 0), (1, 0, 0), (0, 0, 1), (20, 6), 1, 0.008),
        _quad((10, -2, 0), (0, 1, 0), (0, 0, 1), (10, 7), 2, 0.012, flip=True),
        _quad((-10, -1, 0), (0, 1, 0), (0, 0, 1), (9, 3.5), 3, 0.01),
    ]
    walls = [1, 2, 3]

    def jit(s: float) -> float:
        return _jitter(rng, s)

    boxes = []
    for center, size, yaw, tex, texel in [
        ((-3.5 + jit(0.3), 3.0 + jit(0.3)), (2.2, 1.8, 2.2), 20 + jit(10), 4, 0.006),
        ((2.8 + jit(0.3), 4.2 + jit(0.3)), (1.6, 3.0, 1.4), -15 + jit(10), 5, 0.006),
        ((0.4 + jit(0.2), 0.2 + jit(0.2)), (0.8, 0.8, 3.6), 35 + jit(10), 6, 0.005),
        ((4.5 + jit(0.3), -1.0 + jit(0.3)), (3.0, 0.8, 0.7), 5 + jit(10), 3, 0.005),
    ]:
        q, b = _box(center, size, yaw, tex, texel, rng)
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
    for box in scene.boxes:  # exact slab test in the box frame, one axis at a time
        o = (points - box.center) @ box.axes.T  # (N, 3) in box coordinates
        d = box.axes @ _SUN
        tmin = np.full(len(points), _EPS)
        tmax = np.full(len(points), np.inf)
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
        shadow |= tmax >= tmin
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
          b: np.ndarray, pixel_angle: float) -> np.ndarray:
    """(N, 3) linear RGB of N camera rays with world directions ``dirs`` (N, 3) and hits
    (t, qid, a, b) (N,) each: mip-mapped texture x baked light, sky where nothing was hit.

    ``pixel_angle`` is the angular size of one sample (radians); with the ray length and the
    obliquity it selects the mip level (isotropic approximation).
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
        rgb[idx[grp]] = tex * light[:, None]
    return rgb


def render_view(scene: Scene, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int,
                supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Render one view.

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
    rgb = shade(scene, dirs, t.ravel(), qid.ravel(), a.ravel(), b.ravel(), 1.0 / (K[0, 0] * s))
    rgb = rgb.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    return rgb, depth


def photometric(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 BGR after a per-image gain, white balance, gamma, vignetting and noise."""
    H, W, _ = rgb.shape
    gain = rng.uniform(0.8, 1.2)
    wb = rng.uniform(0.93, 1.07, 3)
    gamma = rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / (W**2 / 4 + H**2 / 4)
    vignette = (1 - rng.uniform(0.05, 0.2) * r2)[..., None]
    img = np.clip(rgb * gain * wb * vignette, 0, 1) ** (gamma / 2.2) * 255.0
    img += rng.normal(0, 2.0, img.shape)
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


def write_colmap_model(path: Path, names: list[str], cams: list[tuple[np.ndarray, np.ndarray]],
                       width: int, height: int, xyz: np.ndarray, colors: np.ndarray,
                       visible: np.ndarray, xy: np.ndarray) -> None:
    """Write a COLMAP binary model with pycolmap (COLMAP pixel convention, see module doc).

    Args:
        names: N image names; cams: N (K OpenCV (3, 3), cam_from_world (4, 4)).
        xyz: (M, 3) points, colors (M, 3) uint8; visible (N, M) bool; xy (N, M, 2) OpenCV pixels.
        Only points seen by >= 2 cameras are written.
    """
    import pycolmap

    keep = visible.sum(0) >= 2
    rec = pycolmap.Reconstruction()
    obs_index: list[dict[int, int]] = []
    for i, (name, (K, T)) in enumerate(zip(names, cams)):
        cam = pycolmap.Camera.create_from_model_name(i + 1, "PINHOLE", float(K[0, 0]), width, height)
        cam.params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]  # COLMAP: pixel centre at +0.5
        rec.add_camera_with_trivial_rig(cam)
        pts = np.flatnonzero(visible[i] & keep)
        obs_index.append({int(p): k for k, p in enumerate(pts)})
        image = pycolmap.Image(name=name, keypoints=xy[i, pts] + 0.5, camera_id=i + 1, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(T[:3, :3]), T[:3, 3])
        rec.add_image_with_trivial_frame(image, pose)
    for p in np.flatnonzero(keep):
        track = pycolmap.Track([pycolmap.TrackElement(i + 1, obs_index[i][int(p)])
                                for i in np.flatnonzero(visible[:, p])])
        rec.add_point3D(xyz[p], track, colors[p])
    rec.update_point_3d_errors()
    path.mkdir(parents=True, exist_ok=True)
    rec.write(str(path))


def write_depth(path: Path, depth: np.ndarray) -> None:
    """MegaDepth-style h5 with dataset ``"depth"`` (H, W) float32."""
    import h5py

    with h5py.File(path, "w", track_order=False) as f:
        f.create_dataset("depth", data=depth.astype(np.float32), compression="gzip", compression_opts=4)


def demo_scene_params(seed: int, num_cameras: int, width: int, height: int, scene: str) -> dict[str, Any]:
    """The marker content identifying a generated scene."""
    return {"seed": int(seed), "num_cameras": int(num_cameras), "width": int(width),
            "height": int(height), "version": DEMO_SCENE_VERSION, "scene": scene}


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
                     height: int = 240, scene: str = "demo") -> Path:
    """Render and write the demo scene to ``<out_dir>/<scene>``; returns that folder.

    The scene is built in a temporary folder that is renamed into place, so ``<out>/<scene>`` is
    either absent or complete; it holds a copy of the marker (``<out>/<scene>/demo_scene.json``).
    ``<out>/demo_scene.json`` (the most recently written scene) is written after the rename.
    A previous demo scene of the same name is replaced; any other existing ``<out>/<scene>``
    raises FileExistsError.

    Args:
        out_dir: parent folder (created if needed).
        seed: seeds textures, layout jitter, cameras, points and photometric changes.
        num_cameras: number of images (>= 2; 12+ recommended).
        width, height: image size in pixels.
        scene: scene folder name.
    """
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2, got {num_cameras}")
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    if not scene or Path(scene).name != scene or scene.startswith("."):
        raise ValueError(f"scene must be a plain folder name, got {scene!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / scene
    if final.exists() and read_marker(final) is None:
        raise FileExistsError(f"{final} exists and is not a demo scene written by matchmill")

    rng = np.random.default_rng(seed)
    world = build_scene(rng)
    cams = make_cameras(rng, num_cameras, width, height)
    xyz, colors = sample_surface_points(rng, world, NUM_POINTS)
    names = [f"demo_{i:03d}.jpg" for i in range(num_cameras)]
    params = demo_scene_params(seed, num_cameras, width, height, scene)

    tmp = out / f".{scene}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "depths").mkdir()
        visible = np.zeros((num_cameras, len(xyz)), bool)
        xy = np.zeros((num_cameras, len(xyz), 2))
        for i, (K, T) in enumerate(cams):
            rgb, depth = render_view(world, K, T, width, height)
            img = photometric(rgb, np.random.default_rng([seed, i, 1]))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            (tmp / "images" / names[i]).write_bytes(buf.tobytes())
            write_depth(tmp / "depths" / (Path(names[i]).stem + ".h5"), depth)
            visible[i], xy[i] = observe(xyz, K, T, depth)
        write_colmap_model(tmp / "sparse", names, cams, width, height, xyz, colors, visible, xy)
        _write_json_atomic(tmp / MARKER_NAME, params)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json_atomic(out / MARKER_NAME, params)
    return final


def ensure_demo_scene(out_dir: str | Path, seed: int = 0, num_cameras: int = 14, width: int = 320,
                      height: int = 240, scene: str = "demo") -> Path:
    """``<out_dir>/<scene>``, written by :func:`write_demo_scene` unless a complete scene with
    exactly these parameters (and the current :data:`DEMO_SCENE_VERSION`) is already there."""
    final = Path(out_dir) / scene
    if read_marker(final) == demo_scene_params(seed, num_cameras, width, height, scene):
        return final
    return write_demo_scene(out_dir, seed, num_cameras, width, height, scene)
