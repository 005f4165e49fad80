"""matchmill performance suite: one command, every figure a ratio measured in this one run.

    python benchmarks/perf_suite.py [--quick] [--out bench_out/perf]      (or: make perf)

(a) per-stage throughput of a ``matchmill run`` (CLI, fresh process) and of the same stage code
    in a plain in-process loop, and the pipeline-overhead ratio (run wall time / compute time);
(b) extract throughput with 2 actors vs 1 (marginal images/s, start-up cancelled out);
(c) extraction calls vs unique images on an exhaustive pair list (all N(N-1)/2 pairs of the demo
    scene): matchmill extracts N times, a pair-at-a-time loop N(N-1) times;
(d) speed-up of matchmill over a sequential immatch-style loop (benchmarks/sequential_loop.py) on
    the same pairs with the same stage code, for the SIFT, Patch2Pix and PUMP chains
    (ResNet34 + NCNet + CPU-sized Patch2Pix, small images, few pairs); both must produce the same
    matches per pair;
(e) driver peak RSS (VmHWM of the driver process alone) for 1k vs 100k pairs (quick: 10k) through cheap stages
    (benchmarks/driver_rss.py); the ratio must stay near 1;
(f) matchmill against the loop a user writes (benchmarks/beat_the_loop.py, issue 11): all pairs of
    a 640x480 scene, SIFT 2048 + mutual NN 0.9 + pydegensac F, 2 actors per stage, against an
    OpenCV/NumPy/pydegensac script with no matchmill in it (benchmarks/plain_loop.py), per pair
    (2 extractions per pair) and cached (one per image): speed-ups (targets >= 5x and >= 1.5x),
    marginal cost per pair against the cached loop's compute per pair per core (target <= 1.2),
    and per-pair agreement of matches and inliers.

Reading (d): every Ray stage pays a fixed start-up (its actor processes start, import their
libraries and build the method: seconds on a small machine; printed under (a) as the time of the
identity refine stage, which computes nothing). A job whose whole work takes less than a few
stage start-ups runs faster as a plain loop; matchmill's gain grows with the job, from extracting
each image once (N instead of N(N-1) calls on an exhaustive list) and from running actors in
parallel across the cluster.

The machine is shared, so absolute times vary between runs; ratios from one run are what to read.
``--quick`` shrinks (a)-(d) and (f) and stops (e) after the propose stage; the figures are also written
to ``<out>/perf_suite.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from beat_the_loop import Job as LoopJob  # noqa: E402
from beat_the_loop import measure as measure_beat_the_loop  # noqa: E402
from driver_rss import measure_driver_memory  # noqa: E402
from pipeline_overhead import CONFIG, RAY_STAGES, measure_actor_scaling, measure_overhead, run_cli  # noqa: E402
from sequential_loop import run_sequential  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (full run vs --quick)."""

    overhead_cameras: int  # (a) demo scene views
    overhead_pairs: int  # (a) pairs per scene
    scaling_cameras: int  # (b) views of the larger extract scene
    scaling_size: tuple[int, int]  # (b) rendered image size (width, height)
    sift_cameras: int  # (c, d) exhaustive SIFT pairs over this many views
    patch2pix_cameras: int  # (d) exhaustive Patch2Pix pairs over this many views
    patch2pix_size: tuple[int, int]  # (d) Patch2Pix image size
    rss_pairs: tuple[int, int]  # (e) pair counts compared
    rss_until: str | None  # (e) last stage run
    loop_cameras: int  # (f) exhaustive pairs over this many views, against the plain loop
    loop_size: tuple[int, int]  # (f) image size (width, height)


FULL = Sizes(14, 40, 48, (640, 480), 14, 8, (320, 240), (1000, 100000), "verify", 24, (640, 480))
QUICK = Sizes(10, 20, 24, (640, 480), 8, 5, (240, 180), (1000, 10000), "propose", 10, (640, 480))

