"""How the package is laid out, in numbers: import circles, folders that import each other, lazy
imports, the largest files, the README's length.

    python benchmarks/layout_report.py            # this checkout
    python benchmarks/layout_report.py /tmp/old   # another checkout (e.g. ``git worktree add /tmp/old <commit>``)

Everything is read with ``ast`` (nothing is imported). The rules that must stay true are pinned by
``tests/matchmill/test_package_layout.py``, which uses the same analysis (:func:`analyse`).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_SKIP = {"__pycache__", "build", "dist", "shared"}


def package_roots(root: Path) -> dict[str, Path]:
    """{package name: folder} of pyproject.toml's ``packages``, placed as setuptools places them: under
    the longest prefix ``package-dir`` maps (``""``: the root of every package), else ``a.b`` in ``a/b``."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    names = set(setuptools.get("packages", [])) | {n for n in mapped if n}
    out = {}
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts), -1, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapped:
                out[name] = root.joinpath(mapped[prefix], *parts[cut:])
                break
        else:
            out[name] = root.joinpath(*parts)
    return out


def package_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the installed packages, subpackages included."""
    modules: dict[str, Path] = {}
    for package, folder in sorted(package_roots(root).items(), key=lambda kv: len(kv[0])):
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any(part in _SKIP or part.startswith(".") for part in rel.parts[:-1]):
                continue
            parts = [package, *rel.parts[:-1]] + ([] if path.stem == "__init__" else [path.stem])
            modules[".".join(parts)] = path  # a mapped subpackage (models.pump) overwrites the same file's name: equal
    return modules


def folder_of(module: str) -> str:
    """The folder (layer) a module lives in: ``matchmill.pipeline.export.hloc`` -> ``pipeline``.

    The ``matchmill`` package's own modules split in two: ``matchmill.config`` and
    ``matchmill.version`` are the bottom (``config``); the package itself, ``matchmill.cli`` and
    ``matchmill.api`` are the top (``matchmill``).
    """
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FOLDERS:
        return parts[1]
    return "config" if module in BOTTOM_MODULES else "matchmill"


#: Sub-packages that are a folder of the repository (``classical``: its folder before issue 20, so
#: that an older checkout is measured right).
FOLDERS = {"pipeline", "stages", "manifests", "models", "datasets", "geometry", "methods", "classical",
           "evaluation", "viz", "training", "weights"}
#: Modules of the ``matchmill`` folder that sit at the bottom of the import graph.
BOTTOM_MODULES = {"matchmill.config", "matchmill.version"}

#: The import layers: a module imports modules of its own layer or of a lower one, never higher.
LAYERS: dict[str, int] = {
    "config": 0,  # matchmill.config, matchmill.version: imports nothing of matchmill
    "manifests": 1, "geometry": 1, "weights": 1,  # schemas, storage, commits; frames and metrics; shipped files
    "datasets": 2, "models": 2,  # pair sources, image IO, the demo renderer; the nets
    "methods": 3,  # extractors, proposers, refiners, their registry and presets
    "stages": 4, "viz": 4,  # the stage actors; pictures (the mine stage draws its accepted pairs)
    "pipeline": 5,  # job config, graph, runner, status, exports
    "training": 6,
    "evaluation": 7,  # benchmarks, report, release
    "matchmill": 8,  # matchmill.cli, matchmill.api and the package itself
}


@dataclass
class Imports:
    """The matchmill imports of one module."""

    top: set[str] = field(default_factory=set)  # at module level (TYPE_CHECKING blocks left out)
    lazy: list[tuple[int, str, bool]] = field(default_factory=list)  # (line, module, has a ``# lazy:`` comment)


def module_imports(path: Path, module: str, known: set[str]) -> Imports:
    """The imports of ``path`` that name modules of ``known`` (relative imports resolved)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    is_package = path.stem == "__init__"
    out = Imports()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            names = subs + ([target] if len(subs) < len(node.names) else [])
        resolved = []
        for name in names:
            while name and name not in known:  # ``import matchmill.pipeline.config as c`` names a module; a class: its module
                name = name.rpartition(".")[0]
            if name:
                resolved.append(name)
        return resolved

    def commented(node: ast.AST) -> bool:
        window = lines[max(0, node.lineno - 3): node.end_lineno]
        return any("# lazy:" in line for line in window)

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only imports tie nothing together at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in targets(child):
                    if in_function:
                        out.lazy.append((child.lineno, name, commented(child)))
                    else:
                        out.top.add(name)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    out.top.discard(module)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


