"""Export a run's verified matches as a COLMAP database (``database.db``) that COLMAP's mapper (or
``pycolmap.incremental_mapping``) reconstructs with no further step.

Written through pycolmap's ``Database`` (no hand-written SQL):

- **cameras**: one per image; ``PINHOLE`` with the intrinsics the run knows (the pairs' K), else
  ``SIMPLE_RADIAL`` with COLMAP's prior focal length (1.2 x the longer side, not flagged as a
  prior); size from the extract manifest;
- **images**: named relative to ``image_root`` (default: the deepest folder holding every image),
  so ``incremental_mapping(database, image_root, out)`` finds the files;
- **keypoints**: for a sparse chain (every match end point is a stored keypoint, see
  :mod:`matchmill.pipeline.export.native`) each image's own keypoints, all of them, so every inlier
  is kept; otherwise (a dense chain, a refiner that moved points) each image's match end points
  merged across pairs as for the hloc export (:func:`matchmill.geometry.quantize.quantize_matches`,
  ``radius`` px). Shifted by +0.5 to COLMAP's pixel origin;
- **matches** and **two-view geometries**: verify's inlier matches of each pair (a pair listed
  both ways is written once, a verified listing first), with verify's F (config ``UNCALIBRATED``) or H (``PLANAR``). A pair
  that is not ``verified`` (fewer than ``verify.min_inliers`` inliers, COLMAP's own
  ``min_num_inliers`` rule) keeps its row in ``matches`` (COLMAP's raw-matches table) but gets no
  two-view geometry, as COLMAP's matcher leaves it: the mapper never uses it.

h5py is not involved; sqlite needs a local file, so a remote ``out`` gets the database written
locally and uploaded with fsspec. Names and sizes are checked before anything is written; the
database is written into a staging folder and published with ``export.json``
(:mod:`.output`): a COLMAP export of the same run is replaced as a whole, another run's or
format's export only with ``overwrite``, never files that are not an export's.
"""

from __future__ import annotations

import os

import numpy as np

from matchmill.geometry.quantize import quantize_matches
from matchmill.manifests.commit import image_sizes, read_stage

from .common import ExportError, ExportPair, check_export_names, image_names, load_pairs
from .native import NativeUnavailable, match_native_keypoints
from .output import ExportOutput

DATABASE_FILE = "database.db"


