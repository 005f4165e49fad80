"""Files in a run's stage folders that the run did not write, found before anything is written.

A stage folder holds the parts matchmill writes (named by
:func:`~matchmill.manifests.commit.part_name`, or numbered for driver stages, and stamped with
the stage and its config hash: :func:`~matchmill.manifests.commit.part_stamp`), its markers and
``.tmp-*`` files of interrupted writes. Before a run touches a stage, :func:`check_stage_folders`
looks at every ``*.parquet`` there that the run would read or delete:

- a stage that resumes (uncommitted, same config): each part must be named like ours, carry no
  stamp of another stage or config, and (Ray stages) hold only keys of the stage's input (those
  of the nearest committed upstream stage with the same key: pairs for the pair stages, images
  for extract). Otherwise the resume would count a stranger's rows as done and commit them;
- a stage cleared (uncommitted, another config) or recomputed whole (driver stages): each file
  must be named like ours, or clearing it would delete a user's file;
- a committed stage about to be repaired: a file the commit does not cover that is not named
  like ours (readers never read it: commit.part_files reads the commit's inventory only).

What is found stops the run (:class:`ConfigError`: one line, exit code 2) with every file named,
before anything is written; with ``--overwrite`` those files are deleted (one line each) instead.
Parts written before stamps existed are judged by their name and keys alone.
"""

from __future__ import annotations

from matchmill.config import ConfigError
from matchmill.manifests.commit import (
    STAMP_CONFIG,
    STAMP_STAGE,
    is_part_name,
    read_part_stamp,
    read_stage,
    stage_url,
)
from matchmill.manifests.storage import ManifestError, file_sizes, join, read_manifest, remove_tree

#: Files named in the error line (the rest are counted).
SHOWN = 6


def foreign_parts(url: str, states: list) -> list[tuple[str, str, str]]:
    """``(stage, file name, what is wrong)`` for each file of :func:`check_stage_folders`.

    ``states``: the runner's plan (``runner.StageState``: spec, action, config_hash, problems)."""
    by_name = {s.spec.name: s for s in states}
    found: list[tuple[str, str, str]] = []
    for state in states:
        spec = state.spec
        if state.action == "repair":
            found += [(spec.name, name, "is not covered by the commit and not named like a matchmill part")
                      for name in sorted(state.problems) if name.endswith(".parquet") and not is_part_name(name)]
            continue
        if state.action not in ("run", "clear"):
            continue
        folder = stage_url(url, spec.name)
        ours = []
        for name in sorted(file_sizes(folder)):
            if is_part_name(name):
                ours.append(name)
            else:
                found.append((spec.name, name, "is not named like a matchmill part"))
        if state.action != "run" or spec.kind != "ray" or not ours:
            continue  # cleared, or a driver stage (rewritten whole): names are all that matters
        allowed = _input_keys(url, spec, by_name)
        for name in ours:
            why = _judge_part(join(folder, name), spec, state.config_hash, allowed)
            if why:
                found.append((spec.name, name, why))
    return found


def _input_keys(url: str, spec, by_name: dict) -> tuple[str, set[str]] | None:
    """``(stage, keys)`` of the nearest committed upstream stage keyed like ``spec``, or None."""
    name = spec.input
    while name is not None and name in by_name:
        up = by_name[name]
        if up.spec.key != spec.key:
            return None
        if up.action == "skip":
            return name, set(read_stage(url, name, up.spec.manifest, columns=[spec.key]).column(spec.key).to_pylist())
        name = up.spec.input
    return None


def _judge_part(part: str, spec, config_hash: str, allowed: tuple[str, set[str]] | None) -> str | None:
    try:
        stamp = read_part_stamp(part)
        keys = read_manifest(part, spec.manifest, [spec.key]).column(spec.key).to_pylist() if allowed else []
    except (ManifestError, OSError, ValueError):
        return None  # unreadable: the resume removes it and redoes its rows (runner.run_ray_group)
    if stamp.get(STAMP_STAGE, spec.name) != spec.name:
        return f"was written by stage {stamp[STAMP_STAGE]}"
    if stamp.get(STAMP_CONFIG, config_hash) != config_hash:
        return f"was written under another config (hash {stamp[STAMP_CONFIG][:10]}, this run's is {config_hash[:10]})"
    if allowed:
        source, known = allowed
        extra = [k for k in keys if k not in known]
        if extra:
            return f"holds {len(extra)} key(s) that are not in the stage's input ({source}), e.g. {extra[0]!r}"
    return None


def describe_foreign(url: str, found: list[tuple[str, str, str]]) -> str:
    shown = "; ".join(f"{stage}/{name} {why}" for stage, name, why in found[:SHOWN])
    more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return (f"run {url}: stage folders hold files this run did not write: {shown}{more}; nothing was touched. "
            "Remove them (or move them out of the run folder), or rerun with --overwrite to delete them")


def check_stage_folders(url: str, states: list, overwrite: bool, echo=print) -> None:
    """Stop (:class:`ConfigError`) before anything is written when a stage folder holds files the
    run did not write; with ``overwrite`` delete them instead (a repaired stage's files are
    deleted by its repair), one line each."""
    found = foreign_parts(url, states)
    if not found:
        return
    if not overwrite:
        raise ConfigError(describe_foreign(url, found))
    repaired = {s.spec.name for s in states if s.action == "repair"}
    for stage, name, why in found:
        if stage not in repaired:
            remove_tree(join(stage_url(url, stage), name))
        echo(f"matchmill: {stage}/{name} {why}: removed (--overwrite)")
