"""Which demo seeds may feed training: the one definition of the held-out evaluation seeds.

The demo job renders seed 0 (``configs/demo.yaml``); the model card evaluates on the demo scenes
of :data:`HELD_OUT_SEEDS`. Training scenes start at :data:`TRAIN_SEED_START`, so the two never
meet; :func:`check_held_out` refuses a held-out seed wherever training data is made
(``matchmill.training.training_set``, :func:`matchmill.datasets.demo.view_pairs.render_view_pair`).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["TRAIN_SEED_START", "HELD_OUT_SEEDS", "check_held_out"]

TRAIN_SEED_START = 1000  # first training seed (demo scenes); held-out seeds are below it
HELD_OUT_SEEDS = (0, 1, 2)  # demo scenes the model card evaluates on (seed 0 = the demo job)


def check_held_out(seeds: Iterable[int]) -> None:
    """ValueError when a training seed is one of :data:`HELD_OUT_SEEDS`."""
    overlap = sorted(set(int(s) for s in seeds) & set(HELD_OUT_SEEDS))
    if overlap:
        raise ValueError(f"training seeds {overlap} are held-out evaluation seeds {HELD_OUT_SEEDS}")
