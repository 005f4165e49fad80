"""Mine stage (driver side, ``matchmill mine`` only): accept verified candidates, write the
mined-pairs manifest (:data:`matchmill.manifests.schemas.MINED`) and a short report.

A candidate (a retrieval pair the SfM model did not connect, see ``pairs.max_shared_points``) is
accepted when verify found a model with

- at least ``min_inliers`` inliers,
- an inlier ratio (inliers / matches) of at least ``min_inlier_ratio``,
- inliers spread over both images: the convex hull of the inliers covers at least ``min_spread``
  of each image's area (a few inliers bunched on one patch are how repeated texture fools RANSAC).

The manifest holds the accepted pairs (status ok) and the rows that failed upstream (status
failed, their error kept); rejected candidates stay in the verify manifest and are counted in the
report, by reason. ``<run>/mine/report.json`` and ``report.md`` give the counts per step, the
time of each step and a few drawn pairs (``<run>/mine/drawings/*.png``).
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from matchmill.datasets.image_io import load_image
from matchmill.manifests.commit import image_sizes, part_files, read_commit
from matchmill.manifests.schemas import MINED, PAIR_FIELDS, STATUS_FAILED, STATUS_OK
from matchmill.manifests.storage import exists, read_bytes, read_manifest, remove_tree, write_bytes_atomic
from matchmill.viz.draw import draw_matches

log = logging.getLogger(__name__)

#: Defaults tuned on demo scenes of seeds 1000-1003 (benchmarks/mining.py, chain sift, scope all):
#: F-RANSAC over the ~100 ratio-test matches of two *different* places finds a median 26 inliers
#: (ratio 0.25; 90th percentile 48 and 0.39), true pairs a median 135 (ratio 0.67). 50 / 0.5
#: kept 13 of 17 true pairs and 0 of 210 pairs of different places.
STAGE_DEFAULTS: dict[str, Any] = {
    "min_inliers": 50,  # accept: at least this many RANSAC inliers
    "min_inlier_ratio": 0.5,  # accept: inliers / matches at least this
    "min_spread": 0.05,  # accept: inliers' convex hull covers at least this fraction of each image
    "draw": 6,  # accepted pairs drawn into the report (most inliers first); 0 = none
}
#: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``); check_conf says why.
STAGE_BOUNDS = {"min_inliers": ">= 8", "min_inlier_ratio": "[0, 1]", "min_spread": "[0, 1]"}

#: Ground-truth columns a mined pair never carries (the pair was not connected by SfM).
GT_COLUMNS = ("K0", "K1", "T_0to1", "H_0to1")
#: Rejection reasons, in the order they are tested.
REASONS = ("no model", "too few inliers", "low inlier ratio", "low spread")
_VERIFY_COLUMNS = [f.name for f in PAIR_FIELDS] + ["num_matches", "matches", "inliers", "num_inliers",
                                                    "model", "F_est", "verified", "status", "error"]


def check_conf(conf: dict) -> None:
    """ValueError naming the key when a ``mine`` value is out of range."""
    if int(conf["min_inliers"]) < 8:
        raise ValueError(f"mine.min_inliers: must be >= 8 (a fundamental matrix needs 8), got {conf['min_inliers']}")
    for key in ("min_inlier_ratio", "min_spread"):
        if not 0.0 <= float(conf[key]) <= 1.0:
            raise ValueError(f"mine.{key}: must be in [0, 1], got {conf[key]}")
    if int(conf["draw"]) < 0:
        raise ValueError(f"mine.draw: must be >= 0, got {conf['draw']}")


def hull_fraction(points: np.ndarray, size: tuple[int, int]) -> float:
    """Area of the convex hull of ``points`` (N, 2) over the image area ``size`` = (w, h)."""
    if len(points) < 3 or size[0] <= 0 or size[1] <= 0:
        return 0.0
    hull = cv2.convexHull(np.ascontiguousarray(points, np.float32).reshape(-1, 1, 2))
    return float(cv2.contourArea(hull)) / float(size[0] * size[1])


def judge(row: dict, sizes: dict[str, tuple[int, int]], conf: dict) -> tuple[str | None, dict[str, Any]]:
    """``(reason or None, figures)`` for one ok verify row; figures: inlier ratio and spread."""
    n = int(row["num_matches"] or 0)
    k = int(row["num_inliers"] or 0)
    figures = {"inlier_ratio": k / n if n else 0.0, "spread": 0.0}
    if row["F_est"] is None and row["model"] != "homography" or not row["inliers"]:
        return "no model", figures
    if k >= 3:
        m = np.asarray(row["matches"], np.float32).reshape(-1, 4)[np.asarray(row["inliers"], bool)]
        s0 = sizes.get(row["image0"], (0, 0))
        s1 = sizes.get(row["image1"], (0, 0))
        figures["spread"] = min(hull_fraction(m[:, :2], s0), hull_fraction(m[:, 2:], s1))
    if k < int(conf["min_inliers"]) or row.get("verified") is False:  # below mine's or verify's min_inliers
        return "too few inliers", figures
    if figures["inlier_ratio"] < float(conf["min_inlier_ratio"]):
        return "low inlier ratio", figures
    if figures["spread"] < float(conf["min_spread"]):
        return "low spread", figures
    return None, figures


def _mined_row(row: dict, figures: dict[str, Any], chain_hash: str) -> dict[str, Any]:
    out = {f.name: row[f.name] for f in PAIR_FIELDS}
    out.update({c: None for c in GT_COLUMNS})
    out.update(num_matches=row["num_matches"], num_inliers=row["num_inliers"], inlier_ratio=figures["inlier_ratio"],
               spread=figures["spread"], model=row["model"], F_est=row["F_est"], chain_hash=chain_hash,
               status=STATUS_OK, error=None)
    return out


def _failed_row(row: dict, chain_hash: str) -> dict[str, Any]:
    out = {f.name: row[f.name] for f in PAIR_FIELDS}
    out.update({c: None for c in GT_COLUMNS})
    out.update(num_matches=None, num_inliers=None, inlier_ratio=None, spread=None, model=None, F_est=None,
               chain_hash=chain_hash, status=STATUS_FAILED, error=row["error"])
    return out


def build(conf: dict, run_url: str) -> pa.Table:
    """The mine stage: accepted pairs (+ upstream failures) as a MINED table; writes the report."""
    mconf = conf["mine"]
    check_conf(mconf)
    verify = read_commit(run_url, "verify")
    chain_hash = verify.config_hash if verify else ""
    sizes = image_sizes(run_url)
    rows: list[dict] = []
    reasons: Counter = Counter()
    best: list[tuple[int, str, dict]] = []  # heap of the `draw` accepted rows with most inliers
    counts = Counter()
    for part in part_files(run_url, "verify"):
        table = read_manifest(part, "verify", _VERIFY_COLUMNS)
        for row in table.to_pylist():
            counts["rows"] += 1
            if row["status"] != STATUS_OK:
                counts["failed"] += 1
                rows.append(_failed_row(row, chain_hash))
                continue
            counts["candidates"] += 1
            if int(row["num_matches"] or 0) > 0:
                counts["matched"] += 1
            reason, figures = judge(row, sizes, mconf)
            if reason != "no model":
                counts["verified"] += 1
            if reason is not None:
                reasons[reason] += 1
                continue
            counts["accepted"] += 1
            rows.append(_mined_row(row, figures, chain_hash))
            if int(mconf["draw"]):
                item = (int(row["num_inliers"]), row["pair_id"], row)
                (heapq.heappush if len(best) < int(mconf["draw"]) else heapq.heappushpop)(best, item)
    rows.sort(key=lambda r: r["pair_id"])
    report = mine_report(conf, run_url, counts, reasons)
    drawn = draw_accepted(run_url, sorted(best, key=lambda t: (-t[0], t[1])))
    write_report(run_url, {**report, "drawn": drawn})
    log.info("%s", summary_line(report))
    return pa.Table.from_pylist(rows, schema=MINED) if rows else MINED.empty_table()


def mine_report(conf: dict, run_url: str, counts: Counter, reasons: Counter) -> dict[str, Any]:
    """Counts per step and the time of each upstream stage (from the commit markers)."""
    steps: dict[str, Any] = {}
    for stage in ("pairs", "images", "extract", "propose", "refine", "verify"):
        commit = read_commit(run_url, stage)
        if commit is not None:
            steps[stage] = {"rows": commit.rows, "failed": commit.failed, "seconds": round(commit.seconds, 3),
                            "execution": commit.extra.get("execution") or [stage]}
    return {
        "candidates": counts["candidates"],
        "failed_upstream": counts["failed"],
        "matched": counts["matched"],
        "verified": counts["verified"],
        "accepted": counts["accepted"],
        "rejected": {r: reasons[r] for r in REASONS if reasons[r]},
        "acceptance": {k: conf["mine"][k] for k in ("min_inliers", "min_inlier_ratio", "min_spread")},
        "candidate_rule": {k: conf["pairs"][k] for k in ("strategy", "scope", "per_image", "max_shared_points")},
        "steps": steps,
    }


def summary_line(report: dict[str, Any]) -> str:
    """One line: accepted of candidates, and why the others were not (says why a result is empty)."""
    why = ", ".join(f"{n} {r}" for r, n in report["rejected"].items())
    line = f"mine: {report['accepted']} of {report['candidates']} candidates accepted"
    if why:
        line += f" (rejected: {why})"
    if report["failed_upstream"]:
        line += f"; {report['failed_upstream']} rows failed upstream (matchmill show RUN verify --failed)"
    if report["candidates"] == 0:
        rule = report["candidate_rule"]["max_shared_points"]
        if report["failed_upstream"]:
            line += "; no candidates among the images that could be read"
        elif rule is not None:
            line += f"; no candidates: every pair of images shares >= {rule} SfM point(s) (pairs.max_shared_points)"
        else:
            line += "; no candidates: fewer than two images per scope"
    return line


def draw_accepted(run_url: str, chosen: list[tuple[int, str, dict]]) -> list[dict[str, Any]]:
    """Draw the ``chosen`` (inliers, pair_id, verify row) pairs' matches (inliers green) into
    ``<run>/mine/drawings``."""
    folder = run_url.rstrip("/") + "/mine/drawings"
    if exists(folder):
        remove_tree(folder)  # a rerun's drawings replace the previous run's, none is left stale
    out = []
    for k, (inliers, pair_id, row) in enumerate(chosen):
        url = run_url.rstrip("/") + f"/mine/drawings/{k:02d}.png"
        try:
            matches = np.asarray(row["matches"], np.float32).reshape(-1, 4)
            draw_matches(load_image(row["path0"]), load_image(row["path1"]), matches,
                         np.asarray(row["inliers"], bool), url, max_lines=150)
        except (OSError, ValueError) as exc:  # a drawing is a convenience: a failure is noted, never fatal
            log.warning("mine: could not draw %s: %s", pair_id, exc)
            continue
        out.append({"pair_id": pair_id, "inliers": inliers, "png": f"drawings/{k:02d}.png"})
    return out


def write_report(run_url: str, report: dict[str, Any]) -> None:
    """``<run>/mine/report.json`` and a Markdown version, ``report.md``."""
    base = run_url.rstrip("/") + "/mine/"
    write_bytes_atomic(base + "report.json", (json.dumps(report, indent=1) + "\n").encode())
    lines = ["# matchmill mine", "", summary_line(report), "", "| step | rows | failed | seconds |", "|---|---|---|---|"]
    for stage, s in report["steps"].items():
        shared = f" (shared with {', '.join(x for x in s['execution'] if x != stage)})" if len(s["execution"]) > 1 else ""
        lines.append(f"| {stage} | {s['rows']} | {s['failed']} | {s['seconds']:.1f}{shared} |")
    lines += ["", f"candidates {report['candidates']} -> matched {report['matched']} -> verified {report['verified']} "
              f"-> accepted {report['accepted']}", ""]
    lines += [f"![{d['pair_id']} ({d['inliers']} inliers)]({d['png']})" for d in report.get("drawn", [])]
    write_bytes_atomic(base + "report.md", ("\n".join(lines) + "\n").encode())


def read_report(run_url: str) -> dict[str, Any] | None:
    """The report a mine stage wrote, or None."""
    try:
        return json.loads(read_bytes(run_url.rstrip("/") + "/mine/report.json"))
    except (FileNotFoundError, OSError, ValueError):
        return None
