"""Package layout rules, checked on the source with ``ast`` (nothing is imported), with the analysis of
``benchmarks/layout_report.py`` (which prints the same figures for any checkout):

- no import circle among matchmill's modules; imports inside functions count (a lazy import still
  ties two modules together);
- no two folders import each other, and every import goes down the layers of ``LAYERS``
  (config < manifests, geometry, weights < datasets, models < methods < stages, viz < pipeline <
  training < evaluation < matchmill.cli, matchmill.api, matchmill.status);
- an import of matchmill code inside a function says why it is lazy (``# lazy: <reason>``);
- one file is called ``cli.py`` (``matchmill/cli.py``, the parser every subcommand registers into),
  and every package folder is installed (listed in pyproject.toml's ``packages``);
- nothing imports or names ``matchmill.bench`` (the accuracy benchmarks are ``matchmill.evaluation``);
- tests mirror the package folders: ``tests/<folder>/test_*.py`` for a folder of ``matchmill/``
  (``tests/matchmill/`` for ``matchmill/``), besides ``tests/system/`` (end-to-end runs across the
  packages) and ``tests/helpers/`` (shared helpers, no tests); no test module at ``tests/`` itself.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())


def _load_layout_report():
    spec = importlib.util.spec_from_file_location("layout_report", REPO / "benchmarks" / "layout_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("layout_report", module)
    spec.loader.exec_module(module)
    return module


layout_report = _load_layout_report()
_OLD_NAME = re.compile(r"^matchmill\.bench(\.|$)")


def _old_name_problems(root: Path, layout) -> list[str]:
    """Imports of ``matchmill.bench`` anywhere (tests and scripts too), and strings naming it."""
    problems = [f"pyproject.toml still installs {n}" for n in layout_report.package_roots(root) if _OLD_NAME.match(n)]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part.endswith(".egg-info") or part in {"__pycache__", "build", "shared"}
               for part in rel.parts[:-1]):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            problems += [f"{rel} imports {n}" for n in names if _OLD_NAME.match(n)]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _OLD_NAME.match(node.value):
                problems.append(f"{rel} names the module {node.value!r}")
    return problems


def _installed_problems(root: Path, layout) -> list[str]:
    """Package folders (with an ``__init__.py``) that pyproject.toml's ``packages`` does not list."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools.get("packages", []))
    packages = {m for m, p in layout.modules.items() if p.name == "__init__.py"}
    return [f"pyproject.toml does not install the package {name}" for name in sorted(packages - listed)] if listed else []


#: Test folders that are not a folder of the repository.
TEST_ONLY_FOLDERS = {"system", "helpers"}


def _test_folder_problems(root: Path) -> list[str]:
    """Test modules outside a ``tests/<folder>/`` that mirrors a repository folder."""
    tests = root / "tests"
    if not tests.is_dir():
        return []
    problems = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        if len(rel.parts) == 1:
            problems.append(f"tests/{rel} is not in a folder named after the package folder it tests")
        elif (rel.parts[0] not in TEST_ONLY_FOLDERS and not (root / rel.parts[0]).is_dir()
              and not (root / "matchmill" / rel.parts[0]).is_dir()):
            problems.append(f"tests/{rel}: {rel.parts[0]}/ is not a folder of the repository or of matchmill/")
    return problems


def layout_problems(root: Path) -> list[str]:
    """Every breach of the rules in the module docstring, one line each ([] when the layout is right)."""
    layout = layout_report.analyse(root)
    problems = [f"import circle: {' <-> '.join(c)}" for c in layout.all_cycles]
    problems += [f"folders import each other: {a} <-> {b}" for a, b in layout.folder_pairs]
    problems += [f"import against the layers: {line}" for line in layout_report.layer_breaches(layout)]
    problems += [f"lazy import without a '# lazy:' reason: {line}"
                 for line in layout_report.uncommented_lazy_imports(layout)]
    problems += [f"{p.relative_to(root)} is called cli.py (subcommands register into matchmill/cli.py)"
                 for m, p in layout.modules.items() if p.name == "cli.py" and m != "matchmill.cli"]
    return (problems + _installed_problems(root, layout) + _old_name_problems(root, layout)
            + _test_folder_problems(root))


# ----------------------------------------------------------------------------- the repository


def test_the_repository_keeps_the_layout_rules():
    assert layout_problems(REPO) == []


