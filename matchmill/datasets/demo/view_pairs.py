"""Rendered demo views with their depth and cameras, paired with their ground truth (:class:`DepthOracle`).

:func:`render_view_pair` renders two views of demo scene ``seed`` exactly as
:func:`~matchmill.datasets.demo.write_demo_scene` writes them (same world, cameras, sunlight,
photometric changes and JPEG compression: the images equal the decoded files of the written scene)
and returns them with their oracle; :func:`render_views` renders any views of a seed (all pairs
of a scene from one call). Training seeds only: a held-out evaluation seed
(:data:`~matchmill.datasets.demo.seeds.HELD_OUT_SEEDS`) is refused unless ``for_training=False``
(measurements on the held-out scenes, e.g. Patch2Pix's input against its output).
:func:`scene_view` reads the same :class:`View` back from a written scene folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

from ..colmap_scene import read_colmap_scene
from ..megadepth import load_depth
from .oracle import DepthOracle, View
from .primitives import Scene
from .scene_writer import demo_world, render_photo
from .seeds import check_held_out

__all__ = ["RenderedPair", "world_and_cameras", "render_views", "render_view_pair", "scene_view"]


class RenderedPair(NamedTuple):
    """Two rendered views and the oracle from view0 to view1 (``oracle.reverse()``: 1 -> 0)."""

    view0: View
    view1: View
    oracle: DepthOracle


@lru_cache(maxsize=2)
def world_and_cameras(seed: int, num_cameras: int, width: int, height: int
                      ) -> tuple[Scene, tuple[tuple[np.ndarray, np.ndarray], ...]]:
    """The world and the (K, cam_from_world) cameras of scene ``seed`` (:func:`demo_world`; cached:
    building the textures and light takes ~2 s). No held-out check: nothing is rendered."""
    world, cams, _ = demo_world(seed, num_cameras, width, height)
    return world, tuple(cams)


def _decode(jpeg: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of JPEG bytes."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., ::-1])


def render_views(seed: int, indices: Sequence[int], num_cameras: int = 14, width: int = 320, height: int = 240,
                 cameras: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                 for_training: bool = True) -> list[View]:
    """Views ``indices`` of demo scene ``seed`` (arguments as :func:`write_demo_scene`'s).

    Args:
        cameras: one (K (3, 3), cam_from_world (4, 4)) per index to render instead of the scene's
            own cameras (same world; ``indices`` then only pick the per-image photometric draws).
        for_training: refuse held-out evaluation seeds (ValueError).
    """
    if for_training:
        check_held_out([seed])
    if cameras is None and any(not 0 <= int(i) < num_cameras for i in indices):
        raise ValueError(f"view indices must be in [0, {num_cameras}), got {list(indices)}")
    if cameras is not None and len(cameras) != len(indices):
        raise ValueError(f"cameras must give one (K, pose) per index: {len(cameras)} for {len(indices)} indices")
    world, cams = world_and_cameras(int(seed), int(num_cameras), int(width), int(height))
    views = []
    for k, i in enumerate(indices):
        K, T = cams[int(i)] if cameras is None else cameras[k]
        K, T = np.asarray(K, np.float64), np.asarray(T, np.float64)
        jpeg, depth = render_photo(world, K, T, int(seed), int(i), width, height)
        views.append(View.from_pose(_decode(jpeg), depth, K, T))
    return views


def render_view_pair(seed: int, i: int = 0, j: int = 1, num_cameras: int = 14, width: int = 320, height: int = 240,
                     cameras: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, for_training: bool = True,
                     conf: Mapping[str, Any] | None = None) -> RenderedPair:
    """Views ``i`` and ``j`` of demo scene ``seed`` and their :class:`DepthOracle` (``conf``: its
    keys); arguments as :func:`render_views`."""
    view0, view1 = render_views(seed, [i, j], num_cameras, width, height, cameras, for_training)
    return RenderedPair(view0, view1, DepthOracle(view0, view1, conf))


def scene_view(scene_dir: str | Path, image_name: str) -> View:
    """The :class:`View` of ``images/<image_name>`` of a written demo (or MegaDepth-layout) scene:
    its RGB image, ``depths/<stem>.h5``, and K and pose from ``sparse/``."""
    scene_dir = Path(scene_dir)
    im = next((im for im in read_colmap_scene(scene_dir / "sparse").images if im.name == image_name), None)
    if im is None:
        raise ValueError(f"image {image_name!r} is not in the model of {scene_dir}")
    bgr = cv2.imread(str(scene_dir / "images" / image_name), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {scene_dir / 'images' / image_name}")
    depth = load_depth(scene_dir / "depths" / (Path(image_name).stem + ".h5"))
    return View.from_pose(np.ascontiguousarray(bgr[..., ::-1]), depth, im.K, im.cam_from_world)
