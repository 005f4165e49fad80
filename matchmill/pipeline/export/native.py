"""Native keypoints for the hloc export: a sparse chain's matches as indices into the keypoints
its extract stage stored, so that nothing is merged, moved or lost.

A chain is *sparse-lossless* when every end point of every exported match is, bit for bit, a
keypoint of its image's extract artifact (``keypoints`` (N, 2) float32, original pixels). That
holds for a detector + descriptor matcher with the identity refiner (``sift`` + ``mnn`` +
``identity``: the proposer copies ``keypoints[i]`` into the float32 ``matches`` column and
nothing touches it afterwards). It fails, and the export falls back to quantisation, when

- the extract method stores no keypoints (a dense chain: PUMP maps, a ResNet pyramid), or
- some end point is not a stored keypoint: a refiner moved it (Patch2Pix), or the proposer is
  dense (NCNet, the PUMP pyramid) although the extractor also stored keypoints.

The match rows carry coordinates only (``matches`` (M, 4) x0 y0 x1 y1), so indices are recovered
by exact lookup: per image the keypoints' float32 bit patterns are packed into one uint64 key
``bits(x) << 32 | bits(y)`` (``-0.0`` folded into ``+0.0``) and sorted once; a match end point's
candidates are the ``searchsorted`` range of its key.

Duplicate coordinates. OpenCV's SIFT returns one keypoint per dominant orientation, so about
15 % of the demo's keypoints share their (x, y) with another one and a third of the matched end
points have two or more candidates. Within a pair they are resolved as follows:

1. a match whose two end points each have one candidate takes those indices;
2. the others take, among their candidate (i0, i1) combinations, the one whose descriptor
   similarity ``desc0[i0] . desc1[i1]`` is closest to the match's stored score (exact for
   ``mnn``, whose score *is* that cosine similarity; with no descriptors every combination ties),
   ties to the lowest indices, greedily over all (match, combination) candidates in that order,
   with neither index already taken in the pair; a second pass lets the image-1 index repeat;
3. ``matches0`` holds one match per image-0 keypoint, so a match left without a free image-0
   index (only possible for a matcher that is not one-to-one) is dropped and counted.

The coordinates of an exported match therefore always equal the run's match coordinates
exactly; only which of several coincident keypoints carries it (and so which descriptor and
detector score hloc sees) can differ from the matcher's choice, when descriptors cannot tell.

Memory: the keypoints and packed keys of every exported image (24 bytes per keypoint) are held; descriptors
are read only for pairs with ambiguous end points, through the pair stages' byte-bounded
:class:`~matchmill.stages.feature_store.FeatureStore` cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from matchmill.manifests.artifacts import ArtifactReader
from matchmill.manifests.commit import read_commit, read_stage
from matchmill.manifests.schemas import STATUS_OK
from matchmill.stages.feature_store import FeatureStore

__all__ = ["NativeKeypoints", "NativeUnavailable", "pack_points", "recover_indices", "match_native_keypoints"]


class NativeUnavailable(Exception):
    """The run's chain cannot be exported losslessly with native keypoints (the message says why)."""


def pack_points(points: np.ndarray) -> np.ndarray:
    """(N, 2) float32-representable x, y -> (N,) uint64 keys, equal iff the float32 points are equal.

    ``-0.0`` and ``+0.0`` get the same key (adding +0.0 folds the sign of a zero).
    """
    pts = np.ascontiguousarray(np.asarray(points, np.float32).reshape(-1, 2) + np.float32(0.0))
    bits = pts.view(np.uint32).astype(np.uint64)
    return (bits[:, 0] << np.uint64(32)) | bits[:, 1]


