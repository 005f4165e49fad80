"""Every command's ``--help`` says what it does, prints no raw reST markup, and ``--version`` works."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from matchmill.cli import build_parser
from matchmill.pipeline.verbosity import VERBOSE_HELP, verbosity
from matchmill.version import __version__


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the top-level parser and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, path + (name,))


PARSERS = list(walk(build_parser()))


def test_the_walk_sees_every_command():
    names = {" ".join(p) for p, _ in PARSERS}
    assert {"run", "status", "viz pyramid", "bench card", "train-data"} <= names
    assert len(PARSERS) >= 20


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) or "matchmill" for p, _ in PARSERS])
def test_every_command_has_a_description_and_no_double_backticks(path, parser):
    assert (parser.description or "").strip(), f"matchmill {' '.join(path)}: no description"
    text = parser.format_help()  # also fails on a stray % in a help string
    assert "``" not in text, f"matchmill {' '.join(path)} --help shows raw double backticks"


def test_status_says_it_reads_training_runs_too():
    status = dict(PARSERS)[("status",)]
    assert "training run" in status.description and "pipeline run" in status.description


def test_verbose_means_the_same_before_and_after_the_command():
    parser = build_parser()
    flags = {" ".join(p): next((a for a in q._actions if "-v" in a.option_strings), None) for p, q in PARSERS}
    for where in ("", "run", "mine", "train"):
        assert flags[where] is not None and flags[where].help == VERBOSE_HELP, where
    counts = [verbosity(parser.parse_args(argv)) for argv in
              (["run", "c.yaml"], ["-v", "run", "c.yaml"], ["run", "c.yaml", "-v"], ["-v", "run", "c.yaml", "-v"])]
    assert counts == [0, 1, 1, 2]


def test_version():
    out = subprocess.run([sys.executable, "-m", "matchmill", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"matchmill {__version__}"
