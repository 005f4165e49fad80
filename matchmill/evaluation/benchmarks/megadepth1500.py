"""``matchmill bench megadepth1500 ROOT --scene-info DIR``: MegaDepth-1500 relative pose (LoFTR).

Scene info: one JSON file per (scene, overlap bin), the LoFTR ``megadepth_test_1500_scene_info``
npz files converted to JSON::

    {"images": {"<idx>": {"image_path": "Undistorted_SfM/0015/images/x.jpg", "depth_path": ...,
                          "K": 3x3 (pixels of the stored image), "pose": 4x4 world-to-camera}},
     "pairs": [{"idx": [i, j], "overlap": 0.23, "central_matches": [x0, y0, x1, y1]}, ...]}

Pairs: ``(images[i], images[j])`` with ``T_0to1 = pose[j] @ inv(pose[i])`` (x1 = R x0 + t), image
files at ``ROOT/<image_path>``, ``scene`` = the JSON file's stem (e.g. ``0015_0.1_0.3``). An
entry with a broken K or pose gives a failed pair naming the file and the pair index.

The images are resized so that their long side is ``--resize`` (default 840, LoFTR's setting;
papers use 840 to 1600, so the value used is reported in summary.json and bench.json). Metrics as
``bench pose``: ``auc@5/10/20`` (OpenCV essential, LoFTR protocol) and ``auc_fdegensac@...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from matchmill.datasets.colmap_scene import read_colmap_scene
from matchmill.datasets.pairs_file import check_intrinsics, check_pose, join_path, pair_row

#: Long side of the images fed to the extractors (LoFTR's MegaDepth-1500 setting).
DEFAULT_RESIZE = 840


class SceneInfoError(ValueError):
    """A scene-info file is not in the expected format; the message names the file and the key."""


def read_scene_info(path: str | Path) -> dict[str, Any]:
    """Load and structurally check one scene-info JSON file.

    Raises:
        FileNotFoundError: the file does not exist.
        SceneInfoError: not JSON, or ``images`` / ``pairs`` missing or of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene info {str(path)!r} does not exist")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneInfoError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("images"), dict) or not isinstance(info.get("pairs"), list):
        raise SceneInfoError(f"{path}: expected an object with 'images' (object) and 'pairs' (list)")
    for idx, image in info["images"].items():
        if not isinstance(image, dict) or not {"image_path", "K", "pose"} <= set(image):
            raise SceneInfoError(f"{path}: images[{idx!r}] needs image_path, K and pose")
    for n, pair in enumerate(info["pairs"]):
        if not isinstance(pair, dict) or not isinstance(pair.get("idx"), list) or len(pair["idx"]) != 2:
            raise SceneInfoError(f"{path}: pairs[{n}] needs 'idx': [i, j]")
    return info


def _matrix(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n, n):
        raise ValueError(f"{what} has shape {arr.shape}, expected ({n}, {n})")
    return arr


def relative_pose(pose_i: np.ndarray, pose_j: np.ndarray) -> np.ndarray:
    """(4, 4) T_0to1 = pose_j @ inv(pose_i) for (4, 4) world-to-camera poses."""
    return pose_j @ np.linalg.inv(pose_i)


