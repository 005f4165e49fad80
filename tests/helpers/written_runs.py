"""Small runs written directly as manifests and commit markers (no Ray): for the commands and APIs
that only read a run (``show``, ``compare``, ``status``, ``Run.read`` / ``Run.matches``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from matchmill.manifests.commit import CommitInfo, part_name, stage_url, write_commit
from matchmill.manifests.schemas import MANIFESTS
from matchmill.manifests.storage import join, write_manifest

#: A folder of phone photos: long image ids, as a real folder run has them.
SCENE = "holiday_2023_lisbon_tram_28"


def write_stage(run_url: str, stage: str, rows: list[dict]) -> pa.Table:
    """``rows`` (dicts of the stage's columns; the others null) committed as the stage of ``run_url``."""
    schema, key = MANIFESTS[stage]
    table = pa.Table.from_pylist(rows, schema=schema)
    write_manifest(table, join(stage_url(run_url, stage), part_name([r[key] for r in rows])), stage)
    failed = sum(r.get("status") == "failed" for r in rows)
    write_commit(run_url, CommitInfo(stage, stage, "hash-of-the-config", len(rows), failed))
    return table


def verify_rows(num_pairs: int = 6, seed: int = 0) -> list[dict]:
    """Verify rows of a folder run: pair ``i`` has ``20 + 7 i`` matches (the last pair failed, no
    matches), inliers every other match."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_pairs):
        a, b = (f"{SCENE}/IMG_20231012_1530{i:02d}.jpg", f"{SCENE}/IMG_20231012_1531{i:02d}.jpg")
        row = {"pair_id": f"{a}|{b}", "scene": SCENE, "image0": a, "image1": b, "path0": f"/data/photos/{a}",
               "path1": f"/data/photos/{b}", "crop0": [4032, 3024], "crop1": [4032, 3024], "seconds": 0.25 + i}
        if i == num_pairs - 1:
            row.update(status="failed", error="verify: too few matches (3) for a fundamental matrix\n  (details)")
        else:
            n = 20 + 7 * i
            matches = (rng.random((n, 4)) * 1000).astype(np.float32)
            inliers = np.arange(n) % 2 == 0
            row.update(status="ok", num_matches=n, matches=matches.tolist(), scores=rng.random(n).tolist(),
                       model="fundamental", num_inliers=int(inliers.sum()), inliers=inliers.tolist(),
                       F_est=list(np.eye(3).ravel()), pose_error=None)
        rows.append(row)
    return rows


def write_summary(root: Path, name: str, summary: dict) -> str:
    """A run folder holding only the metrics stage's ``summary.json``; its URL."""
    folder = root / name / "metrics"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return f"file://{root / name}"
