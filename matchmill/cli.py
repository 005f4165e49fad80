"""The ``matchmill`` command line: one parser that the subcommand modules register into.

Each module of :data:`COMMAND_MODULES` has ``register(subparsers)``, which adds its parsers and sets
``func=<callable(args) -> int>`` (the exit code) as the parser default; a command that runs a job
also sets ``interruptible=True`` (Ctrl-C / SIGTERM: one line and exit 130 / 143, see below).

==========================================================  ===========================================
``run``, ``mine``, ``show``, ``gc``, ``export``,             matchmill/pipeline/commands.py
``compare``, ``demo-data``
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
unavailable).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from matchmill.config import ConfigError, check_unique_overrides
from matchmill.evaluation import bench_command, report_command
from matchmill.manifests.storage import ManifestError, StorageError, StorageUnavailable
from matchmill.pipeline import commands as pipeline_commands
from matchmill.pipeline.runtime import ResourceError
from matchmill.training import train_command
from matchmill.viz import viz_command

#: The modules that add subcommands, in the order ``matchmill --help`` lists them.
COMMAND_MODULES = (pipeline_commands, viz_command, report_command, bench_command, train_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchmill", description="Batch image matching on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
        if module is pipeline_commands:
            register_status(sub)
    return parser


def register_status(sub: argparse._SubParsersAction) -> None:
    """``matchmill status RUN``: reads a pipeline run or a training run, so it lives above both."""
    status = sub.add_parser("status", help="stages of a run (committed or not, rows, failures, metrics) "
                                           "or a training run (step, validation, checkpoints)")
    status.add_argument("run_url")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from matchmill.status import status_text  # lazy: start-up time (pandas; torch for training runs)

    print(status_text(args.run_url))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides written after an option (``--until extract a.b=1``) land here
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
