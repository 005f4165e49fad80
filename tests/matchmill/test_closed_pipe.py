"""Every command is quiet when its reader closes the pipe early (``matchmill status RUN | head -3``):
no BrokenPipeError traceback, exit 141 (128 + SIGPIPE, as ``cat`` or ``grep`` there); a
BrokenPipeError that is not about its own output still surfaces."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from matchmill.cli import CLOSED_PIPE, closed_outputs

from tests.helpers.paths import REPO
from tests.helpers.written_runs import verify_rows, write_stage, write_summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("pipe")
    a = write_summary(root, "photos", {"num_pairs": 6.0, "num_failed": 1.0, "mean_matches": 34.0})
    write_stage(a, "verify", verify_rows())
    return a, write_summary(root, "other", {"num_pairs": 6.0})


def _closed_early(*args: str, buffered: bool) -> subprocess.CompletedProcess:
    """``python -m matchmill ARGS`` whose stdout reader goes away before the command writes (it is
    still importing), as ``| head -1`` does to a command with more than one pipe buffer to say.
    ``buffered``: stdout block-buffered (Python's default for a pipe: the error comes at the flush),
    else ``PYTHONUNBUFFERED=1`` (it comes at the write)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "matchmill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO, env=env, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["status", "show", "compare", "help"])
def test_a_closed_pipe_ends_the_command_quietly(runs, command, buffered):
    a, b = runs
    args = {"status": ["status", a], "show": ["show", a, "verify", "--all"], "compare": ["compare", a, b],
            "help": ["--help"]}[command]
    out = _closed_early(*args, buffered=buffered)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.stderr == ""
    # argparse's --help swallows the error of an unbuffered write itself (and exits 0)
    assert out.returncode == (0 if command == "help" and not buffered else CLOSED_PIPE)


def test_head_reads_the_first_line_and_nothing_is_printed_to_stderr(runs):
    a, _ = runs
    out = subprocess.run(["bash", "-c", f'"{sys.executable}" -m matchmill status {a} | head -1'], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout == f"run: {a}\n" and out.stderr == "" and out.returncode == 0


def test_only_our_own_closed_output_counts(monkeypatch):
    """:func:`closed_outputs` names stdout when its pipe has no reader, and nothing while it has one
    (so a BrokenPipeError from elsewhere, e.g. a socket, is raised as it is)."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        monkeypatch.setattr(sys, "stderr", stream)
        assert closed_outputs() == []
        os.close(read_end)
        assert closed_outputs() == [write_end, write_end]
        monkeypatch.undo()
