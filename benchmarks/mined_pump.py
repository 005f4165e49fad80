"""Does mining help PUMP? The CPU-sized ConvMixer trained on S (synthetic homography pairs, AP
loss) alone against S + U (the same, plus 0.3 x the uniqueness loss on mined pairs), same steps,
same seed, same S images; optionally a third run with the training set's SfM pairs as U.

Each run is ``matchmill train pump configs/shipped/train-pump.yaml`` with overrides; then every
run's best checkpoint (by validation MMA@3) goes through ``matchmill bench card`` on the held-out
demo seeds (pose AUC) and HPatches v_wormhole (MMA@3) with the ``pump-sift-mnn`` and ``pump``
presets. Prints one table, writes ``<out>/mined_pump.json``.

Usage:  python benchmarks/mined_pump.py --mined file:///.../runs/sift-scene/mine [--steps 400]
            [--out bench_out/mined_pump] [--sfm-u]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "shipped" / "train-pump.yaml"
METHODS = "pump-sift-mnn,pump"
DATASETS = "demo-heldout,hpatches-v_wormhole"


def train(out: Path, name: str, steps: int, u_fraction: float, pairs: str | None) -> tuple[str, float]:
    """One PUMP run; returns (run URL, wall seconds)."""
    cmd = ["matchmill", "train", "pump", str(CONFIG), f"storage=file://{out / 'train'}", f"run_name={name}",
           f"train.steps={steps}", f"train.epoch_steps={max(1, steps // 4)}", f"pump.u_fraction={u_fraction}"]
    if pairs:
        cmd.append(f"data.pairs={pairs}")
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return f"file://{out / 'train' / name}", time.perf_counter() - start


def validation_curve(run_url: str) -> list[tuple[int, float]]:
    from matchmill.training.train_log import read_log

    df = read_log(run_url).to_pandas()
    val = df[df["kind"] == "val"]
    return [(int(s), float(v)) for s, v in zip(val["step"], val["mma@3"])]


def card(out: Path, name: str, weights: str) -> dict:
    """The card's rows for one weights file: {dataset: {method: metrics}}."""
    folder = out / "card" / name
    overrides = [f"{m}:extract.weights={weights}" for m in METHODS.split(",")]
    cmd = ["matchmill", "bench", "card", "--out", str(folder), "--methods", METHODS, "--datasets", DATASETS,
           "--no-cost", *overrides]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    data = json.loads((folder / "card.json").read_text())
    return {d["key"]: {m: r.get("metrics") for m, r in d["methods"].items()} for d in data["datasets"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mined", required=True, help="mined-pairs manifest URL (matchmill mine's <run>/mine)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default=str(REPO / "bench_out" / "mined_pump"))
    parser.add_argument("--sfm-u", action="store_true", help="also train with the training set's SfM pairs as U")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    runs = [("s-only", 0.0, None), ("s+u-mined", 0.25, args.mined)]
    if args.sfm_u:
        runs.append(("s+u-sfm", 0.25, None))  # the config's own data.pairs: the training set's SfM pairs
    results = {}
    for name, u, pairs in runs:
        url, seconds = train(out, name, args.steps, u, pairs)
        curve = validation_curve(url)
        best = url.replace("file://", "") + "/best/model.safetensors"
        results[name] = {"run": url, "seconds": seconds, "val_mma3": curve, "card": card(out, name, best)}
        (out / "mined_pump.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.steps} steps x 8 samples, seed 0 (configs/shipped/train-pump.yaml); U = 2 of 8 samples")
    print("run          wall    val MMA@3 (last / best)   demo AUC@10 sift-mnn / dense   v_wormhole MMA@3 sift-mnn / dense")
    for name, r in results.items():
        last = r["val_mma3"][-1][1] if r["val_mma3"] else float("nan")
        best = max((v for _, v in r["val_mma3"]), default=float("nan"))
        demo, hp = r["card"].get("demo-heldout", {}), r["card"].get("hpatches-v_wormhole", {})

        def get(d, m, k):
            v = (d.get(m) or {}).get(k)
            return float("nan") if v is None else 100 * v

        print(f"{name:<12} {r['seconds'] / 60:4.0f}m   {last:.3f} / {best:.3f}            "
              f"{get(demo, 'pump-sift-mnn', 'auc@10'):5.1f} / {get(demo, 'pump', 'auc@10'):5.1f}             "
              f"{get(hp, 'pump-sift-mnn', 'mma@3'):5.1f} / {get(hp, 'pump', 'mma@3'):5.1f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
