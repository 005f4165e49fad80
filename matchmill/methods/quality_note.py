"""The one line a run of a learned preset prints when it starts: its measured quality against SIFT.

The figures come from the model card (matchmill/weights/card_figures.py parses ``MODEL_CARD.md``);
no number is written here. Only for a job whose ``preset:`` uses shipped weights and whose chain
(every ``*.method`` and ``*.weights`` key of the preset) is left as the preset sets it: the card
measured that chain, not one with other weights or methods. SIFT itself prints nothing.
"""

from __future__ import annotations

from typing import Any

from matchmill.weights import is_shipped
from matchmill.weights.card_figures import CARD_PATH, demo_auc

from .presets import BASELINE, PRESETS

__all__ = ["quality_note"]

#: The card's threshold the note quotes (pose AUC@10 on the held-out demo scenes).
THRESHOLD = 10


def _value(conf: dict[str, Any], dotted: str) -> Any:
    node: Any = conf
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def quality_note(conf: dict[str, Any], card_text: str | None = None) -> str | None:
    """``note: preset NAME: held-out demo AUC@10 X vs SIFT Y (matchmill/weights/MODEL_CARD.md); ...``
    for a validated job config ``conf`` run with a learned preset, else None (``card_text``: the
    card's markdown, default the shipped MODEL_CARD.md)."""
    name = conf.get("preset")
    if not name or name == BASELINE or name not in PRESETS:
        return None
    preset = PRESETS[name]
    if not any(k.endswith(".weights") and is_shipped(v) for k, v in preset.items()):
        return None  # no learned weights: nothing the card measured for it
    chain = {k: v for k, v in preset.items() if k.endswith((".method", ".weights"))}
    if any(_value(conf, k) != v for k, v in chain.items()):
        return None  # the job changed the chain or its weights: the card's figures are not this run's
    mine, sift = demo_auc(name, THRESHOLD, card_text), demo_auc(BASELINE, THRESHOLD, card_text)
    if mine is None or sift is None:
        return None
    verdict = "the learned chain trails SIFT" if mine < sift else "the learned chain is at or above SIFT there"
    return (f"note: preset {name}: held-out demo AUC@{THRESHOLD} {mine:.1f} vs SIFT {sift:.1f} "
            f"(matchmill/{CARD_PATH.parent.name}/{CARD_PATH.name}); {verdict}")
