"""Driver peak memory of ``matchmill run`` against the number of pairs (it must not grow with them).

Each size runs the real CLI entry point in a fresh Python process over a generated pairs file
(``data.source=pairs_file``) on a small set of tiny generated images, through cheap stages (SIFT
on 96x72 images, mutual NN, identity refinement, RANSAC). The process reports its own
``VmHWM`` (peak resident set) from ``/proc/self/status`` when the run is done: that is the driver
only; Ray's GCS, raylet and worker processes are separate processes and not counted.

Usage (alone):  python benchmarks/driver_rss.py [--pairs 1000 10000] [--until verify] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"
IMAGE_SIZE = (96, 72)  # (width, height) of the generated images

#: Runs inside the fresh process: the CLI's own main(), then the process's peak and current RSS.
PROBE = """
import json, sys
from matchmill.cli import main
code = main(sys.argv[1:])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda key: int(status[key].split()[0])
print("DRIVER_MEMORY " + json.dumps({"code": code, "vm_hwm_kib": kib("VmHWM"), "vm_rss_kib": kib("VmRSS")}))
"""


@dataclass
class DriverMemory:
    pairs: int
    peak_mib: float  # VmHWM of the driver process
    final_mib: float  # VmRSS at the end of the run
    seconds: float


def images_needed(num_pairs: int) -> int:
    """Smallest n with n (n - 1) / 2 >= num_pairs."""
    n = 2
    while n * (n - 1) // 2 < num_pairs:
        n += 1
    return n


def make_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct textured PNGs (blurred noise + rectangles) of IMAGE_SIZE; returns names."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    names = []
    for i in range(count):
        name = f"im{i:05d}.png"
        names.append(name)
        if (folder / name).is_file():
            continue
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (3, 3), 0)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(image, (x0, y0), (x0 + int(rng.integers(4, 24)), y0 + int(rng.integers(4, 24))), color, -1)
        cv2.imwrite(str(folder / name), image)
    return names


def write_pairs_file(path: Path, names: list[str], num_pairs: int) -> Path:
    """The first ``num_pairs`` of all unordered pairs of ``names``, one ``name0 name1`` per line."""
    pairs = itertools.islice(itertools.combinations(names, 2), num_pairs)
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path


def measure_driver_memory(out: Path, num_pairs: int, until: str | None = None,
                          extra: tuple[str, ...] = ()) -> DriverMemory:
    """Run ``matchmill run`` over ``num_pairs`` pairs in a fresh process; its peak and final RSS."""
    images = out / "images"
    names = make_images(images, images_needed(num_pairs))
    shutil.rmtree(out / f"runs-{num_pairs}", ignore_errors=True)  # a fresh run, never a resumed one
    pairs_file = write_pairs_file(out / f"pairs-{num_pairs}.txt", names, num_pairs)
    argv = ["run", str(CONFIG), f"storage=file://{out}/runs-{num_pairs}", "data.source=pairs_file",
            f"data.pairs_file={pairs_file}", f"data.images_dir={images}", "extract.resize_max=96",
            "extract.max_keypoints=128", "extract.actors=2", "propose.actors=2", "verify.actors=2",
            "propose.batch_size=64", "refine.batch_size=64", "verify.batch_size=64", "verify.max_iters=1000",
            "part_rows=256", *extra]
    if until:
        argv += ["--until", until]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DRIVER_MEMORY ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"driver memory run ({num_pairs} pairs) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(lines[-1].split(" ", 1)[1])
    if report["code"] != 0:
        raise RuntimeError(f"matchmill run exited {report['code']}:\n{proc.stderr[-3000:]}")
    return DriverMemory(num_pairs, report["vm_hwm_kib"] / 1024, report["vm_rss_kib"] / 1024, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--until", default=None, help="stop after this stage (default: run every stage)")
    parser.add_argument("--out", default=str(REPO / "bench_out" / "driver_rss"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [measure_driver_memory(out, n, args.until) for n in args.pairs]
    for r in results:
        print(f"{r.pairs:>7} pairs: driver peak RSS {r.peak_mib:7.1f} MiB, final {r.final_mib:7.1f} MiB, {r.seconds:6.1f} s")
    print(f"peak ratio {results[-1].pairs} / {results[0].pairs} pairs: {results[-1].peak_mib / results[0].peak_mib:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