def export_colmap(run_url: str, out: str, image_root: str | None = None, stage: str = "verify",
                  radius: float = 4.0, cell: int = 48, min_score: float = 0.0, overwrite: bool = False) -> dict:
    """Write ``<out>/database.db`` from a committed verify stage (see the module docstring).

    Returns:
        ``{"images", "keypoints", "keypoints_from", "pairs", "matches", "unverified",
        "skipped_failed", "image_root", "database"}``: ``pairs`` and ``matches`` count the
        two-view geometries and their inlier matches, ``unverified`` the pairs written to
        ``matches`` only; ``keypoints_from`` is ``native`` or ``quantized``, and ``note`` says why
        when quantised.

    Raises:
        ExportError: the stage is not committed / has no inlier flags, an image lies outside
            ``image_root``, an image's size is unknown, two images get one name, or ``out`` holds
            another export (without ``overwrite``) or files that are not an export's; raised
            before anything is written.
        StorageError: ``out`` cannot be created or written.
    """
    import pycolmap  # lazy: ~0.3 s to import; only the COLMAP export needs it

    if stage != "verify":
        raise ExportError("the COLMAP export needs verify's inliers and two-view geometry: --stage verify")
    pairs, skipped, _ = load_pairs(run_url, stage, True, float(min_score), verified_only=False)
    keypoints, ids, keypoints_from, note = _keypoints(run_url, pairs, float(radius), float(cell), float(min_score))
    rows = read_stage(run_url, stage, columns=["pair_id", "image0", "image1", "path0", "path1", "K0", "K1",
                                               "model", "F_est", "H_est", "status"]).to_pylist()
    geometry = {r["pair_id"]: r for r in rows if r["status"] == "ok"}
    K: dict[str, np.ndarray] = {}
    paths: dict[str, str] = {}
    for r in rows:
        for side in ("0", "1"):
            image = r["image" + side]
            paths.setdefault(image, r["path" + side])
            if r["K" + side] is not None:
                K.setdefault(image, np.asarray(r["K" + side], np.float64).reshape(3, 3))
    sizes = image_sizes(run_url)
    root, names = image_names({k: paths[k] for k in keypoints}, image_root)
    check_export_names(pairs, names, pairs_txt=False)
    for image in sorted(keypoints):
        if image not in sizes:
            raise ExportError(f"image {image!r}: its size is not in the extract manifest")

    with ExportOutput(out, "colmap", run_url, stage, overwrite=overwrite) as folder:
        db_path = os.path.join(folder, DATABASE_FILE)
        db = pycolmap.Database.open(db_path)
        try:
            image_ids = {}
            for image in sorted(keypoints):
                w, h = sizes[image]
                if image in K:
                    k = K[image]
                    camera = pycolmap.Camera(model="PINHOLE", width=w, height=h,
                                             params=[k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5])
                else:
                    camera = pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h,
                                             params=[1.2 * max(w, h), w / 2, h / 2, 0.0])
                camera_id = db.write_camera(camera)
                image_ids[image] = db.write_image(pycolmap.Image(name=names[image], camera_id=camera_id))
                db.write_keypoints(image_ids[image], (np.asarray(keypoints[image], np.float64) + 0.5).astype(np.float32))
            written: set[tuple[int, int]] = set()
            n_matches = n_geometries = n_unverified = 0
            # a pair listed both ways: its verified listing wins (verified listings first, else pair_id order)
            for k in sorted(range(len(pairs)), key=lambda k: not pairs[k].verified):
                p, m = pairs[k], ids[k]
                a, b = image_ids[p.image0], image_ids[p.image1]
                if (min(a, b), max(a, b)) in written or len(m) == 0:
                    continue
                written.add((min(a, b), max(a, b)))
                m = np.asarray(m, np.uint32).reshape(-1, 2)
                db.write_matches(a, b, m)
                if not p.verified:
                    n_unverified += 1
                    continue
                tvg = pycolmap.TwoViewGeometry()
                g = geometry.get(p.pair_id, {})
                if g.get("model") == "homography" and g.get("H_est") is not None:
                    tvg.config = pycolmap.TwoViewGeometryConfiguration.PLANAR
                    tvg.H = np.asarray(g["H_est"], np.float64).reshape(3, 3)
                else:
                    tvg.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
                    if g.get("F_est") is not None:
                        tvg.F = _colmap_F(np.asarray(g["F_est"], np.float64).reshape(3, 3))
                tvg.inlier_matches = m
                db.write_two_view_geometry(a, b, tvg)
                n_geometries += 1
                n_matches += len(m)
        finally:
            db.close()
    return {"images": len(image_ids), "keypoints": int(sum(len(k) for k in keypoints.values())),
            "keypoints_from": keypoints_from, "note": note, "pairs": n_geometries, "matches": n_matches,
            "unverified": n_unverified, "skipped_failed": skipped, "image_root": root,
            "database": out.rstrip("/") + "/" + DATABASE_FILE}


def _keypoints(run_url: str, pairs: list[ExportPair], radius: float, cell: float, min_score: float
               ) -> tuple[dict[str, np.ndarray], list[np.ndarray], str, str]:
    """Per image (N, 2) keypoints and per pair (M, 2) match indices: the native keypoints when
    every end point is one, else the quantised match end points; plus which, and why."""
    try:
        native = match_native_keypoints(run_url, pairs)
    except NativeUnavailable as exc:
        keypoints, ids, _ = quantize_matches([(p.image0, p.image1, p.matches, p.scores) for p in pairs],
                                             radius=radius, cell=max(cell, radius), min_score=min_score)
        return keypoints, ids, "quantized", f"quantised at {radius:g} px: {exc}"
    return native.keypoints, native.ids, "native", "the extract stage's keypoints"


def _colmap_F(F: np.ndarray) -> np.ndarray:
    """F of OpenCV pixels (x1^T F x0 = 0) in COLMAP's (+0.5) pixels: F' = T^-T F T^-1, T = shift by 0.5."""
    T = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    Ti = np.linalg.inv(T)
    return Ti.T @ F @ Ti
