"""matchmill against the loop a user would write (issue 11): exhaustive SIFT matching of one scene.

    python benchmarks/beat_the_loop.py [--quick] [--cameras 24] [--width 640 --height 480]
                                       [--actors 2] [--repeat 1] [--work DIR] [--json OUT]

The job: all N(N-1)/2 pairs of an N-image generated scene (``matchmill demo-data``), listed in a
SuperGlue-style ``name0 name1`` pairs file; SIFT 2048 keypoints at 640 px (RootSIFT), mutual NN
with Lowe ratio 0.9, pydegensac fundamental matrix, ``--actors`` actors per Ray stage.

It runs, each in a fresh process:

1. ``python3 -m matchmill run configs/demo.yaml`` with pairs-file overrides (wall clock of the whole
   process: imports, Ray start-up, every stage), ``--repeat`` times;
2. an "empty" matchmill job (1 pair of 2 tiny images): the fixed start-up cost;
3. the plain loop (``benchmarks/plain_loop.py``: OpenCV + NumPy + pydegensac, no matchmill) in its
   ``per_pair`` mode (both images of every pair extracted: 2 extractions per pair, immatch style) and
   its ``cached`` mode (each image extracted once, hloc style).

Then it compares, per pair, matchmill's verified matches (read from the verify stage's Parquet
files with pyarrow) with the loop's: matches as sets of (x0, y0, x1, y1) rounded to 0.01 px, and
the RANSAC inlier counts. Figures (table on stdout, JSON in ``<work>/beat_the_loop.json``):

- speed-up ``loop_per_pair / matchmill`` (target >= 5x) and ``loop_cached / matchmill`` (>= 1.5x),
  process wall clock against process wall clock;
- marginal cost per pair ``(wall(N pairs) - wall(empty)) / N`` against the cached loop's compute per
  pair divided by the cores (``--actors``): the ratio should be <= 1.2, i.e. once started, matchmill
  spreads the same work over the cores with little loss.

Reading the agreement: matches should agree on every pair (same keypoints, same mutual NN). Inlier
counts can still differ on a few pairs, for two reasons seen so far. (1) matchmill maps keypoints to
original pixels as float32 ``(x + 0.5) * s - 0.5`` even when ``s = 1``, which moves them by up to one
float32 ulp (~3e-5 px at 640 px); the match sets agree at 0.01 px, but pydegensac's result can move by
an inlier or two. (2) pydegensac's random state is process-wide (it seeds libc srandom(), by its own
notes), apparently shared with other threads of a Ray Data actor process: with the executor of commit
756ac80 its seed did not make inliers reproducible there (identical input: 195-204 inliers over 200 calls in an actor pool, 199
every time in a plain process). ``--repeat 2`` compares two matchmill runs with each other.

The script drives matchmill through its CLI only (subprocess, run from the work folder, so that
``PYTHONPATH`` can point it at another matchmill checkout) and reads its output files; it imports no
matchmill code, so it keeps working while the executor changes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
CONFIG = REPO / "configs" / "demo.yaml"
sys.path.insert(0, str(BENCHMARKS))

from plain_loop import LoopResult, load_npz  # noqa: E402  (no matchmill import there)

RAY_STAGES = ("extract", "propose", "refine", "verify")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET_PER_PAIR = 5.0  # loop_per_pair / matchmill
TARGET_CACHED = 1.5  # loop_cached / matchmill
TARGET_MARGINAL = 1.2  # matchmill marginal s/pair over (cached loop s/pair / cores)


@dataclass(frozen=True)
class Job:
    """What is measured (full run vs --quick)."""

    cameras: int = 24
    width: int = 640
    height: int = 480
    actors: int = 2
    resize_max: int = 640
    max_keypoints: int = 2048
    ratio: float = 0.9

    @property
    def pairs(self) -> int:
        return self.cameras * (self.cameras - 1) // 2


FULL = Job()
QUICK = Job(cameras=10)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


# ---------------------------------------------------------------- inputs

def scene_images(scene: Path) -> Path | None:
    """The images folder ``matchmill demo-data`` writes (``<out>/<scene>/images``), if there."""
    for folder in sorted(scene.glob("*/images")) + [scene / "images"]:
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return folder
    return None


def image_names(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def ensure_scene(scene: Path, cameras: int, width: int, height: int) -> Path:
    """Generate the scene with the CLI unless a complete one is cached there; its images folder."""
    images = scene_images(scene)
    if images is not None and len(image_names(images)) == cameras:
        return images
    shutil.rmtree(scene, ignore_errors=True)
    cmd = [sys.executable, "-m", "matchmill", "demo-data", str(scene), "--cameras", str(cameras),
           "--width", str(width), "--height", str(height)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=scene.parent)
    images = scene_images(scene)
    if proc.returncode != 0 or images is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail(proc.stdout)}\n{tail(proc.stderr)}")
    return images


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path


# ---------------------------------------------------------------- matchmill side

def matchmill_overrides(job: Job, pairs_file: Path, images: Path, storage: Path, run_name: str,
                        extra: list[str] = ()) -> list[str]:
    """CLI overrides of the job (keys as in matchmill/pipeline/config.py)."""
    return ["data.source=pairs_file", f"data.pairs_file={pairs_file}", f"data.images_dir={images}",
            f"extract.resize_max={job.resize_max}", f"extract.max_keypoints={job.max_keypoints}",
            f"propose.ratio={job.ratio}", "verify.geometry=fundamental",
            *(f"{stage}.actors={job.actors}" for stage in RAY_STAGES),
            f"storage=file://{storage}", f"run_name={run_name}", *extra]


def run_matchmill(job: Job, pairs_file: Path, images: Path, storage: Path, run_name: str,
                  extra: list[str] = (), timeout: float | None = None, config: Path = CONFIG) -> dict:
    """One ``matchmill run`` in a fresh process, from scratch (the run folder is deleted first, or
    matchmill would resume it); {"seconds", "ok", "error", "run_dir", "log"}."""
    run_dir = storage / run_name
    shutil.rmtree(run_dir, ignore_errors=True)
    storage.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "matchmill", "run", str(config),
           *matchmill_overrides(job, pairs_file, images, storage, run_name, extra)]
    log = storage / f"{run_name}.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=storage, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", str(exc.stdout or ""), str(exc.stderr or "") + f"\ntimed out after {timeout} s"
    seconds = time.perf_counter() - start
    log.write_text(f"$ {' '.join(cmd)}\n# rc={rc} wall={seconds:.2f}s\n--- stdout\n{out}\n--- stderr\n{err}\n")
    error = None if rc == 0 else f"rc={rc}: {tail(err or out, 6)}"
    return {"seconds": seconds, "ok": rc == 0, "error": error, "run_dir": str(run_dir), "log": str(log)}


def _parquet_columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    try:
        return set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - a half-written or foreign file: not ours
        return set()


def find_verified_dir(run_dir: Path) -> Path | None:
    """The folder of the run holding per-pair ``num_inliers`` Parquet parts (``<run>/verify`` today;
    found by content so that a renamed stage folder still works)."""
    candidates = []
    for folder in sorted({p.parent for p in run_dir.rglob("*.parquet")}):
        cols = _parquet_columns(next(folder.glob("*.parquet")))
        if {"num_inliers", "matches"} <= cols:
            candidates.append(folder)
    if not candidates:
        return None
    return next((c for c in candidates if c.name == "verify"), candidates[-1])


def read_matchmill(run_dir: Path) -> dict[tuple[str, str], dict]:
    """(name0, name1) -> {"num_matches", "num_inliers", "matches" (N, 4) float32, "status"}."""
    import numpy as np
    import pyarrow.parquet as pq

    folder = find_verified_dir(run_dir)
    if folder is None:
        raise FileNotFoundError(f"{run_dir}: no Parquet folder with per-pair num_inliers")
    out = {}
    for part in sorted(folder.glob("*.parquet")):
        cols = _parquet_columns(part)
        wanted = [c for c in ("pair_id", "image0", "image1", "path0", "path1", "num_matches", "num_inliers",
                              "matches", "status", "error") if c in cols]
        for row in pq.read_table(part, columns=wanted).to_pylist():
            if "path0" in row:
                key = (Path(row["path0"]).name, Path(row["path1"]).name)
            elif "image0" in row:
                key = (Path(row["image0"]).name, Path(row["image1"]).name)
            else:
                key = tuple(Path(n).name for n in row["pair_id"].split("|"))
            matches = np.asarray(row.get("matches") or [], np.float32).reshape(-1, 4)
            out[key] = {"num_matches": row.get("num_matches", len(matches)), "num_inliers": row.get("num_inliers"),
                        "matches": matches, "status": row.get("status", "ok"), "error": row.get("error")}
    return out


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Per-stage wall times from the commit markers, if the run writes them (best effort)."""
    out = {}
    for marker in sorted(run_dir.glob("*/_COMMITTED.json")):
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("seconds"), (int, float)):
            out[marker.parent.name] = float(data["seconds"])
    return out


