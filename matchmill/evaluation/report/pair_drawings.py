"""Example pairs of the report: the same few pairs drawn for every method (inliers green, outliers red;
an unverified pair's inliers grey, its caption saying so).

Matches come from the method's per-pair table when it holds ``matches`` / ``inliers`` columns,
otherwise from the verify stage of the matchmill run folder the bench ran (a ``run_url`` column,
or ``<out_url>/<method>/run_url.txt``). Anything missing becomes a note, never an error.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matchmill.datasets.image_io import load_image
from matchmill.manifests.commit import read_stage
from matchmill.manifests.storage import join
from matchmill.viz.draw import draw_matches

from .picture_types import BenchmarkPictures, PairData, Picture, read_run_url
from .report import MethodReport, slug

_MATCH_COLUMNS = ["pair_id", "path0", "path1", "matches", "inliers", "verified"]


def choose_pairs(pair_ids: list[list[str]], count: int) -> list[str]:
    """``count`` pair ids spread evenly over the sorted ids that every method has (or, when the
    methods share none, over the first method's)."""
    if count <= 0 or not pair_ids:
        return []
    common = set(pair_ids[0]).intersection(*map(set, pair_ids[1:])) or set(pair_ids[0])
    ordered = sorted(common)
    if len(ordered) <= count:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in picks]


def _inline_rows(table: pa.Table, wanted: list[str]) -> dict[str, dict]:
    if not {"matches", "path0", "path1"}.issubset(table.column_names):
        return {}
    columns = [c for c in _MATCH_COLUMNS if c in table.column_names]
    sub = table.select(columns).filter(pc.is_in(table["pair_id"], pa.array(wanted, pa.string())))
    return {row["pair_id"]: row for row in sub.to_pylist()}


def _run_rows(run_url: str, wanted: list[str]) -> dict[str, dict]:
    table = read_stage(run_url, "verify", columns=_MATCH_COLUMNS)
    sub = table.filter(pc.is_in(table["pair_id"], pa.array(wanted, pa.string())))
    return {row["pair_id"]: row for row in sub.to_pylist()}


def match_rows(method: MethodReport, data: PairData, wanted: list[str]) -> tuple[dict[str, dict], str]:
    """Rows {pair_id: {path0, path1, matches, inliers}} for ``wanted`` pairs, or a reason why not."""
    inline = _inline_rows(data.table, wanted)
    if inline:
        return inline, ""
    out_url = method.latest.out_url or ""
    run_url = read_run_url(data, out_url, method.method)
    if run_url is None:
        return {}, (f"no matches in {data.url} and no run folder recorded "
                    f"(run_url column or {method.method}/run_url.txt)")
    try:
        rows = _run_rows(run_url, wanted)
    except Exception as exc:  # noqa: BLE001 - run folder deleted / unreadable: a note
        return {}, f"run folder {run_url} unreadable ({type(exc).__name__}: {exc})"
    if not rows:
        return {}, f"run folder {run_url} has no verified rows for the chosen pairs (run folder deleted?)"
    return rows, ""


def _why_not_drawable(data: PairData) -> str:
    if "pair_id" not in data.table.column_names:
        return f"{data.url} has no 'pair_id' column"
    thresholds = data.table.column("match_threshold") if "match_threshold" in data.table.column_names else None
    tuned = thresholds is not None and thresholds.null_count < data.table.num_rows
    if tuned and "matches" not in data.table.column_names:
        return "not drawn: a threshold-tuned variant whose re-verified matches are not in its per-pair table"
    return ""


def _draw_one(row: dict, out_png: str, conf: dict) -> str:
    """Draw one pair; returns the caption's counts."""
    matches = np.asarray(row.get("matches") or [], np.float64).reshape(-1, 4)
    raw_inliers = row.get("inliers")
    inliers = None if raw_inliers is None else np.asarray(raw_inliers, bool).reshape(-1)
    if inliers is not None and inliers.shape != (len(matches),):
        inliers = None  # a mask that does not fit the matches is not drawn rather than misdrawn
    image0, image1 = load_image(row["path0"]), load_image(row["path1"])
    verified = row.get("verified")  # None: a table or run without the flag
    draw_matches(image0, image1, matches, inliers, out_png, max_lines=conf["max_lines"], max_side=conf["max_side"],
                 verified=verified)
    shown = min(len(matches), conf["max_lines"])
    counts = f"{len(matches)} matches"
    if inliers is not None:
        colour = "grey: the pair is not verified" if verified is False else "green"
        counts += f", {int(inliers.sum())} inliers ({colour}), {int((~inliers).sum())} outliers (red)"
    if shown < len(matches):
        counts += f"; {shown} drawn"
    return counts


def draw_example_pairs(methods: list[MethodReport], pairs: dict[str, PairData], out_dir: str, stem: str,
                       conf: dict, out: BenchmarkPictures) -> None:
    """Draw ``conf["pairs_to_draw"]`` pairs for every method with data; notes for the rest."""
    usable = []
    for m in methods:
        if pairs[m.method].table is None:  # noted once for the method by the caller
            continue
        problem = _why_not_drawable(pairs[m.method])
        if problem:
            out.missing.append(f"Matches of {m.method}: {problem}")
        else:
            usable.append(m)
    wanted = choose_pairs([pairs[m.method].table.column("pair_id").to_pylist() for m in usable],
                          int(conf["pairs_to_draw"]))
    for m in usable:
        rows, problem = match_rows(m, pairs[m.method], wanted)
        if problem:
            out.missing.append(f"Matches of {m.method}: {problem}")
            continue
        for k, pair_id in enumerate(wanted):
            if pair_id not in rows:
                out.missing.append(f"Matches of {m.method}, pair {pair_id}: not in the run's verified rows")
                continue
            name = f"{stem}_{slug(m.method)}_pair{k}.png"
            try:
                counts = _draw_one(rows[pair_id], join(out_dir, name), conf)
            except Exception as exc:  # noqa: BLE001 - image gone / bad row: a note, the report goes on
                out.missing.append(f"Matches of {m.method}, pair {pair_id}: {type(exc).__name__}: {exc}")
                continue
            out.matches.append(Picture("matches", f"{m.method}: {pair_id}", name, counts, m.method, pair_id))
    out.matches.sort(key=lambda p: (wanted.index(p.pair), [m.method for m in methods].index(p.method)))
