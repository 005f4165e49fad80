"""Refinement methods. Each maps proposals to refined matches with scores."""

from __future__ import annotations

import numpy as np


class IdentityRefiner:
    """Keeps proposals as they are (the classical path has nothing to refine)."""

    default_conf: dict = {}
    needs_features = False
    identity = True  # the refine stage passes its rows through without calling it

    def __init__(self, conf: dict):
        self.conf = conf

    def __call__(self, matches: np.ndarray, scores: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) matches and (N,) scores in, the same out."""
        return matches, scores
