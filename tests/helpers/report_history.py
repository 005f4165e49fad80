"""A small, real benchmark history for the report tests (no Ray, a few seconds).

Two bench runs of a homography benchmark on three image pairs (a cv2-drawn image warped by
known homographies): methods ``sift`` (matchmill's SIFT + mutual NN) and ``orb`` (OpenCV ORB +
cross-checked brute force), verified with matchmill's pydegensac homography and scored with
matchmill's corner error and MMA. In the latest run, ``sift``'s matches get 2.5 px of seeded
noise in image 1 (a broken refinement), so its MMA at small thresholds really drops. Each run
writes what ``matchmill bench`` writes: a run folder with a committed-format ``verify`` part
(VERIFIED schema), ``OUT/<method>/pairs.parquet`` and ``run_url.txt`` (B1's ``bench_pairs_table`` and
``write_method_outputs``),
and history rows through B1's ``history_rows`` / ``append_history``.

A ``pose`` benchmark is added with per-pair pose errors drawn from a seeded distribution (the latest
run improves) and no run folder; unless asked, its latest OUT folder is never written (the "OUT
folder deleted" case).
"""

from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from matchmill.evaluation.benchmarks.history import append_history, history_rows
from matchmill.evaluation.benchmarks.results import NON_METRIC_KEYS, bench_metrics, bench_pairs_table, write_method_outputs
from matchmill.methods.sift import SiftExtractor
from matchmill.geometry.homography import homography_corner_error, mma, reprojection_errors
from matchmill.geometry.robust import find_homography
from matchmill.manifests.storage import write_bytes_atomic, write_manifest

HEIGHT, WIDTH = 240, 320
DATES = (_dt.datetime(2025, 3, 1, 8, 0, tzinfo=_dt.timezone.utc),
         _dt.datetime(2025, 3, 2, 8, 0, tzinfo=_dt.timezone.utc))
RUN_IDS = ("20250301T080000Z-aaaaaa", "20250302T080000Z-bbbbbb")
HOMOGRAPHY_DATASET = "/data/synthetic-hpatches"
POSE_DATASET = "/data/synthetic-pose"
_CONF = {"metrics": {}, "extract": {}}


@dataclass(frozen=True)
class SyntheticHistory:
    history_url: str
    out_urls: tuple[str, str]  # homography benchmark OUT folder of run 1 and run 2
    pose_out_urls: tuple[str, str]  # pose OUT folders (the second is never written)
    pair_ids: list[str]


