"""Package layout rules, checked on the source with ``ast`` (nothing is imported):

- no module anywhere imports ``matchmill.bench`` (the accuracy benchmarks are ``matchmill.evaluation``;
  ``benchmarks/`` holds the performance scripts), nor names it as a module string
  (``SUBCOMMAND_MODULES``, ``importlib.import_module``);
- ``matchmill.viz`` imports nothing of ``matchmill.evaluation`` (evaluation may use viz, not back);
- the modules of ``matchmill.evaluation`` import each other without a cycle.

Every import counts, also those inside functions (a lazy import still ties the modules together).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules", "shared"}
_OLD_NAME = re.compile(r"^matchmill\.bench(\.|$)")


def package_dirs(root: Path) -> dict[str, Path]:
    """{package name: its folder} from pyproject.toml's ``[tool.setuptools.package-dir]``."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}


def package_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the installed packages (``__init__`` = the package)."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs(root).items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def python_files(root: Path) -> list[Path]:
    """Every ``.py`` file of the repository (hidden folders, egg-info and caches left out)."""
    return sorted(p for p in root.rglob("*.py")
                  if not any(part.startswith(".") or part.endswith(".egg-info") or part in _SKIP_DIRS
                             for part in p.relative_to(root).parts[:-1]))


def imported_names(path: Path, module: str | None, known: set[str] = frozenset()) -> set[str]:
    """Absolute names ``path`` imports. ``module`` (its dotted name, None outside the packages)
    resolves relative imports; ``from pkg import name`` yields ``pkg.name`` when that is a module
    of ``known``, else ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.stem == "__init__"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue  # a relative import outside the packages (tests/): not ours to resolve
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & set(known)
            names.update(submodules or {target})
            if len(submodules) < len(node.names):
                names.add(target)
    return names


def module_strings(path: Path) -> set[str]:
    """String constants of ``path`` that name a module the old way (``matchmill.bench...``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _OLD_NAME.match(n.value)}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` ({module: modules it imports}) as [a, b, ..., a], or []."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module of ``package``: the modules of ``package`` it imports}, self-imports left out."""
    modules = package_modules(root)
    inside = {m for m in modules if m == package or m.startswith(package + ".")}
    return {m: (imported_names(modules[m], m, set(modules)) & inside) - {m} for m in sorted(inside)}


def layout_problems(root: Path) -> list[str]:
    """Every breach of the rules in the module docstring, one line each ([] when the layout is right)."""
    problems = []
    modules = package_modules(root)
    if "matchmill.evaluation" not in modules:
        problems.append("no package matchmill.evaluation in pyproject.toml's package-dir")
    problems += [f"pyproject.toml still installs {name}" for name in package_dirs(root) if _OLD_NAME.match(name)]
    by_path = {path.resolve(): name for name, path in modules.items()}
    for path in python_files(root):
        rel = path.relative_to(root)
        module = by_path.get(path.resolve())
        names = imported_names(path, module, set(modules))
        problems += [f"{rel} imports {n}" for n in sorted(names) if _OLD_NAME.match(n)]
        problems += [f"{rel} names the module {s!r}" for s in sorted(module_strings(path))]
        if module and (module == "matchmill.viz" or module.startswith("matchmill.viz.")):
            problems += [f"{rel} (viz) imports {n}" for n in sorted(names)
                         if n == "matchmill.evaluation" or n.startswith("matchmill.evaluation.")]
    cycle = find_cycle(import_graph(root, "matchmill.evaluation"))
    if cycle:
        problems.append("import cycle in matchmill.evaluation: " + " -> ".join(cycle))
    return problems


# ----------------------------------------------------------------------------- the repository


def test_no_bench_imports_no_viz_to_evaluation_no_cycle_in_evaluation():
    assert layout_problems(REPO) == []


def test_the_scan_sees_the_packages_and_their_imports():
    """Guards the test itself: an empty scan would pass every rule."""
    modules = package_modules(REPO)
    assert {"matchmill.evaluation.figures", "matchmill.evaluation.pair_drawings", "matchmill.viz.matches",
            "matchmill.viz.draw"} <= set(modules)
    graph = import_graph(REPO, "matchmill.evaluation")
    assert "matchmill.evaluation.report" in graph["matchmill.evaluation.figures"]
    assert "matchmill.evaluation.history" in graph["matchmill.evaluation.run"]  # ``from . import history``
    assert "matchmill.viz.draw" in imported_names(modules["matchmill.evaluation.pair_drawings"],
                                                  "matchmill.evaluation.pair_drawings", set(modules))
    assert REPO / "tests" / "test_package_layout.py" in python_files(REPO)


# ----------------------------------------------------------------------------- the checks can fail


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


_PYPROJECT = """
[tool.setuptools.package-dir]
"matchmill" = "matchmill"
"matchmill.evaluation" = "evaluation"
"matchmill.viz" = "viz"
"""


def test_the_old_layout_is_refused(tmp_path):
    """The layout before the rename: a ``bench`` package, a figures <-> pair_drawings circle (one
    side imported lazily), viz drawing through the benchmarks, and the CLI naming the old module."""
    _write(tmp_path, {
        "pyproject.toml": _PYPROJECT + '"matchmill.bench" = "bench"\n',
        "matchmill/__init__.py": "",
        "evaluation/__init__.py": "",
        "evaluation/figures.py": "def f():\n    from .pair_drawings import g\n",
        "evaluation/pair_drawings.py": "from .figures import Picture\nfrom . import report\n",
        "evaluation/report.py": "import json\n",
        "viz/__init__.py": "",
        "viz/matches.py": "def draw():\n    from matchmill.evaluation.draw import draw_matches\n",
        "bench/__init__.py": "",
        "tests/test_x.py": "from matchmill.bench.history import read_history\n",
        "matchmill/cli.py": 'MODULES = ("matchmill.bench.cli",)\n',
    })
    problems = layout_problems(tmp_path)
    assert "pyproject.toml still installs matchmill.bench" in problems
    assert "tests/test_x.py imports matchmill.bench.history" in problems
    assert "matchmill/cli.py names the module 'matchmill.bench.cli'" in problems
    assert "viz/matches.py (viz) imports matchmill.evaluation.draw" in problems
    assert ("import cycle in matchmill.evaluation: matchmill.evaluation.figures -> "
            "matchmill.evaluation.pair_drawings -> matchmill.evaluation.figures") in problems
    assert len(problems) == 5, problems


def test_a_longer_cycle_through_a_package_import_is_found(tmp_path):
    _write(tmp_path, {
        "pyproject.toml": _PYPROJECT,
        "evaluation/__init__.py": "",
        "evaluation/a.py": "from . import b\n",
        "evaluation/b.py": "import matchmill.evaluation.c\n",
        "evaluation/c.py": "from matchmill.evaluation.a import x\n",
    })
    assert layout_problems(tmp_path) == [
        "import cycle in matchmill.evaluation: matchmill.evaluation.a -> matchmill.evaluation.b -> "
        "matchmill.evaluation.c -> matchmill.evaluation.a"]
