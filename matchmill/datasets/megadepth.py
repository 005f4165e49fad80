"""MegaDepth-style pair selection from COLMAP models (+ optional depth maps).

Layout: ``<root>/<scene>/{images,sparse,depths}`` with a COLMAP model in ``sparse/`` whose image
names are relative to ``images/``, and optional MegaDepth depth maps ``depths/<image stem>.h5``
(dataset ``"depth"``, float32 (H, W) z-depth in the model's units, 0 = unknown).

Selection follows Patch2Pix's MegaDepth recipe (``docs/specs/patch2pix.md`` section 7):

1. Per image, take the 3D point ids it observes. When depth maps are present (``depth_check``),
   first drop observations whose 3D point depth disagrees with the depth map by more than
   ``depth_rel_tol`` (occluded or unreliable points); observations that land on a hole of the depth
   map or on a depth discontinuity cannot be judged and are kept. A missing depth folder or file
   just skips the check.
2. ``overlap[i, j] = |ids(i) & ids(j)| / |ids(i)|`` (asymmetric); candidates are the ordered pairs
   with ``min_overlap <= overlap < max_overlap`` (both (i, j) and (j, i) may appear).
3. Images must be landscape with aspect ``w / h`` in ``aspect_range`` (size from the COLMAP camera;
   Patch2Pix uses (2 cx, 2 cy), which is the same for MegaDepth's undistorted models).
4. Candidates are visited in a seeded random order, per overlap bin when ``overlap_bins`` is set
   (stratified output, at most ``pairs_per_bin`` each), and kept when the mean squared Sampson
   distance of their SfM correspondences under the ground-truth F is at most ``max_sampson_sq``.
5. At most ``max_pairs_per_scene`` pairs are kept per scene.

Each pair is a dict with exactly the fields of the ``pairs`` manifest schema
(:data:`matchmill.manifests.schemas.PAIRS`). Pixel coordinates, ``K0`` and ``K1`` use the OpenCV
convention (top-left pixel centre at (0, 0)), see :mod:`matchmill.datasets.colmap_scene`.
``crop0``/``crop1`` are ``[w, h]`` of the region kept after cropping at the right/bottom, which does
not change K.
"""

from __future__ import annotations

import logging
import os
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.epipolar import fundamental_from_pose, sampson_distance_sq
from ..manifests.schemas import PAIRS, STATUS_OK, make_pair_id
from .colmap_scene import ColmapImage, ColmapScene, has_colmap_model, read_colmap_scene

logger = logging.getLogger(__name__)

DEFAULT_CONF: dict[str, Any] = {
    "scenes": None,  # scene folder names under root; None = every subfolder holding a sparse model
    "exclude_scenes": [],  # scene names to skip (Patch2Pix drops 8 MegaDepth scenes that overlap IMC)
    "images_dir": "images",  # per-scene image folder; COLMAP image names are relative to it
    "sparse_dir": "sparse",  # per-scene COLMAP model folder (cameras/images/points3D, .bin or .txt)
    "depths_dir": "depths",  # per-scene folder of <image stem>.h5 depth maps; absent = no depth check
    "require_images": True,  # drop images whose file is missing under images_dir
    "depth_check": True,  # drop observations whose 3D point depth disagrees with the depth map
    "depth_rel_tol": 0.05,  # relative depth disagreement |z_point - z_map| / z_map that drops a point
    "min_overlap": 0.35,  # candidates need overlap >= this (overlap = shared ids / ids of image0)
    "max_overlap": 1.0,  # ... and overlap < this (1.0 removes near-duplicates)
    "overlap_bins": None,  # increasing edges, e.g. [0.35, 0.45, 0.55, 1.0]: stratify (pairs outside unused)
    "pairs_per_bin": None,  # quota per overlap bin and scene; None = max_pairs_per_scene // num_bins
    "aspect_range": [1.3, 1.7],  # both images landscape with w/h in [lo, hi]; None = no filter
    "crop_aspect": 1.5,  # crop at right/bottom to this exact w/h; None = no crop (crop = full size)
    "max_sampson_sq": 1.0,  # max mean squared Sampson distance (px^2) of SfM matches; None = no check
    "max_pairs_per_scene": 500,  # cap on kept pairs per scene
    "symmetric": True,  # keep both (i, j) and (j, i); False drops (j, i) once (i, j) is kept
    "seed": 0,  # seed of the visiting order (mixed with the scene name, so scenes are independent)
}
#: Bounds of those numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
DEFAULT_BOUNDS: dict[str, str] = {
    "depth_rel_tol": "> 0",
    "min_overlap": "[0, 1]",
    "max_overlap": "> 0",  # above 1 keeps near-duplicates too
    "pairs_per_bin": ">= 1",
    "aspect_range": "> 0",
    "crop_aspect": "> 0",
    "max_sampson_sq": "> 0",
}

