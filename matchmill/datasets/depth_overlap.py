"""Ground-truth image overlap from depth maps and poses, and SfM co-visibility from a COLMAP model.

:func:`depth_overlap` measures how much of image 0 is seen by image 1: the valid-depth pixels of
image 0 (on a grid) are unprojected with their depth, projected into camera 1, and counted when
they land inside image 1 with a depth that agrees with image 1's depth map (not occluded, not
off the surface). This is independent of any feature matching or SfM, so it is the reference
against which pairs the SfM model failed to connect (:func:`shared_point_counts` = 0) can be
judged.

Conventions: OpenCV pixels (centre of the top-left pixel at (0, 0)), K in that convention,
world-to-camera poses ``x_cam = R x_world + t`` as (4, 4) matrices, depth maps holding z-depth
with 0 = unknown (sky, holes). Pure numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .colmap_scene import ColmapImage, read_colmap_scene
from .megadepth import covisibility_counts, load_depth, sample_depth

#: Projections this close (pixels) outside the image are snapped onto its border: the round trip
#: through world coordinates moves border pixels of an identical view by ~1e-12 px.
BORDER_EPS = 1e-6


def grid_points(depth: np.ndarray, stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a ``stride`` grid (starting at (0, 0)) that have a valid depth.

    Args:
        depth: (H, W) z-depth map, <= 0 or non-finite where unknown.
        stride: grid step in pixels (>= 1).
    Returns:
        xy (P, 2) float64 OpenCV pixel coordinates and z (P,) float64 their depths.
    """
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    d = np.asarray(depth)[:: int(stride), :: int(stride)].astype(np.float64)
    v, u = np.nonzero(np.isfinite(d) & (d > 0))
    xy = np.stack([u, v], 1).astype(np.float64) * int(stride)
    return xy, d[v, u]


