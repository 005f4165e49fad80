"""Figures of the correspondence oracle (matchmill/datasets/demo/oracle.py) on demo training scenes:
time of one dense 0 -> 1 map, share of visible pixels over view pairs, round-trip accuracy.

    python benchmarks/oracle_figures.py [--seeds 1000 1001] [--width 320 --height 240]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from matchmill.datasets.demo.oracle import DepthOracle
from matchmill.datasets.demo.view_pairs import render_views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--num-cameras", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    n = args.num_cameras
    shares = {1: [], 2: [], "all": []}
    round_trip = []
    timings = []
    for seed in args.seeds:
        views = render_views(seed, range(n), n, args.width, args.height)
        oracle = DepthOracle(views[0], views[1])
        oracle.dense()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            oracle.dense()
            timings.append(time.perf_counter() - t0)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                o = DepthOracle(views[i], views[j])
                xy1, vis = o.dense()
                shares["all"].append(vis.mean())
                if j - i in (1, 2):
                    shares[j - i].append(vis.mean())
                if j == i + 1 and vis.any():
                    start = np.argwhere(vis)[:, ::-1].astype(np.float64)
                    back, vb = o.reverse().true_match(xy1[vis].astype(np.float64))
                    round_trip.append(np.linalg.norm(back - start, axis=1)[vb])
    t = np.array(timings) * 1e3
    print(f"dense {args.width}x{args.height}: min {t.min():.1f} ms, median {np.median(t):.1f} ms ({len(t)} runs)")
    for key, label in [(1, "neighbours (i, i+1)"), (2, "(i, i+2)"), ("all", "all ordered pairs")]:
        s = np.array(shares[key])
        print(f"visible share, {label}: mean {s.mean():.3f}, median {np.median(s):.3f}, "
              f"min {s.min():.3f}, max {s.max():.3f}, zero {int((s == 0).sum())}/{len(s)}")
    e = np.concatenate(round_trip)
    print(f"round trip 0->1->0 (neighbours, mutually visible): median {np.median(e):.1e} px, "
          f"<0.01 px {np.mean(e < 0.01):.3f}, <1 px {np.mean(e < 1):.4f}")


if __name__ == "__main__":
    main()
