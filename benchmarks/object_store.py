"""The demo job on ``file://`` against ``s3://`` (moto's S3 server on loopback), without and with
injected faults: wall time of each, ratios measured in this one run, fault counts, equal results.

Usage:  python benchmarks/object_store.py [--pairs 24] [--fault-rate 0.1] [--repeats 1]

The S3 runs go through :class:`tests.helpers.s3_loopback.FaultProxy` (also with ``--fault-rate 0``, so
that the proxy's own cost is in both S3 figures and the faults' cost is their difference).
Embedded Ray with 2 CPUs, started once before the runs, and one uncounted warm-up run (Ray's
start-up and first worker processes are in no figure); the kinds alternate within each repeat.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=24, help="pairs.max_pairs_per_scene of the demo")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of S3 requests that fail or stall")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each kind (the median is reported)")
    args = parser.parse_args(argv)

    import ray
    import s3fs

    from matchmill.datasets.demo import ensure_demo_scene
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.runner import run_pipeline
    from tests.helpers.runs import assert_same_results, run_results
    from tests.helpers.s3_loopback import LoopbackS3

    work = Path(tempfile.mkdtemp(prefix="matchmill-object-store-"))
    demo = work / "demo"
    ensure_demo_scene(demo, seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    base = [f"data.root={demo}", f"pairs.max_pairs_per_scene={args.pairs}", "part_rows=8"]
    times: dict[str, list[float]] = {"file": [], "s3": [], "s3+faults": []}
    reference = None
    counts = {}
    with LoopbackS3(fault_rate=0.0, seed=0) as s3:
        s3.create_bucket("runs")
        os.environ.update(s3.env())
        # warm-up (not counted): the first run pays for Ray's worker processes and imports
        run_pipeline(load_config(REPO / "configs" / "demo.yaml", [f"storage=file://{work}/runs", "run_name=warm-up", *base]),
                     echo=lambda _: None)
        for i in range(args.repeats):
            for kind in times:
                storage = f"file://{work}/runs" if kind == "file" else "s3://runs/bench"
                s3.set_fault_rate(args.fault_rate if kind == "s3+faults" else 0.0)
                s3fs.S3FileSystem.clear_instance_cache()
                conf = load_config(REPO / "configs" / "demo.yaml", [f"storage={storage}", f"run_name={kind.replace('+', '-')}-{i}", *base])
                before = dict(s3.counts)
                start = time.perf_counter()
                result = run_pipeline(conf, echo=lambda _: None)
                times[kind].append(time.perf_counter() - start)
                results = run_results(result.run_url)
                if reference is None:
                    reference = results
                else:
                    assert_same_results(results, reference)
                counts[kind] = {k: v - before.get(k, 0) for k, v in s3.counts.items()}
    ray.shutdown()
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"demo job, {args.pairs} pairs per scene, 2-CPU embedded Ray, {args.repeats} run(s) each (median)")
    print(f"{'storage':<11} {'wall s':>7} {'x file':>7}  requests / injected faults")
    for kind, seconds in median.items():
        faults = {k: v for k, v in counts.get(kind, {}).items() if k != "requests" and v}
        extra = "" if kind == "file" else f"  {counts[kind].get('requests', 0)} / {sum(faults.values())} {faults or ''}"
        print(f"{kind:<11} {seconds:7.1f} {seconds / median['file']:7.2f}{extra}")
    print("results: every run equal to the first, row by row (timing columns aside)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