# ---------------------------------------------------------------- loop side

def run_plain_loop(job: Job, pairs_file: Path, images: Path, mode: str, out: Path) -> tuple[float, LoopResult]:
    """``benchmarks/plain_loop.py`` in a fresh process: (process wall seconds, its results)."""
    npz = out / f"loop-{mode}.npz"
    cmd = [sys.executable, str(BENCHMARKS / "plain_loop.py"), "--pairs", str(pairs_file), "--images", str(images),
           "--mode", mode, "--resize-max", str(job.resize_max), "--max-keypoints", str(job.max_keypoints),
           "--ratio", str(job.ratio), "--save", str(npz)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail(proc.stderr)}")
    return seconds, load_npz(npz)


# ---------------------------------------------------------------- comparison

def match_set(matches) -> set[tuple[float, float, float, float]]:
    import numpy as np

    return set(map(tuple, np.round(np.asarray(matches, np.float64).reshape(-1, 4), 2).tolist()))


def compare(loop: LoopResult, ours: dict[tuple[str, str], dict]) -> dict:
    """Per pair agreement of matchmill's verified rows with the loop's results."""
    import numpy as np

    same_matches = same_inliers = missing = failed = 0
    d_matches, d_inliers, differing = [], [], []
    for key, ref in loop.pairs.items():
        row = ours.get(key)
        if row is None:
            missing += 1
            continue
        if row["status"] != "ok":
            failed += 1
            continue
        a, b = match_set(ref.matches), match_set(row["matches"])
        equal = a == b
        same_matches += equal
        same_inliers += int(row["num_inliers"] or 0) == ref.num_inliers
        d_matches.append(abs(int(row["num_matches"] or 0) - ref.num_matches))
        d_inliers.append(abs(int(row["num_inliers"] or 0) - ref.num_inliers))
        if not equal and len(differing) < 5:
            differing.append({"pair": " ".join(key), "loop": ref.num_matches, "matchmill": int(row["num_matches"] or 0),
                              "only_loop": len(a - b), "only_matchmill": len(b - a)})
    n = len(loop.pairs)
    compared = len(d_matches)
    return {"pairs": n, "compared": compared, "missing": missing, "failed": failed,
            "matches_equal_fraction": same_matches / n if n else None,
            "mean_abs_delta_matches": float(np.mean(d_matches)) if d_matches else None,
            "inliers_equal_fraction": same_inliers / n if n else None,
            "mean_abs_delta_inliers": float(np.mean(d_inliers)) if d_inliers else None,
            "examples_differing": differing}