#: Execution keys of the matchmill side of (d): every Ray stage with one actor per core.
TWO_ACTORS = [f"{s}.actors=2" for s in RAY_STAGES] + [f"{s}.num_cpus=1" for s in RAY_STAGES]
PATCH2PIX = ["extract.method=resnet34", "propose.method=ncnet", "refine.method=patch2pix", "refine.cpu_sized=true"]
PUMP = ["extract.method=pump", "propose.method=pump-pyramid"]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def exhaustive_pairs(scene: Path, out: Path) -> tuple[Path, Path, int, int]:
    """A pairs file with all N(N-1)/2 pairs of the demo scene's images; (file, images dir, N, pairs)."""
    images = next(scene.glob("*/images"))
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    pairs = list(itertools.combinations(names, 2))
    path = out / f"exhaustive-{len(names)}.txt"
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path, images, len(names), len(pairs)


def compare_chain(out: Path, name: str, scene: Path, chain: list[str], resize: int) -> dict:
    """(c) + (d) for one chain: matchmill (CLI, fresh process) vs the sequential loop, same pairs."""
    from matchmill.manifests.commit import read_commit, read_stage
    from matchmill.pipeline.config import load_config

    pairs_file, images, n_images, n_pairs = exhaustive_pairs(scene, out)
    overrides = [f"storage=file://{out}/{name}", f"run_name={name}", "data.source=pairs_file",
                 f"data.pairs_file={pairs_file}", f"data.images_dir={images}", f"extract.resize_max={resize}",
                 *chain, *TWO_ACTORS]
    wall, _ = run_cli(["run", str(CONFIG), *overrides])
    run_url = f"file://{out}/{name}/{name}"
    from matchmill.pipeline.runner import run_seconds

    stage_seconds = run_seconds(run_url)  # the streamed stages' shared execution counted once
    verified = read_stage(run_url, "verify", columns=["pair_id", "num_matches", "num_inliers"])
    pairs = read_stage(run_url, "pairs")

    conf = load_config(CONFIG, overrides)
    loop = run_sequential(conf, pairs)
    ours = dict(zip(verified.column("pair_id").to_pylist(), verified.column("num_matches").to_pylist()))
    return {
        "chain": name,
        "images": n_images,
        "pairs": n_pairs,
        "image_size": resize,
        "matchmill_extract_calls": read_commit(run_url, "extract").rows,
        "loop_extract_calls": loop.extract_calls,
        "matchmill_cli_seconds": wall,
        "matchmill_stage_seconds": stage_seconds,
        "loop_seconds": loop.seconds,
        "same_matches": ours == loop.num_matches,
        "speedup_stages": ratio(loop.seconds, stage_seconds),
        "speedup_cli": ratio(loop.seconds, wall),
    }


def section_overhead(out: Path, sizes: Sizes) -> dict:
    from matchmill.datasets.demo import ensure_demo_scene

    scene = out / "scene-overhead"
    ensure_demo_scene(scene, num_cameras=sizes.overhead_cameras)
    r = measure_overhead(out / "overhead", [f"data.root={scene}", f"pairs.max_pairs_per_scene={sizes.overhead_pairs}"])
    stages = {}
    # extract runs alone; propose -> refine -> verify stream as one execution, measured as one
    groups = {"extract": ("extract",), "propose+refine+verify": ("propose", "refine", "verify")}
    for name, members in groups.items():
        rows, ray_s = r.stage_rows[members[0]], r.stage_seconds[members[0]]
        loop_s = sum(r.inprocess_seconds[m] for m in members)
        stages[name] = {"rows": rows, "matchmill_seconds": ray_s, "matchmill_rows_per_s": ratio(rows, ray_s),
                        "inprocess_seconds": loop_s, "inprocess_rows_per_s": ratio(rows, loop_s),
                        "overhead": ratio(ray_s, loop_s)}
    return {"pairs": r.pairs, "unique_images": r.unique_images, "extract_calls": r.extract_rows,
            "cli_seconds": r.wall_seconds, "compute_seconds": r.compute_seconds,
            "overhead": ratio(r.wall_seconds, r.compute_seconds),
            "stage_overhead": ratio(r.run_seconds, r.compute_seconds), "stages": stages}


