"""PUMP training pairs: synthetic (S) homography pairs and real (U) pairs, spec ``pump.md`` §2.4.

Every random draw comes from the caller's ``numpy.random.Generator``, so a seed fixes the pair.
Pixel convention: OpenCV pixel centres (top-left pixel centre at (0, 0)); an image of ``w x h``
covers ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``. ``H`` maps img1 pixels to img2 pixels (x2 ~ H x1).

Recipe (spec §2.4, in order):

1. **S pairs only**: img2 = perspective "tilt" of img1 (:func:`random_tilt`): one of 4 sides
   (left, right, top, bottom); its two corners move apart along that side by ``a`` each,
   ``a ~ U{1, ..., ceil(0.5 * max(w, h)) - 1}``; same canvas size.
2. swap img1 / img2 with p = 0.5; flip both horizontally with p = 0.5.
3. img2 only: rotation ``U(-20, 20)`` deg about the canvas centre (same canvas); rescale so the
   short side is log-uniform in ``short_side_range`` ([256, 1536] in the paper) with an aspect
   change log-uniform in ``[1/1.3, 1.3]``; additive uniform noise of amplitude 25 (``U(-12.5, 12.5)``
   grey levels, rounded, clipped to [0, 255]).
4. correspondences: S pairs, a 64 x 64 grid of img1 mapped by the homography, each with the local
   scale ``s = sqrt|det J|`` and rotation of the homography's Jacobian ``J`` at that point; U pairs,
   caller-given correspondences (optional) with a least-squares local affine fit on their 16
   nearest neighbours.
5. crop selection: up to 5 random correspondences; around each, a square window of side
   ``window * max(1, 1/s)`` in img1 and ``window * max(1, s)`` in img2 (clamped inside the
   image, clipped if larger); score = n_both * min(n_both / n_1, n_both / n_2) with n_1 (n_2) the
   correspondences whose img1 (img2) point lies in its window and n_both those in both; keep the
   best, multiply its ``s`` by a jitter ``exp(U(-ln 1.5, ln 1.5))`` and rebuild the windows.
6. both windows resized to ``crop_size`` squared (area interpolation when shrinking, bicubic when
   enlarging; the aspect changes if a window was clipped). If the dominant rotation (circular
   mean over the correspondences in both windows) is within ``rot90_tolerance_deg`` of a non-zero
   multiple of 90 deg, img2 is rotated by that multiple to undo it.
7. ``H`` = (img2 crop) o (img2 transforms) o (img1 transforms)^-1 o (img1 crop)^-1; U pairs get NaN.

Implementation choice (same result, one interpolation instead of three): transforms only update
a source->frame homography per image; pixels are rendered once per window, from the source
image, at the window's native resolution (noise is added there, as in the sequential recipe), then
resized to the crop. Regions the sequential recipe would have cut off (outside the tilted /
rotated canvases) are blacked out with the canvases' polygons, exactly as the sequential warps
would leave them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks

__all__ = [
    "SYNTH_CONF",
    "CPU_SYNTH_CONF",
    "TrainingPair",
    "merge_conf",
    "random_tilt",
    "make_synthetic_pair",
    "make_unsupervised_pair",
]

SYNTH_CONF: dict[str, Any] = {
    "crop_size": 256,  # side of the output square crops, px (paper: 256)
    "window_size": None,  # base side of the crop windows before resizing; None = crop_size (paper)
    "tilt_max_frac": 0.5,  # tilt offset a ~ U{1, .., ceil(frac * max(w, h)) - 1}; 0 disables the tilt
    "swap_prob": 0.5,  # probability of swapping img1 and img2
    "flip_prob": 0.5,  # probability of flipping both images horizontally
    "max_rotation_deg": 20.0,  # img2 rotation ~ U(-max, max) deg about the canvas centre
    "short_side_range": (256.0, 1536.0),  # img2 short side after rescale, log-uniform in [lo, hi] px
    "max_aspect_change": 1.3,  # img2 aspect ratio multiplied by a log-uniform factor in [1/x, x]
    "noise_amplitude": 25.0,  # img2 additive uniform noise, U(-a/2, a/2) grey levels; 0 disables it
    "grid_points": 64,  # S pairs: correspondences on a grid_points x grid_points grid of img1
    "crop_trials": 5,  # random correspondences tried as crop centres
    "max_scale_jitter": 1.5,  # local scale of the chosen centre times exp(U(-ln x, ln x))
    "rot90_tolerance_deg": 20.0,  # undo a dominant rotation within this of a multiple of 90 deg
    "affine_neighbors": 16,  # U pairs: neighbours of the local affine fit giving scale and rotation
}

#: Preset for CPU training on small images (e.g. the 320x240 demo scene): 128 px crops cut from
#: 192 px windows, img2's short side 192..576 px. Everything else as in the paper.
CPU_SYNTH_CONF: dict[str, Any] = {**SYNTH_CONF, "crop_size": 128, "window_size": 192, "short_side_range": (192.0, 576.0)}


@dataclass(frozen=True)
class TrainingPair:
    """One PUMP training pair.

    Attributes:
        img1, img2: ``(S, S, 3)`` uint8 RGB crops, ``S = crop_size``.
        H: ``(3, 3)`` float64 homography, img1 px -> img2 px; all NaN for a U (real) pair.
        info: the random draws (``swapped``, ``flipped``, ``tilt``, ``rotation_deg``,
            ``img2_size``, ``scale_jitter``, ``rot90``, ...), for tests and debugging.
    """

    img1: np.ndarray
    img2: np.ndarray
    H: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`SYNTH_CONF` updated with ``conf``, validated (ValueError naming the bad key)."""
    out = strict_merge(SYNTH_CONF, conf, "synthetic pair")
    if int(out["crop_size"]) < 8:
        raise ValueError(f"synthetic pair conf 'crop_size' must be >= 8, got {out['crop_size']}")
    if out["window_size"] is not None and float(out["window_size"]) < 8:
        raise ValueError(f"synthetic pair conf 'window_size' must be >= 8 or None, got {out['window_size']}")
    lo, hi = (float(v) for v in out["short_side_range"])
    if not 8 <= lo <= hi:
        raise ValueError(f"synthetic pair conf 'short_side_range' must be (lo, hi) with 8 <= lo <= hi, got {out['short_side_range']}")
    for key in ("max_aspect_change", "max_scale_jitter"):
        if float(out[key]) < 1:
            raise ValueError(f"synthetic pair conf '{key}' must be >= 1, got {out[key]}")
    for key in ("swap_prob", "flip_prob"):
        if not 0 <= float(out[key]) <= 1:
            raise ValueError(f"synthetic pair conf '{key}' must be a probability, got {out[key]}")
    if int(out["grid_points"]) < 2 or int(out["crop_trials"]) < 1 or int(out["affine_neighbors"]) < 3:
        raise ValueError("synthetic pair conf needs grid_points >= 2, crop_trials >= 1, affine_neighbors >= 3")
    return out