_NO_DEPTH = np.nan


# --------------------------------------------------------------------------------------------
# configuration


def resolve_conf(conf: dict[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_CONF`` updated with ``conf``, validated; ValueError on unknown or bad keys."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(DEFAULT_CONF))
    if unknown:
        raise ValueError(f"unknown megadepth pair-selection keys: {unknown}")
    c = {**DEFAULT_CONF, **conf}
    if not 0.0 <= c["min_overlap"] < c["max_overlap"]:
        raise ValueError(f"need 0 <= min_overlap < max_overlap, got {c['min_overlap']}, {c['max_overlap']}")
    bins = c["overlap_bins"]
    if bins is not None:
        b = np.asarray(bins, dtype=np.float64)
        if b.ndim != 1 or len(b) < 2 or np.any(np.diff(b) <= 0):
            raise ValueError(f"overlap_bins must be >= 2 increasing edges, got {bins}")
    if c["aspect_range"] is not None:
        lo, hi = c["aspect_range"]
        if not 0 < lo <= hi:
            raise ValueError(f"aspect_range must be [lo, hi] with 0 < lo <= hi, got {c['aspect_range']}")
    if c["crop_aspect"] is not None and c["crop_aspect"] <= 0:
        raise ValueError(f"crop_aspect must be positive or None, got {c['crop_aspect']}")
    if int(c["max_pairs_per_scene"]) < 0:
        raise ValueError("max_pairs_per_scene must be >= 0")
    return c


# --------------------------------------------------------------------------------------------
# depth maps


def load_depth(path: str | Path) -> np.ndarray:
    """MegaDepth depth map: (H, W) float32 z-depth from dataset ``"depth"`` of an h5 file."""
    import h5py  # lazy: only reading depth maps needs h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f["depth"], dtype=np.float32)


def sample_depth(depth: np.ndarray, xy: np.ndarray, max_rel_spread: float = 0.05) -> np.ndarray:
    """Bilinearly interpolated depth at OpenCV pixel positions, NaN where it cannot be trusted.

    A sample is NaN when it falls outside the map, when any of its 4 neighbours is <= 0 (no depth),
    or when the neighbours differ by more than ``max_rel_spread`` relative (a depth discontinuity).

    Args:
        depth: (H, W) z-depth map, 0 where unknown.
        xy: (N, 2) pixel coordinates, OpenCV convention (pixel centres at integers).
    Returns:
        (N,) float64 depths.
    """
    depth = np.asarray(depth)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    H, W = depth.shape
    out = np.full(len(xy), _NO_DEPTH)
    x, y = xy[:, 0], xy[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= W - 1) & (y <= H - 1)
    if not inside.any():
        return out
    x, y = x[inside], y[inside]
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2) if W > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2) if H > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    d = np.stack([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]], 1).astype(np.float64)
    w = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    val = (d * w).sum(1)
    dmin, dmax = d.min(1), d.max(1)
    ok = (dmin > 0) & (dmax - dmin <= max_rel_spread * dmin)
    out[np.flatnonzero(inside)[ok]] = val[ok]
    return out


def depth_consistent(z_point: np.ndarray, z_map: np.ndarray, rel_tol: float) -> np.ndarray:
    """(N,) bool: point depth agrees with the map depth, or the map cannot tell (NaN)."""
    z_point = np.asarray(z_point, dtype=np.float64)
    z_map = np.asarray(z_map, dtype=np.float64)
    unknown = ~np.isfinite(z_map)
    agree = np.abs(z_point - np.where(unknown, 0.0, z_map)) <= rel_tol * np.where(unknown, 1.0, z_map)
    return (z_point > 0) & (unknown | agree)