@dataclass
class Layout:
    """What :func:`analyse` measures."""

    modules: dict[str, Path]
    imports: dict[str, Imports]
    all_cycles: list[list[str]]  # module cycles, lazy imports counted
    top_cycles: list[list[str]]  # module cycles through module-level imports only
    folder_pairs: list[tuple[str, str]]  # folders that import each other (any import)
    lazy: list[tuple[str, int, str, bool]]  # (file, line, module, commented)


def analyse(root: Path) -> Layout:
    modules = package_modules(root)
    known = set(modules)
    imports = {m: module_imports(p, m, known) for m, p in modules.items()}
    everything = {m: (i.top | {n for _, n, _ in i.lazy}) - {m} for m, i in imports.items()}
    top = {m: set(i.top) for m, i in imports.items()}
    folders: dict[str, set[str]] = {}
    for m, targets in everything.items():
        for t in targets:
            a, b = folder_of(m), folder_of(t)
            if a != b:
                folders.setdefault(a, set()).add(b)
    pairs = sorted({tuple(sorted((a, b))) for a, bs in folders.items() for b in bs if a in folders.get(b, ())})
    lazy = sorted((str(modules[m].relative_to(root)), line, n, c) for m, i in imports.items() for line, n, c in i.lazy)
    return Layout(modules, imports, cycles(everything), cycles(top), pairs, lazy)


def layer_breaches(layout: Layout) -> list[str]:
    """``a imports b`` for every import (lazy ones too) from a lower layer up to a higher one."""
    out = []
    for module, imports in sorted(layout.imports.items()):
        for target in sorted(imports.top | {n for _, n, _ in imports.lazy}):
            a, b = folder_of(module), folder_of(target)
            if LAYERS.get(b, 99) > LAYERS.get(a, 99):
                out.append(f"{module} ({a}, layer {LAYERS.get(a)}) imports {target} ({b}, layer {LAYERS.get(b)})")
    return out


def uncommented_lazy_imports(layout: Layout) -> list[str]:
    """``file:line imports module`` for every in-function import of matchmill code without a ``# lazy:`` reason."""
    return sorted({f"{path}:{line} imports {name}" for path, line, name, ok in layout.lazy if not ok})


def largest_files(root: Path, count: int = 5) -> list[tuple[int, str]]:
    files = [p for p in root.rglob("*.py")
             if not any(part in _SKIP or part.startswith(".") or part.endswith(".egg-info")
                        for part in p.relative_to(root).parts[:-1])]
    return sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in files), reverse=True)[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    root = Path(parser.parse_args(argv).root).resolve()
    layout = analyse(root)
    print(f"checkout: {root}")
    print(f"modules: {len(layout.modules)}")
    print(f"import circles (any import): {len(layout.all_cycles)}")
    for c in layout.all_cycles:
        print("   ", " <-> ".join(c))
    print(f"import circles (module-level imports): {len(layout.top_cycles)}")
    print(f"folder pairs that import each other: {len(layout.folder_pairs)}  {layout.folder_pairs}")
    statements = {(f, line): c for f, line, _, c in layout.lazy}
    commented = sum(statements.values())
    print(f"import statements of matchmill code inside functions: {len(statements)} ({commented} with a '# lazy:' reason)")
    breaches = layer_breaches(layout)
    print(f"imports against the layers (docstring of LAYERS): {len(breaches)}")
    for line in breaches:
        print("   ", line)
    print("largest files:", ", ".join(f"{path} {n}" for n, path in largest_files(root)))
    readme = root / "README.md"
    print(f"README.md lines: {len(readme.read_text().splitlines()) if readme.exists() else 0}")
    print(f"files named cli.py: {sum(1 for p in layout.modules.values() if p.name == 'cli.py')}")
    tests = root / "tests"
    print(f"test modules: {len(list(tests.rglob('test_*.py')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
