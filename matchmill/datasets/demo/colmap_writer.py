"""The demo scene's ground truth on disk: 3D points sampled on the surfaces, their observations,
the COLMAP binary model (written with pycolmap) and MegaDepth-style depth maps.

The COLMAP model uses COLMAP's convention: the centre of the top-left pixel is (0.5, 0.5). Its
principal point is therefore ``cx_opencv + 0.5`` (= W / 2 exactly here) and every ``points2D``
entry is the OpenCV projection + 0.5. :mod:`matchmill.datasets.colmap_scene` converts back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..megadepth import sample_depth
from .primitives import Scene
from .rendering import sample_texture


#: Relative tolerance of the depth test that decides whether a 3D point is seen by a camera.
VISIBILITY_REL_TOL = 0.01


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
        col = sample_texture(textures[q.texture], a / q.texel + q.offset[0],
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
    import pycolmap  # lazy: pycolmap is slow to import and only this writer needs it

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
    import h5py  # lazy: only writing depth maps needs h5py

    with h5py.File(path, "w", track_order=False) as f:
        f.create_dataset("depth", data=depth.astype(np.float32), compression="gzip", compression_opts=4)
