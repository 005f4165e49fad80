"""``matchmill viz matches``: one pair's matches from a run, drawn side by side."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from matchmill.datasets.image_io import load_image
from matchmill.manifests.commit import read_commit, read_stage

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


def min_inliers_of(run_url: str) -> int | None:
    """``verify.min_inliers`` of the run's committed verify stage, None when unknown (older run)."""
    commit = read_commit(run_url, "verify")
    sections = (commit.extra.get("config") or [{}]) if commit is not None else [{}]
    value = sections[0].get("min_inliers") if isinstance(sections[0], dict) else None
    return None if value is None else int(value)


def unverified_reason(row: dict, min_inliers: int | None) -> str:
    """Why an ``ok`` verify row is not verified: ``no fundamental model`` or
    ``11 inliers < min_inliers 15`` (``min_inliers`` None: the bound is not named)."""
    if row.get("H_est") is None and row.get("F_est") is None:
        return f"no {row['model']} model" if row.get("model") else "no model"
    bound = "min_inliers" if min_inliers is None else f"min_inliers {min_inliers}"
    return f"{int(row.get('num_inliers') or 0)} inliers < {bound}"


def verify_title(row: dict, min_inliers: int | None) -> tuple[bool | None, str]:
    """(the row's ``verified`` flag, the drawing's title): ``verified: 120 inliers of 180 matches``
    or ``UNVERIFIED: 11 inliers < min_inliers 15 (61 matches)``; a row without the flag (a run made
    before it) gets the counts only."""
    n, k = int(row.get("num_matches") or 0), int(row.get("num_inliers") or 0)
    flag = row.get("verified")
    if flag is None:
        return None, f"{k} inliers of {n} matches"
    if flag:
        return True, f"verified: {k} inliers of {n} matches"
    return False, f"UNVERIFIED: {unverified_reason(row, min_inliers)} ({n} matches)"


def draw_pair(run_url: str, pair_id: str, out_png: str, stage: str = "verify", max_lines: int = 300) -> dict:
    """Draw the pair's matches (after verify: inliers green, outliers red, under a title; an
    unverified pair's inliers grey and a red title saying why). Returns ``matches``, ``inliers``
    (None before verify), ``verified`` (None before verify or in a run without the flag),
    ``title`` (None before verify) and ``reason`` (why it is not verified, else None)."""
    row = pair_row(run_url, pair_id, stage)
    if row["status"] != "ok":
        raise ValueError(f"pair {pair_id!r} failed in {stage}: {row['error']}")
    matches = np.asarray(row["matches"] or [], np.float32).reshape(-1, 4)
    inliers = np.asarray(row["inliers"], bool) if row.get("inliers") is not None else None
    min_inliers = min_inliers_of(run_url) if stage == "verify" else None
    verified, title = verify_title(row, min_inliers) if stage == "verify" else (None, None)
    image0, image1 = load_image(row["path0"]), load_image(row["path1"])
    draw_matches(image0, image1, matches, inliers, out_png, max_lines=max_lines, verified=verified, title=title)
    return {"matches": len(matches), "inliers": int(inliers.sum()) if inliers is not None else None,
            "verified": verified, "title": title,
            "reason": unverified_reason(row, min_inliers) if verified is False else None}
