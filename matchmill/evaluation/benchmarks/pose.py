"""``matchmill bench pose PAIRS_FILE --images DIR``: relative pose on a SuperGlue pairs-with-GT list.

Pairs: one per line, ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)`` (x1 = R x0 + t), names
relative to ``--images`` (see :mod:`matchmill.datasets.pairs_file`). A line without ground truth,
with an EXIF rotation or with malformed numbers gives a failed pair, counted in every metric.

Metrics: ``auc@5/10/20`` (OpenCV essential-matrix RANSAC on all matches, 0.5 px, LoFTR protocol)
and ``auc_fdegensac@5/10/20`` (pydegensac fundamental matrix -> E = K1^T F K0; pydegensac has no
essential solver, so this is a separate, non-standard column), plus match / inlier counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matchmill.datasets.pairs_file import read_pairs_file
from matchmill.manifests.schemas import STATUS_FAILED

NO_GT_ERROR = "no pose ground truth on this line (needs rot0 rot1 K0 K1 T_0to1)"


def check_images_exist(rows: list[dict[str, Any]], where: str) -> int:
    """Number of local image paths of ``rows`` that are missing (URLs are not checked).

    Raises:
        FileNotFoundError: every local image is missing (a wrong images folder, most likely).
    """
    paths = {p for r in rows for p in (r["path0"], r["path1"]) if p and "://" not in p}
    missing = [p for p in paths if not Path(p).is_file()]
    if paths and len(missing) == len(paths):
        example = sorted(missing)[0]
        raise FileNotFoundError(f"{where}: none of the {len(paths)} images exist (e.g. {example})")
    return len(missing)


def list_pose_pairs(pairs_file: str | Path, images_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pair rows of a SuperGlue pairs-with-GT file, and facts for bench.json.

    Raises:
        FileNotFoundError: the pairs file or the images folder does not exist, or no listed image
            exists under it.
    """
    pairs_file, images_dir = Path(pairs_file), Path(images_dir)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file {str(pairs_file)!r} does not exist")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images {str(images_dir)!r} is not a directory")
    rows = read_pairs_file(pairs_file, images_dir)
    for row in rows:
        if row["status"] != STATUS_FAILED and row["T_0to1"] is None:
            row.update(status=STATUS_FAILED, error=f"{pairs_file}: {row['pair_id']}: {NO_GT_ERROR}")
    missing = check_images_exist(rows, f"{pairs_file} with --images {images_dir}")
    return rows, {"pairs_file": str(pairs_file), "images_dir": str(images_dir), "missing_images": missing}
