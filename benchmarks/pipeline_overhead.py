"""Pipeline overhead on the demo scene, measured in one run (ratios, not absolute times).

Prints:
- extraction calls vs unique images (must be equal: extraction runs once per image);
- wall time of ``matchmill run`` / summed compute time of the same stage code called in a plain
  in-process loop on the same pairs (the pipeline-overhead ratio);
- extract-stage throughput with 2 actors vs 1.

Usage:  python benchmarks/pipeline_overhead.py [--cameras 14] [--pairs 40] [--out bench_out]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=14, help="views in the generated demo scene")
    parser.add_argument("--extract-cameras", type=int, default=48, help="views for the 1-vs-2 actor extract test")
    parser.add_argument("--pairs", type=int, default=40, help="pairs per scene")
    parser.add_argument("--out", default=str(REPO / "bench_out"), help="scratch folder (deleted first)")
    args = parser.parse_args()

    from matchmill.datasets.demo_scene import ensure_demo_scene
    from matchmill.manifests.commit import read_stage
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.inprocess import run_inprocess

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scene = out / "scene"
    ensure_demo_scene(scene, num_cameras=args.cameras)
    common = [f"data.root={scene}", f"pairs.max_pairs_per_scene={args.pairs}"]

    # 1. the real CLI, end to end, in a fresh process (Ray start-up included)
    cmd = [sys.executable, "-m", "matchmill", "run", str(CONFIG), f"storage=file://{out}/runs", *common]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n")
        return 1
    run_url = f"file://{out}/runs/demo"
    pairs = read_stage(run_url, "pairs", "pairs")
    unique = set(pairs.column("image0").to_pylist()) | set(pairs.column("image1").to_pylist())
    features = read_stage(run_url, "extract", "features")

    # 2. the same stage code in a plain loop on the same pairs
    conf = load_config(CONFIG, [f"storage=file://{out}/inproc", *common])
    inproc = run_inprocess(conf, f"file://{out}/inproc/demo", pairs)
    compute = sum(inproc.seconds.values())

    # 3. extract throughput, 1 vs 2 actors: marginal images/s between a small and a large scene,
    #    so that the fixed cost (actor start-up, model load) cancels out
    sizes = (args.extract_cameras // 3, args.extract_cameras)
    scenes = {}
    for n in sizes:
        scenes[n] = out / f"scene-{n}"
        ensure_demo_scene(scenes[n], num_cameras=n, width=640, height=480)
    throughput = {}
    for actors in (1, 2):
        timing = {}
        for n in sizes:
            conf = load_config(CONFIG, [f"storage=file://{out}/actors{actors}-{n}", f"data.root={scenes[n]}",
                                        "pairs.max_pairs_per_scene=5000", f"extract.actors={actors}",
                                        "extract.batch_size=2", "extract.resize_max=640",
                                        "extract.max_keypoints=8192", "extract.contrast_threshold=0.01"])
            timing[n] = extract_seconds(conf)
        throughput[actors] = (timing[sizes[1]][0] - timing[sizes[0]][0]) / (timing[sizes[1]][1] - timing[sizes[0]][1])

    print(f"pairs: {pairs.num_rows}   unique images: {len(unique)}")
    print(f"extraction calls: {features.num_rows}   unique images: {len(unique)}   "
          f"equal: {features.num_rows == len(unique)}")
    print(f"matchmill run wall time / in-process compute time: {wall:.1f}s / {compute:.1f}s = "
          f"{wall / compute:.1f}x  (stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in inproc.seconds.items()) + ")")
    print(f"extract throughput (marginal, {sizes[0]} -> {sizes[1]} images of 640x480): "
          f"1 actor {throughput[1]:.2f} img/s, 2 actors {throughput[2]:.2f} img/s, "
          f"ratio {throughput[2] / throughput[1]:.2f}x")
    return 0


def extract_seconds(conf: dict) -> tuple[int, float]:
    """(images extracted, wall seconds) of the extract stage alone."""
    from matchmill.pipeline.runner import run_pipeline

    result = run_pipeline(conf, until="extract", echo=lambda _: None)
    report = next(r for r in result.stages if r.stage == "extract")
    return report.computed, report.seconds


if __name__ == "__main__":
    raise SystemExit(main())
