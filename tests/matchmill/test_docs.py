"""The README and docs/ stay true to the tree: CI runs the README's test command, every relative
link resolves, every spec a docstring cites is in docs/specs/, and the README stays short."""

from __future__ import annotations

import re

from tests.helpers.paths import REPO as ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3 -m ")]
    block = next(b for b in _code_blocks(readme) if "pytest" in b)
    assert block.strip().splitlines() == ci
    assert "python3 -m pytest -q -p no:cacheprovider" in ci


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in DOCS:
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def test_relative_links_resolve():
    bad = []
    for page in [ROOT / "README.md", *DOCS]:
        for target, _ in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, bad


def test_specs_cited_in_docstrings_are_in_docs():
    cited = set()
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in {"build", "runs"} for part in path.relative_to(ROOT).parts):
            continue
        text = path.read_text(errors="replace")
        cited |= set(re.findall(r"docs/specs/([\w-]+\.md)", text))
        stale = re.findall(r"(?<![\w/])(?:\.\./shared/)?specs/[\w-]+\.md", text)
        assert not stale, f"{path.relative_to(ROOT)} cites {stale}: use docs/specs/<name>.md"
    assert cited
    missing = sorted(name for name in cited if not (ROOT / "docs" / "specs" / name).is_file())
    assert not missing, missing
