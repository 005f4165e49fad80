"""Writing and reusing a demo scene folder: :func:`write_demo_scene`, :func:`ensure_demo_scene` and
the marker file that identifies a complete scene (layout in :mod:`matchmill.datasets.demo`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .colmap_writer import observe, sample_surface_points, write_colmap_model, write_depth
from .geometry import build_scene, make_cameras
from .primitives import Scene
from .rendering import JPEG_QUALITY, photometric, render_view


#: Bump whenever the rendered content or layout changes.
DEMO_SCENE_VERSION = 2
MARKER_NAME = "demo_scene.json"
#: Per-scene {image name: SfM group} file, written only for split models.
SFM_GROUPS_NAME = "sfm_groups.json"
#: Range of the per-image strength of direct sunlight (1 = clear sky; the photos are taken at
#: different moments, some under thin clouds with weaker shadows).
SUN_RANGE = (0.45, 1.0)
#: Number of 3D points sampled on the surfaces (before keeping those seen by >= 2 cameras).
NUM_POINTS = 4000


def demo_scene_params(seed: int, num_cameras: int, width: int, height: int, scene: str,
                      sfm_groups: list[int] | None = None) -> dict[str, Any]:
    """The marker content identifying a generated scene (``sfm_groups`` only when given)."""
    params: dict[str, Any] = {"seed": int(seed), "num_cameras": int(num_cameras), "width": int(width),
                              "height": int(height), "version": DEMO_SCENE_VERSION, "scene": scene}
    if sfm_groups is not None:
        params["sfm_groups"] = [int(g) for g in sfm_groups]
    return params


def check_sfm_groups(sfm_groups: Any, num_cameras: int) -> list[int] | None:
    """``sfm_groups`` as a list of ints (None stays None); ValueError naming the problem when it
    is not a sequence of ``num_cameras`` integer labels (bools are not labels)."""
    if sfm_groups is None:
        return None
    if isinstance(sfm_groups, (str, bytes, dict)) or not hasattr(sfm_groups, "__len__"):
        raise ValueError(f"sfm_groups must be a list of {num_cameras} int labels, got {sfm_groups!r}")
    labels = list(sfm_groups)
    if len(labels) != num_cameras:
        raise ValueError(f"sfm_groups must have one label per camera: got {len(labels)} labels "
                         f"for num_cameras={num_cameras}")
    bad = [g for g in labels if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer))]
    if bad:
        raise ValueError(f"sfm_groups labels must be ints, got {bad[0]!r} ({type(bad[0]).__name__})")
    return [int(g) for g in labels]


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """Contents of ``<folder>/demo_scene.json``, or None when absent/unreadable."""
    try:
        return json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def demo_world(seed: int, num_cameras: int, width: int, height: int
               ) -> tuple[Scene, list[tuple[np.ndarray, np.ndarray]], np.random.Generator]:
    """The world of scene ``seed`` and its cameras, seeded as :func:`write_demo_scene` seeds them.

    Returns:
        the :class:`Scene`, ``num_cameras`` (K (3, 3), cam_from_world (4, 4)) and the generator
        the scene's 3D points are drawn from next.
    """
    rng = np.random.default_rng(seed)
    world = build_scene(np.random.default_rng([seed, 2]))  # own stream: content edits keep the cameras
    return world, make_cameras(rng, num_cameras, width, height), rng


def render_photo(world: Scene, K: np.ndarray, cam_from_world: np.ndarray, seed: int, index: int,
                 width: int, height: int) -> tuple[bytes, np.ndarray]:
    """Image ``index`` of scene ``seed`` as written to disk: JPEG bytes (BGR, per-image sunlight,
    photometric changes and quality) and its (H, W) float32 z-depth (0 = sky)."""
    sun = np.random.default_rng([seed, index, 2]).uniform(*SUN_RANGE)  # passing clouds
    rgb, depth = render_view(world, K, cam_from_world, width, height, sun=sun)
    prng = np.random.default_rng([seed, index, 1])
    img = photometric(rgb, prng)
    quality = int(prng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), depth


def write_demo_scene(out_dir: str | Path, seed: int = 0, num_cameras: int = 14, width: int = 320,
                     height: int = 240, scene: str = "demo", sfm_groups: list[int] | None = None) -> Path:
    """Render and write the demo scene to ``<out_dir>/<scene>``; returns that folder.

    The scene is built in a temporary folder that is renamed into place, so ``<out>/<scene>`` is
    either absent or complete; it holds a copy of the marker (``<out>/<scene>/demo_scene.json``).
    ``<out>/demo_scene.json`` (the most recently written scene) is written after the rename.
    A previous demo scene of the same name is replaced; any other existing ``<out>/<scene>``
    raises FileExistsError.

    Args:
        out_dir: parent folder (created if needed).
        seed: seeds textures and layout jitter (one stream), cameras and points (another) and
            the photometric changes (one stream per image).
        num_cameras: number of images (>= 2; 12+ recommended).
        width, height: image size in pixels.
        scene: scene folder name.
        sfm_groups: one int group label per camera: split the COLMAP model by group (see the
            module doc) and write ``sfm_groups.json``; None = one model. Images, depth maps and
            poses do not depend on it.
    """
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2, got {num_cameras}")
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    if not scene or Path(scene).name != scene or scene.startswith("."):
        raise ValueError(f"scene must be a plain folder name, got {scene!r}")
    sfm_groups = check_sfm_groups(sfm_groups, num_cameras)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / scene
    if final.exists() and read_marker(final) is None:
        raise FileExistsError(f"{final} exists and is not a demo scene written by matchmill")

    world, cams, rng = demo_world(seed, num_cameras, width, height)
    xyz, colors = sample_surface_points(rng, world, NUM_POINTS)
    names = [f"demo_{i:03d}.jpg" for i in range(num_cameras)]
    params = demo_scene_params(seed, num_cameras, width, height, scene, sfm_groups)

    tmp = out / f".{scene}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "depths").mkdir()
        visible = np.zeros((num_cameras, len(xyz)), bool)
        xy = np.zeros((num_cameras, len(xyz), 2))
        for i, (K, T) in enumerate(cams):
            jpeg, depth = render_photo(world, K, T, seed, i, width, height)
            (tmp / "images" / names[i]).write_bytes(jpeg)
            write_depth(tmp / "depths" / (Path(names[i]).stem + ".h5"), depth)
            visible[i], xy[i] = observe(xyz, K, T, depth)
        groups = None if sfm_groups is None else np.asarray(sfm_groups, np.int64)
        write_colmap_model(tmp / "sparse", names, cams, width, height, xyz, colors, visible, xy, groups)
        if sfm_groups is not None:
            _write_json_atomic(tmp / SFM_GROUPS_NAME, dict(zip(names, sfm_groups)))
        _write_json_atomic(tmp / MARKER_NAME, params)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json_atomic(out / MARKER_NAME, params)
    return final


def ensure_demo_scene(out_dir: str | Path, seed: int = 0, num_cameras: int = 14, width: int = 320,
                      height: int = 240, scene: str = "demo", sfm_groups: list[int] | None = None) -> Path:
    """``<out_dir>/<scene>``, written by :func:`write_demo_scene` unless a complete scene with
    exactly these parameters (and the current :data:`DEMO_SCENE_VERSION`) is already there."""
    sfm_groups = check_sfm_groups(sfm_groups, num_cameras)
    final = Path(out_dir) / scene
    if read_marker(final) == demo_scene_params(seed, num_cameras, width, height, scene, sfm_groups):
        return final
    return write_demo_scene(out_dir, seed, num_cameras, width, height, scene, sfm_groups)
