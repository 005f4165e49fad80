"""What a ``matchmill run`` prints besides its own lines: Ray's chatter off by default, back with ``-v``.

Each source of noise and how it is quieted (``verbose=True`` undoes all of it):

* the ``ray`` Python logger ("Started a local Ray instance", ...): ``ray.init(logging_level=...)``
  in :func:`matchmill.pipeline.runtime.init_ray` (WARNING, or INFO when verbose);
* Ray Data's ``ray.data`` logger, which has its own console handler at INFO and does not
  propagate to ``ray`` ("Starting execution of Dataset", "Execution plan of Dataset",
  "Dataset ... execution finished", ...): that console handler is raised to WARNING; its file
  handlers keep everything, so ``<session>/logs/ray-data*.log`` stays complete;
* two notices logged at WARNING that need no action ("Token authentication is enabled for this
  Ray cluster", "Progress bars disabled"): a filter on the logger that emits each;
* Ray Data's ``UserWarning`` that an operator received fewer inputs than its concurrency:
  a ``warnings`` filter (the same one pyproject.toml sets for pytest);
* the driver's C++ core worker, which echoes its ERROR-level lines to stderr (e.g.
  ``core_worker.cc ... has constructor arguments in the object store and max_restarts > 0``,
  printed when Ray Data starts an actor pool): while Ray connects the driver,
  ``RAY_BACKEND_LOG_LEVEL`` is ``fatal``. Only the driver's core worker reads it then (once, when
  it starts), so the raylet, the GCS and the workers (started before, or by the raylet) keep
  their normal level and log files; the price is that the driver's own C++ log
  (``<session>/logs/python-core-driver-*.log``) holds only FATAL lines. The C++ logger announces
  the level it picked up on stderr; that one line is dropped. Not done when the user set
  ``RAY_BACKEND_LOG_LEVEL`` themselves.

* the C++ GCS client's stderr line per connection attempt a token-protected cluster refuses
  (``ray.init`` makes ~20): dropped while ``ray.init`` joins a cluster, since matchmill then says
  in one line which variables to set (:func:`quiet_auth_retries`).

Worker exceptions, worker stdout/stderr (``log_to_driver``), Ray's own WARNINGs and errors, and
every ``matchmill.*`` logger are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

#: (logger name, message prefix) of WARNING records that carry no action for a matchmill user.
NOTICES = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster"),
    ("ray.data._internal.progress", "Progress bars disabled."),
    ("ray.data._internal.progress", "Progress bars for operators disabled."),
)

#: Ray Data's "an operator got fewer inputs than its concurrency" UserWarnings (tiny runs hit them).
CONCURRENCY_WARNING = r"The (minimum|maximum) number of concurrent"

#: The line the C++ logger prints when it picks up ``RAY_BACKEND_LOG_LEVEL``.
_BACKEND_LEVEL_LINE = re.compile(r"logging\.cc:\d+: Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL")

#: The GCS client's line for each of ``ray.init``'s ~20 connection attempts that a token-protected
#: cluster refuses (matchmill replaces them with one line saying what to set: runtime.init_ray).
_AUTH_RETRY_LINE = re.compile(r"gcs_client\.cc:\d+: Failed to get cluster ID from GCS server: Unauthenticated")


class _DropNotices(logging.Filter):
    """Drops records whose message starts with one of ``prefixes`` (only while ``active``)."""

    def __init__(self) -> None:
        super().__init__("matchmill-console")
        self.prefixes: set[str] = set()
        self.active = True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        message = record.msg if isinstance(record.msg, str) else str(record.msg)
        return not any(message.startswith(p) for p in self.prefixes)


def _notice_filter(logger: logging.Logger) -> _DropNotices:
    for existing in logger.filters:
        if isinstance(existing, _DropNotices):
            return existing
    new = _DropNotices()
    logger.addFilter(new)
    return new


def progress_bars_wanted(conf: dict) -> bool:
    """Ray Data progress bars: only on a terminal, when the config asks and CI has not said no."""
    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "0").strip() not in ("", "0"):
        return False
    stdout = sys.stdout
    return bool(conf["ray"]["progress_bars"]) and stdout is not None and stdout.isatty()


def configure_console(verbose: bool = False) -> None:
    """Quiet (or, with ``verbose``, restore) Ray's Python-side console output in this process."""
    for name, prefix in NOTICES:
        f = _notice_filter(logging.getLogger(name))
        f.prefixes.add(prefix)
        f.active = not verbose
    _set_ray_data_console_level(verbose)
    _set_warning_filters(verbose)


