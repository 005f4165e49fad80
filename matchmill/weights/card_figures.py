"""The shipped weights' measured quality, read from the model card (``MODEL_CARD.md``, next to this file).

The card's accuracy table is written by ``matchmill bench card`` (matchmill/evaluation/release/card_markdown.py:
one row per method preset, one column per dataset, cells ``a / b / c`` for AUC@5/10/20). Its numbers
live only there: this module parses that table rather than repeating any figure, so the start-of-run
note (matchmill/methods/quality_note.py) and the README check (tests/matchmill/test_docs.py) say
what the card says.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CARD_PATH", "DEMO_COLUMN", "accuracy_table", "demo_auc"]

#: The model card shipped with the weights.
CARD_PATH = Path(__file__).resolve().with_name("MODEL_CARD.md")

#: How the accuracy table's held-out demo column header starts (card_datasets.py names it).
DEMO_COLUMN = "demo held-out: AUC@"

_THRESHOLDS = re.compile(r"AUC@([\d/]+)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def accuracy_table(text: str | None = None) -> dict[str, dict[str, str]]:
    """The card's accuracy table as {method: {column header: cell text}} (``text``: the card's
    markdown; default: ``MODEL_CARD.md``). {} when the card has no table with a demo column."""
    lines = (CARD_PATH.read_text(encoding="utf-8") if text is None else text).splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("| method |"):
            continue
        header = _cells(line)
        if not any(h.startswith(DEMO_COLUMN) for h in header):
            continue  # another table (the cost table)
        table = {}
        for row in lines[i + 2:]:  # skip the |---| line
            if not row.startswith("|"):
                break
            cells = _cells(row)
            table[cells[0].strip("`")] = dict(zip(header[1:], cells[1:]))
        return table
    return {}


def demo_auc(method: str, threshold: int = 10, text: str | None = None) -> float | None:
    """``method``'s pose AUC@``threshold`` (percent) on the card's held-out demo scenes, or None when
    the card has no such row, column or number (a failed or absent cell)."""
    row = accuracy_table(text).get(method)
    if not row:
        return None
    for header, cell in row.items():
        if not header.startswith(DEMO_COLUMN):
            continue
        thresholds = [int(t) for t in _THRESHOLDS.search(header).group(1).split("/")]
        values = [v.strip() for v in cell.split("/")]
        if threshold not in thresholds or len(values) != len(thresholds):
            return None
        try:
            return float(values[thresholds.index(threshold)])
        except ValueError:
            return None
    return None
