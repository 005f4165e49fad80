"""Exports of a run's verified matches for SfM tools.

- :func:`export_hloc` (:mod:`.hloc`): ``keypoints.h5``, ``matches.h5`` and ``pairs.txt`` in hloc's
  layout, with native keypoints when the chain is sparse-lossless (:mod:`.native`);
- :func:`export_colmap` (:mod:`.colmap`): a COLMAP ``database.db``;
- :func:`reconstruct_hloc_export` (:mod:`.reconstruction`): hloc's ``reconstruction.main`` steps
  through pycolmap, to check that an hloc export reconstructs unaided.

Both exports read the run through :mod:`.common` and write through :class:`.output.ExportOutput`
(one export per folder, published whole). Modules import downward only:
``common`` <- ``native``, ``output`` <- ``hloc``, ``colmap``, ``reconstruction`` <- this package.
"""

from __future__ import annotations

from .colmap import DATABASE_FILE, export_colmap
from .common import KEYPOINTS_FILE, MATCHES_FILE, PAIRS_FILE, ExportError, names_to_pair
from .hloc import KEYPOINT_SOURCES, export_hloc
from .output import FORMAT_FILES, ExportOutput, read_export_manifest
from .reconstruction import reconstruct_hloc_export

__all__ = [
    "DATABASE_FILE",
    "FORMAT_FILES",
    "KEYPOINTS_FILE",
    "KEYPOINT_SOURCES",
    "MATCHES_FILE",
    "PAIRS_FILE",
    "ExportError",
    "ExportOutput",
    "export_colmap",
    "export_hloc",
    "names_to_pair",
    "read_export_manifest",
    "reconstruct_hloc_export",
]
