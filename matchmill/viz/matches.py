"""``matchmill viz matches``: one pair's matches from a run, drawn side by side."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from matchmill.datasets.image_io import load_image
from matchmill.manifests.commit import read_stage

from .draw import draw_matches

#: Stages whose manifests hold per-pair matches, and the manifest each writes.
MATCH_STAGES = ("verify", "refine", "propose")


def pair_row(run_url: str, pair_id: str, stage: str = "verify") -> dict:
    """The manifest row of ``pair_id`` in ``stage``; a clear error when the run or the pair is not there."""
    if stage not in MATCH_STAGES:
        raise ValueError(f"stage must be one of {MATCH_STAGES}, got {stage!r}")
    ids = read_stage(run_url, stage, columns=["pair_id"])  # each match stage writes its own manifest
    if ids.num_rows == 0:
        raise FileNotFoundError(f"{run_url}: stage {stage!r} has no rows (not run yet?)")
    table = read_stage(run_url, stage)
    rows = table.filter(pc.equal(table["pair_id"], pair_id)).to_pylist()
    if not rows:
        sample = ", ".join(ids["pair_id"].to_pylist()[:3])
        raise ValueError(f"pair {pair_id!r} is not in {stage} of {run_url} (e.g. {sample})")
    return rows[-1]


def draw_pair(run_url: str, pair_id: str, out_png: str, stage: str = "verify", max_lines: int = 300) -> dict:
    """Draw the pair's matches (inliers green, outliers red after verify). Returns counts."""
    row = pair_row(run_url, pair_id, stage)
    if row["status"] != "ok":
        raise ValueError(f"pair {pair_id!r} failed in {stage}: {row['error']}")
    matches = np.asarray(row["matches"] or [], np.float32).reshape(-1, 4)
    inliers = np.asarray(row["inliers"], bool) if row.get("inliers") is not None else None
    image0, image1 = load_image(row["path0"]), load_image(row["path1"])
    draw_matches(image0, image1, matches, inliers, out_png, max_lines=max_lines)
    return {"matches": len(matches), "inliers": int(inliers.sum()) if inliers is not None else None}