def print_report(res: dict) -> None:
    a, b, (sift, *learned), e = res["overhead"], res["scaling"], res["chains"], res["driver_rss"]
    print(f"\n(a) stage throughput, {a['pairs']} pairs / {a['unique_images']} images (demo scene), "
          "matchmill run vs the same stage code in-process")
    print(f"    {'stage':<22} {'rows':>6} {'matchmill s':>12} {'rows/s':>8} {'in-proc s':>10} {'rows/s':>8} {'ratio':>6}")
    for stage, s in a["stages"].items():
        busy = s["inprocess_seconds"] >= 0.05
        print(f"    {stage:<22} {s['rows']:>6} {s['matchmill_seconds']:>12.2f} {s['matchmill_rows_per_s']:>8.1f} "
              f"{s['inprocess_seconds']:>10.2f} " + (f"{s['inprocess_rows_per_s']:>8.1f} {s['overhead']:>5.2f}x"
                                                     if busy else f"{'-':>8} {'-':>6}"))
    print(f"(b) extract throughput {b['images']} images {b['size']}: 1 actor {b['1']:.2f} img/s, "
          f"2 actors {b['2']:.2f} img/s")
    print(f"(e) driver peak RSS: " + ", ".join(f"{r['pairs']} pairs {r['peak_mib']:.0f} MiB" for r in e["runs"])
          + f" (through {e['until'] or 'metrics'})")
    rows = [
        ("pipeline overhead: `matchmill run` wall / in-process compute", f"{a['overhead']:.2f}x"),
        ("  same, stage wall times only (no process / Ray start-up)", f"{a['stage_overhead']:.2f}x"),
        ("extract throughput, 2 actors / 1 actor", f"{b['ratio']:.2f}x"),
        (f"extraction calls / unique images, exhaustive {sift['pairs']} pairs of {sift['images']} images",
         f"{sift['matchmill_extract_calls']} / {sift['images']} = "
         f"{ratio(sift['matchmill_extract_calls'], sift['images']):.2f}"),
        ("  sequential loop: extraction calls / unique images",
         f"{sift['loop_extract_calls']} / {sift['images']} = {ratio(sift['loop_extract_calls'], sift['images']):.2f}"),
    ]
    for c in (sift, *learned):
        rows.append((f"speed-up vs sequential loop, {c['chain']} ({c['pairs']} pairs, {c['image_size']} px): "
                     "stages / CLI wall", f"{c['speedup_stages']:.2f}x / {c['speedup_cli']:.2f}x"))
        rows.append((f"  {c['chain']}: same matches per pair as the loop", "yes" if c["same_matches"] else "NO"))
    rows.append((f"driver peak RSS, {e['runs'][1]['pairs']} / {e['runs'][0]['pairs']} pairs", f"{e['ratio']:.3f}"))
    rows += beat_the_loop_rows(res["beat_the_loop"])
    width = max(len(k) for k, _ in rows)
    print("\n" + "measurement".ljust(width) + "  ratio")
    print("-" * width + "  " + "-" * 24)
    for key, value in rows:
        print(key.ljust(width) + "  " + value)


