"""The loop a user writes instead of matchmill: OpenCV SIFT + NumPy mutual NN + pydegensac F, one process.

No matchmill import: this is the baseline ``benchmarks/beat_the_loop.py`` compares matchmill with.
Its parameters mirror matchmill's classical chain (``matchmill/methods/sift.py``, ``matchmill/methods/mutual_nn.py``,
``matchmill/geometry/robust.py``) so that both give the same matches, but the code is written from scratch:

- read with cv2 (BGR -> RGB -> gray), downscale so the longer side is at most ``--resize-max``
  (INTER_AREA, keypoints mapped back to the original pixels with the pixel-centre convention);
- ``cv2.SIFT_create(nfeatures=0, nOctaveLayers=3, contrastThreshold=0.02, edgeThreshold=10)``,
  the ``--max-keypoints`` strongest by response (ties broken by x, y, size, angle so that the
  kept set does not depend on OpenCV's thread scheduling), RootSIFT descriptors (L1-normalise,
  sqrt, L2-normalise);
- mutual nearest neighbours on the descriptor similarity matrix (a matrix product), with Lowe's
  ratio test on distances ``d = sqrt(2 - 2 s)``: keep when ``d1 <= ratio * d2``;
- ``pydegensac.findFundamentalMatrix(p0, p1, px_th=1.0, conf=0.9999, max_iters=10000, seed=0)``
  when there are at least 8 matches (an all-zero / non-finite F counts as no model, 0 inliers).

Two modes:

- ``per_pair``: every pair loads and extracts both of its images (2 extractions per pair), the
  immatch way;
- ``cached``: each image is extracted once and its features kept in memory (hloc style).

cv2.setNumThreads is left at OpenCV's default (all cores).

Usage::

    python benchmarks/plain_loop.py --pairs PAIRS.txt --images DIR [--mode cached|per_pair|both]
                                    [--save OUT.npz] [--json OUT.json]

``PAIRS.txt``: SuperGlue style, ``name0 name1`` per line (extra columns ignored), names relative
to ``--images``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning (shared machine)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydegensac  # noqa: E402

MODES = ("per_pair", "cached")


@dataclass(frozen=True)
class LoopConf:
    resize_max: int = 640
    max_keypoints: int = 2048
    contrast_threshold: float = 0.02
    edge_threshold: float = 10
    n_octave_layers: int = 3
    ratio: float = 0.9
    px_th: float = 1.0
    conf: float = 0.9999
    max_iters: int = 10000
    seed: int = 0


@dataclass
class PairResult:
    num_matches: int
    num_inliers: int
    matches: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in original pixels
    inliers: np.ndarray  # (N,) bool
    indices: np.ndarray | None = None  # (N, 2) int64 keypoint indices (i0, i1) behind the matches


@dataclass
class LoopResult:
    mode: str
    pairs: dict[tuple[str, str], PairResult] = field(default_factory=dict)
    extractions: int = 0
    seconds: float = 0.0  # wall time of the whole loop (SIFT built, every pair)
    extract_seconds: float = 0.0  # image read + resize + SIFT + RootSIFT
    match_seconds: float = 0.0  # mutual NN + ratio test
    ransac_seconds: float = 0.0  # pydegensac

    def summary(self) -> dict:
        return {"mode": self.mode, "pairs": len(self.pairs), "extractions": self.extractions,
                "seconds": self.seconds, "extract_seconds": self.extract_seconds,
                "match_seconds": self.match_seconds, "ransac_seconds": self.ransac_seconds,
                "matches": int(sum(p.num_matches for p in self.pairs.values())),
                "inliers": int(sum(p.num_inliers for p in self.pairs.values()))}


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``name0 name1`` per line; blank lines and ``#`` comments skipped, extra columns ignored."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            pairs.append((tokens[0], tokens[1]))
    return pairs


def make_sift(c: LoopConf):
    return cv2.SIFT_create(nfeatures=0, nOctaveLayers=c.n_octave_layers,
                           contrastThreshold=c.contrast_threshold, edgeThreshold=c.edge_threshold)


def extract(path: str | Path, sift, c: LoopConf) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (N, 2) float32 in original pixels, RootSIFT descriptors (N, 128) float32 unit L2)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # stored pixels, as COLMAP
    if bgr is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    gray = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    sx = sy = 1.0
    if c.resize_max and max(h, w) > c.resize_max:
        s = c.resize_max / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        gray = cv2.resize(gray, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = w / nw, h / nh
    kps, desc = sift.detectAndCompute(gray, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    info = np.array([(k.response, k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float64)
    order = np.lexsort((info[:, 4], info[:, 3], info[:, 2], info[:, 1], -info[:, 0]))[: c.max_keypoints or None]
    kpts = info[order, 1:3].astype(np.float32)
    if (sx, sy) != (1.0, 1.0):
        kpts[:, 0] = (kpts[:, 0] + 0.5) * sx - 0.5
        kpts[:, 1] = (kpts[:, 1] + 0.5) * sy - 0.5
    d = desc[order].astype(np.float32)
    d = np.sqrt(d / (np.abs(d).sum(axis=1, keepdims=True) + 1e-8))
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-8
    return kpts, d


def mutual_nn(d0: np.ndarray, d1: np.ndarray, ratio: float) -> np.ndarray:
    """(M, 2) int64 index pairs (i0, i1), mutual nearest neighbours passing the ratio test, by i0."""
    if len(d0) == 0 or len(d1) < (2 if ratio > 0 else 1):
        return np.zeros((0, 2), np.int64)
    sim = d0 @ d1.T
    i0 = np.arange(len(d0))
    nn01 = sim.argmax(axis=1)
    nn10 = np.ascontiguousarray(sim.T).argmax(axis=1)  # row-wise argmax of a copy: much faster than axis=0
    keep = nn10[nn01] == i0
    if ratio > 0:
        best = sim[i0, nn01]
        sim[i0, nn01] = -np.inf
        second = sim.max(axis=1)  # runner-up similarity per row
        dist1 = np.sqrt(np.clip(2 - 2 * best, 0, None))
        dist2 = np.sqrt(np.clip(2 - 2 * second, 0, None))
        keep &= dist1 <= ratio * dist2
    return np.stack([i0[keep], nn01[keep]], axis=1).astype(np.int64)


def fundamental_inliers(p0: np.ndarray, p1: np.ndarray, c: LoopConf) -> np.ndarray:
    mask = np.zeros(len(p0), bool)
    if len(p0) < 8:
        return mask
    F, inl = pydegensac.findFundamentalMatrix(np.ascontiguousarray(p0, np.float64), np.ascontiguousarray(p1, np.float64),
                                              px_th=c.px_th, conf=c.conf, max_iters=c.max_iters, seed=c.seed)
    if F is None or not np.isfinite(F).all() or not np.any(F):
        return mask
    return np.asarray(inl, bool).reshape(-1)


def run_loop(pairs: list[tuple[str, str]], images_dir: str | Path, mode: str = "cached",
             c: LoopConf = LoopConf()) -> LoopResult:
    """Match every pair, in order, in this process."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    images_dir = Path(images_dir)
    res = LoopResult(mode)
    start = time.perf_counter()
    sift = make_sift(c)
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def features(name: str):
        if mode == "cached" and name in cache:
            return cache[name]
        t = time.perf_counter()
        f = extract(images_dir / name, sift, c)
        res.extract_seconds += time.perf_counter() - t
        res.extractions += 1
        if mode == "cached":
            cache[name] = f
        return f

    for name0, name1 in pairs:
        (k0, d0), (k1, d1) = features(name0), features(name1)
        t = time.perf_counter()
        idx = mutual_nn(d0, d1, c.ratio)
        res.match_seconds += time.perf_counter() - t
        matches = np.concatenate([k0[idx[:, 0]], k1[idx[:, 1]]], axis=1).astype(np.float32).reshape(-1, 4)
        t = time.perf_counter()
        inliers = fundamental_inliers(matches[:, :2], matches[:, 2:], c)
        res.ransac_seconds += time.perf_counter() - t
        res.pairs[name0, name1] = PairResult(len(matches), int(inliers.sum()), matches, inliers, idx)
    res.seconds = time.perf_counter() - start
    return res