def scene_info_pairs(path: str | Path, root: str | Path) -> list[dict[str, Any]]:
    """Pair rows (PAIRS fields) of one scene-info file, in the file's order.

    Args:
        path: the JSON file.
        root: folder the ``image_path`` entries are relative to.
    """
    path = Path(path)
    info = read_scene_info(path)
    scene = path.stem
    images = info["images"]
    rows = []
    for n, pair in enumerate(info["pairs"]):
        i, j = (str(int(v)) for v in pair["idx"])
        where = f"{path}: pairs[{n}] (idx {i}, {j})"
        if i not in images or j not in images:
            name0 = images.get(i, {}).get("image_path", f"{scene}/missing-{i}")
            name1 = images.get(j, {}).get("image_path", f"{scene}/missing-{j}")
            rows.append(pair_row(name0, name1, join_path(root, name0), join_path(root, name1), scene=scene,
                                 error=f"{where}: image index not in 'images'"))
            continue
        im0, im1 = images[i], images[j]
        args = (im0["image_path"], im1["image_path"], join_path(root, im0["image_path"]), join_path(root, im1["image_path"]))
        try:
            K0, K1 = _matrix(im0["K"], 3, f"images[{i}].K"), _matrix(im1["K"], 3, f"images[{j}].K")
            P0, P1 = _matrix(im0["pose"], 4, f"images[{i}].pose"), _matrix(im1["pose"], 4, f"images[{j}].pose")
            check_intrinsics(K0, f"images[{i}].K")
            check_intrinsics(K1, f"images[{j}].K")
            check_pose(P0, f"images[{i}].pose")
            check_pose(P1, f"images[{j}].pose")
            T = relative_pose(P0, P1)
        except (ValueError, TypeError, np.linalg.LinAlgError) as exc:
            rows.append(pair_row(*args, scene=scene, error=f"{where}: {exc}"))
            continue
        overlap = pair.get("overlap")
        rows.append(pair_row(*args, scene=scene, K0=K0, K1=K1, T_0to1=T,
                             overlap=None if overlap is None else float(overlap)))
    return rows


def scene_info_files(scene_info: str | Path) -> list[Path]:
    """The JSON files of ``scene_info`` (a folder of them, or one file), sorted by name.

    Raises:
        FileNotFoundError: nothing there, or a folder without JSON files.
    """
    scene_info = Path(scene_info)
    if scene_info.is_file():
        return [scene_info]
    if not scene_info.is_dir():
        raise FileNotFoundError(f"--scene-info {str(scene_info)!r} does not exist")
    files = sorted(scene_info.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"--scene-info {str(scene_info)!r} holds no *.json scene-info file")
    return files


def list_megadepth1500_pairs(root: str | Path, scene_info: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pair rows of every scene-info file, and facts for bench.json.

    Raises:
        FileNotFoundError: ROOT is not a folder, or the scene info is missing.
        SceneInfoError: a malformed scene-info file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MegaDepth root {str(root)!r} is not a directory")
    files = scene_info_files(scene_info)
    rows: list[dict[str, Any]] = []
    per_file = {}
    for path in files:
        found = scene_info_pairs(path, root.resolve())
        per_file[path.stem] = len(found)
        rows.extend(found)
    return rows, {"scene_info": [str(p) for p in files], "pairs_per_file": per_file}


def scene_info_from_colmap(root: str | Path, scene: str, pairs: list[tuple[str, str, float]],
                           images_dir: str = "images", sparse_dir: str = "sparse") -> dict[str, Any]:
    """A scene-info dict (this module's format) for a MegaDepth-layout scene with a COLMAP model.

    Makes any ``<root>/<scene>/{images,sparse}`` scene (e.g. the demo scene) usable with
    ``bench megadepth1500``. K is in the OpenCV pixel convention (see datasets.colmap_scene).

    Args:
        root: the MegaDepth-layout root (``image_path`` entries are relative to it).
        scene: scene folder name.
        pairs: (image name 0, image name 1, overlap) with names relative to the images folder.
    """
    model = read_colmap_scene(Path(root) / scene / sparse_dir)
    names = sorted({n for a, b, _ in pairs for n in (a, b)})
    index = {name: k for k, name in enumerate(names)}
    images = {}
    for name in names:
        im = model.image(name)
        images[str(index[name])] = {
            "image_path": f"{scene}/{images_dir}/{name}",
            "depth_path": None,
            "K": im.K.tolist(),
            "pose": im.cam_from_world.tolist(),
        }
    return {
        "source_file": f"COLMAP model {Path(root) / scene / sparse_dir}",
        "images": images,
        "pairs": [{"idx": [index[a], index[b]], "overlap": float(o)} for a, b, o in pairs],
    }
