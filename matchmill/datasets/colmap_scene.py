"""Read a COLMAP sparse model (through pycolmap) into plain numpy arrays.

Pixel convention
----------------
COLMAP puts the centre of the top-left pixel at (0.5, 0.5); matchmill manifests use the OpenCV
convention where that centre is at (0, 0). Everything returned here is converted to the OpenCV
convention: 2D observations are shifted by -0.5 and the principal point of ``K`` likewise, so
that ``xy = K @ (R @ X + t)`` (after dividing by z) holds directly in OpenCV pixels.

Camera models
-------------
Pair selection, pose ground truth and verification use a pinhole ``K``: SIMPLE_PINHOLE and
PINHOLE cameras, and SIMPLE_RADIAL / RADIAL ones whose distortion coefficients are all zero (what
COLMAP's ``image_undistorter`` and MegaDepth's undistorted models give). Any other camera (a
fisheye or OpenCV model, or a radial one with distortion) would give wrong geometry with no error,
so :func:`read_colmap_scene` refuses it (ValueError naming the folder, camera id, model and the
supported list), and :func:`check_scene_cameras` does the same from ``cameras.bin`` / ``.txt``
alone, cheaply, so that a run can refuse such a scene before any work.
:func:`intrinsics_from_camera` itself only reads the pinhole part (focals, principal point).
"""

from __future__ import annotations

import struct
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

#: Indices of the distortion parameters of the supported models that have them (must be 0).
DISTORTION_PARAMS: dict[str, tuple[int, ...]] = {"SIMPLE_RADIAL": (3,), "RADIAL": (3, 4)}

#: The supported cameras, as messages say it.
SUPPORTED_TEXT = "SIMPLE_PINHOLE, PINHOLE, and SIMPLE_RADIAL / RADIAL with zero distortion"

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


class UnsupportedCameraError(ValueError):
    """A COLMAP model holds a camera whose geometry matchmill cannot represent with a pinhole K."""


def camera_problem(model: str, params) -> str | None:
    """Why a camera of ``model`` with ``params`` (COLMAP order) cannot be used, or None when it can.

    The text names the model and continues ``"camera 3 is "`` in messages."""
    if model not in SUPPORTED_MODELS:
        return f"{model}, which is not supported (pair selection needs a pinhole K)"
    distortion = [float(params[i]) for i in DISTORTION_PARAMS.get(model, ()) if i < len(params)]
    if any(k != 0.0 for k in distortion):
        return f"{model} with distortion {distortion}, which is not supported (pair selection needs undistorted images)"
    return None


@dataclass(frozen=True)
class CameraInfo:
    """One camera of a COLMAP model, as ``cameras.bin`` / ``cameras.txt`` store it."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


def _model_table() -> dict[int, tuple[str, int]]:
    """COLMAP camera model id -> (name, number of parameters), from pycolmap."""
    import pycolmap  # lazy: start-up time (pycolmap is slow to import)

    table = {}
    for name, model_id in pycolmap.CameraModelId.__members__.items():
        if name == "INVALID":
            continue
        cam = pycolmap.Camera.create_from_model_id(1, model_id, 1.0, 1, 1)
        table[int(model_id)] = (name, len(cam.params))
    return table


def read_cameras(path: str | Path) -> list[CameraInfo]:
    """The cameras of the COLMAP model in ``path`` (``cameras.bin``, else ``cameras.txt``) only.

    Much cheaper than reading the whole model: used to vet every scene before a run starts.

    Raises:
        ValueError: naming the file when it is missing, truncated or holds an unknown model id.
    """
    path = Path(path)
    binary, text = path / "cameras.bin", path / "cameras.txt"
    out: list[CameraInfo] = []
    if binary.is_file():
        data, table = binary.read_bytes(), _model_table()
        try:
            (count,) = struct.unpack_from("<Q", data, 0)
            pos = 8
            for _ in range(count):
                cid, model_id, width, height = struct.unpack_from("<IiQQ", data, pos)
                pos += 24
                if model_id not in table:
                    raise ValueError(f"{binary}: camera {cid} has unknown model id {model_id}")
                name, n = table[model_id]
                params = struct.unpack_from(f"<{n}d", data, pos)
                pos += 8 * n
                out.append(CameraInfo(int(cid), name, int(width), int(height), tuple(params)))
        except struct.error as exc:
            raise ValueError(f"cannot read COLMAP model in {path}: cameras.bin is truncated or corrupt ({exc})") from None
        return out
    if not text.is_file():
        raise ValueError(f"no COLMAP cameras file in {path}: expected cameras.bin or cameras.txt")
    for lineno, line in enumerate(text.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            out.append(CameraInfo(int(fields[0]), fields[1], int(fields[2]), int(fields[3]),
                                  tuple(float(v) for v in fields[4:])))
        except (IndexError, ValueError):
            raise ValueError(f"{text}:{lineno}: not a COLMAP camera line: {line.strip()!r}") from None
    return out


def check_scene_cameras(path: str | Path, scene: str | None = None) -> None:
    """Refuse the model in ``path`` when a camera is not one :func:`camera_problem` accepts.

    Raises:
        UnsupportedCameraError: one line naming the scene, folder, camera id, model and the
            supported list, with what to do (undistort, or exclude the scene).
        ValueError: the cameras file cannot be read.
    """
    for cam in read_cameras(path):
        problem = camera_problem(cam.model, cam.params)
        if problem:
            where = f"scene {scene!r} ({path})" if scene else str(path)
            raise UnsupportedCameraError(
                f"{where}: camera {cam.camera_id} is {problem}; supported: {SUPPORTED_TEXT}. "
                "Undistort the scene (colmap image_undistorter) or leave it out (pairs.exclude_scenes)")


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
    import pycolmap  # lazy: start-up time (pycolmap is slow to import)

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
        ValueError: naming ``path`` when the folder or model is missing or unreadable;
            :class:`UnsupportedCameraError` (a ValueError) when a camera is not supported
            (see the module docstring).
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
        problem = camera_problem(cam.model_name, cam.params)
        if problem:
            raise UnsupportedCameraError(
                f"{path}: camera {image.camera_id} of image {image.name!r} is {problem}; "
                f"supported: {SUPPORTED_TEXT}")
        K = intrinsics_from_camera(cam.model_name, cam.params)
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
