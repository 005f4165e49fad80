"""The ``matchmill`` command line: one parser that the subcommand modules register into.

Each module of :data:`COMMAND_MODULES` has ``register(subparsers)``, which adds its parsers and sets
``func=<callable(args) -> int>`` (the exit code) as the parser default; a command that runs a job
also sets ``interruptible=True`` (Ctrl-C / SIGTERM: one line and exit 130 / 143, see below).

==========================================================  ===========================================
``run``, ``mine``, ``show``, ``gc``, ``export``,             matchmill/pipeline/commands.py
``compare``, ``demo-data``
``match FOLDER`` (the folder recipe)                        matchmill/pipeline/match_command.py
``status`` (a pipeline run or a training run)               here (matchmill/status.py reads both)
``viz pyramid | matches``                                   matchmill/viz/viz_command.py
``report``                                                  matchmill/evaluation/report_command.py
``bench hpatches | pose | megadepth1500 | card``            matchmill/evaluation/bench_command.py
``train``, ``train-data``                                   matchmill/training/train_command.py
==========================================================  ===========================================

Exit codes of ``run``: 0 done; 1 done, but a stage's failed rows exceed ``max_failed_fraction``
(default 0: any failed row; the rows are kept, ``matchmill show RUN STAGE --failed`` lists them);
2 config, storage or data-source problem, or committed results of another config in the way
(stopped before any work; ``--overwrite`` replaces them); 3 stopped by a storage error that
persisted over retries (disk full, read-only, access denied, I/O or connection errors): the
stage in progress was not committed and no row was marked failed for it, so a rerun resumes.
Also 2: the run is in use by another writer (its lease, matchmill/manifests/lease.py), or the run's stage
folders hold files it did not write (matchmill/pipeline/stray.py); 130 / 143: stopped by Ctrl-C / SIGTERM,
one line, nothing committed is lost (a rerun resumes). Every command prints a config, storage or
manifest error as one line ``matchmill: error: ...`` and exits 2 (3 for storage that stayed
unavailable). Every command whose output pipe is closed early (``matchmill status RUN | head -3``)
stops quietly with exit 141 (128 + SIGPIPE, as ``cat`` or ``grep`` would; :func:`main`).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys

from matchmill.config import ConfigError, check_unique_overrides, resolve_run_arg
from matchmill.evaluation import bench_command, report_command
from matchmill.manifests.storage import ManifestError, StorageError, StorageUnavailable
from matchmill.pipeline import commands as pipeline_commands
from matchmill.pipeline import match_command
from matchmill.pipeline.runtime import ResourceError
from matchmill.pipeline.verbosity import add_verbose_argument, configure_logging, verbosity
from matchmill.training import train_command
from matchmill.version import __version__
from matchmill.viz import viz_command

#: The modules that add subcommands, in the order ``matchmill --help`` lists them.
COMMAND_MODULES = (pipeline_commands, match_command, viz_command, report_command, bench_command, train_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matchmill", description="Batch image matching on Ray: image pairs in, verified correspondences out, "
                                      "every stage a resumable Parquet manifest. Start with: make demo, or "
                                      "matchmill run configs/demo.yaml; COMMAND --help describes each command.")
    parser.add_argument("--version", action="version", version=f"matchmill {__version__}")
    add_verbose_argument(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
        if module is pipeline_commands:
            register_status(sub)
    return parser


def register_status(sub: argparse._SubParsersAction) -> None:
    """``matchmill status RUN``: reads a pipeline run or a training run, so it lives above both."""
    status = sub.add_parser(
        "status", help="stages of a run (committed or not, rows, failures, metrics) "
                       "or a training run (step, validation, checkpoints)",
        description="Print the state of a run: for a pipeline run (matchmill run / mine) its stages, committed "
                    "or not, rows, failed rows and metrics; for a training run (matchmill train) its step, "
                    "validation and checkpoints. Example: matchmill status demo (a run name under the default "
                    "storage, or any run's URL)")
    status.add_argument("run_url", metavar="RUN", help="a run name or a run's URL (pipeline or training run)")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from matchmill.status import status_text  # lazy: start-up time (pandas; torch for training runs)

    print(status_text(args.run_url))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``matchmill`` entry point: :func:`run_command`, quiet when its reader closes the pipe
    early (``matchmill status RUN | head -3``): no traceback, the rest of the output dropped, exit
    :data:`CLOSED_PIPE`, as a shell reports ``cat`` or ``grep`` stopped by SIGPIPE there. A
    BrokenPipeError that did not come from stdout / stderr being closed is raised as it is."""
    try:
        try:
            return run_command(argv)
        finally:
            sys.stdout.flush()  # here, not at exit: what is still buffered meets the closed pipe in the try
    except BrokenPipeError:
        closed = closed_outputs()
        if not closed:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in closed:  # later writes and the flush at exit go nowhere instead of raising again
            os.dup2(devnull, fd)
        return CLOSED_PIPE


