"""The per-worker training loop that Ray Train runs (``train_loop_per_worker``).

Per worker: pick the device Ray gave it (``cuda:i`` or CPU), build the task and its net (same
seeded init everywhere), restore the newest checkpoint if Ray hands one over (resume) or the
``train.from`` weights (fine-tune), wrap the loss in DDP when there are several workers, then per
step: this worker's share of the global batch -> loss (AMP on GPU as configured) -> NaN check
across workers -> backward (DDP averages the gradients) -> step. Rank 0 writes the Parquet log
(flushed every ``log_every`` steps; the driver prints the console lines from it), validates every epoch, and sends each epoch's
checkpoint to Ray Train, which uploads it and keeps the newest ``keep_last``; the best
validation's weights go to ``<run>/best/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import torch

from matchmill.manifests.storage import write_bytes_atomic
from matchmill.models.device import autocast
from matchmill.models.weights import load_weights

from .checkpoints import load_checkpoint, save_checkpoint, weights_file, write_best
from .task import LossModule, local_indices
from .tasks import make_task
from .train_log import LogWriter

__all__ = ["train_loop_per_worker", "STOPPED_FILE"]

STOPPED_FILE = "stopped.json"


def _reduce_mean(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def _any_rank(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class NonFiniteOutput(RuntimeError):
    """The trained net produced inf / NaN (raised by a forward hook, before the loss can choke on it)."""


def _all_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def _finite_hook(module, inputs, output) -> None:
    if not _all_finite(output):
        raise NonFiniteOutput(f"{type(module).__name__} produced non-finite values")


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # Ray Train's per-report INFO lines
    os.environ.update(config.get("env") or {})  # storage endpoint / credentials of the driver
    conf, run_url = config["conf"], config["run_url"]
    t = conf["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(conf["scaling"]["cpus_per_worker"])))
    amp = t["amp"] if device.type == "cuda" else "none"

    task = make_task(conf, device, rank, world)
    task.setup_data()
    net = task.build_net()
    optimizer = task.make_optimizer(net)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))
    start, epoch, best = 0, 0, None

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume: weights, optimiser, scaler, RNG and step of the newest checkpoint
        with checkpoint.as_directory() as folder:
            saved = load_checkpoint(folder)
        load_weights(net, saved["model"], where="checkpoint")
        configured = [{k: g[k] for k in ("lr", "weight_decay") if k in g} for g in optimizer.param_groups]
        optimizer.load_state_dict(saved["optimizer"])
        for group, values in zip(optimizer.param_groups, configured):
            group.update(values)  # moments from the checkpoint, hyper-parameters from this run's config
        if saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch_cpu"])
        start, epoch, best = int(saved["state"]["step"]), int(saved["state"]["epoch"]), saved["state"].get("best")
        if rank == 0:
            print(f"[train] resumed from step {start} (epoch {epoch})", flush=True)
    elif t["from"]:
        load_weights(net, weights_file(t["from"]))
        if rank == 0:
            print(f"[train] fine-tuning from {t['from']}", flush=True)

    module = LossModule(net, task.loss)
    model = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    B, steps = int(t["batch_size"]), int(t["steps"])
    epoch_steps = int(t["epoch_steps"] or max(1, math.ceil(task.num_train_samples() / B)))
    mine = local_indices(B, rank, world)
    logger = LogWriter(run_url) if rank == 0 else None
    window_start, window_steps = time.perf_counter(), 0

    for step in range(start + 1, steps + 1):
        batch = task.local_batch(step, mine)
        net.train()
        hook = net.register_forward_hook(_finite_hook)
        try:
            with autocast(device, amp):
                loss, parts = model(batch)
            local_bad = not bool(torch.isfinite(loss.detach()).all())
        except NonFiniteOutput:
            local_bad = True
        finally:
            hook.remove()
        loss_bad = _any_rank(local_bad, world)  # agreed before any backward (DDP would hang otherwise)
        if not loss_bad:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        # a non-finite loss, or weights that this step made non-finite: stop, naming the step and
        # every worker's samples; the last good checkpoint stays the newest one
        reason = "non-finite net output or loss" if loss_bad else None
        if reason is None and not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            reason = "non-finite weights after the optimiser step"
        if _any_rank(reason is not None, world):
            keys = [k for ks in _gather(list(batch.keys), world) for k in ks]
            if rank == 0:
                info = {"step": step, "reason": reason or "non-finite values on another worker", "keys": keys,
                        "last_checkpoint_step": start}
                write_bytes_atomic(f"{run_url}/{STOPPED_FILE}", json.dumps(info, indent=1).encode())
                print(f"[train] stopped at step {step}: {info['reason']} on samples {keys}", flush=True)
                if logger is not None:
                    logger.flush()
            ray.train.report({"step": step - 1, "stopped": 1.0}, checkpoint=None)
            return
        names = sorted(parts)
        values = _reduce_mean([float(loss.detach())] + [float(parts[k]) for k in names], world)
        window_steps += 1
        logged = step % int(t["log_every"]) == 0 or step == steps
        skipped = sum(_gather(len(task.skipped), world)) if logged else 0
        if logger is not None:
            row = {"loss": values[0], **dict(zip(names, values[1:])), "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            logger.add("train", step, row)
        if logged:
            elapsed = time.perf_counter() - window_start
            rate = B * window_steps / max(elapsed, 1e-9)
            if logger is not None:
                logger.rows[-1].update(samples_per_s=rate, skipped_images=float(skipped))
                logger.flush()  # the driver prints the console line from it (matchmill/training/progress.py)
            window_start, window_steps = time.perf_counter(), 0
        if step % epoch_steps == 0 or step == steps:
            epoch = step // epoch_steps if step % epoch_steps == 0 else epoch
            metrics: dict[str, Any] = {"step": step, "epoch": epoch, "loss": values[0]}
            skipped_all = {p: e for d in _gather(dict(task.skipped), world) for p, e in d.items()}
            if rank == 0:
                val = task.validate(net)
                improved = _better(val.get(task.metric), best, task.metric_mode)
                best = val.get(task.metric) if improved else best
                metrics.update({f"val/{k}": v for k, v in val.items()}, skipped_images=len(skipped_all))
                logger.add("val", step, {**val, "epoch": epoch})
                logger.flush()
                state = {"step": step, "epoch": epoch, "model": conf["model"], "val": val, "metric": task.metric,
                         "metric_mode": task.metric_mode, "best": best, "world_size": world,
                         "skipped_images": skipped_all, "time": time.time()}
                with tempfile.TemporaryDirectory(prefix="matchmill-ckpt-") as folder:
                    save_checkpoint(folder, net, optimizer, scaler.state_dict() if scaler.is_enabled() else {}, state, conf)
                    if improved:
                        write_best(run_url, folder)
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics, checkpoint=None)
            start = step
    if logger is not None:
        logger.flush()