def beat_the_loop_rows(f_res: dict) -> list[tuple[str, str]]:
    """(f) rows of the summary table; n/a where the matchmill run failed."""
    f, n = f_res["figures"], f_res["pairs"]

    def fmt(value, spec=".2f", unit="x"):
        return "n/a" if value is None else f"{value:{spec}}{unit}"

    rows = [(f"beat the loop ({n} pairs of {f_res['images']} images): loop_per_pair / matchmill (target >= 5x)",
             fmt(f["speedup_vs_per_pair"])),
            ("  loop_cached / matchmill (target >= 1.5x)", fmt(f["speedup_vs_cached"])),
            (f"  marginal s/pair, matchmill / (cached loop / {f['cores']} cores) (target <= 1.2x)", fmt(f["marginal_ratio"])),
            ("  matchmill empty job (fixed start-up) / whole run", f"{fmt(f['empty_seconds'], '.1f', ' s')} / "
                                                                    f"{fmt(f['matchmill_seconds'], '.1f', ' s')}")]
    runs = [r for r in f_res["matchmill"] if r.get("comparison") and "error" not in r["comparison"]]
    if runs:
        c = runs[0]["comparison"]
        rows.append(("  pairs with the loop's match set / inlier count", f"{c['matches_equal_fraction']:.1%} / "
                                                                         f"{c['inliers_equal_fraction']:.1%}"))
    for r in f_res["matchmill"]:
        if not r["ok"]:
            rows.append(("  matchmill run failed", (r["error"] or "").splitlines()[-1][:60]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scenes; driver RSS through propose only")
    parser.add_argument("--out", default=str(REPO / "bench_out" / "perf"), help="scratch folder (deleted first)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    from matchmill.datasets.demo import ensure_demo_scene

    start = time.perf_counter()
    res: dict = {"mode": "quick" if args.quick else "full", "sizes": asdict(sizes)}
    print("(a) pipeline overhead ...", flush=True)
    res["overhead"] = section_overhead(out, sizes)

    print("(c, d) SIFT chain vs sequential loop ...", flush=True)
    sift_scene = out / "scene-sift"
    ensure_demo_scene(sift_scene, num_cameras=sizes.sift_cameras)
    sift = compare_chain(out, "sift", sift_scene, ["extract.method=sift"], 320)
    print("(d) Patch2Pix chain vs sequential loop ...", flush=True)
    p2p_scene = out / "scene-patch2pix"
    width, height = sizes.patch2pix_size
    ensure_demo_scene(p2p_scene, num_cameras=sizes.patch2pix_cameras, width=width, height=height)
    p2p = compare_chain(out, "patch2pix", p2p_scene, PATCH2PIX, max(width, height))
    print("(d) PUMP chain vs sequential loop ...", flush=True)
    pump = compare_chain(out, "pump", p2p_scene, PUMP, max(width, height))
    res["chains"] = [sift, p2p, pump]

    print("(e) driver peak RSS ...", flush=True)
    runs = [asdict(measure_driver_memory(out / "driver_rss", n, sizes.rss_until)) for n in sizes.rss_pairs]
    res["driver_rss"] = {"until": sizes.rss_until, "runs": runs, "ratio": ratio(runs[1]["peak_mib"], runs[0]["peak_mib"])}

    print("(f) matchmill vs the loop a user writes ...", flush=True)
    width, height = sizes.loop_size
    res["beat_the_loop"] = measure_beat_the_loop(out / "beat_the_loop", LoopJob(cameras=sizes.loop_cameras, width=width,
                                                                                height=height),
                                                 log=lambda msg: print("    " + msg, flush=True))

    print("(b) 2 actors vs 1 ...", flush=True)
    throughput = measure_actor_scaling(out / "scaling", sizes.scaling_cameras, *sizes.scaling_size, repeats=2)
    res["scaling"] = {"images": sizes.scaling_cameras, "size": "x".join(map(str, sizes.scaling_size)),
                      "1": throughput[1], "2": throughput[2], "ratio": ratio(throughput[2], throughput[1])}
    res["seconds"] = time.perf_counter() - start
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other users of the machine show here
    res["cpus"] = os.cpu_count()

    (out / "perf_suite.json").write_text(json.dumps(res, indent=2, default=str))
    print_report(res)
    print(f"\n{res['mode']} suite: {res['seconds'] / 60:.1f} min on {res['cpus']} CPUs, load average at the end "
          f"{res['load_average'][0]:.1f} / {res['load_average'][2]:.1f} (1 / 15 min); figures in {out / 'perf_suite.json'}")
    return 0 if all(c["same_matches"] for c in res["chains"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
