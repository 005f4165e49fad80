"""PUMP descriptor training on CPU, measured in one run: MMA@3 before / after, extraction throughput.

What it does (all numbers printed come from this one run):

1. Renders the demo scene (14 images, 320x240; ``--data`` to reuse one). Images 0..9 feed training,
   10..13 are held out.
2. Evaluates the **untrained** CPU-sized ConvMixer (width 128) on held-out synthetic (S) pairs
   (fixed seed, ``--eval-pairs``, 128 px crops, the paper's augmentations at CPU scale):
   - *grid*: img1 descriptors on an 8 px grid (points whose ground truth lands on img2 content),
     nearest neighbour among **all** img2 pixels, kept if mutual (the img2 pixel's nearest grid point
     is the query); MMA@3 = fraction of kept matches within 3 px of the ground truth ``H``;
   - *sift*: OpenCV SIFT keypoints (up to 512 per image) in both crops, PUMP descriptors sampled at
     them (scale 1), mutual NN; MMA@3; the same keypoints with RootSIFT descriptors as a reference.
3. Trains it with the AP loss on synthetic pairs generated on the fly (``--crop`` px, batch
   ``--batch``) for ``--minutes`` or ``--steps``, whichever comes first; Adam with weight decay 5e-4.
   CPU-budget choices (measured, 150 steps, 64 px crops): ``--lr`` 3e-3 (the paper's 1e-4 is for
   50k iterations) and 256 AP queries per batch with an 8 px border (the paper's formula gives only
   16 queries on a 64 px crop; 16 -> 256 queries raised held-out grid MMA@3 from ~0.09 to 0.20 at
   lr 1e-3 for +15% step cost).
4. Evaluates again; prints the loss trend and the MMA ratios after / before.
5. Extraction throughput on the 320x240 demo images (eval mode, no grad, ``--threads`` threads):
   images/s for the paper net (width 512) and the CPU-sized one, single scale and the 7-scale
   pyramid 1 .. 0.354 of spec §3.1. Times are the minimum over ``--repeats`` after a warm-up (the
   least disturbed run on a shared machine) and the median.

Usage:  python benchmarks/pump_training.py [--minutes 5] [--steps 400] [--batch 4] [--crop 64]
        [--threads 2] [--save trained.safetensors]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spin-waiting on a shared machine

import numpy as np
import torch

from matchmill.methods.sift import SiftExtractor
from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.image_io import load_image
from matchmill.geometry.homography import warp_points
from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized
from matchmill.models.pump.extract import dense_descriptors, descriptor_scales, sample_at_keypoints
from matchmill.models.pump.net_io import save_net_weights
from matchmill.models.pump.synthetic import CPU_SYNTH_CONF, TrainingPair, make_synthetic_pair
from matchmill.models.pump.training import collate_pairs, make_optimizer, training_step
from matchmill.training.validation import mutual_nn as _mutual

EVAL_CONF = {**CPU_SYNTH_CONF, "crop_size": 128, "window_size": 192}
GRID_STEP = 8
THRESHOLD = 3.0


def _mma(p1: np.ndarray, p2: np.ndarray, H: np.ndarray) -> tuple[float, int]:
    if len(p1) == 0:
        return 0.0, 0
    err = np.linalg.norm(warp_points(p1, H) - p2, axis=1)
    return float((err <= THRESHOLD).mean()), len(p1)


def evaluate(net: torch.nn.Module, pairs: list[TrainingPair], sift: SiftExtractor) -> dict[str, float]:
    """Mean MMA@3 and matches per pair of the grid and SIFT protocols (module docstring)."""
    net.eval()
    rows = {"grid": [], "sift": [], "rootsift": []}
    for pair in pairs:
        n = pair.img1.shape[0]
        desc1 = dense_descriptors(net, pair.img1, [1.0])[0][1]  # (D, n, n)
        desc2 = dense_descriptors(net, pair.img2, [1.0])[0][1]
        D = desc1.shape[0]
        # grid protocol: grid points of img1 whose GT lands on img2 content
        g = np.arange(GRID_STEP // 2, n, GRID_STEP, dtype=np.float64)
        gx, gy = np.meshgrid(g, g)
        pts = np.stack([gx.ravel(), gy.ravel()], 1)
        gt = np.rint(warp_points(pts, pair.H))
        ok = (gt >= 0).all(1) & (gt[:, 0] < n) & (gt[:, 1] < n)
        ok[ok] &= pair.img2[gt[ok, 1].astype(int), gt[ok, 0].astype(int)].max(-1) > 0
        pts = pts[ok]
        q = desc1[:, pts[:, 1].astype(int), pts[:, 0].astype(int)].t()
        i1, i2 = _mutual(q, desc2.reshape(D, -1).t())
        p2 = np.stack([i2 % n, i2 // n], 1).astype(np.float64)
        rows["grid"].append(_mma(pts[i1], p2, pair.H))
        # SIFT keypoints, PUMP vs RootSIFT descriptors
        k1, k2 = sift(pair.img1), sift(pair.img2)
        if len(k1["keypoints"]) and len(k2["keypoints"]):
            f1 = torch.from_numpy(sample_at_keypoints([(1.0, desc1)], k1["keypoints"]))
            f2 = torch.from_numpy(sample_at_keypoints([(1.0, desc2)], k2["keypoints"]))
            i1, i2 = _mutual(f1, f2)
            rows["sift"].append(_mma(k1["keypoints"][i1], k2["keypoints"][i2], pair.H))
            i1, i2 = _mutual(torch.from_numpy(k1["descriptors"]), torch.from_numpy(k2["descriptors"]))
            rows["rootsift"].append(_mma(k1["keypoints"][i1], k2["keypoints"][i2], pair.H))
    out = {}
    for key, vals in rows.items():
        out[f"{key}_mma3"] = float(np.mean([v[0] for v in vals])) if vals else float("nan")
        out[f"{key}_matches"] = float(np.mean([v[1] for v in vals])) if vals else 0.0
    return out


def train(net, images, args) -> list[float]:
    conf = {**CPU_SYNTH_CONF, "crop_size": args.crop, "window_size": args.crop * 3 // 2}
    step_conf = {"lr": args.lr, "ap": {"border": args.border, "num_queries": args.queries or None}}
    opt = make_optimizer(net, step_conf)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while len(losses) < args.steps and time.perf_counter() - start < 60.0 * args.minutes:
        pairs = [make_synthetic_pair(images[int(rng.integers(len(images)))], rng, conf) for _ in range(args.batch)]
        losses.append(training_step(net, collate_pairs(pairs), opt, step_conf, gen)["loss"])
        if len(losses) % 25 == 0:
            print(f"  step {len(losses):4d}  loss(last 25) {np.mean(losses[-25:]):.4f}  "
                  f"{time.perf_counter() - start:6.1f} s wall, {time.process_time() - cpu_start:6.1f} s CPU", flush=True)
    cpu = time.process_time() - cpu_start
    print(f"  process CPU time {cpu:.1f} s = {cpu / max(1, len(losses)):.2f} CPU-s/step (wall includes other users' load)")
    return losses


def throughput(images: list[np.ndarray], repeats: int) -> None:
    print("\nextraction throughput, 320x240 demo images (eval, no grad):")
    pyramid = descriptor_scales()
    results = {}
    for name, conf in (("paper (width 512)", None), ("cpu_sized (width 128)", cpu_sized())):
        torch.manual_seed(0)
        net = PumpConvMixer(conf).eval()
        for label, scales in (("1 scale", [1.0]), (f"{len(pyramid)} scales 1..{pyramid[-1]:.3f}", pyramid)):
            dense_descriptors(net, images[0], scales)  # warm-up
            times = []
            for r in range(repeats):
                t = time.perf_counter()
                dense_descriptors(net, images[r % len(images)], scales)
                times.append(time.perf_counter() - t)
            results[(name, label)] = min(times)
            print(f"  {name:22s} {label:22s} {1.0 / min(times):6.2f} img/s (best {min(times):.3f} s, median {statistics.median(times):.3f} s)")
    names = ("paper (width 512)", "cpu_sized (width 128)")
    single, multi = "1 scale", f"{len(pyramid)} scales 1..{pyramid[-1]:.3f}"
    for label in (single, multi):
        print(f"  speed-up cpu_sized / paper, {label}: {results[(names[0], label)] / results[(names[1], label)]:.2f}x")
    for name in names:
        print(f"  time of the {len(pyramid)}-scale pyramid / 1 scale, {name}: {results[(name, multi)] / results[(name, single)]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="folder for the demo scene (default: a temp dir)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=400, help="training step budget")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64, help="training crop side")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--queries", type=int, default=256, help="AP queries per batch (0: the paper's (S - 2 border)^2 / 64)")
    ap.add_argument("--border", type=int, default=8, help="AP query border, px (paper: 16)")
    ap.add_argument("--eval-pairs", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per throughput configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=None, help="write the trained weights here (.safetensors / .pth)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        scene = ensure_demo_scene(args.data or Path(tmp), seed=0)
        paths = sorted((scene / "images").glob("*.jpg"))
        images = [load_image(str(p)) for p in paths]
    train_images, held_out = images[:10], images[10:]
    erng = np.random.default_rng(1000 + args.seed)
    eval_pairs = [make_synthetic_pair(held_out[i % len(held_out)], erng, EVAL_CONF) for i in range(args.eval_pairs)]
    sift = SiftExtractor({"max_keypoints": 512})

    torch.manual_seed(args.seed)
    net = PumpConvMixer(cpu_sized())
    print(f"PUMP ConvMixer cpu_sized: {sum(p.numel() for p in net.parameters()):,} params; torch threads {torch.get_num_threads()}")
    print(f"held-out eval: {len(eval_pairs)} synthetic pairs of {EVAL_CONF['crop_size']} px from {len(held_out)} unseen images")
    t = time.perf_counter()
    before = evaluate(net, eval_pairs, sift)
    print(f"untrained: {before}  ({time.perf_counter() - t:.1f} s)")

    print(f"training: batch {args.batch} S pairs of {args.crop} px, lr {args.lr}, AP queries {args.queries or 'paper'} "
          f"(border {args.border}), <= {args.steps} steps / {args.minutes} min")
    t = time.perf_counter()
    losses = train(net, train_images, args)
    elapsed = time.perf_counter() - t
    k = max(1, min(25, len(losses) // 4))
    print(f"trained {len(losses)} steps in {elapsed:.1f} s ({elapsed / max(1, len(losses)):.2f} s/step); "
          f"AP loss mean of first {k}: {np.mean(losses[:k]):.4f}, last {k}: {np.mean(losses[-k:]):.4f}")
    after = evaluate(net, eval_pairs, sift)
    print(f"trained:   {after}")
    print("\nMMA@3 on held-out synthetic pairs (untrained -> trained, ratio):")
    for key in ("grid", "sift"):
        b, a = before[f"{key}_mma3"], after[f"{key}_mma3"]
        print(f"  {key:5s} PUMP  {b:.3f} -> {a:.3f}  ({a / b if b else float('inf'):.2f}x)   "
              f"matches/pair {before[f'{key}_matches']:.0f} -> {after[f'{key}_matches']:.0f}")
    print(f"  sift  RootSIFT reference {after['rootsift_mma3']:.3f} ({after['rootsift_matches']:.0f} matches/pair)")
    if args.save:
        print(f"saved weights to {save_net_weights(net, args.save)}")

    throughput(images, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
