"""Scene primitives of the demo renderer: textured quads, boxes, the :class:`Scene` record, and
ray casting against quads (world frame z up, metres; OpenCV cameras, world-to-camera poses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Smallest ray parameter counted as a hit (rays do not hit the surface they start on).
RAY_EPS = 1e-6


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


def make_quad(origin, u, v, size, texture, texel, offset=(0.0, 0.0), flip=False) -> Quad:
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


def make_box(center_xy, size_xyz, yaw_deg, texture, texel, top_row: float) -> tuple[list[Quad], Box]:
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
        quads.append(make_quad(o, u, v, sz_, texture, texel, offset=(col, 0.0)))
        col += sz_[0] / texel
    quads.append(make_quad(corner + ez * sz, ex, ey, (sx, sy), texture, texel, offset=(0.0, top_row)))  # top
    box = Box(c + ez * sz / 2, np.stack([ex, ey, ez]), np.array([sx, sy, sz]) / 2)
    return quads, box


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
            hit = (t > RAY_EPS) & (a >= 0) & (a <= q.size[0]) & (b >= 0) & (b <= q.size[1])
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
            hit = (t > RAY_EPS) & (t < bw) & (a >= 0) & (a <= q.size[0]) & (b >= 0) & (b <= q.size[1])
        np.copyto(bw, t, where=hit)
        np.copyto(qid[y0:y1, x0:x1], k, where=hit)
        np.copyto(A[y0:y1, x0:x1], a, where=hit)
        np.copyto(B[y0:y1, x0:x1], b, where=hit)
    return best, qid, A, B
