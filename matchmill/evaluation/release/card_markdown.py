"""The model card as markdown: card.json's dict -> the accuracy and cost tables, methods, datasets."""

from __future__ import annotations

import math
from typing import Any

from .card_datasets import METRICS


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def _short(text: str | None, limit: int = 100) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pairs(n: Any) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _dataset_header(ds: dict[str, Any]) -> str:
    what = "AUC@5/10/20°" if ds["kind"] == "pose" else "H acc @1/3/5 px, MMA@3"
    facts = []
    if ds.get("status") == "ok":
        facts.append(_pairs(ds.get("num_pairs")))
        if ds.get("resize") is not None:
            facts.append(f"{ds['resize']} px")
    return f"{ds['title']}: {what} (%)" + (f" [{', '.join(facts)}]" if facts else "")


def format_cell(ds: dict[str, Any], method: str) -> str:
    """One cell: the metrics in percent (``a / b / c``; homography ``a / b / c, mma``), or
    ``absent`` / ``failed: ...``; failed pairs, when any, are named after the numbers."""
    if ds.get("status") == "absent":
        return "absent"
    if ds.get("status") != "ok":
        return f"failed: {_short(ds.get('error'))}"
    cell = (ds.get("methods") or {}).get(method)
    if cell is None:
        return "not run"
    if cell.get("status") != "ok":
        return f"failed: {_short(cell.get('error'))}"
    metrics = cell.get("metrics") or {}
    keys = [k for k, _ in METRICS[ds["kind"]]]
    if ds["kind"] == "pose":
        text = " / ".join(_pct(metrics.get(k)) for k in keys)
    else:
        text = " / ".join(_pct(metrics.get(k)) for k in keys[:-1]) + f", {_pct(metrics.get(keys[-1]))}"
    failed, total = metrics.get("num_failed") or 0, metrics.get("num_pairs")
    if failed:
        text += f" ({failed}/{total} pairs failed)"
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt_s(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def build_card_markdown(card: dict[str, Any]) -> str:
    """The card (card.json's dict) as markdown: the accuracy table (rows = methods, one column
    per dataset), the cost table, what each cell means, the methods and the datasets."""
    methods = list(card["methods"])
    random_init = bool(card.get("params", {}).get("random_init"))
    label = {m: f"{m} (random init)" if random_init and card.get("method_info", {}).get(m, {}).get("learned") else m
             for m in methods}
    datasets = card["datasets"]
    out = ["# matchmill model card: accuracy and cost", ""]
    if card.get("date"):
        out += [f"Generated {card['date']} by `{card.get('command', 'matchmill bench card')}` "
                f"(code {card.get('code_version', '?')}).", ""]
    out += ["## Accuracy", ""]
    header = ["method"] + [_dataset_header(ds) for ds in datasets]
    rows = [[f"`{label[m]}`"] + [format_cell(ds, m) for ds in datasets] for m in methods]
    out += _md_table(header, rows) + [""]
    out += [
        "Cells are percentages. Pose: AUC of the pose error max(angle(R), angle(t)) up to 5 / 10 / 20 degrees "
        "(OpenCV essential matrix RANSAC on all matches, 0.5 px, LoFTR protocol). Homography: fraction of pairs whose "
        "estimated H (pydegensac, 2 px) moves image 1's four corners by a mean error within 1 / 3 / 5 px, then MMA@3: "
        "the mean fraction of matches (before RANSAC) within 3 px of the ground-truth homography. A failed pair counts "
        "as a miss in every denominator and is named in its cell. `absent`: the dataset's folder is not there; "
        "`failed: ...`: the method (or the dataset's pair listing) failed, full text in card.json.",
        "",
    ]
    cost = card.get("cost")
    if cost:
        out += ["## Cost (CPU)", ""]
        header = ["method", "s / pair (median)", "extract x2", "propose", "refine", "verify", "first pair s",
                  "model build s", "peak RSS (MiB)"]
        crow = []
        for m in methods:
            c = (cost.get("methods") or {}).get(m)
            if c is None:
                crow.append([f"`{label[m]}`", "not measured"] + [""] * (len(header) - 2))
            elif c.get("status") != "ok":
                crow.append([f"`{label[m]}`", f"failed: {_short(c.get('error'))}"] + [""] * (len(header) - 3)
                            + [f"{c['peak_rss_mib']:.0f}" if c.get("peak_rss_mib") else "-"])
            else:
                st = c.get("stage_seconds_median") or {}
                crow.append([f"`{label[m]}`", _fmt_s(c.get("seconds_per_pair_median"))]
                            + [_fmt_s(st.get(k)) for k in ("extract", "propose", "refine", "verify")]
                            + [_fmt_s(c.get("seconds_first_pair")), _fmt_s(c.get("build_seconds")),
                               f"{c['peak_rss_mib']:.0f}"])
        out += _md_table(header, crow) + ["", cost.get("what", ""), ""]
    info = card.get("method_info") or {}
    if info:
        out += ["## Methods", ""]
        for m in methods:
            i = info.get(m) or {}
            if i.get("error"):
                out.append(f"- `{m}`: {_short(i['error'], 200)}")
                continue
            weights = ", ".join(f"{k}: {v}" for k, v in (i.get("weights") or {}).items()) or "no learned weights"
            out.append(f"- `{m}`: {i.get('chain', '?')}; weights {weights}")
        out.append("")
    out += ["## Datasets", ""]
    for ds in datasets:
        where = ds.get("path") or ""
        line = f"- {ds['title']} (`{ds['key']}`, {ds['benchmark']} bench): `{where}`"
        if ds.get("status") == "ok":
            line += f", {_pairs(ds.get('num_pairs'))}"
            if ds.get("pairs_listed") and ds["pairs_listed"] != ds.get("num_pairs"):
                line += f" of {ds['pairs_listed']} (evenly spaced)"
            line += f", long side {ds.get('resize')} px; results in `{ds.get('out')}`"
        elif ds.get("status") == "absent":
            line += ": absent"
        else:
            line += f": failed ({_short(ds.get('error'), 200)})"
        out.append(line)
    params = card.get("params") or {}
    if params.get("overrides"):
        out += ["", "Overrides: " + " ".join(f"`{o}`" for o in params["overrides"])]
    return "\n".join(out).rstrip() + "\n"