def textured_image(seed: int) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 RGB: gradient, filled shapes, lines and text (many corners)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([80 + 60 * x / WIDTH, 90 + 50 * y / HEIGHT, 140 - 40 * x / WIDTH], axis=2).astype(np.uint8)
    for _ in range(40):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
        if rng.random() < 0.5:
            cv2.circle(image, (cx, cy), int(rng.integers(4, 22)), colour, -1, cv2.LINE_AA)
        else:
            w, h = int(rng.integers(6, 40)), int(rng.integers(6, 40))
            cv2.rectangle(image, (cx, cy), (cx + w, cy + h), colour, -1)
    for _ in range(12):
        p0 = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        p1 = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        cv2.line(image, p0, p1, tuple(int(c) for c in rng.integers(0, 256, 3)), 2, cv2.LINE_AA)
    for k in range(4):
        cv2.putText(image, f"MM-{seed}{k}", (10 + 70 * k, 40 + 50 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                    (250, 250, 250), 2, cv2.LINE_AA)
    return image


def random_homography(rng: np.random.Generator) -> np.ndarray:
    """A mild viewpoint change: corners moved by up to 25 px."""
    src = np.float32([[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT]])
    dst = src + rng.uniform(-25, 25, size=(4, 2)).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def write_pairs(folder: Path, count: int = 3) -> list[dict]:
    """``count`` pairs (image, its warp) as JPEG files; PAIRS-like dicts with H_0to1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    pairs = []
    for k in range(count):
        image0 = textured_image(seed=k)
        H = random_homography(rng)
        image1 = cv2.warpPerspective(image0, H, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
        paths = [folder / f"seq{k}_1.png", folder / f"seq{k}_2.png"]
        for path, image in zip(paths, (image0, image1)):
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        pairs.append({"pair_id": f"seq{k}/1|seq{k}/2", "scene": f"v_seq{k}", "image0": f"seq{k}/1",
                      "image1": f"seq{k}/2", "path0": str(paths[0]), "path1": str(paths[1]),
                      "H_0to1": H.reshape(-1).tolist(), "images": (image0, image1)})
    return pairs


def match(method: str, image0: np.ndarray, image1: np.ndarray) -> np.ndarray:
    """(N, 4) float32 matches x0, y0, x1, y1 of ``sift`` (matchmill's SIFT) or ``orb`` (OpenCV)."""
    if method == "sift":  # mutual nearest neighbours = cross-checked brute force (no torch import)
        extract = SiftExtractor({"max_keypoints": 1024})
        f0, f1 = extract(image0), extract(image1)
        found = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(f0["descriptors"], f1["descriptors"])
        idx = np.array([(m.queryIdx, m.trainIdx) for m in found], np.int64).reshape(-1, 2)
        return np.concatenate([f0["keypoints"][idx[:, 0]], f1["keypoints"][idx[:, 1]]], axis=1).astype(np.float32)
    orb = cv2.ORB_create(nfeatures=800)
    k0, d0 = orb.detectAndCompute(cv2.cvtColor(image0, cv2.COLOR_RGB2GRAY), None)
    k1, d1 = orb.detectAndCompute(cv2.cvtColor(image1, cv2.COLOR_RGB2GRAY), None)
    found = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d0, d1)
    found = sorted(found, key=lambda m: (m.queryIdx, m.trainIdx))
    return np.float32([[*k0[m.queryIdx].pt, *k1[m.trainIdx].pt] for m in found]).reshape(-1, 4)


def verified_row(pair: dict, matches: np.ndarray) -> dict:
    """A VERIFIED row scored with matchmill's homography metrics."""
    H_gt = np.asarray(pair["H_0to1"]).reshape(3, 3)
    H_est, inliers = find_homography(matches[:, :2], matches[:, 2:], threshold=2.0, seed=0)
    errors = reprojection_errors(matches[:, :2], matches[:, 2:], H_gt)
    row = {k: v for k, v in pair.items() if k != "images"}
    return {**row, "status": "ok", "num_matches": len(matches), "matches": matches.reshape(-1).tolist(),
            "scores": [1.0] * len(matches), "model": "homography", "num_inliers": int(inliers.sum()),
            "inliers": inliers.tolist(), "H_est": None if H_est is None else H_est.reshape(-1).tolist(),
            "corner_error": homography_corner_error(H_est, H_gt, WIDTH, HEIGHT), "mma": mma(errors).tolist()}


def _write_parquet(url: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(url, buf.getvalue())


def write_homography_run(root: Path, run: int, pairs: list[dict], history_url: str) -> str:
    """One bench run of both methods; returns its OUT folder."""
    out = root / f"bench{run}"
    rows = []
    for method in ("orb", "sift"):
        verified = []
        for k, pair in enumerate(pairs):
            matches = match(method, *pair["images"])
            if method == "sift" and run == 1:  # the regression: noisy matches in image 1
                noise = np.random.default_rng(100 + k).normal(0, 2.5, size=(len(matches), 2))
                matches[:, 2:] += noise.astype(np.float32)
            verified.append(verified_row(pair, matches))
        run_url = f"file://{out}/runs/{method}"
        write_manifest(pa.Table.from_pylist(verified), f"{run_url}/verify/part-0.parquet", "verify")
        pairs_table = bench_pairs_table(pa.Table.from_pylist(verified), run_url)
        write_method_outputs(f"file://{out}", method, pairs_table, run_url)
        metrics = {k: v for k, v in bench_metrics(verified, _CONF, "hpatches").items() if k not in NON_METRIC_KEYS}
        rows += history_rows(run_id=RUN_IDS[run], date=DATES[run], benchmark="hpatches", dataset=HOMOGRAPHY_DATASET,
                             out_url=f"file://{out}", method=method, metrics=metrics, num_pairs=len(pairs),
                             config_hash=f"cfg-{method}",
                             model_hashes={"extract.sift": "none"} if method == "sift" else {})
    append_history(history_url, rows)
    return f"file://{out}"


def write_pose_run(root: Path, run: int, history_url: str, write_pairs_file: bool) -> str:
    """A pose benchmark run with seeded per-pair errors (no matches, no run folder)."""
    from matchmill.geometry.pose import pose_auc

    out = root / f"pose{run}"
    errors = np.random.default_rng(20).lognormal(mean=1.0, sigma=0.8, size=40) * (1.0 - 0.2 * run)  # run 1 improves
    errors[:3] = np.inf  # three failed pairs
    if write_pairs_file:
        table = pa.table({"pair_id": [f"p{i}" for i in range(40)], "pose_error": errors,
                          "pose_error_fdegensac": errors * 1.1, "run_url": ["file:///nonexistent/run"] * 40})
        _write_parquet(f"{out}/sift/pairs.parquet", table)
    metrics = {f"auc@{t:g}": v for t, v in pose_auc(errors, (5, 10, 20)).items()}
    rows = history_rows(run_id=RUN_IDS[run], date=DATES[run], benchmark="pose", dataset=POSE_DATASET,
                        out_url=f"file://{out}", method="sift", metrics=metrics, num_pairs=40,
                        config_hash="cfg-pose", model_hashes={})
    append_history(history_url, rows)
    return f"file://{out}"


def build_history(root: Path, latest_pose_pairs: bool = False) -> SyntheticHistory:
    """Both runs of both benchmarks under ``root``; the history table at ``root/history``.
    ``latest_pose_pairs=False`` leaves the latest pose run without per-pair data."""
    history_url = f"file://{root}/history"
    pairs = write_pairs(root / "images")
    outs = tuple(write_homography_run(root, run, pairs, history_url) for run in (0, 1))
    pose = tuple(write_pose_run(root, run, history_url, write_pairs_file=(run == 0 or latest_pose_pairs))
                 for run in (0, 1))
    return SyntheticHistory(history_url, outs, pose, [p["pair_id"] for p in pairs])
