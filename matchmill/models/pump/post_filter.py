"""Connected-components post-filter of dense matches (spec ``pump.md`` §3.2, post-filtering).

Written from the spec, not from any reference implementation. Geometry-agnostic (works on
non-rigid scenes):

1. two matches a, b are linked when, **in both images**, their positions are within
   ``locality * 4`` px (Euclidean; img2 distances multiplied by ``img2_scale``) and the img1 offset
   ``p1_b - p1_a`` and the img2 offset ``p2_b - p2_a`` make an angle ``<= max_angle_deg`` (90 by
   default: ``dot >= 0``; a zero offset counts as consistent);
2. candidate pairs come from spatial binning in img1 (bins of the link radius, 3x3 neighbouring
   bins). The spec builds one graph from img1 binning and one from img2 binning and takes their
   union; because the link test above is exact and symmetric in both images, both graphs equal
   the set of linked pairs, so one binning is enough;
3. connected components (numpy union-find: min-label propagation with pointer jumping; scipy is
   not a dependency); matches in components of ``<= min_cc_size`` members are dropped, the
   others get ``log2(component size)`` added to their score.

Not implemented: rotation/scale codes per match (our rows have 5 columns; use ``img2_scale`` for a
known global scale) and the ``densify`` option.
"""

from __future__ import annotations

import math

import numpy as np

from matchmill.config import merge_conf

__all__ = ["DEFAULT_CONF", "link_pairs", "connected_components", "post_filter"]

DEFAULT_CONF: dict = {
    "locality": 2,  # link radius in atomic cells of 4 px, in both images (2 -> 8 px)
    "min_cc_size": 50,  # drop matches whose component has at most this many members
    "max_angle_deg": 90.0,  # max angle between the img1 and img2 offsets of two linked matches
    "img2_scale": 1.0,  # img2 distances are multiplied by this before the radius test (known relative scale)
}


def link_pairs(matches: np.ndarray, radius: float, max_angle_deg: float = 90.0, img2_scale: float = 1.0) -> np.ndarray:
    """Linked pairs ``(E, 2)`` int64 ``(a, b)`` with ``a < b`` (see the module docstring for the rule).

    Args:
        matches: ``(N, >= 4)`` ``[x1, y1, x2, y2, ...]``.
        radius: link radius in px (both images).
        max_angle_deg: direction-consistency threshold.
        img2_scale: factor applied to img2 distances.
    """
    n = len(matches)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    p1 = matches[:, 0:2].astype(np.float64)
    p2 = matches[:, 2:4].astype(np.float64)
    cell = np.floor((p1 - p1.min(axis=0)) / radius).astype(np.int64)
    width = int(cell[:, 0].max()) + 3
    bin_id = (cell[:, 1] + 1) * width + (cell[:, 0] + 1)  # +1 margin so that neighbour ids never wrap
    order = np.argsort(bin_id, kind="stable")
    sorted_bins = bin_id[order]
    pairs = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            target = bin_id + dy * width + dx
            start = np.searchsorted(sorted_bins, target, side="left")
            stop = np.searchsorted(sorted_bins, target, side="right")
            counts = stop - start
            a = np.repeat(np.arange(n), counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            b = order[np.repeat(start, counts) + offsets]
            keep = a < b
            pairs.append(np.stack([a[keep], b[keep]], axis=1))
    cand = np.concatenate(pairs)
    d1 = p1[cand[:, 1]] - p1[cand[:, 0]]
    d2 = p2[cand[:, 1]] - p2[cand[:, 0]]
    n1, n2 = np.linalg.norm(d1, axis=1), np.linalg.norm(d2, axis=1)
    close = (n1 <= radius) & (n2 * img2_scale <= radius)
    cos_limit = math.cos(math.radians(max_angle_deg))
    zero = (n1 == 0) | (n2 == 0)
    consistent = zero | ((d1 * d2).sum(axis=1) >= cos_limit * n1 * n2 - 1e-9)
    return cand[close & consistent]


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label (smallest member index) of each of ``n`` nodes given ``(E, 2)`` edges."""
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    a, b = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        np.minimum.at(new, labels, new)  # a root adopts the smallest label any of its members reached
        while True:  # pointer jumping: follow labels to their fixed point
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def post_filter(matches: np.ndarray, conf: dict | None = None) -> np.ndarray:
    """Keep matches in large connected components of locally consistent matches.

    Args:
        matches: ``(N, 5)`` ``[x1, y1, x2, y2, score]``.
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        ``(M, 5)`` float32 kept rows (input order) with ``score + log2(component size)``.
    """
    conf = merge_conf(DEFAULT_CONF, conf, "PUMP post-filter")
    matches = np.asarray(matches)
    if matches.ndim != 2 or matches.shape[1] != 5:
        raise ValueError(f"post_filter expects (N, 5) [x1, y1, x2, y2, score] matches, got shape {matches.shape}")
    if not np.isfinite(matches).all():
        raise ValueError("post_filter: matches hold non-finite values")
    if conf["locality"] <= 0:
        raise ValueError(f"post_filter locality must be > 0, got {conf['locality']}")
    n = len(matches)
    if n == 0:
        return np.zeros((0, 5), dtype=np.float32)
    edges = link_pairs(matches, 4.0 * conf["locality"], conf["max_angle_deg"], conf["img2_scale"])
    labels = connected_components(n, edges)
    size = np.bincount(labels, minlength=n)[labels]
    keep = size > conf["min_cc_size"]
    out = matches[keep].astype(np.float32)
    out[:, 4] += np.log2(size[keep]).astype(np.float32)
    return out