# --------------------------------------------------------------------------------------------
# geometry helpers


def crop_to_aspect(width: int, height: int, aspect: float | None) -> tuple[int, int]:
    """``(w, h)`` kept after cropping right/bottom to exactly ``aspect`` = p/q (e.g. 3/2).

    Patch2Pix rule for 1.5: if w/h > 1.5, make h even and cut w to 1.5 h; if w/h < 1.5, trim w to
    a multiple of 3 and cut h to w / 1.5. Generalised with the reduced fraction p/q of ``aspect``.
    ``aspect=None`` keeps the full image.
    """
    if aspect is None:
        return int(width), int(height)
    frac = Fraction(aspect).limit_denominator(100)
    p, q = frac.numerator, frac.denominator
    if width * q > height * p:  # too wide: height to a multiple of q, width from it
        h = height - height % q
        return h * p // q, h
    if width * q < height * p:  # too tall: width to a multiple of p, height from it
        w = width - width % p
        return w, w * q // p
    return int(width), int(height)


def relative_pose(cam0_from_world: np.ndarray, cam1_from_world: np.ndarray) -> np.ndarray:
    """(4, 4) T_0to1 = pose1 @ inv(pose0) for (4, 4) world-to-camera poses."""
    return cam1_from_world @ np.linalg.inv(cam0_from_world)


def mean_sampson_sq(im0: ColmapImage, im1: ColmapImage, valid0: np.ndarray, valid1: np.ndarray) -> float:
    """Mean squared Sampson distance (px^2) of the shared SfM observations under the GT F.

    ``valid0``/``valid1`` are (N0,)/(N1,) bool masks of the observations to use. Returns inf when
    the images share no observation.
    """
    ids0, ids1 = im0.point3D_ids[valid0], im1.point3D_ids[valid1]
    _, i0, i1 = np.intersect1d(ids0, ids1, assume_unique=True, return_indices=True)
    if len(i0) == 0:
        return float("inf")
    F = fundamental_from_pose(im0.K, im1.K, relative_pose(im0.cam_from_world, im1.cam_from_world))
    return float(sampson_distance_sq(F, im0.xy[valid0][i0], im1.xy[valid1][i1]).mean())


def covisibility_counts(obs_image: np.ndarray, obs_point: np.ndarray, num_images: int,
                        chunk: int = 4_000_000) -> np.ndarray:
    """(n, n) int64 matrix of shared 3D points between images; the diagonal counts each image's.

    Args:
        obs_image: (N,) image index of each observation (unique (image, point) pairs).
        obs_point: (N,) 3D point id of each observation.
        num_images: n.
        chunk: max number of (observation, partner) pairs expanded at once (memory bound).
    """
    n = int(num_images)
    counts = np.zeros(n * n, dtype=np.int64)
    if len(obs_image) == 0:
        return counts.reshape(n, n)
    order = np.lexsort((obs_image, obs_point))
    img, pt = np.asarray(obs_image)[order], np.asarray(obs_point)[order]
    starts = np.flatnonzero(np.r_[True, pt[1:] != pt[:-1]])
    lengths = np.diff(np.r_[starts, len(pt)])
    group = np.repeat(np.arange(len(starts)), lengths)
    L, S = lengths[group], starts[group]  # per observation: track length and start
    ends = np.cumsum(L)
    k0 = 0
    while k0 < len(img):
        base = ends[k0 - 1] if k0 else 0
        k1 = max(int(np.searchsorted(ends, base + chunk, side="right")), k0 + 1)
        k = np.arange(k0, k1)
        a = np.repeat(k, L[k])
        offs = np.arange(len(a)) - np.repeat(np.cumsum(L[k]) - L[k], L[k])
        b = S[a] + offs
        counts += np.bincount(img[a] * n + img[b], minlength=n * n)
        k0 = k1
    return counts.reshape(n, n)


