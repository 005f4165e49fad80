"""``identity``: the refiner of the classical path, which keeps proposals as they are."""

from __future__ import annotations

import numpy as np

from .base import Features, Method


class IdentityRefiner(Method):
    """Keeps proposals as they are (the classical path has nothing to refine)."""

    identity = True  # the refine stage passes its rows through without calling it

    def __call__(self, matches: np.ndarray, scores: np.ndarray, feats0: Features | None = None,
                 feats1: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) matches and (N,) scores in, the same out."""
        return matches, scores