# --------------------------------------------------------------------------------------------
# Homography helpers
# --------------------------------------------------------------------------------------------


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _resize_matrix(sx: float, sy: float) -> np.ndarray:
    """Pixel-centre resize by (sx, sy): x' = (x + 0.5) sx - 0.5 (what cv2.resize does)."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _apply(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2) -> (N, 2) through a homography."""
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ H.T
    return p[:, :2] / p[:, 2:3]


def _jacobians(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N, 2, 2) Jacobians of the homography at ``pts``."""
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ H.T
    w = p[:, 2]
    x2, y2 = p[:, 0] / w, p[:, 1] / w
    J = np.empty((len(pts), 2, 2))
    J[:, 0, 0] = (H[0, 0] - x2 * H[2, 0]) / w
    J[:, 0, 1] = (H[0, 1] - x2 * H[2, 1]) / w
    J[:, 1, 0] = (H[1, 0] - y2 * H[2, 0]) / w
    J[:, 1, 1] = (H[1, 1] - y2 * H[2, 1]) / w
    return J


def _scale_and_angle(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local scale sqrt|det J| and rotation angle (rad, closest similarity) of (N, 2, 2) Jacobians."""
    scale = np.sqrt(np.abs(J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]))
    angle = np.arctan2(J[:, 1, 0] - J[:, 0, 1], J[:, 0, 0] + J[:, 1, 1])
    return scale, angle


