"""Ground-truth correspondences of an image pair: where each pixel of image 0 lands in image 1.

One interface, :class:`PairOracle`, for the two kinds of training pair, so losses and measurements
treat them alike:

- :class:`DepthOracle`: two rendered views (:class:`View`: image, z-depth, K, world-to-camera R, t).
  A pixel of image 0 is lifted with its depth, moved into camera 1 and projected.
- :class:`HomographyOracle`: a synthetic homography pair, ``x1 ~ H x0`` exactly.

Every oracle answers :meth:`~PairOracle.true_match` (sparse queries), :meth:`~PairOracle.dense` (every
pixel of image 0), :meth:`~PairOracle.match_errors` (pixel error of predicted matches),
:meth:`~PairOracle.reverse` (the 1 -> 0 oracle) and :meth:`~PairOracle.resized` (the same oracle in
resized / network frames).

Conventions:

- Pixels are OpenCV pixels (centre of the top-left pixel at (0, 0)); an image of ``W x H`` covers
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` and a point is *inside the frame* when it lies in that
  closed box. A rendered depth map value at integer pixel (u, v) is the z-depth of the ray through
  that point (:mod:`matchmill.datasets.demo.rendering`).
- Resized frames go through :mod:`matchmill.geometry.frames` (``to_original`` / ``to_network``, the
  one definition); a frame of size ``(w, h)`` of an image of size ``(W, H)`` has scale
  ``(W / w, H / h)``, as ``frames.resize_max`` and ``frames.resize_to_multiple`` return it.
- Depth at a sub-pixel position (:func:`sample_depth`): where the 2x2 neighbourhood is one surface,
  *inverse* depth is interpolated bilinearly, which is exact on every plane (1 / z is affine in the
  pixel coordinates); across a depth discontinuity or next to the sky the nearest pixel's depth is
  used (0 there = no depth). At integer positions both give the depth map's value. "One surface":
  all four depths are > 0 and ``max / min - 1 <= smooth_rel_spread``. (Exact surface ids from the
  renderer instead of this test changed nothing measurable on demo pairs: not kept.)
- Visible (:meth:`DepthOracle.true_match`): image 0 has a depth there, the point is in front of
  camera 1, lands inside image 1's frame and agrees with image 1's depth sampled there:
  ``|z1 - d| <= depth_rel_tol * d``. Occluded points fail the test; so do points within half a pixel
  of an occluding edge whose nearest pixel is the occluder, and surfaces that image 1 sees edge-on
  (squeezed below a pixel: they have no appearance of their own there). Against exact ray casting
  on demo pairs (9 pairs of seed 1000 at 320 x 240, 326k visible pixels): 0.4 % false visible,
  1.8 % missed (edge-on faces and pixels at depth edges in image 1).
- Within a pixel of a surface edge in image 1 the answer is the nearest pixel's surface, so a
  round trip 0 -> 1 -> 0 returns exactly (float rounding) except there.
- ``xy1`` is the projection wherever it exists (occluded or out-of-frame points too, useful for
  epipolar terms) and NaN where it does not (no depth in image 0, outside image 0, behind camera 1).
- :meth:`~PairOracle.match_errors` is NaN where the oracle has no truth (not visible): filter with
  ``np.isfinite`` and count those separately; they are not wrong matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from matchmill.config import merge_conf
from matchmill.geometry.frames import to_network, to_original
from matchmill.geometry.homography import warp_points

__all__ = ["ORACLE_DEFAULTS", "View", "PairOracle", "DepthOracle", "HomographyOracle", "ResizedOracle",
           "sample_depth", "inside_frame"]

ORACLE_DEFAULTS: dict[str, Any] = {
    "depth_rel_tol": 0.02,  # visible when |z1 - depth1| <= tol * depth1 (z1: the point's depth in camera 1)
    "smooth_rel_spread": 0.1,  # 2x2 depths are one surface (bilinear 1/z) when max / min - 1 <= this, else nearest
}


def _oracle_conf(conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`ORACLE_DEFAULTS` updated with ``conf``; ConfigError on an unknown key, ValueError
    naming a bad value."""
    out = merge_conf(ORACLE_DEFAULTS, conf, "depth oracle")
    for key, value in out.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < float(value) < 1):
            raise ValueError(f"depth oracle conf {key!r} must be a number in (0, 1), got {value!r}")
    return out