def save_npz(path: str | Path, res: LoopResult) -> None:
    """Per pair matches / inliers plus the timing summary, for another process to read back."""
    keys = list(res.pairs)
    arrays = {"names": np.array([f"{a} {b}" for a, b in keys]),
              "num_matches": np.array([res.pairs[k].num_matches for k in keys], np.int64),
              "num_inliers": np.array([res.pairs[k].num_inliers for k in keys], np.int64),
              "offsets": np.cumsum([0] + [res.pairs[k].num_matches for k in keys]).astype(np.int64),
              "matches": (np.concatenate([res.pairs[k].matches for k in keys]) if keys else np.zeros((0, 4), np.float32)),
              "inliers": (np.concatenate([res.pairs[k].inliers for k in keys]) if keys else np.zeros((0,), bool)),
              "summary": np.array(json.dumps(res.summary()))}
    np.savez(path, **arrays)


def load_npz(path: str | Path) -> LoopResult:
    z = np.load(path)
    summary = json.loads(str(z["summary"]))
    res = LoopResult(summary["mode"], extractions=summary["extractions"], seconds=summary["seconds"],
                     extract_seconds=summary["extract_seconds"], match_seconds=summary["match_seconds"],
                     ransac_seconds=summary["ransac_seconds"])
    off = z["offsets"]
    for i, name in enumerate(z["names"]):
        a, b = str(name).split(" ")
        res.pairs[a, b] = PairResult(int(z["num_matches"][i]), int(z["num_inliers"][i]),
                                     z["matches"][off[i]:off[i + 1]], z["inliers"][off[i]:off[i + 1]])
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="SuperGlue-style pairs file (name0 name1 per line)")
    parser.add_argument("--images", required=True, help="folder the names are relative to")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--resize-max", type=int, default=640, help="longer side fed to SIFT (0 = original)")
    parser.add_argument("--max-keypoints", type=int, default=2048, help="strongest N by response (0 = all)")
    parser.add_argument("--ratio", type=float, default=0.9, help="Lowe ratio on distances (0 = off)")
    parser.add_argument("--save", help="write per-pair matches/inliers to this .npz (one mode only)")
    parser.add_argument("--json", help="write the timing summary of every mode run to this file")
    args = parser.parse_args(argv)
    if args.save and args.mode == "both":
        parser.error("--save needs a single --mode")
    c = LoopConf(resize_max=args.resize_max, max_keypoints=args.max_keypoints, ratio=args.ratio)
    pairs = read_pairs(args.pairs)
    summaries = []
    for mode in MODES if args.mode == "both" else (args.mode,):
        res = run_loop(pairs, args.images, mode, c)
        s = res.summary()
        summaries.append(s)
        print(f"{mode:>8}: {s['pairs']} pairs, {s['extractions']} extractions, {s['seconds']:.2f} s "
              f"(extract {s['extract_seconds']:.2f}, match {s['match_seconds']:.2f}, ransac {s['ransac_seconds']:.2f}); "
              f"{s['matches']} matches, {s['inliers']} inliers", flush=True)
        if args.save:
            save_npz(args.save, res)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