# --------------------------------------------------------------------------------------------
# per scene


def list_scenes(root: Path, conf: dict[str, Any]) -> list[str]:
    """Scene names to process: ``conf["scenes"]`` (each must have a model) or all with a model."""
    if not root.is_dir():
        raise ValueError(f"MegaDepth root does not exist or is not a folder: {root}")
    excluded = set(conf["exclude_scenes"] or [])
    if conf["scenes"] is not None:
        scenes = [s for s in conf["scenes"] if s not in excluded]
        for s in scenes:
            sparse = root / s / conf["sparse_dir"]
            if not has_colmap_model(sparse):
                raise ValueError(f"scene {s!r}: no COLMAP model (cameras/images/points3D) in {sparse}")
        return list(scenes)
    scenes = sorted(
        p.name for p in root.iterdir() if p.is_dir() and has_colmap_model(p / conf["sparse_dir"])
    )
    scenes = [s for s in scenes if s not in excluded]
    if not scenes:
        raise ValueError(f"no scene folder with a COLMAP model in <scene>/{conf['sparse_dir']} under {root}")
    return scenes


def valid_observations(scene_dir: Path, scene: ColmapScene, conf: dict[str, Any]) -> list[np.ndarray]:
    """Per image, an (N_i,) bool mask of the observations kept for overlap and Sampson checks.

    Drops points behind the camera, and (with ``depth_check`` and a depth map for the image)
    points whose depth disagrees with the map by more than ``depth_rel_tol``.
    """
    depth_dir = scene_dir / conf["depths_dir"]
    use_depth = bool(conf["depth_check"]) and depth_dir.is_dir()
    masks = []
    for im in scene.images:
        mask = im.depths > 0
        dpath = depth_dir / (Path(im.name).with_suffix(".h5"))
        if use_depth and dpath.is_file():
            depth = load_depth(dpath)
            xy = im.xy
            if depth.shape != (im.height, im.width):  # depth at another resolution: rescale coords
                sx, sy = depth.shape[1] / im.width, depth.shape[0] / im.height
                xy = (xy + 0.5) * [sx, sy] - 0.5
            z_map = sample_depth(depth, xy)
            mask &= depth_consistent(im.depths, z_map, float(conf["depth_rel_tol"]))
        masks.append(mask)
    return masks


def image_passes_aspect(im: ColmapImage, aspect_range: list[float] | None) -> bool:
    """Landscape (w >= h) with w / h within ``aspect_range``; always True when it is None."""
    if aspect_range is None:
        return True
    lo, hi = aspect_range
    return im.width >= im.height and lo <= im.width / im.height <= hi