def inside_frame(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,) bool: (N, 2) OpenCV pixels inside the ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` frame of ``size`` (W, H)."""
    x, y = xy[:, 0], xy[:, 1]
    with np.errstate(invalid="ignore"):
        return (x >= -0.5) & (x <= size[0] - 0.5) & (y >= -0.5) & (y <= size[1] - 0.5)


def _as_points(xy: np.ndarray, name: str = "xy0") -> np.ndarray:
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {pts.shape}")
    return pts


def sample_depth(depth: np.ndarray, xy: np.ndarray, smooth_rel_spread: float) -> np.ndarray:
    """Depth of an (H, W) z-depth map (0 = none) at (N, 2) OpenCV pixels (rule in the module doc).

    Positions outside the map's pixel centres (within the half-pixel border of the frame) read
    the border pixels.

    Returns:
        z (N,) float64, NaN where there is no depth or ``xy`` is not finite.
    """
    H, W = depth.shape
    finite = np.isfinite(xy).all(axis=1)
    x = np.clip(np.where(finite, xy[:, 0], 0.0), 0, W - 1)
    y = np.clip(np.where(finite, xy[:, 1], 0.0), 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(W - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    d00, d01 = depth[y0, x0].astype(np.float64), depth[y0, x1].astype(np.float64)
    d10, d11 = depth[y1, x0].astype(np.float64), depth[y1, x1].astype(np.float64)
    dmin = np.minimum(np.minimum(d00, d01), np.minimum(d10, d11))
    dmax = np.maximum(np.maximum(d00, d01), np.maximum(d10, d11))
    smooth = (dmin > 0) & (dmax <= (1.0 + smooth_rel_spread) * dmin)
    with np.errstate(divide="ignore", invalid="ignore"):  # bilinear inverse depth (unused where not smooth)
        inv = (1 - fy) * ((1 - fx) / d00 + fx / d01) + fy * ((1 - fx) / d10 + fx / d11)
        z_smooth = 1.0 / inv
    xn = np.minimum(np.floor(x + 0.5).astype(np.int64), W - 1)
    yn = np.minimum(np.floor(y + 0.5).astype(np.int64), H - 1)
    z = np.where(smooth, z_smooth, depth[yn, xn].astype(np.float64))
    z[(z <= 0) | ~finite] = np.nan
    return z


@dataclass(frozen=True, eq=False)
class View:
    """One rendered view.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 z-depth of the ray through each pixel centre, 0 where nothing was hit.
        K: (3, 3) float64 OpenCV intrinsics.
        R: (3, 3) float64 and t: (3,) float64 world-to-camera pose (x_cam = R x_world + t).
    """

    image: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        depth = np.asarray(self.depth, np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
        image = np.asarray(self.image)
        if image.shape[:2] != depth.shape:
            raise ValueError(f"image {image.shape} and depth {depth.shape} differ in size")
        for name, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            value = np.asarray(getattr(self, name), np.float64)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "image", image)

    @classmethod
    def from_pose(cls, image: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> "View":
        """A view from a (4, 4) (or (3, 4)) world-to-camera matrix."""
        T = np.asarray(cam_from_world, np.float64)
        return cls(image, depth, K, T[:3, :3], T[:3, 3])

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) in pixels."""
        return int(self.depth.shape[1]), int(self.depth.shape[0])


class PairOracle:
    """Ground truth from image 0 (``size0`` = (W0, H0)) to image 1 (``size1``); subclasses give
    :meth:`true_match` and :meth:`reverse`."""

    size0: tuple[int, int]
    size1: tuple[int, int]

    def true_match(self, xy0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) pixels of image 0 -> their (N, 2) float64 positions in image 1 and (N,) bool visible."""
        raise NotImplementedError

    def reverse(self) -> "PairOracle":
        """The oracle from image 1 to image 0."""
        raise NotImplementedError

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel of image 0: ``xy1`` (H0, W0, 2) float32 and ``visible`` (H0, W0) bool."""
        W, H = self.size0
        gx, gy = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        xy1, visible = self.true_match(np.stack([gx.ravel(), gy.ravel()], 1))
        return xy1.astype(np.float32).reshape(H, W, 2), visible.reshape(H, W)

    def visible_share(self) -> float:
        """Share of image 0's pixels visible in image 1 (0.0 for a pair with no overlap)."""
        return float(self.dense()[1].mean())

    def match_errors(self, matches: np.ndarray) -> np.ndarray:
        """(N,) float64 distance in pixels of image 1 between each predicted match's (x1, y1) and the
        true match of its (x0, y0); NaN where the oracle has no truth (not visible).

        Args:
            matches: (N, 4) rows (x0, y0, x1, y1) in the oracle's frames.
        """
        m = np.asarray(matches, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != 4:
            raise ValueError(f"matches must have shape (N, 4), got {m.shape}")
        xy1, visible = self.true_match(m[:, :2])
        err = np.linalg.norm(xy1 - m[:, 2:], axis=1)
        err[~visible] = np.nan
        return err

    def resized(self, size0: tuple[int, int], size1: tuple[int, int]) -> "ResizedOracle":
        """This oracle in frames of size ``size0`` / ``size1`` (W, H) of images 0 / 1 (a resize
        of the whole image, e.g. a network frame)."""
        return ResizedOracle(self, size0, size1)


class DepthOracle(PairOracle):
    """Ground truth of two rendered views through depth and poses (rules in the module doc).

    Args:
        view0, view1: the two :class:`View` s.
        conf: keys of :data:`ORACLE_DEFAULTS`.
    """

    def __init__(self, view0: View, view1: View, conf: Mapping[str, Any] | None = None) -> None:
        self.view0, self.view1 = view0, view1
        self.conf = _oracle_conf(conf)
        self.size0, self.size1 = view0.size, view1.size
        self._R01 = view1.R @ view0.R.T  # camera 0 -> camera 1
        self._t01 = view1.t - self._R01 @ view0.t
        self._M = self._R01 @ np.linalg.inv(view0.K)  # pixel of image 0 -> ray in camera 1 (z0 = 1)

    def reverse(self) -> "DepthOracle":
        return DepthOracle(self.view1, self.view0, self.conf)

    def true_match(self, xy0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy0 = _as_points(xy0)
        spread, tol = float(self.conf["smooth_rel_spread"]), float(self.conf["depth_rel_tol"])
        z0 = sample_depth(self.view0.depth, xy0, spread)
        z0[~inside_frame(xy0, self.size0)] = np.nan
        # camera-1 point X1 = z0 R01 K0^-1 (x, y, 1) + t01, its pixel K1 X1, column by column
        x, y = xy0[:, 0], xy0[:, 1]
        M, b = self._M, self._t01
        X1 = [z0 * (M[i, 0] * x + M[i, 1] * y + M[i, 2]) + b[i] for i in range(3)]
        K1 = self.view1.K
        z1 = X1[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            in_front = z1 > 0  # NaN (no depth in image 0) compares False
            w = K1[2, 0] * X1[0] + K1[2, 1] * X1[1] + K1[2, 2] * X1[2]
            xy1 = np.stack([(K1[r, 0] * X1[0] + K1[r, 1] * X1[1] + K1[r, 2] * X1[2]) / w for r in (0, 1)], 1)
        xy1[~in_front] = np.nan
        seen = in_front & inside_frame(xy1, self.size1)
        z_map = sample_depth(self.view1.depth, xy1, spread)
        with np.errstate(invalid="ignore"):
            agree = np.abs(z1 - z_map) <= tol * z_map  # NaN (no depth) compares False
        return xy1, seen & agree


class HomographyOracle(PairOracle):
    """Ground truth of a synthetic homography pair: ``xy1 = H xy0`` (``warp_points``); visible where
    ``xy0`` is inside image 0's frame and ``xy1`` inside image 1's.

    Args:
        H: (3, 3) homography, image-0 pixels -> image-1 pixels (OpenCV pixels, x1 ~ H x0).
        size0, size1: (W, H) of images 0 and 1.
    """

    def __init__(self, H: np.ndarray, size0: tuple[int, int], size1: tuple[int, int]) -> None:
        H = np.asarray(H, dtype=np.float64)
        if H.shape != (3, 3) or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
            raise ValueError(f"homography oracle needs a finite invertible (3, 3) H, got {H.tolist()}")
        self.H = H
        self.size0, self.size1 = (int(size0[0]), int(size0[1])), (int(size1[0]), int(size1[1]))

    @classmethod
    def from_pair(cls, pair: Any) -> "HomographyOracle":
        """The oracle of a PUMP synthetic pair (``matchmill.models.pump.synthetic.TrainingPair``:
        ``img1``, ``img2`` (S, S, 3), ``H`` img1 -> img2); a U pair (H all NaN) is refused."""
        if not np.isfinite(np.asarray(pair.H, dtype=np.float64)).all():
            raise ValueError("pair.H is not finite: an unsupervised (U) pair has no homography oracle")
        return cls(pair.H, (pair.img1.shape[1], pair.img1.shape[0]), (pair.img2.shape[1], pair.img2.shape[0]))

    def reverse(self) -> "HomographyOracle":
        return HomographyOracle(np.linalg.inv(self.H), self.size1, self.size0)

    def true_match(self, xy0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy0 = _as_points(xy0)
        xy1 = warp_points(xy0, self.H)
        return xy1, inside_frame(xy0, self.size0) & inside_frame(xy1, self.size1)


class ResizedOracle(PairOracle):
    """``base`` with queries and answers in resized frames: ``xy0`` of a frame of size ``size0`` goes
    to image 0's pixels with ``frames.to_original``, the answer to image 1's frame of size ``size1``
    with ``frames.to_network``; visible also needs both points inside their resized frames.

    Scales are ``(W / w, H / h)`` per image (``frames.resize_max`` / ``resize_to_multiple``)."""

    def __init__(self, base: PairOracle, size0: tuple[int, int], size1: tuple[int, int]) -> None:
        self.base = base
        self.size0, self.size1 = (int(size0[0]), int(size0[1])), (int(size1[0]), int(size1[1]))
        if min(self.size0 + self.size1) < 1:
            raise ValueError(f"resized frame sizes must be positive, got {size0} and {size1}")
        self.scale0 = (base.size0[0] / self.size0[0], base.size0[1] / self.size0[1])
        self.scale1 = (base.size1[0] / self.size1[0], base.size1[1] / self.size1[1])

    def reverse(self) -> "ResizedOracle":
        return ResizedOracle(self.base.reverse(), self.size1, self.size0)

    def true_match(self, xy0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy0 = _as_points(xy0)
        xy1_orig, visible = self.base.true_match(to_original(xy0, self.scale0).astype(np.float64))
        xy1 = to_network(xy1_orig, self.scale1).astype(np.float64)
        return xy1, visible & inside_frame(xy0, self.size0) & inside_frame(xy1, self.size1)
