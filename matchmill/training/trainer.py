"""The training driver: validate, start or join Ray, run a ``TorchTrainer``, report.

Everything a user can get wrong (config, manifests, storage, resources) is checked here before the
first step; the training data itself is read by the workers, never the driver.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from matchmill.manifests.storage import (
    StorageError,
    check_writable,
    exists,
    is_local,
    read_bytes,
    remove_tree,
    storage_env,
    url_to_fs,
)

from matchmill.pipeline.runtime import ResourceError

from .checkpoints import list_checkpoints, read_best, read_train_marker, write_train_marker
from .config import config_hash, run_url
from .loop import STOPPED_FILE, train_loop_per_worker
from .progress import ProgressPrinter

__all__ = ["TrainResult", "TrainingStopped", "run_training", "ray_storage"]

log = logging.getLogger(__name__)

#: Seconds a job that joins a cluster waits for the GPUs it needs to register.
CLUSTER_WAIT_SECONDS = 120.0


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (non-finite loss); the message names the step and the samples."""


@dataclass
class TrainResult:
    run_url: str
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # newest checkpoint URL
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def ray_storage(url: str):
    """``(storage_path, storage_filesystem)`` for Ray Train from an fsspec URL: a local path, or a
    pyarrow view of the same fsspec filesystem (so s3:// endpoints and credentials configured for
    fsspec, e.g. ``AWS_ENDPOINT_URL``, hold for checkpoints too)."""
    fs, path = url_to_fs(url)
    if is_local(fs):
        return path, None
    import pyarrow.fs as pafs

    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        import fsspec

        # explicit endpoint and credentials: the filesystem is pickled to Ray Train's controller and
        # workers, whose environment may predate this driver's (an embedded Ray started earlier)
        opts = dict(fs.storage_options)
        env = os.environ
        if "AWS_ENDPOINT_URL" in env and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = env["AWS_ENDPOINT_URL"]
        if "AWS_ACCESS_KEY_ID" in env and "key" not in opts:
            opts.update(key=env["AWS_ACCESS_KEY_ID"], secret=env.get("AWS_SECRET_ACCESS_KEY"))
        fs = fsspec.filesystem("s3", **opts, skip_instance_cache=True)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _init_ray(conf: dict, address: str | None, verbose: bool = False) -> None:
    """Start or join Ray; Ray's own INFO logs and the workers' output reach this console only with
    ``verbose`` (``-v``, matchmill/pipeline/verbosity.py; progress comes from the run's log, see :mod:`.progress`)."""
    import ray

    address = address or conf["ray"]["address"] or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose)
        else:
            # "local": a new embedded Ray, never one a `ray start` on this machine left running
            ray.init(address="local", num_cpus=conf["ray"]["num_cpus"], include_dashboard=False,
                     logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose)
    _check_resources(conf, CLUSTER_WAIT_SECONDS if address else 0.0)


def _check_resources(conf: dict, wait_seconds: float) -> None:
    import ray

    s = conf["scaling"]
    deadline = time.monotonic() + wait_seconds
    while True:
        res = ray.cluster_resources()
        gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 0.0)
        want_gpu, want_cpu = s["workers"] * s["gpus_per_worker"], s["workers"] * s["cpus_per_worker"]
        problem = None
        if want_gpu > gpus:
            problem = (f"scaling.gpus_per_worker={s['gpus_per_worker']:g} x {s['workers']} worker(s) needs {want_gpu:g} GPU(s) "
                       f"but the Ray cluster has {gpus:g}; set scaling.gpus_per_worker=0 to train on CPU")
        elif want_cpu > cpus:
            problem = (f"scaling.cpus_per_worker={s['cpus_per_worker']:g} x {s['workers']} worker(s) needs {want_cpu:g} CPU(s) "
                       f"but the Ray cluster has {cpus:g}")
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise ResourceError(problem)
        time.sleep(2.0)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (execution-only keys included: the user should know)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key}")
    return out


def _root_cause(exc: BaseException) -> str:
    """The innermost error text of a Ray Train failure (a worker's ValueError, ...), one line."""
    text = str(exc)
    for marker in ("ValueError: ", "ConfigError: ", "FileNotFoundError: ", "ImageError: ", "RuntimeError: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def run_training(conf: dict, address: str | None = None, echo=print, verbose: bool = False) -> TrainResult:
    """Train ``conf["model"]`` as configured; resume when the run already has checkpoints.

    Raises:
        StorageError: the checkpoint URL is not writable, or the run folder holds another model's run.
        ResourceError: the cluster lacks the GPUs / CPUs asked for.
        TrainingStopped: a non-finite loss stopped training (the last good checkpoint stays).
        RuntimeError: a worker failed for good (message: the worker's error).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    url = run_url(conf)
    check_writable(url)  # before anything else: an unwritable checkpoint URL fails here
    marker = read_train_marker(url)
    if marker is not None and marker.get("model") != conf["model"]:
        raise StorageError(f"{url} holds a {marker.get('model')} training run; choose another run_name")
    if exists(url) and marker is None and any(exists(f"{url}/{s}") for s in ("pairs", "verify")):
        raise StorageError(f"{url} holds a matchmill run, not a training run; choose another run_name")
    done = list_checkpoints(url)
    if done:
        echo(f"resuming {url} from step {done[-1].get('step')} ({len(done)} checkpoint(s))")
        changed = _changed_keys((marker or {}).get("conf") or {}, conf)
        if changed:
            echo(f"note: the config differs from the run's last start in {', '.join(changed)}; "
                 "training continues from the checkpoint with the new values")
    if exists(f"{url}/{STOPPED_FILE}"):
        remove_tree(f"{url}/{STOPPED_FILE}")
    write_train_marker(url, {"model": conf["model"], "config_hash": config_hash(conf), "conf": conf})

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints reach the console once, not twice
    _init_ray(conf, address, verbose)
    s, t = conf["scaling"], conf["train"]
    use_gpu = s["gpus_per_worker"] > 0
    resources = {"CPU": float(s["cpus_per_worker"])}
    if use_gpu:
        resources["GPU"] = float(s["gpus_per_worker"])
    storage_path, storage_fs = ray_storage(url.rsplit("/", 1)[0])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"conf": conf, "run_url": url, "env": storage_env()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=int(s["workers"]), use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=conf["run_name"],
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=int(t["keep_last"])),
            failure_config=FailureConfig(max_failures=int(t["max_failures"])),
        ),
    )
    try:
        with ProgressPrinter(url, int(t["steps"]), echo=echo):
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a worker's failure, told in one line
        raise RuntimeError(f"training failed: {_root_cause(exc)}") from exc
    if exists(f"{url}/{STOPPED_FILE}"):
        info = json.loads(read_bytes(f"{url}/{STOPPED_FILE}"))
        keys = ", ".join(info.get("keys", [])[:8])
        raise TrainingStopped(
            f"training stopped at step {info['step']}: {info['reason']} on samples [{keys}]; "
            f"the last good checkpoint (step {info.get('last_checkpoint_step')}) is kept in {url}"
        )
    checkpoints = list_checkpoints(url)
    metrics = dict(result.metrics or {})
    return TrainResult(
        run_url=url,
        step=int(metrics.get("step", checkpoints[-1]["step"] if checkpoints else 0)),
        metrics=metrics,
        checkpoint=checkpoints[-1]["url"] if checkpoints else None,
        checkpoints=checkpoints,
        best=read_best(url),
    )