#: Exit code when stdout (or stderr) was closed by its reader: 128 + SIGPIPE, what a shell reports for
#: a command that SIGPIPE stopped (``set -o pipefail`` sees it; a plain ``| head`` does not).
CLOSED_PIPE = 141


def closed_outputs() -> list[int]:
    """The file descriptors of stdout and stderr that are a pipe or socket whose reader has gone
    (poll reports POLLERR / POLLHUP); where ``select.poll`` is missing, both (the error is trusted)."""
    fds = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fds.append(stream.fileno())
        except (AttributeError, OSError, ValueError):  # replaced by a test's capture, or closed
            continue
    if not hasattr(select, "poll"):
        return fds
    closed = []
    for fd in fds:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            closed.append(fd)
    return closed


def run_command(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; its exit code (see the module docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides written after an option (``--until extract a.b=1``) land here
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    resolve_run_args(args)
    args.verbose = verbosity(args)  # -v before and after the subcommand add up (matchmill/pipeline/verbosity.py)
    configure_logging(args.verbose)
    interruptible = bool(getattr(args, "interruptible", False))
    if interruptible:
        catch_interrupts()
    try:
        check_unique_overrides(getattr(args, "overrides", None) or [])
        return int(args.func(args))
    except StorageUnavailable as exc:
        print(f"matchmill: error: {storage_stop_message(exc)}", file=sys.stderr)
        return 3
    except (ConfigError, StorageError, ManifestError, ResourceError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"matchmill: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if not interruptible:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 143 if getattr(exc, "signum", None) == signal.SIGTERM else 130
    except SystemExit as exc:  # SIGTERM while ray.init runs meets Ray's own handler: sys.exit(15)
        if not interruptible or exc.code != signal.SIGTERM:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 143


def resolve_run_args(args: argparse.Namespace) -> None:
    """Every command's run argument (``run_url``, ``run_urls``) as a URL: a bare run name is the run
    under the default storage (:func:`matchmill.config.resolve_run_arg`, the one rule)."""
    if isinstance(getattr(args, "run_url", None), str):
        args.run_url = resolve_run_arg(args.run_url)
    if isinstance(getattr(args, "run_urls", None), list):
        args.run_urls = [resolve_run_arg(url) for url in args.run_urls]


def storage_stop_message(exc: StorageUnavailable) -> str:
    """The one line of exit code 3."""
    what = f"stage{'s' if ',' in exc.stage else ''} {exc.stage}" if exc.stage else "the stage in progress"
    return (f"storage: {exc}; nothing of {what} was committed; free space or fix access, "
            "then rerun to resume")


#: What ``run`` / ``mine`` print when stopped by Ctrl-C (exit 130) or SIGTERM (exit 143).
INTERRUPTED = "matchmill: interrupted; rerun the same command to resume (committed stages and complete parts are kept)"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received by ``run`` / ``mine``: raised in the main thread, so the run's
    ``finally`` blocks release its lease and stop the Ray it started (runner.run_pipeline)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def catch_interrupts() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (one line and exit 130 / 143 in :func:`main`).

    Native libraries replace a process's SIGTERM handler with a stack dump: pycolmap's glog when
    imported (so it is imported first, here) and Ray's core worker in ``ray.init`` (undone by
    runtime.init_ray, which puts these handlers back)."""
    try:
        import pycolmap  # noqa: F401  # lazy: for its import-time signal handler, see above (start-up time)
    except ImportError:
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


if __name__ == "__main__":
    raise SystemExit(main())