def unproject(xy: np.ndarray, z: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> np.ndarray:
    """World points of pixels with known z-depth.

    Args:
        xy: (P, 2) OpenCV pixels; z: (P,) z-depths; K: (3, 3); cam_from_world: (4, 4).
    Returns:
        (P, 3) float64 world points.
    """
    xy1 = np.concatenate([np.asarray(xy, np.float64).reshape(-1, 2), np.ones((len(z), 1))], 1)
    X_cam = np.linalg.solve(np.asarray(K, np.float64), xy1.T).T * np.asarray(z, np.float64)[:, None]
    R, t = np.asarray(cam_from_world, np.float64)[:3, :3], np.asarray(cam_from_world, np.float64)[:3, 3]
    return (X_cam - t) @ R  # R^T (x_cam - t), row-wise


def project(X: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV pixels and z-depths of world points in a camera.

    Args:
        X: (P, 3) world points; K: (3, 3); cam_from_world: (4, 4).
    Returns:
        xy (P, 2) float64 (NaN where z <= 0) and z (P,) float64.
    """
    T = np.asarray(cam_from_world, np.float64)
    X_cam = np.asarray(X, np.float64) @ T[:3, :3].T + T[:3, 3]
    z = X_cam[:, 2]
    h = X_cam @ np.asarray(K, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.where((z > 0)[:, None], h[:, :2] / z[:, None], np.nan)
    return xy, z


def _snap_to_border(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(P, 2) pixels with those within :data:`BORDER_EPS` outside ``[0, W-1] x [0, H-1]`` moved
    onto the border (others unchanged)."""
    out = xy.copy()
    for axis, size in ((0, width), (1, height)):
        c = out[:, axis]
        lo = (c < 0) & (c >= -BORDER_EPS)
        hi = (c > size - 1) & (c <= size - 1 + BORDER_EPS)
        c[lo], c[hi] = 0.0, size - 1
    return out


def seen_fraction(X: np.ndarray, depth1: np.ndarray, K1: np.ndarray, cam1_from_world: np.ndarray,
                  rel_tol: float = 0.05) -> float:
    """Fraction of world points that camera 1 sees: in front of it, inside its image, and with a
    z-depth within ``rel_tol`` (relative) of its depth map, bilinearly sampled by
    :func:`~matchmill.datasets.megadepth.sample_depth` (holes and depth discontinuities of the
    map count as not seen).

    Args:
        X: (P, 3) world points; depth1: (H, W) z-depth map; K1: (3, 3); cam1_from_world: (4, 4).
    Returns:
        the fraction in [0, 1]; 0.0 when P = 0.
    """
    if len(X) == 0:
        return 0.0
    H, W = np.asarray(depth1).shape
    xy, z = project(X, K1, cam1_from_world)
    xy = _snap_to_border(np.where(np.isfinite(xy), xy, -np.inf), W, H)
    z_map = sample_depth(depth1, np.where(np.isfinite(xy), xy, -1.0))
    with np.errstate(invalid="ignore"):
        seen = (z > 0) & (np.abs(z - z_map) <= rel_tol * z_map)
    return float(seen.mean())


def depth_overlap(depth0: np.ndarray, K0: np.ndarray, cam0_from_world: np.ndarray,
                  depth1: np.ndarray, K1: np.ndarray, cam1_from_world: np.ndarray,
                  stride: int = 4, rel_tol: float = 0.05) -> float:
    """Fraction of image 0's surface that image 1 sees, from depth maps and poses (asymmetric).

    The valid-depth pixels of image 0 on a ``stride`` grid (pixels (0, 0), (stride, 0), ...) are
    unprojected, projected into camera 1 and counted when they land inside image 1 with a
    z-depth within ``rel_tol`` (relative) of ``depth1`` there (see :func:`seen_fraction`).

    Args:
        depth0: (H0, W0) z-depth map of image 0, 0 = unknown (sky); its size is image 0's size.
        K0: (3, 3) OpenCV-convention intrinsics of image 0.
        cam0_from_world: (4, 4) world-to-camera pose of image 0.
        depth1: (H1, W1) z-depth map of image 1, 0 = unknown.
        K1: (3, 3) intrinsics of image 1.
        cam1_from_world: (4, 4) pose of image 1.
        stride: grid step on image 0 in pixels.
        rel_tol: relative depth agreement ``|z - z_map| <= rel_tol * z_map``.
    Returns:
        overlap in [0, 1]; 0.0 when image 0 has no valid depth on the grid.
    """
    xy, z = grid_points(depth0, stride)
    return seen_fraction(unproject(xy, z, K0, cam0_from_world), depth1, K1, cam1_from_world, rel_tol)


def _scene_depths(scene_dir: Path, depths_dir: str, images: list[ColmapImage]) -> list[np.ndarray]:
    """(H, W) depth map per image from ``<scene>/<depths_dir>/<stem>.h5``, checked against the
    COLMAP image size; FileNotFoundError / ValueError naming the file."""
    depths = []
    for im in images:
        path = scene_dir / depths_dir / (Path(im.name).stem + ".h5")
        if not path.is_file():
            raise FileNotFoundError(f"no depth map for image {im.name!r}: {path}")
        d = load_depth(path)
        if d.shape != (im.height, im.width):
            raise ValueError(f"{path}: depth map is {d.shape[1]}x{d.shape[0]}, the COLMAP image "
                             f"{im.name!r} is {im.width}x{im.height}")
        depths.append(d)
    return depths


def scene_overlap_matrix(scene_dir: str | Path, sparse_dir: str = "sparse", depths_dir: str = "depths",
                         stride: int = 4, rel_tol: float = 0.05) -> tuple[list[str], np.ndarray]:
    """Depth-based overlap of every ordered pair of registered images of a scene.

    Poses and K come from the COLMAP model in ``<scene_dir>/<sparse_dir>`` (all images in one
    world frame; whether they share 3D points does not matter, so split models work), depth maps
    from ``<scene_dir>/<depths_dir>/<image stem>.h5`` (MegaDepth layout).

    Returns:
        names: the N image names, sorted (as in the COLMAP model).
        overlap: (N, N) float64, ``overlap[i, j] = depth_overlap(i -> j)`` (the fraction of image
            i seen by image j), diagonal 1.
    """
    scene_dir = Path(scene_dir)
    images = read_colmap_scene(scene_dir / sparse_dir).images
    depths = _scene_depths(scene_dir, depths_dir, images)
    n = len(images)
    overlap = np.eye(n)
    for i, (im0, d0) in enumerate(zip(images, depths)):
        X = unproject(*grid_points(d0, stride), im0.K, im0.cam_from_world)
        for j, (im1, d1) in enumerate(zip(images, depths)):
            if j != i:
                overlap[i, j] = seen_fraction(X, d1, im1.K, im1.cam_from_world, rel_tol)
    return [im.name for im in images], overlap


def shared_point_counts(scene_dir: str | Path, sparse_dir: str = "sparse") -> tuple[list[str], np.ndarray]:
    """Number of 3D points of the COLMAP model shared by each pair of registered images.

    Returns:
        names: the N image names, sorted (as in the COLMAP model).
        counts: (N, N) int64 symmetric, ``counts[i, j]`` = 3D points observed by both i and j;
            the diagonal holds each image's number of observed 3D points.
    """
    images = read_colmap_scene(Path(scene_dir) / sparse_dir).images
    obs_image = np.concatenate([np.full(len(im.point3D_ids), k, np.int64) for k, im in enumerate(images)]
                               + [np.zeros(0, np.int64)])
    obs_point = np.concatenate([im.point3D_ids for im in images] + [np.zeros(0, np.int64)])
    return [im.name for im in images], covisibility_counts(obs_image, obs_point, len(images))
