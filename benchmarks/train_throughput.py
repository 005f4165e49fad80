"""Training throughput on this machine, measured in one run: samples/s of `matchmill train` with 1
and 2 Ray Train workers for each model, against a plain single-process PyTorch loop over the same
samples and loss; the cost of one checkpoint save and of a resume.

What is compared (all in this one run, ratios printed):

- *plain loop*: what a user writes without matchmill: one process, the same data generation and
  loss functions (``matchmill.training.*_task`` called directly), ``loss.backward(); opt.step()``;
- *1 worker*: ``matchmill train`` with ``scaling.workers=1`` and all the CPUs (``cpus_per_worker``
  = ``--cpus``): Ray Train, log, validation and checkpoints every ``--epoch`` steps;
- *2 workers*: ``scaling.workers=2``, ``cpus_per_worker = --cpus / 2``, same global batch (DDP over gloo).

Throughput is taken from the run's Parquet log (steady state: the first logged window is left out)
and for the plain loop from a timer around the same number of steps (first step left out).
Checkpoint save = writing model, optimizer, RNG and state files (``save_checkpoint``) plus Ray
Train's upload, timed from the worker log; resume = a second ``fit`` on the same run name
(restore + startup) against a fresh ``fit`` of the same length.

Usage:  python benchmarks/train_throughput.py [--steps 12] [--models pump,ncnet,patch2pix] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.train_fixtures import demo_pairs_manifest  # noqa: E402

from matchmill.training.config import load_train_config  # noqa: E402
from matchmill.training.train_log import read_log  # noqa: E402

MODEL_OVERRIDES = {
    "pump": ["pump.synth.crop_size=96", "pump.synth.window_size=144", "pump.u_fraction=0.25", "pump.val_pairs=4",
             "train.batch_size=4"],
    "ncnet": ["ncnet.size=[320,240]", "ncnet.val_pairs=4", "train.batch_size=4"],
    "patch2pix": ["patch2pix.size=[320,240]", "patch2pix.ptmax=100", "patch2pix.val_pairs=4", "train.batch_size=2"],
}


def job(model: str, storage: Path, pairs: str, steps: int, epoch: int, workers: int, cpus: int, name: str) -> dict:
    extra = [f"storage=file://{storage}", f"run_name={name}", f"data.pairs={pairs}", f"data.images={pairs}",
             f"train.steps={steps}", f"train.epoch_steps={epoch}", "train.log_every=1", f"ray.num_cpus={cpus}",
             f"scaling.workers={workers}", f"scaling.cpus_per_worker={cpus / workers}"]
    return load_train_config(model, None, MODEL_OVERRIDES[model] + extra)


def log_rate(run_url: str, batch: int) -> float:
    df = read_log(run_url).to_pandas()
    train = df[df["kind"] == "train"].sort_values("step")
    t = train["time"].to_numpy()
    # steady state: from the 2nd logged step to the last, validation / checkpoint steps included
    return batch * (len(t) - 2) / (t[-1] - t[1]) if len(t) > 2 else float("nan")


def plain_loop(conf: dict, steps: int) -> float:
    """Samples/s of a one-process loop over the same samples and loss, no Ray, no log, no checkpoints."""
    from matchmill.training.tasks import make_task

    torch.set_num_threads(int(conf["scaling"]["cpus_per_worker"] * conf["scaling"]["workers"]))
    task = make_task(conf, torch.device("cpu"), 0, 1)
    task.setup_data()
    net = task.build_net()
    opt = task.make_optimizer(net)
    B = conf["train"]["batch_size"]
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        batch = task.local_batch(step, list(range(B)))
        loss, _ = task.loss(net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return B / statistics.mean(times[1:])


def checkpoint_cost(conf: dict) -> tuple[float, float]:
    """Seconds to write one checkpoint folder and to read it back into the net + optimiser."""
    from matchmill.models.weights import load_weights
    from matchmill.training.checkpoints import load_checkpoint, save_checkpoint
    from matchmill.training.tasks import make_task

    task = make_task(conf, torch.device("cpu"), 0, 1)
    task.setup_data()
    net = task.build_net()
    opt = task.make_optimizer(net)
    loss, _ = task.loss(net, task.local_batch(1, list(range(conf["train"]["batch_size"]))))
    loss.backward()
    opt.step()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_checkpoint(tmp, net, opt, {}, {"step": 1, "epoch": 0, "model": conf["model"]}, conf)
        save = time.perf_counter() - start
        start = time.perf_counter()
        ck = load_checkpoint(tmp)
        load_weights(net, ck["model"])
        opt.load_state_dict(ck["optimizer"])
        load = time.perf_counter() - start
    return save, load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--epoch", type=int, default=6, help="validation + checkpoint every N steps")
    ap.add_argument("--models", default="pump,ncnet,patch2pix")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    from matchmill.datasets.demo import ensure_demo_scene
    from matchmill.training.trainer import run_training

    work = Path(tempfile.mkdtemp(prefix="matchmill-train-bench-"))
    scene = work / "scene"
    ensure_demo_scene(scene, seed=0)
    pairs = demo_pairs_manifest(scene, work / "pairs.parquet", max_pairs=40)
    quiet = lambda *_: None  # noqa: E731
    rows = []
    for model in args.models.split(","):
        r = {"model": model}
        base = job(model, work / "runs", pairs, args.steps, args.epoch, 1, args.cpus, f"{model}-1w")
        B = base["train"]["batch_size"]
        r["plain"] = plain_loop(base, max(4, args.steps // 2))
        start = time.perf_counter()
        one = run_training(base, echo=quiet)
        r["fit_1w_s"] = time.perf_counter() - start
        r["1w"] = log_rate(one.run_url, B)
        two = run_training(job(model, work / "runs", pairs, args.steps, args.epoch, 2, args.cpus, f"{model}-2w"), echo=quiet)
        r["2w"] = log_rate(two.run_url, B)
        r["save_s"], r["load_s"] = checkpoint_cost(base)
        # resume: the 1-worker run continued by `--epoch` more steps vs a fresh run of that many steps
        more = job(model, work / "runs", pairs, args.steps + args.epoch, args.epoch, 1, args.cpus, f"{model}-1w")
        start = time.perf_counter()
        run_training(more, echo=quiet)
        r["resume_fit_s"] = time.perf_counter() - start
        fresh = job(model, work / "runs", pairs, args.epoch, args.epoch, 1, args.cpus, f"{model}-fresh")
        start = time.perf_counter()
        run_training(fresh, echo=quiet)
        r["fresh_fit_s"] = time.perf_counter() - start
        rows.append(r)
        print(r, flush=True)

    print(f"\ntraining throughput, {args.cpus} CPUs, {args.steps} steps (validation + checkpoint every {args.epoch}), "
          "samples/s (higher is better)")
    print(f"{'model':<10} {'plain loop':>10} {'1 worker':>9} {'2 workers':>10} {'1w/plain':>9} {'2w/1w':>7} "
          f"{'ckpt save':>10} {'ckpt load':>10} {'resume fit':>11} {'fresh fit':>10}")
    for r in rows:
        print(f"{r['model']:<10} {r['plain']:>10.2f} {r['1w']:>9.2f} {r['2w']:>10.2f} {r['1w'] / r['plain']:>9.2f} "
              f"{r['2w'] / r['1w']:>7.2f} {r['save_s']:>9.3f}s {r['load_s']:>9.3f}s {r['resume_fit_s']:>10.1f}s "
              f"{r['fresh_fit_s']:>9.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