@dataclass
class _KeyIndex:
    """Sorted packed keys of one image's keypoints: ``keys`` (N,) uint64 ascending, ``order`` (N,)
    int64 the keypoint index of each sorted key."""

    keys: np.ndarray
    order: np.ndarray

    @classmethod
    def of(cls, keypoints: np.ndarray) -> _KeyIndex:
        packed = pack_points(keypoints)
        order = np.argsort(packed, kind="stable").astype(np.int64)
        return cls(packed[order], order)

    def ranges(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) points -> ``lo``, ``hi`` (M,) int64: the candidates of point m are
        ``order[lo[m]:hi[m]]`` (empty when it is not a keypoint)."""
        packed = pack_points(points)
        return (np.searchsorted(self.keys, packed, "left").astype(np.int64),
                np.searchsorted(self.keys, packed, "right").astype(np.int64))


def recover_indices(
    index0: _KeyIndex,
    index1: _KeyIndex,
    matches: np.ndarray,
    scores: np.ndarray,
    descriptors: Callable[[], tuple] | tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint indices of one pair's matches (module docstring, steps 1-3).

    Args:
        index0, index1: the two images' key indices (:meth:`_KeyIndex.of`).
        matches: (M, 2 + 2) x0 y0 x1 y1, every end point a stored keypoint (checked by the caller).
        scores: (M,) the matches' scores.
        descriptors: None, or a callable returning ``(desc0 (N0, D), desc1 (N1, D))`` (called only
            when some end point is ambiguous), or a pair of None when the method stores none.

    Returns:
        ``ids`` (M, 2) int64 (i0, i1), -1 on the rows of dropped matches, and ``kept`` (M,) bool.
    """
    m = len(matches)
    ids = np.full((m, 2), -1, np.int64)
    if m == 0:
        return ids, np.zeros(0, bool)
    lo0, hi0 = index0.ranges(matches[:, :2])
    lo1, hi1 = index1.ranges(matches[:, 2:])
    if ((hi0 - lo0) == 0).any() or ((hi1 - lo1) == 0).any():
        raise ValueError("some match end point is not a stored keypoint")
    single = ((hi0 - lo0) == 1) & ((hi1 - lo1) == 1)
    # 1. unambiguous matches; for a matcher that is not one-to-one, the best score (then the
    #    earlier match) keeps a repeated image-0 index
    singles = np.flatnonzero(single)
    s0, s1 = index0.order[lo0[singles]], index1.order[lo1[singles]]
    if len(np.unique(s0)) < len(s0):
        rank = np.lexsort((singles, -np.asarray(scores, np.float64)[singles]))
        _, first = np.unique(s0[rank], return_index=True)
        keep = np.sort(rank[first])
        singles, s0, s1 = singles[keep], s0[keep], s1[keep]
    ids[singles, 0], ids[singles, 1] = s0, s1
    used0, used1 = set(s0.tolist()), set(s1.tolist())
    ambiguous = np.flatnonzero(~single)
    if len(ambiguous):
        desc0 = desc1 = None
        if callable(descriptors):
            desc0, desc1 = descriptors()
        elif descriptors is not None:
            desc0, desc1 = descriptors
        candidates: list[tuple[float, int, int, int]] = []
        for j in ambiguous.tolist():
            c0 = index0.order[lo0[j]:hi0[j]]
            c1 = index1.order[lo1[j]:hi1[j]]
            if desc0 is not None and desc1 is not None:
                sims = np.asarray(desc0[c0], np.float64) @ np.asarray(desc1[c1], np.float64).T  # (|c0|, |c1|)
                cost = np.abs(sims - float(scores[j]))
            else:
                cost = np.zeros((len(c0), len(c1)))
            for a, i0 in enumerate(c0.tolist()):
                for b, i1 in enumerate(c1.tolist()):
                    candidates.append((float(cost[a, b]), j, i0, i1))
        candidates.sort(key=lambda c: (c[0], c[2], c[3], c[1]))
        done: set[int] = set()
        for strict in (True, False):  # 2. both indices free; then the image-1 index may repeat
            for _, j, i0, i1 in candidates:
                if j in done or i0 in used0 or (strict and i1 in used1):
                    continue
                ids[j] = (i0, i1)
                done.add(j)
                used0.add(i0)
                used1.add(i1)
    return ids, ids[:, 0] >= 0


