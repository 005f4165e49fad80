"""The Ray runtime: embedded local Ray by default, a cluster with ``--address`` / ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
import time

from .graph import RAY_STAGES

log = logging.getLogger(__name__)

#: Seconds a run that joins a cluster waits for the GPUs / custom resources it needs to register.
CLUSTER_WAIT_SECONDS = 120.0


class ResourceError(RuntimeError):
    """The cluster cannot provide what the config asks for (e.g. GPUs on a CPU-only machine)."""


def init_ray(conf: dict, address: str | None = None, verbose: bool = False) -> None:
    """Start or join Ray once per process; configure Ray Data's progress output.

    Ray's INFO chatter (Python loggers, Ray Data's console handler, the driver's C++ advice lines)
    stays off the console unless ``verbose``; see :mod:`matchmill.pipeline.console`. Progress bars
    show only on a terminal, when ``ray.progress_bars`` is true and ``RAY_DATA_DISABLE_PROGRESS_BARS``
    is not set.
    """
    import ray
    from ray.data import DataContext

    from .console import configure_console, progress_bars_wanted, quiet_driver_backend

    configure_console(verbose)  # before ray.init: it logs the token-auth notice
    level = logging.INFO if verbose else logging.WARNING
    address = address or conf["ray"]["address"] or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        with quiet_driver_backend(verbose):
            if address:
                ray.init(address=address, logging_level=level, log_to_driver=True)
            else:
                # an embedded cluster on a possibly offline machine: no usage-stats report (a user's
                # own RAY_USAGE_STATS_ENABLED wins); it also saves a second of start-up here
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(
                    address="local",  # a new embedded Ray: never join a `ray start` cluster left on this machine
                    num_cpus=conf["ray"]["num_cpus"],
                    include_dashboard=False,
                    logging_level=level,
                    log_to_driver=True,
                    configure_logging=True,
                )
    ctx = DataContext.get_current()
    bars = progress_bars_wanted(conf)
    ctx.enable_progress_bars = bars
    ctx.enable_operator_progress_bars = bars
    # on a cluster, workers may still be registering when the job starts (e.g. a fresh RayJob)
    check_resources(conf, wait_seconds=CLUSTER_WAIT_SECONDS if address else 0.0)


def check_resources(conf: dict, wait_seconds: float = 0.0) -> None:
    """Fail fast instead of waiting forever for GPUs or CPUs that do not exist (after waiting up
    to ``wait_seconds`` for them to appear)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return _check_resources_once(conf)
        except ResourceError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)


def _check_resources_once(conf: dict) -> None:
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    for stage in RAY_STAGES:
        want_gpu, want_cpu = conf[stage]["num_gpus"], conf[stage]["num_cpus"]
        if want_gpu > 0 and gpus < want_gpu:
            raise ResourceError(
                f"{stage}.num_gpus={want_gpu} but the Ray cluster has {gpus:g} GPU(s); "
                f"set {stage}.num_gpus=0 to run on CPU"
            )
        if want_cpu > cpus:
            raise ResourceError(f"{stage}.num_cpus={want_cpu} exceeds the cluster's {cpus:g} CPU(s)")
        for name, amount in (conf[stage].get("resources") or {}).items():
            if resources.get(name, 0.0) < amount:
                raise ResourceError(
                    f"{stage}.resources.{name}={amount:g} but the Ray cluster has {resources.get(name, 0.0):g} of it; "
                    f"start a worker group with rayStartParams resources '{{\"{name}\": N}}' or unset {stage}.resources"
                )