def _edge_corners(w: int, h: int) -> np.ndarray:
    """(4, 2) outer corners of a w x h image (pixel edges), clockwise from top-left."""
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def random_tilt(width: int, height: int, rng: np.random.Generator, max_frac: float = 0.5) -> tuple[np.ndarray, dict]:
    """Perspective "tilt" homography of a ``width x height`` canvas (spec §2.4, S pairs).

    One side (left / right / top / bottom, uniform) has its two corners moved apart along the side
    by ``a`` each, ``a ~ U{1, ..., ceil(max_frac * max(w, h)) - 1}``; the other two corners stay.

    Returns:
        ``H`` (3, 3) float64 mapping canvas pixels to tilted pixels, and ``{"side", "offset"}``.
        ``max_frac`` small enough that no integer ``a >= 1`` exists gives the identity (offset 0).
    """
    side = int(rng.integers(4))
    hi = math.ceil(max_frac * max(width, height))
    a = float(rng.integers(1, hi)) if hi > 1 else 0.0
    src = _edge_corners(width, height)  # TL, TR, BR, BL
    dst = src.copy()
    if side == 0:  # left: TL up, BL down
        dst[0, 1] -= a
        dst[3, 1] += a
    elif side == 1:  # right: TR up, BR down
        dst[1, 1] -= a
        dst[2, 1] += a
    elif side == 2:  # top: TL left, TR right
        dst[0, 0] -= a
        dst[1, 0] += a
    else:  # bottom: BL left, BR right
        dst[3, 0] -= a
        dst[2, 0] += a
    H = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)
    return H, {"side": ("left", "right", "top", "bottom")[side], "offset": a}


# --------------------------------------------------------------------------------------------
# Views: a source image seen through a chain of canvas transforms
# --------------------------------------------------------------------------------------------


@dataclass
class _View:
    """A source image seen through transforms; nothing is rendered until :func:`_render`.

    ``to_frame`` maps source px to current-frame px; ``size`` is the current canvas (w, h);
    ``clips`` lists every canvas the content went through as (canvas px -> current frame px, w, h),
    including the source itself and the current canvas.
    """

    source: np.ndarray
    to_frame: np.ndarray
    size: tuple[int, int]
    clips: list[tuple[np.ndarray, int, int]]

    @classmethod
    def of(cls, image: np.ndarray) -> "_View":
        h, w = image.shape[:2]
        return cls(image, np.eye(3), (w, h), [(np.eye(3), w, h)])

    def transformed(self, T: np.ndarray, size: tuple[int, int]) -> "_View":
        """The view after mapping the current frame by ``T`` onto a new canvas of ``size`` (w, h)."""
        clips = [(T @ P, w, h) for P, w, h in self.clips] + [(np.eye(3), int(size[0]), int(size[1]))]
        return _View(self.source, T @ self.to_frame, (int(size[0]), int(size[1])), clips)

    def contains(self, pts: np.ndarray) -> np.ndarray:
        """(N,) bool: the current-frame points lie on pixel centres' range of every canvas."""
        ok = np.ones(len(pts), bool)
        for P, w, h in self.clips:
            q = _apply(np.linalg.inv(P), pts)
            ok &= (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
        return ok


def _flip(view: _View) -> _View:
    w, h = view.size
    return view.transformed(np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), (w, h))


def _rotate(view: _View, degrees: float) -> _View:
    w, h = view.size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    t = math.radians(degrees)
    R = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return view.transformed(_translate(cx, cy) @ R @ _translate(-cx, -cy), (w, h))


