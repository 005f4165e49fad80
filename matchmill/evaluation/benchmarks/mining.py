"""Precision and recall of ``matchmill mine`` on rendered scenes whose ground truth is known.

A *mining family* is a MegaDepth-layout root of demo scenes (one seed each) whose SfM models are
split into camera groups (:func:`matchmill.datasets.demo.write_demo_scene` with
``sfm_groups``): images of different groups share no 3D point, as if SfM had built one model per
group, yet many of them see the same surfaces. The renderer's depth maps and poses say which
pairs truly overlap (:func:`matchmill.datasets.depth_overlap.scene_overlap_matrix`).

Scoring (:func:`score_mining`), for an overlap threshold ``tau``:

- a *positive* is a pair of one scene that shares no SfM point and whose depth-reprojection
  overlap ``min(o(i->j), o(j->i))`` is at least ``tau``: what mining should find;
- precision = accepted positives / accepted; recall = accepted positives / all positives;
  candidate recall = positives among the candidates / all positives (the retrieval bound);
- each accepted non-positive is classed: ``other scene`` (a different place), ``low overlap``
  (same scene, 0 < overlap < tau), ``no overlap`` (same scene, nothing in common), ``sfm linked``
  (shares SfM points: the candidate rule let it through).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.depth_overlap import scene_overlap_matrix, shared_point_counts
from matchmill.training.training_set import check_held_out

#: Scenes of a family are named ``<prefix><seed>``.
SCENE_PREFIX = "mine-s"


def family_groups(num_cameras: int, groups: int) -> list[int]:
    """Contiguous camera groups along the arc: camera i gets ``i * groups // num_cameras``."""
    return [i * int(groups) // int(num_cameras) for i in range(int(num_cameras))]


def write_mining_family(root: str | Path, seeds: Iterable[int], num_cameras: int = 20, width: int = 320,
                        height: int = 240, groups: int = 2) -> list[str]:
    """Render one split-model demo scene per seed under ``root``; returns the scene names."""
    seeds = [int(s) for s in seeds]
    check_held_out(seeds)  # the held-out demo seeds stay out of anything that may feed training
    names = []
    for seed in seeds:
        name = f"{SCENE_PREFIX}{seed}"
        ensure_demo_scene(root, seed=seed, num_cameras=num_cameras, width=width, height=height, scene=name,
                          sfm_groups=family_groups(num_cameras, groups))
        names.append(name)
    return names


@dataclass
class SceneTruth:
    """Ground truth of one scene: image names, (N, N) min-overlap and shared SfM points."""

    names: list[str]
    overlap: np.ndarray
    shared: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {n: i for i, n in enumerate(self.names)}


def scene_truth(root: str | Path, scene: str) -> SceneTruth:
    """Depth-reprojection overlap (symmetric: the smaller direction) and SfM shared points."""
    names, O = scene_overlap_matrix(Path(root) / scene)
    names2, S = shared_point_counts(Path(root) / scene)
    if names != names2:
        raise ValueError(f"{scene}: overlap and SfM image lists differ")
    return SceneTruth(names, np.minimum(O, O.T), S)


def classify(pair_id: str, truth: dict[str, SceneTruth], tau: float) -> str:
    """``positive`` | ``other scene`` | ``sfm linked`` | ``low overlap`` | ``no overlap``."""
    a, b = pair_id.split("|")
    sa, na = a.split("/", 1)
    sb, nb = b.split("/", 1)
    if sa != sb:
        return "other scene"
    t = truth[sa]
    i, j = t.index[na], t.index[nb]
    if t.shared[i, j] > 0:
        return "sfm linked"
    ov = float(t.overlap[i, j])
    if ov >= tau:
        return "positive"
    return "low overlap" if ov > 0 else "no overlap"


def all_positives(truth: dict[str, SceneTruth], tau: float) -> set[str]:
    """Pair ids (``<scene>/<a>|<scene>/<b>``, a < b) of every positive of the family."""
    out = set()
    for scene, t in truth.items():
        n = len(t.names)
        for i in range(n):
            for j in range(i + 1, n):
                if t.shared[i, j] == 0 and t.overlap[i, j] >= tau:
                    a, b = sorted((t.names[i], t.names[j]))
                    out.add(f"{scene}/{a}|{scene}/{b}")
    return out


def pair_overlap(pair_id: str, truth: dict[str, SceneTruth]) -> float | None:
    """Ground-truth overlap of a pair of one scene (None across scenes)."""
    a, b = pair_id.split("|")
    (sa, na), (sb, nb) = a.split("/", 1), b.split("/", 1)
    if sa != sb:
        return None
    t = truth[sa]
    return float(t.overlap[t.index[na], t.index[nb]])


def allowed_mean_overlap(truth: dict[str, SceneTruth]) -> float:
    """Mean overlap of every same-scene pair sharing no SfM point: what picking candidates at
    random among the pairs the rule allows would give (the baseline retrieval must beat)."""
    values = []
    for t in truth.values():
        iu = np.triu_indices(len(t.names), 1)
        values.append(t.overlap[iu][t.shared[iu] == 0])
    values = np.concatenate(values) if values else np.zeros(0)
    return float(values.mean()) if len(values) else float("nan")


def score_mining(candidates: Iterable[str], accepted: Iterable[str], truth: dict[str, SceneTruth],
                 tau: float) -> dict[str, Any]:
    """Precision / recall of the accepted pairs and the retrieval bound (see module docstring);
    ``candidate_overlap`` (mean overlap of the same-scene candidates) against
    ``allowed_overlap`` (:func:`allowed_mean_overlap`) says what retrieval's ranking adds."""
    positives = all_positives(truth, tau)
    cand = set(candidates)
    same = [v for v in (pair_overlap(p, truth) for p in cand) if v is not None]
    acc = set(accepted)
    kinds = Counter(classify(p, truth, tau) for p in acc)
    tp = kinds["positive"]
    return {
        "tau": tau,
        "positives": len(positives),
        "candidates": len(cand),
        "candidate_positives": len(cand & positives),
        "accepted": len(acc),
        "true_positives": tp,
        "precision": tp / len(acc) if acc else float("nan"),
        "recall": tp / len(positives) if positives else float("nan"),
        "candidate_recall": len(cand & positives) / len(positives) if positives else float("nan"),
        "false_positives": {k: v for k, v in sorted(kinds.items()) if k != "positive"},
        "same_scene_candidates": len(same),
        "candidate_overlap": float(np.mean(same)) if same else float("nan"),
        "allowed_overlap": allowed_mean_overlap(truth),
    }