def overlap_matrix(scene: ColmapScene, masks: list[np.ndarray]) -> np.ndarray:
    """(n, n) float64 overlap[i, j] = shared / ids of i over the masked observations; -1 on the
    diagonal and for images without observations."""
    n = len(scene.images)
    obs_img = np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(masks)] or [np.zeros(0, int)])
    obs_pt = np.concatenate([im.point3D_ids[m] for im, m in zip(scene.images, masks)] or [np.zeros(0, int)])
    counts = covisibility_counts(obs_img.astype(np.int64), obs_pt.astype(np.int64), n)
    own = np.diag(counts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = counts / own[:, None]
    ov[~np.isfinite(ov)] = -1.0
    np.fill_diagonal(ov, -1.0)
    return ov


def _bins(conf: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Bin edges (B+1,) and quota per bin."""
    if conf["overlap_bins"] is None:
        edges = np.array([conf["min_overlap"], conf["max_overlap"]], dtype=np.float64)
    else:
        edges = np.asarray(conf["overlap_bins"], dtype=np.float64)
    nb = len(edges) - 1
    quota = conf["pairs_per_bin"]
    if quota is None:
        quota = int(conf["max_pairs_per_scene"]) // nb
    return edges, int(quota)


def _pair_record(scene_name: str, scene_dir: Path, conf: dict[str, Any], im0: ColmapImage,
                 im1: ColmapImage, overlap: float) -> dict[str, Any]:
    """One row of the pairs manifest (exactly the PAIRS schema fields)."""
    id0, id1 = f"{scene_name}/{im0.name}", f"{scene_name}/{im1.name}"
    img_dir = scene_dir / conf["images_dir"]
    T = relative_pose(im0.cam_from_world, im1.cam_from_world)
    row = {
        "pair_id": make_pair_id(id0, id1),
        "scene": scene_name,
        "image0": id0,
        "image1": id1,
        "path0": os.path.abspath(img_dir / im0.name),
        "path1": os.path.abspath(img_dir / im1.name),
        "K0": [float(v) for v in im0.K.reshape(-1)],
        "K1": [float(v) for v in im1.K.reshape(-1)],
        "T_0to1": [float(v) for v in T.reshape(-1)],
        "H_0to1": None,
        "overlap": float(overlap),
        "crop0": list(crop_to_aspect(im0.width, im0.height, conf["crop_aspect"])),
        "crop1": list(crop_to_aspect(im1.width, im1.height, conf["crop_aspect"])),
        "similarity": None,
        "shared_points": None,
        "status": STATUS_OK,
        "error": None,
    }
    assert list(row) == PAIRS.names
    return row


def select_scene_pairs(root: Path, scene_name: str, conf: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs of one scene (``conf`` already resolved), in selection order."""
    scene_dir = root / scene_name
    scene = read_colmap_scene(scene_dir / conf["sparse_dir"])
    ims = scene.images
    n = len(ims)
    usable = np.array(
        [
            image_passes_aspect(im, conf["aspect_range"])
            and (not conf["require_images"] or (scene_dir / conf["images_dir"] / im.name).is_file())
            for im in ims
        ],
        dtype=bool,
    ).reshape(n)
    masks = valid_observations(scene_dir, scene, conf)
    ov = overlap_matrix(scene, masks)
    cand = (ov >= conf["min_overlap"]) & (ov < conf["max_overlap"]) & usable[:, None] & usable[None, :]

    edges, quota = _bins(conf)
    rng = np.random.default_rng([int(conf["seed"]), zlib.crc32(scene_name.encode())])
    cap = int(conf["max_pairs_per_scene"])
    kept: list[tuple[int, int]] = []
    kept_set: set[tuple[int, int]] = set()
    n_cand = n_sampson = 0
    for b in range(len(edges) - 1):
        ii, jj = np.nonzero(cand & (ov >= edges[b]) & (ov < edges[b + 1]))
        n_cand += len(ii)
        n_bin = 0
        for k in rng.permutation(len(ii)):
            if n_bin >= quota or len(kept) >= cap:
                break
            i, j = int(ii[k]), int(jj[k])
            if not conf["symmetric"] and (j, i) in kept_set:
                continue
            if conf["max_sampson_sq"] is not None:
                if mean_sampson_sq(ims[i], ims[j], masks[i], masks[j]) > conf["max_sampson_sq"]:
                    n_sampson += 1
                    continue
            kept.append((i, j))
            kept_set.add((i, j))
            n_bin += 1
    logger.info(
        "scene %s: %d images (%d usable), %d candidates, %d failed Sampson, %d pairs kept",
        scene_name, n, int(usable.sum()), n_cand, n_sampson, len(kept),
    )
    return [_pair_record(scene_name, scene_dir, conf, ims[i], ims[j], ov[i, j]) for i, j in kept]


def select_megadepth_pairs(root: str | Path, conf: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Select training/eval pairs from MegaDepth-layout scenes under ``root``.

    Args:
        root: folder of scene folders ``<root>/<scene>/{images,sparse,depths}``.
        conf: overrides of :data:`DEFAULT_CONF`.
    Returns:
        One dict per pair with exactly the PAIRS manifest fields; scenes in order, pairs in the
        (seeded) selection order within each scene.
    Raises:
        ValueError: unknown conf keys, missing root, a requested scene without a model, or an
            unreadable model (the message names the folder).
    """
    conf = resolve_conf(conf)
    root = Path(root)
    pairs: list[dict[str, Any]] = []
    for scene_name in list_scenes(root, conf):
        pairs.extend(select_scene_pairs(root, scene_name, conf))
    return pairs
