"""Pipeline overhead on the demo scene, measured in one run (ratios, not absolute times).

Prints:
- extraction calls vs unique images (must be equal: extraction runs once per image);
- wall time of ``matchmill run`` / summed compute time of the same stage code called in a plain
  in-process loop on the same pairs (the pipeline-overhead ratio);
- extract-stage throughput with 2 actors vs 1.

The measurements are functions (:func:`measure_overhead`, :func:`measure_actor_scaling`) that
``benchmarks/perf_suite.py`` reuses.

Usage:  python benchmarks/pipeline_overhead.py [--cameras 14] [--pairs 40] [--out bench_out]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"
from matchmill.pipeline.graph import RAY_STAGES  # noqa: E402 - the stage specs are the one list of stages


@dataclass
class OverheadResult:
    """One ``matchmill run`` (CLI, fresh process) and the same stage code in a plain loop."""

    pairs: int
    unique_images: int
    extract_rows: int  # rows of the extract manifest = extraction calls
    wall_seconds: float  # the whole CLI process: imports, Ray start, every stage, metrics
    stage_rows: dict[str, int] = field(default_factory=dict)  # per stage, from its commit marker
    stage_seconds: dict[str, float] = field(default_factory=dict)  # per stage wall time in the run
    inprocess_seconds: dict[str, float] = field(default_factory=dict)  # same stage code, no Ray
    run_seconds: float = 0.0  # the run's stage executions, the streamed stages' shared one counted once

    @property
    def compute_seconds(self) -> float:
        return sum(self.inprocess_seconds.values())


def run_cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m matchmill ARGS`` in a fresh process; (wall seconds, process). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "matchmill", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"matchmill {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, proc


def measure_overhead(out: Path, overrides: list[str], config: Path = CONFIG) -> OverheadResult:
    """Run the CLI end to end into ``out/runs``, then the same stages in-process into ``out/inproc``."""
    from matchmill.manifests.commit import read_commit, read_stage
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.inprocess import run_inprocess

    wall, _ = run_cli(["run", str(config), f"storage=file://{out}/runs", *overrides])
    conf = load_config(config, [f"storage=file://{out}/runs", *overrides])
    run_url = f"file://{out}/runs/{conf['run_name']}"
    pairs = read_stage(run_url, "pairs")
    unique = set(pairs.column("image0").to_pylist()) | set(pairs.column("image1").to_pylist())
    result = OverheadResult(pairs.num_rows, len(unique), read_commit(run_url, "extract").rows, wall)
    for stage in RAY_STAGES:
        commit = read_commit(run_url, stage)
        result.stage_rows[stage], result.stage_seconds[stage] = commit.rows, commit.seconds
    from matchmill.pipeline.runner import run_seconds

    result.run_seconds = run_seconds(run_url)

    conf = load_config(config, [f"storage=file://{out}/inproc", *overrides])
    inproc = run_inprocess(conf, f"file://{out}/inproc/{conf['run_name']}", pairs)
    result.inprocess_seconds = dict(inproc.seconds)
    return result


def measure_actor_scaling(out: Path, cameras: int, width: int = 640, height: int = 480,
                          actors: tuple[int, ...] = (1, 2), repeats: int = 1) -> dict[int, float]:
    """Marginal extract throughput (images/s) per actor count, between a scene of cameras // 3 and
    one of ``cameras`` views, so that the fixed cost (actor start-up, model load) cancels out.
    With ``repeats`` > 1 every configuration runs that many times (interleaved) and the fastest
    run counts: on a shared machine it is the least disturbed one."""
    from matchmill.datasets.demo import ensure_demo_scene
    from matchmill.pipeline.config import load_config

    sizes = (cameras // 3, cameras)
    scenes = {}
    for n in sizes:
        scenes[n] = out / f"scene-{n}"
        ensure_demo_scene(scenes[n], num_cameras=n, width=width, height=height)
    timing: dict[tuple[int, int], tuple[int, float]] = {}
    for repeat in range(repeats):
        for count in actors:
            for n in sizes:
                conf = load_config(CONFIG, [f"storage=file://{out}/actors{count}-{n}-{repeat}", f"data.root={scenes[n]}",
                                            "pairs.max_pairs_per_scene=5000", f"extract.actors={count}",
                                            "extract.batch_size=2", f"extract.resize_max={max(width, height)}",
                                            "extract.max_keypoints=8192", "extract.contrast_threshold=0.01"])
                images, seconds = extract_seconds(conf)
                if (count, n) not in timing or seconds < timing[count, n][1]:
                    timing[count, n] = (images, seconds)
    throughput = {}
    for count in actors:
        (small_images, small_s), (big_images, big_s) = timing[count, sizes[0]], timing[count, sizes[1]]
        throughput[count] = (big_images - small_images) / (big_s - small_s)
    return throughput


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=14, help="views in the generated demo scene")
    parser.add_argument("--extract-cameras", type=int, default=48, help="views for the 1-vs-2 actor extract test")
    parser.add_argument("--pairs", type=int, default=40, help="pairs per scene")
    parser.add_argument("--out", default=str(REPO / "bench_out"), help="scratch folder (deleted first)")
    args = parser.parse_args()

    from matchmill.datasets.demo import ensure_demo_scene

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scene = out / "scene"
    ensure_demo_scene(scene, num_cameras=args.cameras)
    try:
        r = measure_overhead(out, [f"data.root={scene}", f"pairs.max_pairs_per_scene={args.pairs}"])
    except RuntimeError as exc:
        print(exc)
        return 1
    throughput = measure_actor_scaling(out, args.extract_cameras)
    sizes = (args.extract_cameras // 3, args.extract_cameras)

    print(f"pairs: {r.pairs}   unique images: {r.unique_images}")
    print(f"extraction calls: {r.extract_rows}   unique images: {r.unique_images}   "
          f"equal: {r.extract_rows == r.unique_images}")
    print(f"matchmill run wall time / in-process compute time: {r.wall_seconds:.1f}s / {r.compute_seconds:.1f}s = "
          f"{r.wall_seconds / r.compute_seconds:.1f}x  (stages: "
          + ", ".join(f"{k} {v:.2f}s" for k, v in r.inprocess_seconds.items()) + ")")
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
