"""The installed package cannot be shadowed by its own clone.

A clone is a folder called ``matchmill`` (the repository's name) with no ``__init__.py``. Python
started from the clone's parent sees that folder first on ``sys.path`` (the working directory). With
the package folders mapped by a path finder (the layout before issue 22), the bare folder won as an
empty namespace package and a run failed with ``cannot import name '__version__' from 'matchmill'
(unknown location)``. Every package now lives under ``matchmill/`` and the editable install puts the
checkout on ``sys.path`` (pyproject.toml: ``package-dir = {"" = "."}``), so the real package, a
regular one, is found before any namespace folder.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import REPO

_PROBE = (
    "import matchmill, matchmill.methods.registry, matchmill.stages.verify\n"
    "from matchmill import __version__\n"
    "print(__version__, matchmill.__file__)\n"
)


def test_python_started_from_the_clones_parent_imports_the_package(tmp_path):
    (tmp_path / "matchmill").symlink_to(REPO, target_is_directory=True)  # the clone, seen from its parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    version, init = done.stdout.split()
    assert version and version[0].isdigit(), done.stdout
    assert init.endswith(os.path.join("matchmill", "__init__.py")), init


def test_every_package_folder_is_inside_the_matchmill_folder():
    """No package folder at the top of the checkout: one place, ``matchmill/``, holds the code."""
    top_packages = sorted(p.name for p in REPO.iterdir()
                          if p.is_dir() and (p / "__init__.py").exists() and p.name not in {"tests", "matchmill"})
    assert top_packages == []
