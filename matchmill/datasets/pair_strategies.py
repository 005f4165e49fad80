"""Pair strategies over a list of images: retrieval (top-k by a global descriptor), exhaustive,
sequential. The MegaDepth covisibility recipe stays in :mod:`matchmill.datasets.megadepth`.

Every strategy yields pairs-manifest rows (:func:`matchmill.datasets.pairs_file.pair_row`) in a
fixed order (by image id), so the same images and config give the same pairs on every run.
``image0`` is always the image whose id sorts first.

Retrieval is shared by ``matchmill run`` (``pairs.strategy: retrieval`` on any image folder or
scene) and ``matchmill mine`` (the same step with ``pairs.max_shared_points``: keep only pairs the
SfM model did not connect). Its candidate count is at most ``N * per_image``: each image keeps its
``per_image`` most similar allowed partners, and a pair chosen from both sides counts once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .image_sources import SourceImage
from .megadepth import covisibility_counts, relative_pose
from .pairs_file import pair_row

log = logging.getLogger(__name__)

#: Pairs-section keys of the strategies (the MegaDepth recipe's keys sit beside them).
STRATEGY_DEFAULTS: dict[str, Any] = {
    "strategy": "covisibility",  # covisibility (SfM overlap, MegaDepth recipe) | retrieval | exhaustive | sequential | auto (choose_strategy: exhaustive up to exhaustive_max images, else retrieval)
    "scope": "scene",  # retrieval / exhaustive / sequential: pair images of one scene only | "all" images together
    "per_image": 5,  # retrieval: most similar allowed partners kept per image (candidates <= N * per_image)
    "min_similarity": None,  # retrieval: drop partners whose cosine similarity is below this; None = no floor
    "max_shared_points": None,  # retrieval: keep pairs sharing fewer SfM 3D points than this (1 = none); None = no rule
    "sfm_fallback": False,  # max_shared_points and a scene without COLMAP model: False = stop with an error, True = retrieval only
    "whiten": None,  # retrieval: PCA-whiten the collection's descriptors to this many dims (None = off; hurt on demo scenes)
    "window": 5,  # sequential: pair each image with the next `window` images (ids sorted)
    "loop_every": None,  # sequential: also pair every n-th image with every other n-th one (loop closure); None = off
    "exhaustive_max": 60,  # auto: exhaustive when the images number at most this (1770 pairs), else retrieval (N * per_image)
    "global": None,  # retrieval: overrides of the global descriptor's conf (matchmill/models/global_descriptor.py)
}
#: Bounds of the strategy keys' numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
STRATEGY_BOUNDS: dict[str, str] = {
    "per_image": ">= 1",
    "min_similarity": "[-1, 1]",  # cosine similarity
    "max_shared_points": ">= 1",
    "whiten": ">= 1",
    "window": ">= 1",
    "loop_every": ">= 1",
    "exhaustive_max": ">= 2",  # a pair needs two images
}
STRATEGIES = ("covisibility", "retrieval", "exhaustive", "sequential", "auto")
#: Rows of the similarity matrix computed at a time (memory: block * N floats).
BLOCK_ROWS = 1024


def check_strategy_conf(conf: dict) -> None:
    """ValueError naming the key when a strategy key has a bad value."""
    if conf["strategy"] not in STRATEGIES:
        raise ValueError(f"pairs.strategy: {conf['strategy']!r} is not one of {'|'.join(STRATEGIES)}")
    if conf["scope"] not in ("scene", "all"):
        raise ValueError(f"pairs.scope: {conf['scope']!r} is not scene|all")
    for key in ("per_image", "window"):
        if int(conf[key]) < 1:
            raise ValueError(f"pairs.{key}: must be >= 1, got {conf[key]}")
    if conf["max_shared_points"] is not None and int(conf["max_shared_points"]) < 1:
        raise ValueError(f"pairs.max_shared_points: must be >= 1 (1 = no shared point) or null, got {conf['max_shared_points']}")
    if conf["loop_every"] is not None and int(conf["loop_every"]) < 1:
        raise ValueError(f"pairs.loop_every: must be >= 1 or null, got {conf['loop_every']}")
    if conf["whiten"] is not None and int(conf["whiten"]) < 1:
        raise ValueError(f"pairs.whiten: must be >= 1 or null, got {conf['whiten']}")
    if conf["global"] is not None and not isinstance(conf["global"], dict):
        raise ValueError(f"pairs.global: expected a mapping of overrides or null, got {conf['global']!r}")


def choose_strategy(num_images: int, conf: dict) -> str:
    """The strategy ``pairs.strategy: auto`` stands for with ``num_images`` images: ``exhaustive``
    (every pair, N (N - 1) / 2) up to ``conf["exhaustive_max"]`` images, else ``retrieval`` (top
    ``per_image`` partners each, at most N * per_image pairs). Any other strategy is kept."""
    if conf["strategy"] != "auto":
        return conf["strategy"]
    return "exhaustive" if num_images <= int(conf["exhaustive_max"]) else "retrieval"


# --------------------------------------------------------------------------------------------
# rows


def _row(a: SourceImage, b: SourceImage, similarity: float | None = None, shared: int | None = None) -> dict[str, Any]:
    """A pair row; the pose is given only when both images sit in the same SfM model."""

    T = None
    if a.scene == b.scene and a.cam_from_world is not None and b.cam_from_world is not None:
        T = relative_pose(a.cam_from_world, b.cam_from_world)
    return pair_row(a.image_id, b.image_id, a.path, b.path, scene=a.scene if a.scene == b.scene else None,
                    K0=a.K, K1=b.K, T_0to1=T, crop0=a.crop, crop1=b.crop, similarity=similarity, shared_points=shared)


def failed_image_row(im: SourceImage, error: str) -> dict[str, Any]:
    """A failed row that keeps a broken image visible in every later stage (key ``<id>|<id>``)."""
    return pair_row(im.image_id, im.image_id, im.path, im.path, scene=im.scene, error=error)


def _groups(images: Sequence[SourceImage], scope: str) -> list[list[int]]:
    """Indices of the images each strategy pairs among (per scene, or all), ids sorted."""
    if scope == "all":
        return [sorted(range(len(images)), key=lambda i: images[i].image_id)]
    by_scene: dict[str | None, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        by_scene[im.scene].append(i)
    return [sorted(idx, key=lambda i: images[i].image_id) for _, idx in sorted(by_scene.items(), key=lambda kv: str(kv[0]))]


# --------------------------------------------------------------------------------------------
# exhaustive / sequential


def exhaustive_pairs(images: Sequence[SourceImage], scope: str = "scene") -> Iterator[dict[str, Any]]:
    """Every unordered pair of usable images (per scope): N (N - 1) / 2 rows per group."""
    for group in _groups(images, scope):
        usable = [i for i in group if images[i].error is None]
        for a in range(len(usable)):
            for b in range(a + 1, len(usable)):
                yield _row(images[usable[a]], images[usable[b]])


def sequential_pairs(images: Sequence[SourceImage], window: int, loop_every: int | None = None,
                     scope: str = "scene") -> Iterator[dict[str, Any]]:
    """Each image with the next ``window`` ones (ids sorted, e.g. video frames); with
    ``loop_every = n``, also every n-th image with every other n-th one more than ``window`` apart
    (loop closure). About N * window + (N / n)^2 / 2 rows."""
    for group in _groups(images, scope):
        usable = [i for i in group if images[i].error is None]
        seen: set[tuple[int, int]] = set()
        out: list[tuple[int, int]] = []
        for a in range(len(usable)):
            for b in range(a + 1, min(a + 1 + int(window), len(usable))):
                out.append((a, b))
                seen.add((a, b))
        if loop_every:
            keys = range(0, len(usable), int(loop_every))
            for a in keys:
                for b in keys:
                    if b > a and (a, b) not in seen:
                        out.append((a, b))
        for a, b in sorted(out):
            yield _row(images[usable[a]], images[usable[b]])


# --------------------------------------------------------------------------------------------
# retrieval


def whiten(X: np.ndarray, dims: int | None) -> np.ndarray:
    """Centre ``X`` (N, D) on its mean, project on its top ``dims`` principal axes scaled to unit
    variance, and L2-normalise rows (PCA whitening learned on the collection itself: the common
    component that makes every raw GeM vector alike is removed). ``dims`` is capped at (N - 1) / 4."""
    X = np.asarray(X, np.float64)
    if dims is None or len(X) < 3:
        Y = X
    else:
        Xc = X - X.mean(0)
        _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
        k = int(min(dims, max(1, (len(X) - 1) // 4), Vt.shape[0]))  # k near N makes all points equidistant
        keep = s[:k] > 1e-9 * max(s[0], 1e-30)
        Y = Xc @ (Vt[:k][keep].T / s[:k][keep])
    norm = np.linalg.norm(Y, axis=1, keepdims=True)
    return (Y / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def shared_point_matrix(images: Sequence[SourceImage], idx: Sequence[int]) -> np.ndarray | None:
    """(n, n) int64 3D points shared by the images ``idx`` (SfM model observations); images of
    different scenes share none; None when none of them has a model."""

    if not any(images[i].has_model for i in idx):
        return None
    n = len(idx)
    out = np.zeros((n, n), np.int64)
    by_scene: dict[str | None, list[int]] = defaultdict(list)
    for k, i in enumerate(idx):
        if images[i].has_model:
            by_scene[images[i].scene].append(k)
    for ks in by_scene.values():
        obs_image = np.concatenate([np.full(len(images[idx[k]].point_ids), j, np.int64) for j, k in enumerate(ks)])
        obs_point = np.concatenate([np.asarray(images[idx[k]].point_ids, np.int64) for k in ks])
        counts = covisibility_counts(obs_image, obs_point, len(ks))
        out[np.ix_(ks, ks)] = counts
    return out


def retrieval_pairs(images: Sequence[SourceImage], X: np.ndarray, conf: dict,
                    stats: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Top-``per_image`` pairs by descriptor similarity (see module docstring).

    Args:
        images: the images; those with ``error`` set take no part.
        X: (N, D) float32 unit descriptors aligned with ``images`` (rows of broken images unused).
        conf: the pairs section (``scope``, ``per_image``, ``min_similarity``, ``max_shared_points``).
        stats: filled with ``compared`` (pairs scored), ``excluded_sfm`` (pairs the SfM rule removed)
            and ``candidates`` (rows yielded).

    Yields:
        Rows sorted by (image0, image1) within each group, with ``similarity`` and (where a model
        is known) ``shared_points``.
    """
    stats = stats if stats is not None else {}
    stats.update(compared=0, excluded_sfm=0, candidates=0)
    k_keep = int(conf["per_image"])
    max_shared = conf["max_shared_points"]
    floor = conf["min_similarity"]
    for group in _groups(images, conf["scope"]):
        idx = [i for i in group if images[i].error is None]
        n = len(idx)
        if n < 2:
            continue
        G = X[idx]
        shared = shared_point_matrix(images, idx)
        has_model = np.array([images[i].has_model for i in idx])
        chosen: set[tuple[int, int]] = set()
        compared = excluded = 0  # ordered (row, column) counts: each unordered pair twice
        for r0 in range(0, n, BLOCK_ROWS):
            r1 = min(n, r0 + BLOCK_ROWS)
            S = G[r0:r1] @ G.T  # (b, n)
            allowed = np.ones_like(S, dtype=bool)
            allowed[np.arange(r1 - r0), np.arange(r0, r1)] = False
            compared += int(allowed.sum())
            if max_shared is not None and shared is not None:
                # pairs where both images are in a model: the rule applies; otherwise nothing is known
                known = has_model[r0:r1, None] & has_model[None, :]
                linked = known & (shared[r0:r1] >= int(max_shared))
                excluded += int((linked & allowed).sum())
                allowed &= ~linked
            if floor is not None:
                allowed &= S >= float(floor)
            S = np.where(allowed, S, -np.inf)
            k = min(k_keep, n - 1)
            top = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < n else np.argsort(-S, axis=1)
            for r, row in enumerate(top):
                for j in row:
                    if np.isfinite(S[r, j]):
                        a, b = r0 + r, int(j)
                        chosen.add((min(a, b), max(a, b)))
        stats["compared"] += compared // 2
        stats["excluded_sfm"] += excluded // 2
        for a, b in sorted(chosen):
            sim = float(G[a] @ G[b])
            sh = int(shared[a, b]) if shared is not None and has_model[a] and has_model[b] else None
            stats["candidates"] += 1
            yield _row(images[idx[a]], images[idx[b]], similarity=sim, shared=sh)