@dataclass
class NativeKeypoints:
    """The outcome of :func:`match_native_keypoints` for an export.

    ``artifacts``: image id -> artifact URL of every exported image; ``keypoints``: image id ->
    (N, 2) float32 stored keypoints (read once, here); ``ids``: per exported pair (M, 2) int64
    keypoint indices of its kept matches; ``kept``: per pair (M,) bool, which of its input matches
    were kept; ``sizes``: image id -> (width, height).
    """

    artifacts: dict[str, str]
    keypoints: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]
    ids: list[np.ndarray] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """image id -> N, the number of stored keypoints."""
        return {image: len(kp) for image, kp in self.keypoints.items()}


def match_native_keypoints(run_url: str, pairs: Sequence) -> NativeKeypoints:
    """Recover the native keypoint indices of every exported match (module docstring).

    Args:
        run_url: the run's storage URL.
        pairs: the export's pairs (``image0``, ``image1`` run image ids, ``matches`` (M, 4),
            ``scores`` (M,)), in export order.

    Raises:
        NativeUnavailable: the run has no committed extract stage, an exported image has no ok
            extract row, the extract method stores no keypoints (dense chain), or some match end
            point is not a stored keypoint (a refiner moved it, or the proposer is dense).
    """
    if read_commit(run_url, "extract") is None:
        raise NativeUnavailable("the run has no committed extract stage")
    store = FeatureStore(run_url, cache_bytes=256 * 2**20)  # descriptors of ambiguous pairs, LRU
    images = sorted({p.image0 for p in pairs} | {p.image1 for p in pairs})
    indices: dict[str, _KeyIndex] = {}
    out = NativeKeypoints({}, {}, {})
    for image in images:
        row = store.rows.get(image)
        if row is None or row["status"] != STATUS_OK:
            raise NativeUnavailable(f"image {image!r} has no ok row in the extract manifest")
        reader = ArtifactReader(store.artifact(image))
        if "keypoints" not in reader.header:
            method = read_stage(run_url, "extract", columns=["image_id", "method"]).to_pydict()
            method = dict(zip(method["image_id"], method["method"])).get(image)
            raise NativeUnavailable(f"extract method {method!r} stores no keypoints (dense chain)")
        kp = reader.read("keypoints").reshape(-1, 2)
        indices[image] = _KeyIndex.of(kp)
        out.artifacts[image] = reader.url
        out.keypoints[image] = kp
        out.sizes[image] = (int(row["width"]), int(row["height"]))
    # every end point must be a stored keypoint: one vectorised pass before any resolution
    missing = total = bad_pairs = 0
    for p in pairs:
        if not len(p.matches):
            continue
        n_missing = 0
        for image, xy in ((p.image0, p.matches[:, :2]), (p.image1, p.matches[:, 2:])):
            lo, hi = indices[image].ranges(xy)
            n_missing += int((hi == lo).sum())
        missing += n_missing
        total += 2 * len(p.matches)
        bad_pairs += n_missing > 0
    if missing:
        raise NativeUnavailable(
            f"{missing} of {total} match end points ({bad_pairs} of {len(pairs)} pairs) are not stored keypoints "
            "of their image: a refiner moved them (non-identity refine.method) or the proposer is dense")

    def descriptors(p) -> tuple[np.ndarray | None, np.ndarray | None]:
        f0, f1 = store.get(p.image0), store.get(p.image1)
        if "descriptors" not in f0 or "descriptors" not in f1:
            return None, None
        return f0["descriptors"], f1["descriptors"]

    for p in pairs:
        ids, kept = recover_indices(indices[p.image0], indices[p.image1], p.matches, p.scores,
                                    descriptors=lambda p=p: descriptors(p))
        out.ids.append(ids[kept])
        out.kept.append(kept)
    return out
