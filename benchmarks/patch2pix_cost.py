"""Patch2Pix chain cost on CPU, measured in one run (ratios matter; the machine is shared).

Prints a table with, at 320x240 and 480x320 (demo scene rendered at that size):

- propose (ResNet34 pyramid of both images + NCNet 4D consensus + mutual extraction): time per
  pair, peak memory, proposals per pair;
- refine (Patch2Pix mid + fine regressors, eval, CPU-sized width 128 and full width 512): time
  per pair and peak memory, on a fixed refine load;
- regressor cost per match (mid + fine, inference, one batch of N matches) at width 512 vs 128
  and their ratio, plus the training cost (forward + backward + Adam step) per anchor.

Every configuration runs in a fresh subprocess. Peak memory is ``ru_maxrss`` at the end minus
``ru_maxrss`` after imports, model construction and input loading, so configurations do not
contaminate each other. Times are the best (minimum) over the pairs or repeats, after one
warm-up: on a shared machine the minimum is the run least disturbed by other processes, and all
pairs of one size cost the same (same image size, same refine load). The
untrained NCNet finds only a few mutual proposals, which would make the refine timing
meaningless; the refine load is therefore one proposal per 1/16 cell of image A (the most a
mutual-NN NCNet can return): ground-truth depth correspondences on a 16 px grid with +-6 px
noise, tiled to that count, plus NCNet's own proposals.

Workers run with ``OMP_WAIT_POLICY=PASSIVE`` by default (``--omp-wait-policy``): on a shared,
oversubscribed machine OpenMP's spin-waiting threads otherwise inflate and scatter CPU timings
(measured 2-4x on a single regressor step at load 4 on 2 cores); it makes little difference on an
idle machine.

Usage:  python benchmarks/patch2pix_cost.py [--data DIR] [--pairs 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = ((320, 240), (480, 320))
MiB = 1024.0  # ru_maxrss is in KiB on Linux


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------------------------
# workers (run in a fresh interpreter each)


def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _pairs(data: Path, width: int, height: int, count: int) -> list[dict]:
    from matchmill.datasets.demo import read_marker
    from matchmill.datasets.megadepth import select_megadepth_pairs

    root = data / f"demo_{width}x{height}"
    if read_marker(root / "demo") is None:
        raise RuntimeError(f"no demo scene at {root} (the driver renders it before starting workers)")
    rows = select_megadepth_pairs(root, {"max_pairs_per_scene": count, "symmetric": False, "crop_aspect": None})
    if len(rows) < 2:
        raise RuntimeError(f"the demo scene at {width}x{height} gave {len(rows)} pairs; need >= 2")
    return rows


def worker_propose(args) -> dict:
    """Backbone on both images + NCNet per pair; saves features and refine loads to args.cache."""
    torch = _setup(args.threads)
    import numpy as np

    from matchmill.datasets.image_io import load_image
    from matchmill.models.ncnet import NCNet
    from matchmill.models.resnet import ResNet34Pyramid, normalize_image
    from matchmill.models.patch2pix_training import depth_correspondences  # noqa: F401 - import before the baseline

    rows = _pairs(Path(args.data), args.width, args.height, args.pairs)
    backbone, ncnet = ResNet34Pyramid().eval(), NCNet().eval()
    images = [(load_image(r["path0"]), load_image(r["path1"])) for r in rows]
    for im0, im1 in images:
        if im0.shape[:2] != (args.height, args.width) or im1.shape[:2] != (args.height, args.width):
            raise RuntimeError(f"expected {args.width}x{args.height} images (multiples of 16), got {im0.shape}")
    base = _rss_kib()

    times, n_props, backbone_t, nc_t, cache = [], [], [], [], {}
    with torch.no_grad():
        for i, (im0, im1) in enumerate([images[0], *images]):  # first pair twice: warm-up
            t0 = time.perf_counter()
            f0 = backbone(normalize_image(im0))
            f1 = backbone(normalize_image(im1))
            t1 = time.perf_counter()
            matches, _ = ncnet.extract_matches(ncnet(f0[4], f1[4]))
            t2 = time.perf_counter()
            if i == 0:
                continue
            times.append(t2 - t0)
            backbone_t.append((t1 - t0) / 2)
            nc_t.append(t2 - t1)
            n_props.append(int(matches.shape[0]))
            k = i - 1
            if k < args.refine_pairs:
                for j, f in enumerate(f0[:4]):
                    cache[f"p{k}_a{j}"] = f[0].numpy()
                for j, f in enumerate(f1[:4]):
                    cache[f"p{k}_b{j}"] = f[0].numpy()
                cache[f"p{k}_load"] = _refine_load(rows[k], matches.numpy(), args.width, args.height)
    peak = _rss_kib()
    np.savez(args.cache, **cache)
    return {
        "pair_s": min(times),
        "backbone_image_s": min(backbone_t),
        "ncnet_pair_s": min(nc_t),
        "proposals": statistics.median(n_props),
        "peak_mib": (peak - base) / MiB,
        "pairs": len(times),
    }


def _refine_load(row: dict, nc_matches, width: int, height: int):
    """(N, 4) float32: NCNet proposals + noisy depth ground truth, one per 1/16 cell of image A."""
    import numpy as np

    from matchmill.datasets.megadepth import load_depth
    from matchmill.models.patch2pix_training import depth_correspondences

    n = (width // 16) * (height // 16)
    p0, p1 = Path(row["path0"]), Path(row["path1"])
    d0 = load_depth(p0.parent.parent / "depths" / f"{p0.stem}.h5")
    d1 = load_depth(p1.parent.parent / "depths" / f"{p1.stem}.h5")
    gt = depth_correspondences(d0, row["K0"], row["K1"], row["T_0to1"], d1, step=16, noise=6.0, seed=0)
    gt[:, 2:] = np.clip(gt[:, 2:], 0, [width - 1, height - 1])
    pool = np.concatenate([nc_matches.astype(np.float64).reshape(-1, 4), gt])
    if len(pool) == 0:
        raise RuntimeError(f"no proposal and no depth correspondence for {row['pair_id']}")
    return pool[np.arange(n) % len(pool)].astype(np.float32)


def worker_refine(args) -> dict:
    """Patch2Pix predict (mid + fine, eval) on the cached features and loads."""
    torch = _setup(args.threads)
    import numpy as np

    from matchmill.models.patch2pix import DEFAULT_CONF, Patch2Pix, cpu_sized

    if args.width_regr not in (128, 512):
        raise ValueError("--width-regr must be 128 or 512")
    conf = cpu_sized(DEFAULT_CONF) if args.width_regr == 128 else dict(DEFAULT_CONF)
    model = Patch2Pix(conf).eval()
    data = np.load(args.cache)
    pairs = []
    for k in range(args.refine_pairs):
        if f"p{k}_load" not in data:
            break
        fa = [torch.from_numpy(data[f"p{k}_a{j}"])[None] for j in range(4)]
        fb = [torch.from_numpy(data[f"p{k}_b{j}"])[None] for j in range(4)]
        pairs.append((fa, fb, torch.from_numpy(data[f"p{k}_load"])))
    size = (args.width, args.height)
    base = _rss_kib()
    times, kept = [], []
    for i, (fa, fb, load) in enumerate([pairs[0], *pairs]):
        t0 = time.perf_counter()
        fine, _ = model.predict(fa, fb, load, size, size)
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
            kept.append(int(fine.shape[0]))
    peak = _rss_kib()
    return {
        "pair_s": min(times),
        "load": int(pairs[0][2].shape[0]),
        "kept": statistics.median(kept),
        "peak_mib": (peak - base) / MiB,
        "pairs": len(times),
    }


def worker_regressor(args) -> dict:
    """Per-match inference and per-anchor training cost of Patch2Pix at one width."""
    torch = _setup(args.threads)
    from matchmill.models.patch2pix import DEFAULT_CONF, Patch2Pix, cpu_sized

    conf = cpu_sized(DEFAULT_CONF) if args.width_regr == 128 else dict(DEFAULT_CONF)
    model = Patch2Pix(conf)
    w, h = 320, 240
    feats = [torch.randn(1, c, h // s, w // s) for c, s in zip(conf["feat_channels"], conf["feat_strides"])]
    gen = torch.Generator().manual_seed(0)
    n = min(int(args.regr_matches), int(conf["regr_batch"]))  # one regressor batch
    matches = torch.rand(n, 4, generator=gen) * torch.tensor([w - 1, h - 1, w - 1, h - 1])
    anchors = matches[: args.train_anchors]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    params = sum(p.numel() for p in model.parameters())
    base = _rss_kib()
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            model(feats, feats, matches, (w, h), (w, h))
            if i:
                infer.append((time.perf_counter() - t0) / n)
    infer_peak = _rss_kib()
    model.train()
    train = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        out = model(feats, feats, anchors, (w, h), (w, h))
        (out["fine"].sum() + out["mid"].sum() + out["fine_conf"].sum() + out["mid_conf"].sum()).backward()
        optimizer.step()
        if i:
            train.append((time.perf_counter() - t0) / anchors.shape[0])
    return {
        "infer_ms": 1e3 * min(infer),
        "train_ms": 1e3 * min(train),
        "params_m": params / 1e6,
        "infer_peak_mib": (infer_peak - base) / MiB,
        "n": n,
        "train_anchors": int(anchors.shape[0]),
    }


WORKERS = {"propose": worker_propose, "refine": worker_refine, "regressor": worker_regressor}


# --------------------------------------------------------------------------------------------
# driver


def _run(kind: str, common: list[str], extra: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *common, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(cmd[2:])} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "matchmill_bench_p2p"),
                        help="folder for the rendered demo scenes (reused when present)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs timed per size (best reported)")
    parser.add_argument("--refine-pairs", type=int, default=3, help="pairs refined per size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the regressor measurements")
    parser.add_argument("--regr-matches", type=int, default=400, help="matches per regressor inference batch")
    parser.add_argument("--train-anchors", type=int, default=128, help="anchors per training step measured")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the workers ('' = inherit)")
    # worker-only arguments
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=320, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, default=240, help=argparse.SUPPRESS)
    parser.add_argument("--width-regr", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    Path(args.data).mkdir(parents=True, exist_ok=True)
    common = [f"--data={args.data}", f"--pairs={args.pairs}", f"--refine-pairs={args.refine_pairs}",
              f"--threads={args.threads}", f"--repeats={args.repeats}", f"--train-anchors={args.train_anchors}",
              f"--regr-matches={args.regr_matches}"]
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    # render the scenes here, not in a worker: rendering would raise the worker's ru_maxrss
    # baseline above the peak of the work being measured
    from matchmill.datasets.demo import ensure_demo_scene

    for w, h in SIZES:
        ensure_demo_scene(Path(args.data) / f"demo_{w}x{h}", seed=0, width=w, height=h)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in SIZES:
            size = [f"--width={w}", f"--height={h}"]
            cache = f"--cache={Path(tmp) / f'feats_{w}x{h}.npz'}"
            prop = _run("propose", common, [*size, cache], env)
            ref = {wr: _run("refine", common, [*size, cache, f"--width-regr={wr}"], env) for wr in (128, 512)}
            rows.append(((w, h), prop, ref))
        regr = {wr: _run("regressor", common, [f"--width-regr={wr}"], env) for wr in (512, 128)}
    elapsed = time.perf_counter() - start

    print(f"Patch2Pix chain cost, CPU, torch threads = {args.threads}, OMP_WAIT_POLICY = "
          f"{env.get('OMP_WAIT_POLICY', '(unset)')}, untrained nets, demo scene")
    print(f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; total {elapsed:.0f} s\n")
    print("| size    | stage                        | s / pair | peak MiB | matches / pair              |")
    print("|---------|------------------------------|---------:|---------:|-----------------------------|")
    for (w, h), prop, ref in rows:
        nc = f"{prop['proposals']:g} NCNet mutual (untrained)"
        print(f"| {w}x{h} | propose: backbone x2 + NCNet | {prop['pair_s']:8.3f} | {prop['peak_mib']:8.1f} "
              f"| {nc:<27} |")
        print(f"| {w}x{h} |   of which backbone / image  | {prop['backbone_image_s']:8.3f} |          |"
              "                             |")
        print(f"| {w}x{h} |   of which NCNet / pair      | {prop['ncnet_pair_s']:8.3f} |          |"
              "                             |")
        for wr in (128, 512):
            r = ref[wr]
            kept = f"{r['load']} in, {r['kept']:g} kept (c > 0.25)"
            print(f"| {w}x{h} | refine mid+fine, width {wr:<5} | {r['pair_s']:8.3f} | {r['peak_mib']:8.1f} "
                  f"| {kept:<27} |")
    print()
    print("| regressor (mid + fine) | params M | infer ms / match | train ms / anchor | infer peak MiB |")
    print("|------------------------|---------:|-----------------:|------------------:|---------------:|")
    for wr in (512, 128):
        r = regr[wr]
        print(f"| width {wr:<16} | {r['params_m']:8.2f} | {r['infer_ms']:16.3f} | {r['train_ms']:17.3f} | "
              f"{r['infer_peak_mib']:14.1f} |")
    ratio_i = regr[512]["infer_ms"] / regr[128]["infer_ms"]
    ratio_t = regr[512]["train_ms"] / regr[128]["train_ms"]
    print(f"| ratio 512 / 128        |          | {ratio_i:16.2f} | {ratio_t:17.2f} |                |")
    print(f"\n(inference on N = {regr[128]['n']} matches at 320x240 features, training steps of "
          f"{regr[128]['train_anchors']} anchors; best of {args.repeats} repeats; per pair: best of "
          f"{rows[0][1]['pairs']} pairs)")
    for (w, h), prop, ref in rows:
        share = ref[128]["pair_s"] / (prop["pair_s"] + ref[128]["pair_s"])
        print(f"{w}x{h}: refine (width 128) is {100 * share:.0f}% of propose + refine per pair; "
              f"refine load {ref[128]['load']} = one proposal per 1/16 cell of image A")
    return 0


if __name__ == "__main__":
    sys.exit(main())
