"""Lighting and rendering of the demo scene: baked sun shadows (lightmaps), mip-mapped texture
lookup, shading, supersampled views with their depth maps, and the per-image photometric changes.

Rendering uses OpenCV pixel coordinates: the centre of the top-left pixel is (0, 0), and the
depth map value at integer pixel (u, v) is the z-depth of the ray through that point.
"""

from __future__ import annotations

import cv2
import numpy as np

from .primitives import RAY_EPS, Quad, Scene, cast_grid, cast_rays


#: Lightmap resolution (metres per lightmap texel); shadows are baked once per scene.
LIGHTMAP_TEXEL = 0.05
#: Ambient light and sun strength of the Lambertian shading.
AMBIENT, SUN_STRENGTH = 0.42, 0.75
#: Per-image camera degradations: defocus blur sigma in [0, max] px, noise sigma range (8-bit
#: levels), JPEG quality range.
BLUR_SIGMA_MAX, NOISE_SIGMA, JPEG_QUALITY = 1.0, (1.5, 3.5), (80, 95)
_SUN = np.array([0.45, -0.55, 0.70]) / np.linalg.norm([0.45, -0.55, 0.70])  # towards the sun


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
        tmin = np.full(len(near), RAY_EPS)
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


def sample_texture(pyr: list[np.ndarray], s: np.ndarray, t: np.ndarray, level: np.ndarray) -> np.ndarray:
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
        tex = sample_texture(pyr, ga / q.texel + q.offset[0], (q.size[1] - gb) / q.texel + q.offset[1],
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
