"""The Ray runtime: embedded local Ray by default, a cluster with ``--address`` / ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .console import configure_console, progress_bars_wanted, quiet_auth_retries, quiet_driver_backend
from .graph import RAY_STAGES

log = logging.getLogger(__name__)

#: Seconds a run that joins a cluster waits for the GPUs / custom resources it needs to register.
CLUSTER_WAIT_SECONDS = 120.0


class ResourceError(RuntimeError):
    """The cluster cannot provide what the config asks for (e.g. GPUs on a CPU-only machine)."""


class ClusterAuthError(ResourceError):
    """Joining a cluster failed on Ray's token authentication (no token, or not the head's).

    A :class:`ResourceError`, so ``matchmill run`` prints it as one line and exits 2 (nothing ran)."""


def _auth_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is Ray refusing this driver's authentication token.

    ``ray.init(address=...)`` retries the GCS connection for ~20 s and then raises a
    ``ConnectionError`` whose cause carries the ``AuthenticationError`` only as traceback text."""
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc) or "AuthenticationError" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _auth_message(address: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE")
    has = [k for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH") if os.environ.get(k)]
    now = f"RAY_AUTH_MODE is {mode!r}" if mode else "RAY_AUTH_MODE is unset"
    now += f", {' and '.join(has)} set" if has else ", no RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
    return (f"the Ray cluster at {address} refused this driver's authentication token ({now}): set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the head's token> (or RAY_AUTH_TOKEN_PATH=<a file holding it>; "
            "`ray get-auth-token` on the head prints it); for deploy/local-cluster.sh: "
            'eval "$(deploy/local-cluster.sh env)"')


def init_ray(conf: dict, address: str | None = None, verbose: bool = False) -> None:
    """Start or join Ray once per process; configure Ray Data's progress output.

    Ray's INFO chatter (Python loggers, Ray Data's console handler, the driver's C++ advice lines)
    stays off the console unless ``verbose``; see :mod:`matchmill.pipeline.console`. Progress bars
    show only on a terminal, when ``ray.progress_bars`` is true and ``RAY_DATA_DISABLE_PROGRESS_BARS``
    is not set.
    """
    import ray
    from ray.data import DataContext

    configure_console(verbose)  # before ray.init: it logs the token-auth notice
    level = logging.INFO if verbose else logging.WARNING
    address = address or conf["ray"]["address"] or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        global _started_here
        _started_here = True
        saved = _python_signal_handlers()
        with quiet_driver_backend(verbose):
            if address:
                try:
                    with quiet_auth_retries(verbose):
                        ray.init(address=address, logging_level=level, log_to_driver=True)
                except Exception as exc:  # noqa: BLE001 - only an authentication failure is translated
                    if _auth_failure(exc):
                        raise ClusterAuthError(_auth_message(address)) from exc
                    raise
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
        _restore_signal_handlers(saved)
    ctx = DataContext.get_current()
    bars = progress_bars_wanted(conf)
    ctx.enable_progress_bars = bars
    ctx.enable_operator_progress_bars = bars
    # on a cluster, workers may still be registering when the job starts (e.g. a fresh RayJob)
    check_resources(conf, wait_seconds=CLUSTER_WAIT_SECONDS if address else 0.0)


#: Whether :func:`init_ray` started (or joined) Ray in this process (then :func:`shutdown_started_ray` stops it).
_started_here = False

#: Signals whose Python handler (``matchmill run`` turns them into one line: cli.py) survives
#: ``ray.init``, which installs its core worker's native SIGTERM handler (a stack dump, exit 143/134).
_KEPT_SIGNALS = ("SIGINT", "SIGTERM")


def _python_signal_handlers() -> dict:
    """The handlers Python code installed for :data:`_KEPT_SIGNALS` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = {getattr(signal, name): signal.getsignal(getattr(signal, name)) for name in _KEPT_SIGNALS}
    return {sig: h for sig, h in handlers.items() if callable(h)}


def _restore_signal_handlers(saved: dict) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # sets the process's handler again, over what native code installed


def shutdown_started_ray() -> None:
    """Stop the Ray this process started with :func:`init_ray` (a Ray started by the caller, e.g.
    a test session's, stays): after an interruption, so that no worker writes once the run's
    lease is released."""
    global _started_here
    if not _started_here:
        return
    _started_here = False
    import ray

    if ray.is_initialized():
        ray.shutdown()


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
        _check_pool(stage, conf[stage], resources)


def _check_pool(stage: str, section: dict, resources: dict) -> None:
    """The stage's whole actor pool must fit the cluster: its fixed-size pool waits for every actor,
    so ``actors`` that the cluster can never place would hang the run (an embedded Ray on a laptop
    with ``actors: 1000`` starts worker after worker). Streamed stages that fit one by one but not
    together share CPUs instead (executor.fit_reservations)."""
    actors = int(section["actors"])
    if actors <= 1:
        return
    wants = [("num_cpus", "CPU", float(section["num_cpus"]))]
    wants += [("num_gpus", "GPU", float(section["num_gpus"]))]
    wants += [(f"resources.{name}", name, float(amount)) for name, amount in (section.get("resources") or {}).items()]
    for key, resource, each in wants:
        have = resources.get(resource, 0.0)
        if each > 0 and actors * each > have + 1e-9:
            raise ResourceError(
                f"{stage}.actors={actors} x {stage}.{key}={each:g} needs {actors * each:g} {resource} but the Ray "
                f"cluster has {have:g}; set {stage}.actors <= {int(have // each + 1e-9)} (or a smaller {stage}.{key})"
            )