def test_the_scan_sees_the_packages_and_their_imports():
    """Guards the test itself: an empty scan would pass every rule."""
    layout = layout_report.analyse(REPO)
    assert {"matchmill.config", "matchmill.cli", "matchmill.api", "matchmill.methods.registry",
            "matchmill.pipeline.export.hloc", "matchmill.evaluation.report.figures", "matchmill.viz.draw",
            "matchmill.datasets.demo"} <= set(layout.modules)
    figures = layout.imports["matchmill.evaluation.report.figures"]
    assert "matchmill.evaluation.report.report" in figures.top | {n for _, n, _ in figures.lazy}
    assert "matchmill.viz.draw" in layout.imports["matchmill.evaluation.report.pair_drawings"].top
    assert "matchmill.config" in layout.imports["matchmill.pipeline.config"].top
    assert layout_report.folder_of("matchmill.config") == "config"
    assert layout_report.folder_of("matchmill.api") == "matchmill"
    assert layout_report.folder_of("matchmill.pipeline.export.hloc") == "pipeline"


# ----------------------------------------------------------------------------- the checks can fail


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


_PYPROJECT = """
[tool.setuptools]
packages = ["matchmill", "matchmill.pipeline", "matchmill.stages", "matchmill.evaluation", "matchmill.viz"]

[tool.setuptools.package-dir]
"matchmill" = "matchmill"
"matchmill.pipeline" = "pipeline"
"matchmill.stages" = "stages"
"matchmill.evaluation" = "evaluation"
"matchmill.viz" = "viz"
"""


def test_the_layout_before_issue_20_is_refused(tmp_path):
    """What the tree looked like: an import circle through a lazy import, two folders importing each
    other, a stage importing the pipeline, an unexplained lazy import, a second cli.py, a subpackage
    pyproject.toml does not install, and a module string naming the old ``matchmill.bench``."""
    _write(tmp_path, {
        "pyproject.toml": _PYPROJECT,
        "matchmill/__init__.py": "",
        "matchmill/cli.py": 'MODULES = ("matchmill.bench.cli",)\n',
        "pipeline/__init__.py": "",
        "pipeline/export.py": "from .export_colmap import write\n",
        "pipeline/export_colmap.py": "def write():\n    # lazy: a reason\n    from .export import names\n",
        "pipeline/cli.py": "import argparse\n",
        "pipeline/runner.py": "from matchmill.stages.extract import ExtractActor\n",
        "pipeline/sub/__init__.py": "",
        "stages/__init__.py": "",
        "stages/extract.py": "def f():\n    from matchmill.pipeline.runner import run\n",
        "evaluation/__init__.py": "",
        "viz/__init__.py": "",
        "tests/test_flat.py": "",
        "tests/bench/test_old.py": "",
        "tests/pipeline/test_runner.py": "",
    })
    problems = layout_problems(tmp_path)
    assert "import circle: matchmill.pipeline.export <-> matchmill.pipeline.export_colmap" in problems
    assert "folders import each other: pipeline <-> stages" in problems
    assert ("import against the layers: matchmill.stages.extract (stages, layer 4) imports "
            "matchmill.pipeline.runner (pipeline, layer 5)") in problems
    assert ("lazy import without a '# lazy:' reason: stages/extract.py:2 imports matchmill.pipeline.runner"
            in problems)
    assert "pipeline/cli.py is called cli.py (subcommands register into matchmill/cli.py)" in problems
    assert "pyproject.toml does not install the package matchmill.pipeline.sub" in problems
    assert "matchmill/cli.py names the module 'matchmill.bench.cli'" in problems
    assert "import circle: matchmill.pipeline.runner <-> matchmill.stages.extract" in problems
    assert "tests/test_flat.py is not in a folder named after the package folder it tests" in problems
    assert "tests/bench/test_old.py: bench/ is not a folder of the repository or of matchmill/" in problems
    assert len(problems) == 10, problems


def test_a_longer_cycle_through_a_package_import_is_found(tmp_path):
    _write(tmp_path, {
        "pyproject.toml": _PYPROJECT,
        "evaluation/__init__.py": "",
        "evaluation/a.py": "from . import b\n",
        "evaluation/b.py": "import matchmill.evaluation.c\n",
        "evaluation/c.py": "from matchmill.evaluation.a import x\n",
    })
    assert layout_problems(tmp_path) == [
        "import circle: matchmill.evaluation.a <-> matchmill.evaluation.b <-> matchmill.evaluation.c"]


def test_a_typing_only_import_ties_nothing(tmp_path):
    _write(tmp_path, {
        "pyproject.toml": _PYPROJECT,
        "stages/__init__.py": "",
        "stages/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from matchmill.pipeline.b import X\n",
        "pipeline/__init__.py": "",
        "pipeline/b.py": "from matchmill.stages.a import y\n",
    })
    assert layout_problems(tmp_path) == []
