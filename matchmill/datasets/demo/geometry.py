"""Layout of the demo courtyard and its cameras: :func:`build_scene` (quads, textures, boxes, baked
light) and :func:`make_cameras` (PINHOLE cameras on an arc, world-to-camera poses).

World frame: z up, metres. Cameras: OpenCV frame (x right, y down, z forward); poses are
world-to-camera (x_cam = R x_world + t).
"""

from __future__ import annotations

import numpy as np

from .primitives import Scene, make_box, make_quad
from .rendering import bake_lightmap
from .textures import (
    mip_pyramid,
    texture_back_facade,
    texture_bench,
    texture_crate,
    texture_graffiti,
    texture_paving,
    texture_pillar,
    texture_windows,
)


def _jitter(rng: np.random.Generator, s: float) -> float:
    """Uniform jitter in [-s, s]."""
    return float(rng.uniform(-s, s))


def build_scene(rng: np.random.Generator) -> Scene:
    """The courtyard: quads, textures (mip pyramids), boxes.

    Layout (metres, z up): ground z=0 over [-16, 16]^2; back facade at y=8 (brickwork on its
    left part, a shop front, a mural); windowed facade at x=10; graffiti wall at x=-10; two
    crates, a pillar and a bench in the middle, positions and yaw jittered by the seed. Each
    texture covers its surfaces without repeating (see the texture section).
    """
    textures = [
        texture_paving(rng),  # 0 ground: 1600 x 0.02 m = the whole 32 m ground
        texture_back_facade(rng),  # 1 back facade: 2000 x 600 texels of 0.01 m used
        texture_windows(rng),  # 2 right facade: 834 x 584 texels of 0.012 m used
        texture_graffiti(rng, (384, 928)),  # 3 left wall: 900 x 350 texels of 0.01 m used
        texture_crate(rng, base=(0.55, 0.42, 0.28), stickers=0.3),  # 4 crate A
        texture_crate(rng, base=(0.30, 0.45, 0.55), stickers=0.3),  # 5 crate B
        texture_pillar(rng),  # 6 pillar: 640 x 720 texels of 0.005 m around it
        texture_bench(rng),  # 7 bench: 1520 x 140 texels of 0.005 m around it
    ]
    quads = [
        make_quad((-16, -16, 0), (1, 0, 0), (0, 1, 0), (32, 32), 0, 0.02),
        make_quad((-10, 8, 0), (1, 0, 0), (0, 0, 1), (20, 6), 1, 0.01),
        make_quad((10, -2, 0), (0, 1, 0), (0, 0, 1), (10, 7), 2, 0.012, flip=True),
        make_quad((-10, -1, 0), (0, 1, 0), (0, 0, 1), (9, 3.5), 3, 0.01),
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
        q, b = make_box(center, size, yaw, tex, texel, top_row)
        quads += q
        boxes.append(b)
    scene = Scene(quads, [mip_pyramid(t) for t in textures], boxes, walls)
    scene.lightmaps = [bake_lightmap(scene, q) for q in quads]
    return scene


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
