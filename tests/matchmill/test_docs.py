"""The README and docs/ stay true to the tree: CI runs the README's test command, every relative
link resolves, every spec a docstring cites is in docs/specs/, and the README stays short; the
README's shell examples run when pasted (each checked without running it), and what it says of
``.ci/run``, ``make demo`` and the shipped weights' quality matches them."""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib

import pytest

from tests.helpers.paths import REPO as ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block (language "" for a bare fence)."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body) + "\n"))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _code_blocks(text: str) -> list[str]:
    """The bodies of the bare (shell) code blocks."""
    return [body for lang, body in _fenced(text) if lang in ("", "sh", "bash", "shell", "console")]


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


# --------------------------------------------------------------------------- README examples

#: The programs a README shell line may start with.
PROGRAMS = ("matchmill", "make", "python3")


def readme_commands() -> list[list[str]]:
    """Every shell command of the README's code blocks, as argv lists (comments dropped)."""
    commands = []
    for block in _code_blocks((ROOT / "README.md").read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] in PROGRAMS:
                commands.append(argv)
            else:
                assert not argv or "─▶" in line, f"README code line that is no known command: {line!r}"
    return commands


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def _validate_job(args: argparse.Namespace) -> dict | None:
    """The command's job config, validated as the command would before running it (None: no job)."""
    from matchmill.pipeline.config import load_config
    from matchmill.training.config import load_train_config

    if args.command in ("run", "mine"):
        return load_config(ROOT / args.config, args.overrides)
    if args.command == "train":
        load_train_config(args.model, ROOT / args.config, args.overrides)
    if args.command == "match":
        from matchmill.pipeline.config import resolve
        from matchmill.pipeline.folder_job import folder_job

        return resolve(folder_job(args.folder, out=args.out, method=args.method, sequential=args.sequential,
                                  window=args.window, loop_every=args.loop_every, run_name=args.name,
                                  overrides=list(args.overrides)))
    return None


def check_readme_command(argv: list[str], written: set[str]) -> str:
    """Check one README command without running it; returns what was checked. ``written``
    collects the run URLs that the README's run commands write."""
    if argv[0] == "make":
        missing = [t for t in argv[1:] if not t.startswith("-") and t not in _make_targets()]
        assert not missing, f"{shlex.join(argv)}: no Makefile target {missing}"
        return "make target"
    if argv[0] == "python3":
        if argv[1:4] == ["-m", "pip", "install"]:
            extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            wanted = re.findall(r"\[([\w,]+)\]", " ".join(argv))
            assert all(e in extras for w in wanted for e in w.split(",")), f"{shlex.join(argv)}: unknown extra"
        return "python line (and verbatim in .ci/run)"
    from matchmill.cli import build_parser
    from matchmill.evaluation.release.card_datasets import DATASET_KEYS
    from matchmill.methods.presets import PRESETS
    from matchmill.pipeline.config import run_url

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"README example does not parse: {shlex.join(argv)}")
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), f"{shlex.join(argv)}: no file {args.config}"
    for key, known in (("methods", PRESETS), ("datasets", DATASET_KEYS)):
        names = [n for n in str(getattr(args, key, "") or "").split(",") if n]
        assert all(n in known for n in names), f"{shlex.join(argv)}: --{key} {names}; known: {sorted(known)}"
    conf = _validate_job(args)
    if conf is not None:
        written.add(run_url(conf))
    return "parsed" + (", job validated" if conf is not None else "")


def _readers(argv: list[str]) -> list[str]:
    """The runs a README ``matchmill`` command reads, as the CLI resolves them."""
    from matchmill.cli import build_parser
    from matchmill.config import resolve_run_arg

    if argv[0] != "matchmill":
        return []
    args = build_parser().parse_args(argv[1:])
    named = [getattr(args, "run_url", None), *(getattr(args, "run_urls", None) or [])]
    return [resolve_run_arg(n) for n in named if n]


def test_every_readme_example_runs_when_pasted(tmp_path, monkeypatch):
    """Parsed by the CLI's own parser, config files present, overrides validated against the job
    schema, Makefile targets present, and every run a command reads written by a README command
    before it. Runs from an empty folder with a fresh default storage, as a newcomer's shell."""
    monkeypatch.setenv("MATCHMILL_RUNS", str(tmp_path / "data" / "matchmill" / "runs"))  # not under the shell's folder
    (tmp_path / "shell").mkdir()
    monkeypatch.chdir(tmp_path / "shell")
    commands = readme_commands()
    assert len(commands) >= 12 and sum(c[0] == "matchmill" for c in commands) >= 9
    written: set[str] = set()
    for argv in commands:
        check_readme_command(argv, written)
        for url in _readers(argv):
            assert url in written, f"{shlex.join(argv)} reads {url}, which no README command before it writes ({sorted(written)})"


def test_the_checks_catch_a_broken_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in (["matchmill", "run", "configs/nope.yaml"], ["matchmill", "run", "configs/demo.yaml", "extract.nope=1"],
                ["matchmill", "stauts", "demo"], ["make", "nope"], ["matchmill", "bench", "card", "--out", "x",
                                                                    "--methods", "siftt"]):
        with pytest.raises(BaseException) as info:
            check_readme_command(bad, set())
        assert not isinstance(info.value, KeyboardInterrupt)


def test_readme_says_what_ci_and_make_demo_do():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    for name in re.findall(r"^export (\w+)=", ci, flags=re.M):
        assert f"`{name}" in readme, f".ci/run sets {name}; the README does not say so"
    if "apt-get install" in ci:
        assert "chromium" in readme
    demo = re.search(r"^demo:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(), flags=re.M | re.S).group(0)
    for config in re.findall(r"run (configs/[\w-]+\.yaml)", demo):
        assert f"`{config}`" in readme.split("## The CLI")[0], f"make demo runs {config}; the set-up section does not say so"
    for config in re.findall(r"configs/[\w/-]+\.yaml", readme):
        assert (ROOT / config).is_file(), config
    if "progress_bars: false" in (ROOT / "configs/demo.yaml").read_text():
        assert "no progress bars" in readme or "progress_bars: false" in readme


def test_readme_quotes_the_model_card():
    from matchmill.weights.card_figures import demo_auc

    readme = (ROOT / "README.md").read_text()
    learned, sift = demo_auc("pump-ncnet-patch2pix"), demo_auc("sift")
    section = readme.split("## How good the learned chain is today")[1].split("\n## ")[0]
    intro = readme.split("## Set-up")[0]  # where the shipped weights are first advertised
    for text in (section, intro):
        assert f"{learned:.1f}" in text and f"{sift:.1f}" in text, "README's AUC@10 figures differ from MODEL_CARD.md"


def test_make_demo_reads_the_runs_it_writes(tmp_path, monkeypatch):
    """``make demo``'s matchmill lines checked as the README's are (its compare reads both demo runs)."""
    monkeypatch.setenv("MATCHMILL_RUNS", str(tmp_path / "data" / "matchmill" / "runs"))
    (tmp_path / "shell").mkdir()
    monkeypatch.chdir(tmp_path / "shell")
    demo = re.search(r"^demo:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(), flags=re.M | re.S).group(0)
    lines = [shlex.split(line)[2:] for line in demo.splitlines() if line.strip().startswith("$(PYTHON) -m matchmill")]
    assert len(lines) >= 3 and lines[-1][1] == "compare"
    written: set[str] = set()
    for argv in lines:
        check_readme_command(argv, written)
        for url in _readers(argv):
            assert url in written, f"make demo: {shlex.join(argv)} reads {url}, which it did not write ({sorted(written)})"
