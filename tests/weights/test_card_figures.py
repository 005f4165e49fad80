"""The model card's accuracy table, read back as numbers (matchmill/weights/card_figures.py)."""

from __future__ import annotations

from matchmill.evaluation.release.model_card import DEFAULT_METHODS
from matchmill.weights.card_figures import CARD_PATH, accuracy_table, demo_auc

#: A card table as ``matchmill bench card`` writes it (card_markdown.py), with a cost table first.
CARD = """# card

| method | s / pair (median) | peak RSS (MiB) |
|---|---|---|
| `sift` | 0.248 | 122 |

| method | demo held-out: AUC@5/10/20° (%) [30 pairs, 320 px] | Oxford graf: H acc @1/3/5 px, MMA@3 (%) [5 pairs, 640 px] |
|---|---|---|
| `sift` | 39.6 / 49.2 / 57.1 | 0.0 / 40.0 / 60.0, 30.5 |
| `pump` | failed: out of memory | absent |

Cells are percentages.
"""


def test_the_accuracy_table_is_found_past_other_tables():
    table = accuracy_table(CARD)
    assert sorted(table) == ["pump", "sift"]
    assert demo_auc("sift", 5, CARD) == 39.6 and demo_auc("sift", 10, CARD) == 49.2 and demo_auc("sift", 20, CARD) == 57.1


def test_missing_rows_thresholds_and_failed_cells_give_none():
    assert demo_auc("pump", 10, CARD) is None  # a failed cell
    assert demo_auc("nope", 10, CARD) is None
    assert demo_auc("sift", 15, CARD) is None
    assert accuracy_table("no table here") == {}


def test_the_shipped_card_has_a_demo_figure_for_every_card_preset():
    assert CARD_PATH.is_file()
    for method in DEFAULT_METHODS:
        aucs = [demo_auc(method, t) for t in (5, 10, 20)]
        assert None not in aucs, f"{method}: {aucs}"
        assert aucs == sorted(aucs) and all(0 <= a <= 100 for a in aucs), f"{method}: AUC must grow with the threshold"
