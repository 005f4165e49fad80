"""Read a COLMAP sparse model (through pycolmap) into plain numpy arrays.

Pixel convention
----------------
COLMAP puts the centre of the top-left pixel at (0.5, 0.5); matchmill manifests use the OpenCV
convention where that centre is at (0, 0). Everything returned here is converted to the OpenCV
convention: 2D observations are shifted by -0.5 and the principal point of ``K`` likewise, so
that ``xy = K @ (R @ X + t)`` (after dividing by z) holds directly in OpenCV pixels.

Only the pinhole part of a camera is used: for SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL and RADIAL
the focal length(s) and principal point are read and any radial distortion coefficient is
**ignored** (MegaDepth ships undistorted models, where it is zero). Other models raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Camera models whose pinhole part we can read, and how: name -> (fx idx, fy idx, cx idx, cy idx).
SUPPORTED_MODELS: dict[str, tuple[int, int, int, int]] = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2),
    "PINHOLE": (0, 1, 2, 3),
    "SIMPLE_RADIAL": (0, 0, 1, 2),
    "RADIAL": (0, 0, 1, 2),
}

#: Offset added to OpenCV pixel coordinates to get COLMAP ones (x_colmap = x_opencv + 0.5).
COLMAP_PIXEL_OFFSET = 0.5


@dataclass
class ColmapImage:
    """One registered image of a COLMAP model, in plain numpy (OpenCV pixel convention).

    Attributes:
        image_id: COLMAP image id.
        name: image name relative to the model's image folder (e.g. ``"0001.jpg"``).
        camera_model: COLMAP camera model name.
        K: (3, 3) float64 intrinsics, OpenCV convention (principal point = COLMAP's - 0.5).
        cam_from_world: (4, 4) float64 world-to-camera pose (x_cam = R x_world + t).
        width: image width in pixels.
        height: image height in pixels.
        point3D_ids: (N,) int64 ids of the observed 3D points, sorted, unique.
        xy: (N, 2) float64 pixel coordinates of those observations (OpenCV convention).
        depths: (N,) float64 z-depth of each observed 3D point in this camera.
    """

    image_id: int
    name: str
    camera_model: str
    K: np.ndarray
    cam_from_world: np.ndarray
    width: int
    height: int
    point3D_ids: np.ndarray
    xy: np.ndarray
    depths: np.ndarray

    @property
    def num_observations(self) -> int:
        """Number of 2D observations that have a 3D point."""
        return int(len(self.point3D_ids))


@dataclass
class ColmapScene:
    """A COLMAP model as numpy arrays.

    Attributes:
        path: folder the model was read from.
        images: registered images, sorted by name.
        point3D_ids: (M,) int64 sorted ids of all 3D points.
        xyz: (M, 3) float64 world coordinates, aligned with ``point3D_ids``.
    """

    path: Path
    images: list[ColmapImage]
    point3D_ids: np.ndarray
    xyz: np.ndarray
    _by_name: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {im.name: i for i, im in enumerate(self.images)}

    def image(self, name: str) -> ColmapImage:
        """The image called ``name``; KeyError if the model has none."""
        return self.images[self._by_name[name]]

    @property
    def names(self) -> list[str]:
        """Image names, sorted."""
        return [im.name for im in self.images]


def has_colmap_model(path: str | Path) -> bool:
    """True when ``path`` holds cameras/images/points3D files (binary or text)."""
    p = Path(path)
    return all((p / f"{n}.bin").is_file() for n in ("cameras", "images", "points3D")) or all(
        (p / f"{n}.txt").is_file() for n in ("cameras", "images", "points3D")
    )


def intrinsics_from_camera(model: str, params: np.ndarray) -> np.ndarray:
    """(3, 3) OpenCV-convention K from COLMAP camera ``model`` and ``params`` (COLMAP convention).

    Distortion parameters of SIMPLE_RADIAL / RADIAL are ignored.
    """
    if model not in SUPPORTED_MODELS:
        raise ValueError(
            f"camera model {model!r} is not supported; expected one of {sorted(SUPPORTED_MODELS)}"
        )
    ifx, ify, icx, icy = SUPPORTED_MODELS[model]
    p = np.asarray(params, dtype=np.float64)
    return np.array(
        [
            [p[ifx], 0.0, p[icx] - COLMAP_PIXEL_OFFSET],
            [0.0, p[ify], p[icy] - COLMAP_PIXEL_OFFSET],
            [0.0, 0.0, 1.0],
        ]
    )


#: Smallest possible size in bytes of one record of each binary model file (used to catch
#: truncated files, on which pycolmap's reader can loop for a very long time).
_MIN_RECORD_BYTES = {"cameras.bin": 24, "images.bin": 73, "points3D.bin": 51}


def _check_binary_sizes(path: Path) -> None:
    """ValueError naming the file when a binary model file is too short for its record count."""
    for name, min_bytes in _MIN_RECORD_BYTES.items():
        f = path / name
        if not f.is_file():
            continue  # text model
        size = f.stat().st_size
        with f.open("rb") as fh:
            count = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
        if count < 0 or 8 + count * min_bytes > size:
            raise ValueError(f"cannot read COLMAP model in {path}: {name} is truncated or corrupt "
                             f"({size} bytes)")


def _read_reconstruction(path: Path):
    """pycolmap.Reconstruction of ``path``, or ValueError naming the folder."""
    import pycolmap

    if not path.is_dir():
        raise ValueError(f"COLMAP model folder does not exist: {path}")
    if not has_colmap_model(path):
        raise ValueError(
            f"no COLMAP model in {path}: expected cameras, images and points3D (.bin or .txt)"
        )
    _check_binary_sizes(path)
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on corrupt files
        raise ValueError(f"cannot read COLMAP model in {path}: {e}") from e


def _image_observations(image, xyz_of: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed 3D ids (N,), COLMAP pixels (N, 2) and world points (N, 3) of a pycolmap image."""
    pts = image.get_observation_points2D()
    ids = np.fromiter((p.point3D_id for p in pts), dtype=np.int64, count=len(pts))
    xy = np.array([p.xy for p in pts], dtype=np.float64).reshape(-1, 2)
    X = np.array([xyz_of[int(i)] for i in ids], dtype=np.float64).reshape(-1, 3)
    return ids, xy, X


def read_colmap_scene(path: str | Path) -> ColmapScene:
    """Read the COLMAP model in ``path`` (cameras/images/points3D, .bin or .txt).

    Only registered images are returned. Observations are deduplicated per image (the first
    observation of a 3D point wins) and sorted by 3D point id.

    Raises:
        ValueError: naming ``path`` when the folder or model is missing or unreadable, or a camera
            model is not supported.
    """
    path = Path(path)
    rec = _read_reconstruction(path)
    point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
    xyz = np.array([rec.points3D[int(i)].xyz for i in point_ids], dtype=np.float64).reshape(-1, 3)
    xyz_of = dict(zip(point_ids.tolist(), xyz))

    images: list[ColmapImage] = []
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        cam = rec.camera(image.camera_id)
        try:
            K = intrinsics_from_camera(cam.model_name, cam.params)
        except ValueError as e:
            raise ValueError(f"{path}: image {image.name!r}: {e}") from e
        T = np.eye(4)
        T[:3, :] = image.cam_from_world().matrix()
        ids, xy, X = _image_observations(image, xyz_of)
        ids, first = np.unique(ids, return_index=True)
        xy, X = xy[first] - COLMAP_PIXEL_OFFSET, X[first]
        depths = X @ T[2, :3] + T[2, 3]
        images.append(
            ColmapImage(
                image_id=int(image_id),
                name=image.name,
                camera_model=cam.model_name,
                K=K,
                cam_from_world=T,
                width=int(cam.width),
                height=int(cam.height),
                point3D_ids=ids,
                xy=xy,
                depths=depths,
            )
        )
    images.sort(key=lambda im: im.name)
    return ColmapScene(path=path, images=images, point3D_ids=point_ids, xyz=xyz)
