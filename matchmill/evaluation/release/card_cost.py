"""The model card's CPU cost: one method's stage objects timed on demo pairs, in a child process.

:func:`run_cost` starts ``python -c '...; _cost_child()' IN.json OUT.json`` (no Ray, a fixed thread
count, no GPU); the child runs :func:`measure_cost` and records its peak memory. A measurement is
kept in ``OUT/cost/<method>.json`` and reused while its key (config, pairs, threads, code version)
holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from matchmill.evaluation.benchmarks.method_config import config_hash
from matchmill.manifests.commit import code_version
from matchmill.methods.registry import build_method
from matchmill.stages.extract import ExtractActor
from matchmill.stages.propose import check_matches
from matchmill.stages.threads import limit_threads
from matchmill.stages.verify import VerifyActor

#: Demo pairs of the cost measurement: (default, --quick).
COST_PAIRS = (5, 3)
COST_THREADS = 2
COST_TIMEOUT_S = 1800

COST_WHAT = (
    "CPU cost, measured in a separate child process per method (`python -c`, no Ray), "
    "PyTorch / OpenCV at {threads} threads (OMP_NUM_THREADS={threads}, OMP_WAIT_POLICY=PASSIVE, no GPU), "
    "on {pairs} held-out demo pairs at {width}x{height} (extract.resize_max={resize}). "
    "Per pair: load and extract both images + propose + refine + verify (RANSAC and metrics), wall clock "
    "(time.perf_counter), median over the pairs (the first pair, with any lazy initialisation, included). "
    "Model build = constructing the four stage objects (weights loaded). Peak RSS = the child's own high-water "
    "mark (VmHWM of /proc/self/status at its end: Python, imports, models, the largest pair; getrusage ru_maxrss is "
    "in card.json too, but on Linux it carries over fork + exec and so starts at the parent's RSS). "
    "A pipeline run extracts each unique image once, so its per-pair cost is lower. "
    "1-minute load average of the machine when measured: {load} (on {cores} cores)."
)


def _cost_child() -> None:
    """Entry point of the cost child: ``python -c '...; _cost_child()' IN.json OUT.json``."""
    in_path, out_path = sys.argv[1], sys.argv[2]
    job = json.loads(Path(in_path).read_text())
    try:
        result = {"status": "ok", "error": None, **measure_cost(job["conf"], job["pairs"], int(job["threads"]))}
    except Exception as exc:  # noqa: BLE001 - reported in the cost cell
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    result.update(peak_memory())
    Path(out_path).write_text(json.dumps(result))


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident set size, MiB.

    ``peak_rss_mib``: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's own
    address space), else ``ru_maxrss``. ``ru_maxrss_mib``: ``getrusage(RUSAGE_SELF).ru_maxrss``; on
    Linux it carries over fork + exec, so for a child it is at least the RSS its parent had when it
    started the child (a 120 MiB SIFT child of a 400 MiB parent reads 400): kept for reference.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return {"peak_rss_mib": hwm if hwm is not None else ru, "ru_maxrss_mib": ru,
            "peak_rss_source": "VmHWM" if hwm is not None else "ru_maxrss"}


def measure_cost(conf: dict, pairs: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Per-pair seconds of one method's stage objects, in this process (called by the child).

    The stage objects are built the way the stage actors build them (``build_method`` with the
    section of the resolved config; the extract stage's image loading, crop and resize included).
    """
    for stage in ("extract", "propose", "refine", "verify"):
        conf[stage]["num_cpus"] = float(threads)
        conf[stage]["num_gpus"] = 0.0
    start = time.perf_counter()
    extractor = ExtractActor(conf, "memory://unused", "cost")  # build_method("extract", ...) + image IO
    proposer = build_method("propose", conf["propose"])
    refiner = build_method("refine", conf["refine"])
    verifier = VerifyActor(conf)
    build_seconds = time.perf_counter() - start
    limit_threads(threads)  # torch is imported by now when a method uses it
    needs_features = getattr(refiner, "needs_features", False)
    per_pair, stages, matches_n = [], {"extract": [], "propose": [], "refine": [], "verify": []}, []
    for row in pairs:
        t0 = time.perf_counter()
        feats = [extractor.compute({"path": row["path" + s], "crop": row["crop" + s]})[0] for s in ("0", "1")]
        t1 = time.perf_counter()
        matches, scores = proposer(feats[0], feats[1])
        check_matches(matches, scores, "propose")
        t2 = time.perf_counter()
        extra = {"feats0": feats[0], "feats1": feats[1], "row": row} if needs_features else {}
        matches, scores = refiner(np.asarray(matches, np.float32).reshape(-1, 4),
                                  np.asarray(scores, np.float32).reshape(-1), **extra)
        check_matches(matches, scores, "refine")
        t3 = time.perf_counter()
        verifier.verify_one({**row, "matches": np.asarray(matches).reshape(-1, 4)})
        t4 = time.perf_counter()
        per_pair.append(t4 - t0)
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name].append(seconds)
        matches_n.append(len(matches))
    return {
        "pairs": len(per_pair),
        "threads": threads,
        "seconds_per_pair_median": statistics.median(per_pair),
        "seconds_first_pair": per_pair[0],
        "seconds_per_pair": per_pair,
        "stage_seconds_median": {k: statistics.median(v) for k, v in stages.items()},
        "build_seconds": build_seconds,
        "num_matches_median": statistics.median(matches_n),
    }


def _cost_key(conf: dict, pairs: list[dict[str, Any]], threads: int) -> str:
    ids = json.dumps([p["pair_id"] for p in pairs])
    return hashlib.sha1(f"{config_hash(conf, ids)}|{threads}|{code_version()}".encode()).hexdigest()[:16]


def run_cost(method: str, conf: dict, pairs: list[dict[str, Any]], out: Path, threads: int = COST_THREADS,
             timeout_s: float = COST_TIMEOUT_S) -> dict[str, Any]:
    """The cost of one method, measured in a child process (or read back from ``OUT/cost`` when
    the same config, pairs, threads and code version were measured before)."""
    cost_dir = out / "cost"
    cost_dir.mkdir(parents=True, exist_ok=True)
    key = _cost_key(conf, pairs, threads)
    cached = cost_dir / f"{method}.json"
    if cached.is_file():
        try:
            old = json.loads(cached.read_text())
            if old.get("key") == key and old.get("status") == "ok":
                return {**old, "reused": True}
        except ValueError:
            pass
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory(dir=cost_dir) as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps({"conf": conf, "pairs": pairs, "threads": threads}, default=str))
        code = "from matchmill.evaluation.release.card_cost import _cost_child; _cost_child()"
        load = os.getloadavg()
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(in_path), str(out_path)], env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
            if out_path.is_file():
                result = json.loads(out_path.read_text())
            else:
                tail = " ".join((proc.stderr or proc.stdout or "").split())[-600:]
                result = {"status": "failed", "error": f"child exited with code {proc.returncode}: {tail}"}
        except subprocess.TimeoutExpired:
            result = {"status": "failed", "error": f"cost measurement ran past {timeout_s:.0f}s"}
        result["child_seconds"] = time.perf_counter() - start
    result.update(key=key, method=method, load_average=[round(v, 2) for v in load], reused=False)
    cached.write_text(json.dumps(result, indent=1))
    return result