def _set_ray_data_console_level(verbose: bool) -> None:
    """Raise the console (non-file) handlers of Ray Data's loggers to WARNING; restore when verbose."""
    try:
        from ray.data._internal.logging import SessionFileHandler, _get_logger_names
        names = _get_logger_names()
    except Exception:  # noqa: BLE001 - a Ray without this module: nothing of Ray Data's to quiet
        SessionFileHandler, names = logging.FileHandler, ["ray.data"]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, (logging.FileHandler, SessionFileHandler)):
                continue
            if not hasattr(handler, "_matchmill_level"):
                handler._matchmill_level = handler.level  # Ray's own level, for verbose
            handler.setLevel(handler._matchmill_level if verbose else max(handler._matchmill_level, logging.WARNING))


def _set_warning_filters(verbose: bool) -> None:
    """Ignore Ray Data's concurrency UserWarnings (once, not stacked); drop that filter when verbose."""
    module = r"ray\.data"

    def ours(f) -> bool:
        action, message, category, mod, _ = f
        return (action == "ignore" and category is UserWarning and getattr(message, "pattern", None) == CONCURRENCY_WARNING
                and getattr(mod, "pattern", None) == module)

    warnings.filters[:] = [f for f in warnings.filters if not ours(f)]
    getattr(warnings, "_filters_mutated", lambda: None)()  # forget cached decisions (CPython)
    if not verbose:
        warnings.filterwarnings("ignore", message=CONCURRENCY_WARNING, category=UserWarning, module=module)


@contextlib.contextmanager
def quiet_driver_backend(verbose: bool = False):
    """Around ``ray.init``: start the driver's C++ logger at FATAL so its ERROR lines that are
    only advice (see the module docstring) stay off stderr. Only the driver's core worker reads
    the variable (while Ray connects it); it is removed again right after."""
    if verbose or "RAY_BACKEND_LOG_LEVEL" in os.environ:
        yield
        return
    try:
        import ray._private.worker as ray_worker

        original = ray_worker.connect
    except (ImportError, AttributeError):  # a Ray that connects differently: leave it be
        yield
        return

    def connect(*args, **kwargs):
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
        try:
            # the C++ logger announces the level it picked up on fd 2, before it applies it
            with _drop_stderr_lines(_BACKEND_LEVEL_LINE):
                return original(*args, **kwargs)
        finally:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)

    ray_worker.connect = connect
    try:
        yield
    finally:
        ray_worker.connect = original


@contextlib.contextmanager
def quiet_auth_retries(verbose: bool = False):
    """Around ``ray.init(address=...)``: drop the C++ GCS client's stderr line per refused
    connection attempt (token authentication); everything else on stderr comes back in order."""
    if verbose:
        yield
        return
    with _drop_stderr_lines(_AUTH_RETRY_LINE):
        yield


@contextlib.contextmanager
def _drop_stderr_lines(pattern: re.Pattern):
    """Capture file descriptor 2 for the duration; then write it back without the lines that
    match ``pattern`` (everything else, Python's and C++'s, comes back in order)."""
    fd = 2  # where the C++ logger writes, whatever sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all: nothing to show or to hide
        yield
        return
    with tempfile.TemporaryFile() as spool:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(spool.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            spool.seek(0)
            kept = [line for line in spool.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not pattern.search(line)]
            data = "".join(kept).encode("utf-8", "replace")
            while data:
                data = data[os.write(fd, data):]
