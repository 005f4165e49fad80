"""Reconstruct from an hloc export (``keypoints.h5``, ``matches.h5``, ``pairs.txt``) the way hloc's
``reconstruction.main`` does, through pycolmap, for machines without hloc (it is not on PyPI):

1. ``pycolmap.import_images`` of the image folder (one camera per image, models inferred as
   COLMAP does), restricted to the names in ``keypoints.h5``;
2. keypoints from ``keypoints.h5`` shifted by +0.5 (hloc's ``import_features``: COLMAP's origin);
   a file written with ``coordinates="colmap"`` (``pixel_offset`` attribute 0.5) is already in
   COLMAP's convention and is not shifted again;
3. matches from each pair's ``matches0`` (hloc's ``import_matches``);
4. ``pycolmap.verify_matches`` on ``pairs.txt`` (hloc's geometric verification);
5. ``pycolmap.incremental_mapping``.

The files are read with h5py exactly as hloc's readers do (``utils.io``); this is the check that
an export is usable by hloc unaided.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .common import KEYPOINTS_FILE, MATCHES_FILE, PAIRS_FILE, names_to_pair


def _walk_keypoints(f: h5py.File) -> dict[str, np.ndarray]:
    """``{image name: (K, 2) float64 keypoints in COLMAP's convention (pixel centre at +0.5)}``."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and name.endswith("/keypoints"):
            offset = float(obj.attrs.get("pixel_offset", 0.0))  # hloc's own files have none: 0
            out[name[: -len("/keypoints")]] = np.asarray(obj, np.float64) + (0.5 - offset)

    f.visititems(visit)
    return out


def reconstruct_hloc_export(export_dir: str | os.PathLike, image_dir: str | os.PathLike,
                            out_dir: str | os.PathLike):
    """Run steps 1-5 (module docstring); returns the largest ``pycolmap.Reconstruction`` or None."""
    import pycolmap  # lazy: ~0.3 s to import; only a reconstruction needs it

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    db_path = out_dir / "database.db"
    if db_path.exists():
        db_path.unlink()
    with h5py.File(export_dir / KEYPOINTS_FILE, "r") as f:
        keypoints = _walk_keypoints(f)
    pycolmap.Database.open(str(db_path)).close()  # import_images needs the (empty) database
    pycolmap.import_images(str(db_path), str(image_dir), image_names=sorted(keypoints))
    pairs = [line.split() for line in (export_dir / PAIRS_FILE).read_text().splitlines() if line.strip()]
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        missing = sorted(set(keypoints) - set(ids))
        if missing:
            raise FileNotFoundError(f"{len(missing)} exported image(s) not found under {image_dir}, e.g. {missing[0]!r}")
        for name, kp in keypoints.items():
            db.write_keypoints(ids[name], kp.astype(np.float32))
        with h5py.File(export_dir / MATCHES_FILE, "r") as f:
            done = set()
            for a, b in pairs:
                key = tuple(sorted((ids[a], ids[b])))
                if key in done:
                    continue
                done.add(key)
                m0 = np.asarray(f[names_to_pair(a, b)]["matches0"])
                valid = m0 > -1
                matches = np.stack([np.flatnonzero(valid), m0[valid]], 1).astype(np.uint32)
                db.write_matches(ids[a], ids[b], matches)
    finally:
        db.close()
    pycolmap.verify_matches(str(db_path), str(export_dir / PAIRS_FILE))
    sparse = out_dir / "sparse"
    sparse.mkdir(exist_ok=True)
    recs = pycolmap.incremental_mapping(str(db_path), str(image_dir), str(sparse))
    return max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