def loops_agree(a: LoopResult, b: LoopResult) -> bool:
    return a.pairs.keys() == b.pairs.keys() and all(
        match_set(a.pairs[k].matches) == match_set(b.pairs[k].matches) and a.pairs[k].num_inliers == b.pairs[k].num_inliers
        for k in a.pairs)


# ---------------------------------------------------------------- the measurement

def measure(work: Path, job: Job, repeat: int = 1, extra: list[str] = (), timeout: float | None = None,
            config: Path = CONFIG, log=print) -> dict:
    """Every figure of the benchmark as one dict (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    runs = work / "runs"
    start = time.perf_counter()
    res: dict = {"job": asdict(job), "pairs": job.pairs, "repeat": repeat, "config": str(config),
                 "overrides_extra": list(extra), "cpus": os.cpu_count()}

    log(f"scene: {job.cameras} views {job.width}x{job.height} ...")
    images = ensure_scene(work / f"scene-{job.cameras}-{job.width}x{job.height}", job.cameras, job.width, job.height)
    names = image_names(images)
    pairs = list(itertools.combinations(names, 2))
    pairs_file = write_pairs(work / f"pairs-{len(names)}.txt", pairs)
    res["images"], res["pairs"] = len(names), len(pairs)
    tiny_images = ensure_scene(work / "scene-tiny", 3, 160, 120)
    tiny_file = write_pairs(work / "pairs-empty.txt", [tuple(image_names(tiny_images)[:2])])

    res["matchmill"], res["empty"] = [], []
    for r in range(repeat):
        log(f"matchmill, empty job (1 pair of 2 tiny images), run {r + 1}/{repeat} ...")
        empty = run_matchmill(job, tiny_file, tiny_images, runs, f"empty-{r}", extra, timeout, config)
        res["empty"].append(empty)
        log(f"    {empty['seconds']:.1f} s" + ("" if empty["ok"] else f"  FAILED {empty['error']}"))
        log(f"matchmill, {len(pairs)} pairs, run {r + 1}/{repeat} ...")
        full = run_matchmill(job, pairs_file, images, runs, f"full-{len(names)}-{r}", extra, timeout, config)
        if full["ok"]:
            full["stage_seconds"] = stage_seconds(Path(full["run_dir"]))
        res["matchmill"].append(full)
        log(f"    {full['seconds']:.1f} s" + ("" if full["ok"] else f"  FAILED {full['error']}"))

    log(f"plain loop, per_pair ({2 * len(pairs)} extractions) ...")
    per_pair_s, per_pair = run_plain_loop(job, pairs_file, images, "per_pair", work)
    log(f"    {per_pair_s:.1f} s")
    log(f"plain loop, cached ({len(names)} extractions) ...")
    cached_s, cached = run_plain_loop(job, pairs_file, images, "cached", work)
    log(f"    {cached_s:.1f} s")
    res["loop"] = {"per_pair": {"process_seconds": per_pair_s, **per_pair.summary()},
                   "cached": {"process_seconds": cached_s, **cached.summary()},
                   "modes_agree": loops_agree(per_pair, cached)}

    read = []
    for full in res["matchmill"]:
        if full["ok"]:
            try:
                ours = read_matchmill(Path(full["run_dir"]))
                full["comparison"] = compare(cached, ours)
                read.append(ours)
            except (OSError, ValueError, KeyError) as exc:
                full["comparison"] = {"error": f"{type(exc).__name__}: {exc}"}
    if len(read) >= 2:  # run-to-run reproducibility of matchmill itself
        first, second = read[0], read[1]
        common = first.keys() & second.keys()
        res["matchmill_runs_agree"] = {
            "pairs": len(common),
            "matches_differ": sum(match_set(first[k]["matches"]) != match_set(second[k]["matches"]) for k in common),
            "inliers_differ": sum(first[k]["num_inliers"] != second[k]["num_inliers"] for k in common)}

    ok_full = [f["seconds"] for f in res["matchmill"] if f["ok"]]
    ok_empty = [e["seconds"] for e in res["empty"] if e["ok"]]
    wall = min(ok_full) if ok_full else None  # least disturbed run on a shared machine
    empty_wall = min(ok_empty) if ok_empty else None
    n = len(pairs)
    cores = job.actors
    loop_cached_per_pair = cached.seconds / n  # compute of the cached loop, in its process
    marginal = (wall - empty_wall) / n if wall is not None and empty_wall is not None else None
    res["figures"] = {
        "matchmill_seconds": wall,
        "matchmill_seconds_all": [f["seconds"] if f["ok"] else None for f in res["matchmill"]],
        "empty_seconds": empty_wall,
        "empty_seconds_all": [e["seconds"] if e["ok"] else None for e in res["empty"]],
        "loop_per_pair_seconds": per_pair_s,
        "loop_cached_seconds": cached_s,
        "loop_cached_compute_per_pair": loop_cached_per_pair,
        "cores": cores,
        "matchmill_marginal_per_pair": marginal,
        "marginal_ratio": ratio(marginal, loop_cached_per_pair / cores),
        "speedup_vs_per_pair": ratio(per_pair_s, wall),
        "speedup_vs_cached": ratio(cached_s, wall),
    }
    res["seconds"] = time.perf_counter() - start
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return res


def _f(value, fmt: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def report_rows(res: dict) -> list[tuple[str, str, str]]:
    """(measurement, value, target) rows of the table."""
    f, loop, n = res["figures"], res["loop"], res["pairs"]
    rows = [
        (f"matchmill run, {n} pairs of {res['images']} images (process wall)",
         " / ".join(_f(s, ".1f", " s") for s in f["matchmill_seconds_all"]), ""),
        ("matchmill empty job, 1 tiny pair (fixed start-up)", " / ".join(_f(s, ".1f", " s") for s in f["empty_seconds_all"]), ""),
        (f"plain loop per_pair ({loop['per_pair']['extractions']} extractions, process wall)", _f(f["loop_per_pair_seconds"], ".1f", " s"), ""),
        (f"plain loop cached ({loop['cached']['extractions']} extractions, process wall)", _f(f["loop_cached_seconds"], ".1f", " s"), ""),
        ("speed-up loop_per_pair / matchmill", _f(f["speedup_vs_per_pair"], ".2f", "x"), f">= {TARGET_PER_PAIR:g}x"),
        ("speed-up loop_cached / matchmill", _f(f["speedup_vs_cached"], ".2f", "x"), f">= {TARGET_CACHED:g}x"),
        ("matchmill marginal s/pair = (wall - empty) / pairs", _f(f["matchmill_marginal_per_pair"], ".3f", " s"), ""),
        (f"cached loop compute s/pair / {f['cores']} cores", _f(f["loop_cached_compute_per_pair"] / f["cores"], ".3f", " s"), ""),
        ("marginal ratio matchmill / (loop / cores)", _f(f["marginal_ratio"], ".2f", "x"), f"<= {TARGET_MARGINAL:g}x"),
        ("plain loop: per_pair and cached give the same matches + inliers", "yes" if loop["modes_agree"] else "NO", "yes"),
    ]
    if "matchmill_runs_agree" in res:
        a = res["matchmill_runs_agree"]
        rows.append(("matchmill run 1 vs run 2: pairs whose matches / inliers differ",
                     f"{a['matches_differ']} / {a['inliers_differ']} of {a['pairs']}", "0 / 0"))
    for i, run in enumerate(res["matchmill"]):
        c = run.get("comparison")
        if not c:
            continue
        if "error" in c:
            rows.append((f"run {i + 1}: matchmill vs loop", c["error"][:60], ""))
            continue
        rows.append((f"run {i + 1}: pairs with the same match set as the loop (0.01 px)",
                     f"{_f(c['matches_equal_fraction'], '.1%')} (mean |d matches| {_f(c['mean_abs_delta_matches'])})", "100%"))
        rows.append((f"run {i + 1}: pairs with the same inlier count as the loop",
                     f"{_f(c['inliers_equal_fraction'], '.1%')} (mean |d inliers| {_f(c['mean_abs_delta_inliers'])})", "100%"))
        if c["missing"] or c["failed"]:
            rows.append((f"run {i + 1}: pairs missing / failed in matchmill", f"{c['missing']} / {c['failed']}", "0 / 0"))
    return rows


def print_report(res: dict) -> None:
    rows = report_rows(res)
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print("\n" + "measurement".ljust(w0) + "  " + "value".ljust(w1) + "  target")
    print("-" * w0 + "  " + "-" * w1 + "  ------")
    for key, value, target in rows:
        print(key.ljust(w0) + "  " + value.ljust(w1) + "  " + target)
    for i, run in enumerate(res["matchmill"]):
        if not run["ok"]:
            print(f"\nmatchmill run {i + 1} failed (log: {run['log']}):\n{run['error']}")
    for i, run in enumerate(res["empty"]):
        if not run["ok"]:
            print(f"\nmatchmill empty job {i + 1} failed (log: {run['log']}):\n{run['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=None, help=f"views of the scene (default {FULL.cameras}, --quick {QUICK.cameras})")
    parser.add_argument("--width", type=int, default=FULL.width)
    parser.add_argument("--height", type=int, default=FULL.height)
    parser.add_argument("--actors", type=int, default=FULL.actors, help="actors per Ray stage (and the cores the loop is divided by)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.cameras} views instead of {FULL.cameras}")
    parser.add_argument("--repeat", type=int, default=1, help="matchmill runs (each reported; the fastest is used)")
    parser.add_argument("--work", default=str(REPO / "bench_out" / "beat_the_loop"), help="scene cache, runs, logs")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a matchmill run is abandoned")
    parser.add_argument("--config", default=str(CONFIG), help="matchmill job file the overrides apply to")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra matchmill override (repeatable), e.g. --set extract.batch_size=8")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    job = Job(cameras=args.cameras or base.cameras, width=args.width, height=args.height, actors=args.actors)
    work = Path(args.work)
    res = measure(work, job, repeat=args.repeat, extra=args.extra, timeout=args.timeout,
                  config=Path(args.config).resolve(), log=lambda msg: print(msg, flush=True))
    res["mode"] = "quick" if args.quick else "full"
    text = json.dumps(res, indent=2, default=str)
    (work / "beat_the_loop.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print_report(res)
    print(f"\n{res['seconds'] / 60:.1f} min on {res['cpus']} CPUs, load average at the end "
          f"{res['load_average'][0]:.1f}; figures in {work / 'beat_the_loop.json'}")
    return 0 if all(r["ok"] for r in res["matchmill"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