def _rescale(view: _View, short_side: float, aspect: float) -> _View:
    w, h = view.size
    f = short_side / min(w, h)
    new_w = max(1, int(round(w * f * math.sqrt(aspect))))
    new_h = max(1, int(round(h * f / math.sqrt(aspect))))
    return view.transformed(_resize_matrix(new_w / w, new_h / h), (new_w, new_h))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _render_window(view: _View, window: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of the current frame inside ``window = (x0, y0, x1, y1)`` (x1, y1 exclusive), native resolution.

    Bicubic warp from the source (pre-shrunk with area interpolation when the warp minifies, to
    avoid aliasing), then everything outside any canvas the content went through is set to 0.
    """
    x0, y0, x1, y1 = window
    ww, wh = x1 - x0, y1 - y0
    source = view.source
    M = _translate(-x0, -y0) @ view.to_frame
    centre = _apply(np.linalg.inv(M), np.array([[(ww - 1) / 2.0, (wh - 1) / 2.0]]))
    zoom = float(_scale_and_angle(_jacobians(M, centre))[0][0])
    if zoom < 0.8:
        sh, sw = source.shape[:2]
        nw, nh = max(1, int(round(sw * zoom))), max(1, int(round(sh * zoom)))
        source = cv2.resize(source, (nw, nh), interpolation=cv2.INTER_AREA)
        M = M @ np.linalg.inv(_resize_matrix(nw / sw, nh / sh))
    out = cv2.warpPerspective(source, M, (ww, wh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = np.full((wh, ww), 255, np.uint8)
    shift = 4  # fillConvexPoly fixed-point bits: 1/16 px vertex precision
    for P, w, h in view.clips:
        poly = _apply(_translate(-x0, -y0) @ P, _edge_corners(w, h))
        canvas = np.zeros_like(mask)
        cv2.fillConvexPoly(canvas, np.round(poly * (1 << shift)).astype(np.int32), 255, lineType=cv2.LINE_8, shift=shift)
        mask &= canvas
    out[mask == 0] = 0
    return out


def _resize_to(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == (size, size):
        return image
    interp = cv2.INTER_AREA if size <= min(w, h) else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def _window(cx: float, cy: float, side: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer square window of ``side`` centred on (cx, cy), shifted inside a (w, h) canvas, clipped if larger."""
    w, h = size
    sw, sh = min(max(1, int(round(side))), w), min(max(1, int(round(side))), h)
    x0 = int(min(max(round(cx - sw / 2.0 + 0.5), 0), w - sw))
    y0 = int(min(max(round(cy - sh / 2.0 + 0.5), 0), h - sh))
    return x0, y0, x0 + sw, y0 + sh


def _inside(pts: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = window
    return (pts[:, 0] >= x0 - 0.5) & (pts[:, 0] < x1 - 0.5) & (pts[:, 1] >= y0 - 0.5) & (pts[:, 1] < y1 - 0.5)


def _crop_matrix(window: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Current frame px -> crop px for a window resized to size x size."""
    x0, y0, x1, y1 = window
    return _resize_matrix(size / (x1 - x0), size / (y1 - y0)) @ _translate(-x0, -y0)


def _rot90_matrix(k: int, n: int) -> np.ndarray:
    """Pixel map of ``np.rot90(image, k)`` for an n x n image: (x, y) -> (y, n - 1 - x) applied k times."""
    step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, n - 1.0], [0.0, 0.0, 1.0]])
    return np.linalg.matrix_power(step, k % 4)


# --------------------------------------------------------------------------------------------
# Pair loader (both pair kinds)
# --------------------------------------------------------------------------------------------


def _local_affine(p1: np.ndarray, p2: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Local scale and angle of each correspondence from a least-squares affine fit on its k nearest
    neighbours (in img1). Neighbours are found in row chunks (memory ``chunk x N``); degenerate fits
    (collinear neighbours) get scale 1 and angle 0."""
    n = len(p1)
    if n < 3:
        return np.ones(n), np.zeros(n)
    k = min(k, n)
    pts = torch.from_numpy(np.ascontiguousarray(p1, dtype=np.float64))
    nn = np.concatenate(
        [torch.cdist(pts[s : s + chunk], pts).topk(k, dim=1, largest=False).indices.numpy() for s in range(0, n, chunk)]
    )
    a, b = p1[nn], p2[nn]  # (n, k, 2)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    ata = np.einsum("nki,nkj->nij", a, a)  # normal equations of b ~ a @ X, X (2, 2)
    atb = np.einsum("nki,nkj->nij", a, b)
    det = ata[:, 0, 0] * ata[:, 1, 1] - ata[:, 0, 1] * ata[:, 1, 0]
    ok = det > 1e-9 * np.maximum(ata[:, 0, 0] * ata[:, 1, 1], 1e-12)
    X = np.tile(np.eye(2), (n, 1, 1))
    X[ok] = np.linalg.solve(ata[ok], atb[ok])
    scale, angle = _scale_and_angle(np.transpose(X, (0, 2, 1)))  # J = X^T maps img1 offsets to img2 offsets
    bad = ~ok | ~np.isfinite(scale) | (scale <= 0)
    scale[bad], angle[bad] = 1.0, 0.0
    return scale, angle


def _pair_loader(
    view1: _View,
    view2: _View,
    rng: np.random.Generator,
    conf: dict[str, Any],
    correspondences: np.ndarray | None,
    homography: bool,
    info: dict[str, Any],
) -> TrainingPair:
    """Steps 2-7 of the recipe on two views (S pair: same source, ``homography=True``)."""
    if rng.random() < float(conf["swap_prob"]):
        view1, view2 = view2, view1
        info["swapped"] = True
        if correspondences is not None:
            correspondences = correspondences[:, [2, 3, 0, 1]]
    else:
        info["swapped"] = False
    info["flipped"] = bool(rng.random() < float(conf["flip_prob"]))
    if info["flipped"]:
        view1, view2 = _flip(view1), _flip(view2)

    angle = float(rng.uniform(-1.0, 1.0) * float(conf["max_rotation_deg"]))
    short_side = _log_uniform(rng, *(float(v) for v in conf["short_side_range"]))
    r = float(conf["max_aspect_change"])
    aspect = _log_uniform(rng, 1.0 / r, r)
    view2 = _rescale(_rotate(view2, angle), short_side, aspect)
    info.update(rotation_deg=angle, short_side=short_side, aspect_change=aspect, img2_size=view2.size)

    # correspondences (current frames) with local scale and rotation img1 -> img2
    if homography:
        H12 = view2.to_frame @ np.linalg.inv(view1.to_frame)
        n = int(conf["grid_points"])
        w1, h1 = view1.size
        gx, gy = np.meshgrid(np.linspace(0, w1 - 1, n), np.linspace(0, h1 - 1, n))
        p1 = np.stack([gx.ravel(), gy.ravel()], axis=1)
        p2 = _apply(H12, p1)
        ok = view1.contains(p1) & view2.contains(p2)
        p1, p2 = p1[ok], p2[ok]
        scale, rot = _scale_and_angle(_jacobians(H12, p1))
    elif correspondences is not None and len(correspondences):
        p1 = _apply(view1.to_frame, correspondences[:, :2])
        p2 = _apply(view2.to_frame, correspondences[:, 2:4])
        ok = view1.contains(p1) & view2.contains(p2)
        p1, p2 = p1[ok], p2[ok]
        scale, rot = _local_affine(p1, p2, int(conf["affine_neighbors"]))
    else:
        p1 = p2 = np.zeros((0, 2))
        scale = rot = np.zeros(0)
    info["num_correspondences"] = len(p1)

    # crop windows
    base = float(conf["window_size"] if conf["window_size"] is not None else conf["crop_size"])
    if len(p1):
        best, best_score = 0, -1.0
        for i in rng.choice(len(p1), size=min(int(conf["crop_trials"]), len(p1)), replace=False):
            s = float(scale[i])
            win1 = _window(*p1[i], base * max(1.0, 1.0 / s), view1.size)
            win2 = _window(*p2[i], base * max(1.0, s), view2.size)
            in1, in2 = _inside(p1, win1), _inside(p2, win2)
            both = float((in1 & in2).sum())
            score = both * min(both / max(in1.sum(), 1), both / max(in2.sum(), 1))
            if score > best_score:
                best, best_score = int(i), score
        jitter = _log_uniform(rng, 1.0 / float(conf["max_scale_jitter"]), float(conf["max_scale_jitter"]))
        s = float(scale[best]) * jitter
        win1 = _window(*p1[best], base * max(1.0, 1.0 / s), view1.size)
        win2 = _window(*p2[best], base * max(1.0, s), view2.size)
        sel = _inside(p1, win1) & _inside(p2, win2)
        angles = rot[sel] if sel.any() else rot
        dominant = math.degrees(math.atan2(np.sin(angles).mean(), np.cos(angles).mean()))
    else:  # no correspondence: the largest centred squares, no scale information
        jitter, dominant = 1.0, 0.0
        win1 = _window((view1.size[0] - 1) / 2.0, (view1.size[1] - 1) / 2.0, min(view1.size), view1.size)
        win2 = _window((view2.size[0] - 1) / 2.0, (view2.size[1] - 1) / 2.0, min(view2.size), view2.size)
    info.update(scale_jitter=jitter, window1=win1, window2=win2, dominant_rotation_deg=dominant)

    # render, noise on img2 at its native resolution, resize, undo a 90-degree rotation
    size = int(conf["crop_size"])
    img1 = _resize_to(_render_window(view1, win1), size)
    raw2 = _render_window(view2, win2)
    amp = float(conf["noise_amplitude"])
    if amp > 0:
        noise = rng.uniform(-amp / 2.0, amp / 2.0, size=raw2.shape)
        raw2 = np.clip(np.rint(raw2 + noise), 0, 255).astype(np.uint8)
    img2 = _resize_to(raw2, size)
    k = int(round(dominant / 90.0))
    rot90 = k % 4 if k % 4 and abs(dominant - 90.0 * k) <= float(conf["rot90_tolerance_deg"]) else 0
    info["rot90"] = rot90
    if rot90:
        img2 = np.ascontiguousarray(np.rot90(img2, rot90))

    if homography:
        H = _rot90_matrix(rot90, size) @ _crop_matrix(win2, size) @ view2.to_frame
        H = H @ np.linalg.inv(_crop_matrix(win1, size) @ view1.to_frame)
        H = H / H[2, 2]
    else:
        H = np.full((3, 3), np.nan)
    return TrainingPair(np.ascontiguousarray(img1), np.ascontiguousarray(img2), H, info)


def _check_image(image: Any, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {desc}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"{name} is too small ({image.shape[1]}x{image.shape[0]}); need at least 8 px per side")


def make_synthetic_pair(image: np.ndarray, rng: np.random.Generator, conf: Mapping[str, Any] | None = None) -> TrainingPair:
    """A synthetic (S) pair from one image: img2 is a tilted, rotated, rescaled, noisy view of img1.

    Args:
        image: ``(H, W, 3)`` uint8 RGB source image.
        rng: the only source of randomness (same generator state -> same pair).
        conf: overrides of :data:`SYNTH_CONF` (e.g. :data:`CPU_SYNTH_CONF`).

    Returns:
        :class:`TrainingPair` with ``(S, S, 3)`` crops and the exact img1 -> img2 homography.
    """
    _check_image(image, "image")
    c = merge_conf(conf)
    h, w = image.shape[:2]
    H_tilt, tilt = random_tilt(w, h, rng, float(c["tilt_max_frac"]))
    view1 = _View.of(image)
    view2 = view1.transformed(H_tilt, (w, h))
    return _pair_loader(view1, view2, rng, c, None, True, {"kind": "S", "tilt": tilt})


def make_unsupervised_pair(
    image_a: np.ndarray,
    image_b: np.ndarray,
    rng: np.random.Generator,
    conf: Mapping[str, Any] | None = None,
    correspondences: np.ndarray | None = None,
) -> TrainingPair:
    """A real (U) pair: two photos of the same place, augmented and cropped like S pairs; ``H`` is NaN.

    Args:
        image_a, image_b: ``(H, W, 3)`` uint8 RGB images (sizes may differ).
        rng: the only source of randomness.
        conf: overrides of :data:`SYNTH_CONF` (the tilt keys are unused).
        correspondences: optional ``(N, 4)`` rough matches ``x_a, y_a, x_b, y_b`` in source pixels
            (e.g. shared SfM points), used only to choose overlapping crops and their relative scale
            / rotation (16-NN local affine fits), never by the loss. Without them each crop is the
            largest centred square of its (augmented) image.

    Returns:
        :class:`TrainingPair` with ``H`` all NaN.
    """
    _check_image(image_a, "image_a")
    _check_image(image_b, "image_b")
    c = merge_conf(conf)
    if correspondences is not None:
        correspondences = np.asarray(correspondences, dtype=np.float64)
        if correspondences.ndim != 2 or correspondences.shape[1] != 4 or not np.isfinite(correspondences).all():
            raise ValueError(f"correspondences must be a finite (N, 4) array x_a, y_a, x_b, y_b, got shape {correspondences.shape}")
    return _pair_loader(_View.of(image_a), _View.of(image_b), rng, c, correspondences, False, {"kind": "U"})
