"""Deterministic synthetic MegaDepth-format scene: the embedded default data of matchmill.

:func:`write_demo_scene` renders a small sunlit courtyard (paving-slab ground, a back facade of
weathered brickwork, a shop front and a mural, a windowed facade, a graffiti wall, two crates, a
pillar and a bench, with baked cast shadows) with a vectorised numpy ray caster from known
PINHOLE cameras on an arc around it, and writes::

    <out>/<scene>/images/<name>.jpg    8-bit colour JPEG (H, W, 3)
    <out>/<scene>/depths/<stem>.h5     dataset "depth": float32 (H, W) z-depth in metres, 0 = sky
    <out>/<scene>/sparse/              COLMAP binary model written with pycolmap
                                       (cameras, images, points3D, + rigs/frames of COLMAP 3.12+)
    <out>/<scene>/demo_scene.json      {seed, num_cameras, width, height, version, scene}
                                       (+ sfm_groups, only when given)
    <out>/<scene>/sfm_groups.json      {image name: group}, only when ``sfm_groups`` is given
    <out>/demo_scene.json              the same, for the most recently written scene

The scene folder is assembled under a temporary name and renamed into place, so when
``<out>/<scene>/demo_scene.json`` holds the requested parameters the scene is complete (see
:func:`ensure_demo_scene`).

Conventions:
- World frame: z up, metres. Cameras: OpenCV frame (x right, y down, z forward); poses are
  world-to-camera (x_cam = R x_world + t).
- Rendering uses OpenCV pixel coordinates: the centre of the top-left pixel is (0, 0), and the
  depth map value at integer pixel (u, v) is the z-depth of the ray through that point.
- The COLMAP model uses COLMAP's convention: the centre of the top-left pixel is (0.5, 0.5). Its
  principal point is therefore ``cx_opencv + 0.5`` (= W / 2 exactly here) and every ``points2D``
  entry is the OpenCV projection + 0.5. :mod:`matchmill.datasets.colmap_scene` converts back.
- Points3D are sampled on the surfaces; an observation is kept when the point projects inside
  the image and its z-depth agrees within 1 % with the rendered depth map (bilinear, away from
  depth discontinuities). Tracks have length >= 2.
- ``sfm_groups`` (one label per camera) splits the model as if SfM had reconstructed each group
  separately, in one world frame: every track is split by group and each part with >= 2
  observations becomes its own 3D point (same xyz and colour). Images of different groups then
  share no 3D point although they may overlap (ground truth for mining missed pairs); images,
  depth maps and poses are the same as without groups.

Same arguments -> byte-identical JPEGs (on one platform/numpy/OpenCV build).

Modules, each importing only those listed before it:

- ``primitives``: quads, boxes, the :class:`Scene` record, ray casting.
- ``drawing``: noise and drawing helpers of the textures.
- ``textures``: the procedural textures and their mip pyramids.
- ``rendering``: baked light, shading, :func:`render_view`, photometric changes.
- ``geometry``: the courtyard layout (:func:`build_scene`) and the cameras.
- ``colmap_writer``: 3D points, observations, the COLMAP model and the depth maps.
- ``scene_writer``: :func:`write_demo_scene`, :func:`ensure_demo_scene`, the marker; the
  per-seed world and cameras (``demo_world``) and one image as written (``render_photo``).
- ``seeds``: the held-out evaluation seeds and :func:`check_held_out` (training refuses them).
- ``oracle``: ground-truth correspondences of a pair: :class:`View`, :class:`DepthOracle`
  (rendered views through depth and poses), :class:`HomographyOracle` (synthetic pairs), both in
  resized frames too.
- ``view_pairs``: :func:`render_view_pair` / :func:`render_views`: rendered views of a seed with
  depth and cameras, and their oracle; ``scene_view`` reads one back from a written scene.
"""

from .geometry import build_scene, look_at, make_cameras
from .primitives import Quad, Scene
from .rendering import render_view
from .scene_writer import (
    DEMO_SCENE_VERSION,
    MARKER_NAME,
    SFM_GROUPS_NAME,
    ensure_demo_scene,
    read_marker,
    write_demo_scene,
)
from .oracle import DepthOracle, HomographyOracle, View
from .view_pairs import render_view_pair, render_views

__all__ = [
    "DEMO_SCENE_VERSION",
    "DepthOracle",
    "HomographyOracle",
    "MARKER_NAME",
    "SFM_GROUPS_NAME",
    "Quad",
    "Scene",
    "View",
    "build_scene",
    "ensure_demo_scene",
    "look_at",
    "make_cameras",
    "read_marker",
    "render_view",
    "render_view_pair",
    "render_views",
    "write_demo_scene",
]
