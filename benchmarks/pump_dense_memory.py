"""Peak memory and time of single-scale dense PUMP matching on CPU, next to the official formula.

For each image size (both images the same size; random smooth 128-D unit descriptors, so the
timing is the matcher's alone) and each ``memory_budget_mb`` (the default, a small one, and 0 =
unchunked where it fits), one fresh subprocess runs :func:`match_single_scale` once and reports:

- ``peak``: the process's peak RSS during matching minus its RSS just before (``/proc/self/status``
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; if the reset is refused, the
  difference of ``VmHWM`` after and before, which can only under-estimate). ``tracemalloc`` would
  not see torch's allocations;
- ``cpu`` / ``wall``: process CPU time and wall time of the call (the machine is shared: CPU time
  is the steadier figure);
- ``rows``: atomic patch rows per chunk, ``stored``: bytes of the stored levels (>= 2);
- ``official``: the naver/pump README formula ``W1 H1 W2 H2 * 1.333 * 2 / 16`` bytes (fp16, C0 and
  all levels held at once), and ``C0 fp32``: the level-0 volume alone in float32.

Usage:  python benchmarks/pump_dense_memory.py [--threads 2] [--sizes 160x120,240x180,320x240]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MiB = 2.0**20
DEFAULT_SIZES = "160x120,240x180,320x240"
SMALL_BUDGET_MB = 64.0
UNCHUNKED_MAX_PIXELS = 240 * 180  # budget 0 (whole C0 + temporaries) only up to this size


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(width: int, height: int, budget: float, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from matchmill.models.pump.dense_match import DEFAULT_CONF, build_pyramid_from_conf, match_single_scale

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    d1 = F.normalize(F.avg_pool2d(torch.randn(1, 128, height, width, generator=g), 5, 1, 2), dim=1)[0].contiguous()
    d2 = F.normalize(F.avg_pool2d(torch.randn(1, 128, height, width, generator=g), 5, 1, 2), dim=1)[0].contiguous()
    conf = {**DEFAULT_CONF, "memory_budget_mb": budget}
    with torch.no_grad():  # chunking plan and stored size (build only, then discarded)
        pyr = build_pyramid_from_conf(d1, d2, conf)
        rows, stored, levels = pyr.chunk_rows, pyr.stored_bytes(), pyr.top_level
        del pyr
    reset = _reset_peak()
    before_rss, before_hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
    cpu, wall = time.process_time(), time.perf_counter()
    matches = match_single_scale(d1, d2, conf)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak_kib = _status_kib("VmHWM") - (before_rss if reset else before_hwm)
    return {
        "size": f"{width}x{height}",
        "budget_mb": budget,
        "peak_mb": peak_kib / 1024.0,
        "peak_exact": reset,
        "cpu_s": cpu,
        "wall_s": wall,
        "rows": rows,
        "grid_rows": height // 4,
        "levels": levels,
        "stored_mb": stored / MiB,
        "matches": int(len(matches)),
        "official_mb": width * height * width * height * 1.333 * 2 / 16 / MiB,
        "c0_fp32_mb": (height // 4) * (width // 4) * width * height * 4 / MiB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated WxH")
    parser.add_argument("--worker", nargs=3, metavar=("W", "H", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        w, h, budget = int(args.worker[0]), int(args.worker[1]), float(args.worker[2])
        print(json.dumps(worker(w, h, budget, args.threads)))
        return

    from matchmill.models.pump.dense_match import DEFAULT_CONF

    default_budget = float(DEFAULT_CONF["memory_budget_mb"])
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    header = (
        f"{'size':>8} {'budget':>7} {'rows':>9} {'lvls':>4} {'stored':>8} {'peak':>9} {'cpu':>7} {'wall':>7} "
        f"{'matches':>7} {'official':>9} {'C0 fp32':>8} {'peak/official':>13}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        budgets = [default_budget, SMALL_BUDGET_MB] + ([0.0] if w * h <= UNCHUNKED_MAX_PIXELS else [])
        for budget in budgets:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker", str(w), str(h), str(budget)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            label = "none" if budget == 0 else f"{budget:g}"
            print(
                f"{r['size']:>8} {label:>7} {r['rows']:>4}/{r['grid_rows']:<4} {r['levels']:>4} {r['stored_mb']:>6.1f}MB "
                f"{r['peak_mb']:>7.0f}MB {r['cpu_s']:>6.1f}s {r['wall_s']:>6.1f}s {r['matches']:>7} "
                f"{r['official_mb']:>7.0f}MB {r['c0_fp32_mb']:>6.0f}MB {r['peak_mb'] / r['official_mb']:>13.2f}"
                + ("" if r["peak_exact"] else "  (peak not reset: lower bound)"),
                flush=True,
            )
    print(
        "\npeak = peak RSS during match_single_scale minus RSS before it; official = W1*H1*W2*H2*1.333*2/16 bytes "
        "(naver/pump README, fp16, whole pyramid); rows = atomic patch rows per chunk / all rows; "
        f"budget 'none' = unchunked (only up to {UNCHUNKED_MAX_PIXELS} px)."
    )


if __name__ == "__main__":
    main()
