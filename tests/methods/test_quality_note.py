"""A learned preset's run starts with one line of its measured quality against SIFT, from the model card."""

from __future__ import annotations

from matchmill.methods.quality_note import quality_note
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import run_pipeline
from matchmill.weights.card_figures import demo_auc

from tests.helpers.paths import REPO

LEARNED = REPO / "configs" / "demo-learned.yaml"
SIFT = REPO / "configs" / "demo.yaml"


def test_the_learned_demo_quotes_the_card_against_sift():
    line = quality_note(load_config(LEARNED))
    mine, sift = demo_auc("pump-ncnet-patch2pix"), demo_auc("sift")
    assert line is not None and "\n" not in line
    assert line.startswith("note: preset pump-ncnet-patch2pix: held-out demo AUC@10 ")
    assert f" {mine:.1f} vs SIFT {sift:.1f} " in line and "matchmill/weights/MODEL_CARD.md" in line
    assert ("trails SIFT" in line) == (mine < sift)


def test_sift_and_changed_chains_print_nothing():
    assert quality_note(load_config(SIFT)) is None
    assert quality_note(load_config(LEARNED, ["refine.weights=null"])) is None  # not the chain the card measured
    assert quality_note(load_config(LEARNED, ["refine.method=identity"])) is None


def test_every_learned_preset_has_its_line():
    for preset in ("pump", "pump-sift-mnn", "pump-ncnet", "patch2pix"):
        line = quality_note(load_config(SIFT, [f"preset={preset}"]))
        assert line is not None and f"preset {preset}: " in line, preset


def test_a_preset_above_sift_is_not_called_behind():
    card = ("| method | demo held-out: AUC@5/10/20° (%) [30 pairs, 320 px] |\n|---|---|\n"
            "| `sift` | 1.0 / 2.0 / 3.0 |\n| `pump-ncnet-patch2pix` | 5.0 / 6.0 / 7.0 |\n")
    line = quality_note(load_config(LEARNED), card_text=card)
    assert "AUC@10 6.0 vs SIFT 2.0" in line and "trails" not in line


def test_the_run_prints_it_when_it_starts(tmp_path, demo_root):
    printed: list[str] = []
    conf = load_config(LEARNED, [f"storage=file://{tmp_path}", f"data.root={demo_root}", "pairs.max_pairs_per_scene=4"])
    run_pipeline(conf, until="pairs", echo=printed.append)  # a driver stage only: no Ray, no model
    notes = [p for p in printed if "held-out demo AUC@10" in p]
    assert notes == [f"matchmill: {quality_note(conf)}"], printed
    assert printed.index(notes[0]) < next(i for i, p in enumerate(printed) if "pairs" in p and "ran" in p)

    printed.clear()
    run_pipeline(load_config(SIFT, [f"storage=file://{tmp_path}", f"data.root={demo_root}", "run_name=s",
                                    "pairs.max_pairs_per_scene=4"]), until="pairs", echo=printed.append)
    assert not [p for p in printed if "AUC@10" in p], printed
