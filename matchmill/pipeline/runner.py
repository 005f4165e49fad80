"""Run a job: walk the stage specs, skip committed stages, resume partial ones, commit each.

Rerun = resume:
- a stage committed with the same config hash is skipped;
- an uncommitted stage with the same hash redoes only the keys its complete parts lack;
- a stage committed with another config is never replaced silently: the run stops before
  touching anything and names the stages and the keys that changed; ``overwrite=True``
  (``matchmill run --overwrite``) replaces them. Uncommitted parts of another config are cleared.

Everything is validated (config, storage, the data source, what would be replaced) before the
first write. Ray starts while the driver stages (pairs, images) run. extract runs as its own
Ray Data execution (a barrier); propose -> refine -> verify stream as one (see executor.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matchmill.config import ConfigError
from matchmill.manifests.commit import (
    COMMIT_MARKER,
    STORAGE_FAILED,
    STORAGE_STOPS,
    CommitInfo,
    artifact_sizes,
    check_parts,
    committed_keys,
    part_files,
    part_stamp,
    read_commit,
    read_stage,
    read_started,
    remove_parts,
    reset_stage,
    stage_url,
    storage_failed_parts,
    write_commit,
    write_started,
)
from matchmill.manifests.lease import acquire_lease, ensure_held, held_lease
from matchmill.manifests.schemas import SCHEMA_VERSION
from matchmill.manifests.storage import (
    check_writable,
    file_sizes,
    is_local,
    join,
    remove_tree,
    schema_of,
    url_to_fs,
    write_manifest,
)
from matchmill.methods.quality_note import quality_note
from matchmill.methods.registry import REGISTRIES, load_method, random_init_warning
from matchmill.stages.metrics import read_summary
from matchmill.stages.pairs import check_source

from .config import run_url, stage_hash
from .executor import SegmentInput, StagePlan, describe_fit, fit_reservations, run_segment
from .graph import ALL_STAGES, EXECUTION_KEYS, STAGES, StageSpec, get_stage, section_value
from .runtime import init_ray, shutdown_started_ray
from .stray import check_stage_folders

log = logging.getLogger(__name__)

DRIVER_PART_ROWS = 10_000


@dataclass
class StageReport:
    """One line of the per-stage summary."""

    stage: str
    action: str  # ran | resumed | repaired | skipped
    rows: int
    failed: int
    computed: int  # rows computed in this run
    seconds: float
    config_hash: str
    streamed_with: tuple[str, ...] = ()  # the stages that shared this stage's execution (and time)


@dataclass
class RunResult:
    run_url: str
    stages: list[StageReport] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def failed_fraction(self) -> float:
        """Largest fraction of failed rows over the stages of this run (0 when none)."""
        return max((r.failed / r.rows for r in self.stages if r.rows and r.stage != "metrics"), default=0.0)


def stage_config(conf: dict, spec: StageSpec) -> list:
    """What a stage computes from: its config sections, execution keys removed."""
    parts = []
    for dotted in spec.sections:
        value = section_value(conf, dotted)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in EXECUTION_KEYS}
        parts.append(value)
    return parts


def stage_hashes(conf: dict, graph: tuple[StageSpec, ...] = ALL_STAGES) -> dict[str, str]:
    """Config hash of every stage; each includes the hashes of the stages it depends on."""
    hashes: dict[str, str] = {}
    for spec in graph:
        parts = [spec.name] + stage_config(conf, spec)
        upstream = "|".join(hashes[d] for d in spec.depends)
        hashes[spec.name] = stage_hash(parts, upstream or None)
    return hashes


def _new_local_folder(url: str) -> bool:
    """Whether ``url`` is a local folder that does not exist yet (:func:`check_storage` makes it)."""
    fs, path = url_to_fs(url)
    return is_local(fs) and not fs.exists(path)


def _remove_empty_folder(url: str) -> None:
    """Remove the local folder ``url`` if it is empty (never anything in it)."""
    _, path = url_to_fs(url)
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty, or already gone


def check_storage(conf: dict) -> str:
    """Resolve the run URL and make sure it is usable before any work starts."""
    url = run_url(conf)
    fs, _ = url_to_fs(url)
    if "memory" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        raise ConfigError(
            f"storage {conf['storage']!r}: memory:// lives inside one process and Ray workers cannot see it; "
            "use file:// or an object store"
        )
    check_writable(url)
    return url


# --------------------------------------------------------------------------- planning (no writes)


@dataclass
class StageState:
    spec: StageSpec
    config_hash: str
    # skip | run | replace (committed with another config) | clear (partial of another config)
    # | repair (committed, but parts are damaged: those are removed and their rows redone)
    action: str
    commit: CommitInfo | None
    problems: dict[str, str] = field(default_factory=dict)  # repair: part name -> what is wrong


def plan_stages(conf: dict, url: str, hashes: dict[str, str], specs: list[StageSpec], overwrite: bool,
                deep: bool | None = None) -> list[StageState]:
    """Decide what each stage does, reading markers and checking committed parts (see
    :func:`~matchmill.manifests.commit.check_parts`; ``integrity: full`` also reads them, unless
    ``deep=False``); raise before anything is written when a committed stage would be replaced
    without ``overwrite``."""
    states, replaced = [], []
    deep = conf.get("integrity", "full") == "full" if deep is None else deep
    for spec in specs:
        h = hashes[spec.name]
        commit = read_commit(url, spec.name)
        if commit and commit.config_hash == h and commit.schema_version == SCHEMA_VERSION:
            problems = check_parts(url, spec.name, spec.manifest, commit, deep=deep)
            problems = {**storage_retries(url, spec, commit, states), **problems}
            states.append(StageState(spec, h, "repair" if problems else "skip", commit, problems))
            continue
        if commit is not None:
            replaced.append((spec, commit))
            states.append(StageState(spec, h, "replace", commit))
            continue
        started = read_started(url, spec.name)
        states.append(StageState(spec, h, "clear" if started not in (None, h) else "run", None))
    if replaced and not overwrite:
        raise ConfigError(describe_replacement(conf, replaced, url))
    return states


def describe_replacement(conf: dict, replaced: list[tuple[StageSpec, CommitInfo]], url: str) -> str:
    names = ", ".join(s.name for s, _ in replaced)
    changed: list[str] = []
    for spec, commit in replaced:
        if commit.schema_version != SCHEMA_VERSION:
            changed.append(f"{spec.name}: written with schema version {commit.schema_version}, now {SCHEMA_VERSION}")
            continue
        old = commit.extra.get("config")
        if old is None:
            continue
        new = stage_config(conf, spec)
        for dotted, a, b in zip(spec.sections, old, _jsonable(new)):
            changed += [f"{dotted}{k}" for k in _diff_keys(a, b)]
    what = f" (changed: {', '.join(dict.fromkeys(changed))})" if changed else " (its config or an upstream stage's changed)"
    return (f"run {url} has committed results of another config for {names}{what}; nothing was touched. "
            f"Rerun with --overwrite to replace them, or use another run_name")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}")
        return out
    return [] if a == b else [prefix]


def storage_retries(url: str, spec: StageSpec, commit: CommitInfo, planned: list[StageState]) -> dict[str, str]:
    """Problems that make a committed stage redo rows an older version committed as failed because
    storage failed (:func:`~matchmill.manifests.commit.storage_failed_parts`); a driver stage that
    aggregates a stage redoing such rows (metrics) is redone whole."""
    if spec.kind == "driver" and spec.input is not None:
        retried = [s.spec.name for s in planned if s.spec.name in spec.depends
                   and any(STORAGE_FAILED in p for p in s.problems.values())]
        if retried:
            return {"(inputs)": f"is computed from {', '.join(retried)}, which redoes rows {STORAGE_FAILED}"}
        return {}
    return storage_failed_parts(url, spec.name, spec.manifest, commit)


def describe_repairs(states: list[StageState]) -> list[str]:
    """One line per damaged part of a committed stage that this run removes and redoes."""
    return [f"{s.spec.name}/{name} {problem}: removed, its rows are redone (the stage's other parts are kept)"
            for s in states if s.action == "repair" for name, problem in s.problems.items()]


def preflight(conf: dict, states: list[StageState]) -> None:
    """Checks that need the data source, done before anything is written."""
    if any(s.spec.name == "pairs" and s.action != "skip" for s in states):
        check_source(conf)


def _warn_random_init(conf: dict, states: list[StageState], echo) -> None:
    """One line when a learned method of a stage that will run has no weights."""
    running = tuple(s.spec.name for s in states if s.action != "skip" and s.spec.name in REGISTRIES)
    line = random_init_warning(conf, running) if running else None
    if line:
        echo(f"matchmill: {line}")


def _note_quality(conf: dict, echo) -> None:
    """One line, for a learned preset: its measured quality against SIFT, from the model card."""
    line = quality_note(conf)
    if line:
        echo(f"matchmill: {line}")


# --------------------------------------------------------------------------- running


def run_pipeline(conf: dict, until: str | None = None, address: str | None = None, echo=print,
                 overwrite: bool = False, verbose: bool = False,
                 graph: tuple[StageSpec, ...] = STAGES) -> RunResult:
    """Run (or resume) the whole job (:func:`_run_pipeline`), holding the run's lease (one writer
    per run: matchmill/manifests/lease.py) from the end of validation to the end of the run, however it ends."""
    held: list = []
    prior = held_lease(run_url(conf))  # a lease this process already held (not ours to release)
    try:
        return _run_pipeline(conf, until, address, echo, overwrite, verbose, graph, held)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C / SIGTERM (cli.py): no worker writes once the lease is free
        shutdown_started_ray()
        raise
    finally:
        for lease in held:
            lease.release()
        taken = held_lease(run_url(conf))  # interrupted between acquire_lease returning and held.append
        if taken is not None and taken is not prior and not held:
            taken.release()


def _run_pipeline(conf: dict, until: str | None, address: str | None, echo, overwrite: bool, verbose: bool,
                  graph: tuple[StageSpec, ...], held: list) -> RunResult:
    """Run (or resume) the whole job described by a validated config.

    ``graph``: the stages to run, in order (:data:`~matchmill.pipeline.graph.STAGES` for
    ``matchmill run``, :data:`~matchmill.pipeline.graph.MINE_GRAPH` for ``matchmill mine``)."""
    names = tuple(s.name for s in graph)
    if until is not None and until not in names:
        raise ConfigError(f"--until: unknown stage {until!r}; stages: {', '.join(names)}")
    made = _new_local_folder(run_url(conf))
    url = check_storage(conf)
    hashes = stage_hashes(conf, graph)
    last = names.index(until) if until else len(graph) - 1
    specs = list(graph[: last + 1])
    try:
        states = plan_stages(conf, url, hashes, specs, overwrite, deep=False)
        preflight(conf, states)
    except Exception:
        if made:  # a refused job leaves nothing behind, not even the empty run folder the storage check made
            _remove_empty_folder(url)
        raise
    # one writer per run: the lease is taken after validation, before the first write; the plan is
    # made again under it (a writer that held it until now may have committed stages since)
    held.append(acquire_lease(url))
    again = plan_stages(conf, url, hashes, specs, overwrite)
    if [s.action for s in again if s.spec.name == "pairs"] != [s.action for s in states if s.spec.name == "pairs"]:
        preflight(conf, again)
    states = again
    check_stage_folders(url, states, overwrite, echo)
    echo(f"run: {url}")  # the resolved absolute URL, once everything is validated (docs/storage.md)
    _warn_random_init(conf, states, echo)
    _note_quality(conf, echo)
    for line in describe_repairs(states):
        echo(f"matchmill: {line}")
    result = RunResult(run_url=url)
    needs_ray = any(s.spec.kind == "ray" and s.action != "skip" for s in states)
    groups = group_states(states)
    i = 0
    # Ray starts in this (main) thread while a helper thread runs the driver stages before extract
    if needs_ray and groups and groups[0][0].spec.kind == "driver" and _overlap_safe(conf):
        lead = []
        while i < len(groups) and groups[i][0].spec.kind == "driver":
            lead.append(groups[i])
            i += 1
        reports: list = []
        errors: list = []

        def run_lead() -> None:
            try:
                for group in lead:
                    reports.append(run_driver(group[0], conf, url))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        worker = threading.Thread(target=run_lead, name="matchmill-driver-stages")
        worker.start()
        try:
            _start_ray(conf, address, verbose)
        finally:
            worker.join()
        if errors:
            raise errors[0]
        for report in reports:
            _report(result, report, echo)
    elif needs_ray:
        _start_ray(conf, address, verbose)
    for group in groups[i:]:
        if group[0].spec.kind == "driver":
            _report(result, run_driver(group[0], conf, url), echo)
        else:
            for report in run_ray_group(group, conf, url, echo):
                _report(result, report, echo)
        pa.default_memory_pool().release_unused()  # hand a stage's transient Arrow buffers back to the OS
    if until is not None and until != names[-1]:
        echo(f"stopped after {until} (--until)")
    if until is None or names.index(until) >= names.index("metrics"):
        result.metrics = read_summary(url)
    return result


def _overlap_safe(conf: dict) -> bool:
    """Whether the driver stages may run in a thread while Ray starts.

    Pair lists (``pairs_file``: text or Parquet) are pure Python and Arrow. Scene sources read
    COLMAP models through pycolmap (and the demo renders its scene first): native libraries whose
    logging set-up must not race Ray's core-worker start (a run hung once in the test suite with
    the two overlapping), so those stages run before Ray starts.
    """
    return conf["data"]["source"] == "pairs_file"


def _start_ray(conf: dict, address: str | None, verbose: bool) -> None:
    init_ray(conf, address, verbose=verbose)


def _report(result: RunResult, report: StageReport, echo) -> None:
    result.stages.append(report)
    echo(format_report(report))


def group_states(states: list[StageState]) -> list[list[StageState]]:
    """Driver stages alone; extract alone (a barrier); consecutive streamed stages together."""
    groups: list[list[StageState]] = []
    for state in states:
        if state.spec.streamed and groups and groups[-1][-1].spec.streamed:
            groups[-1].append(state)
        else:
            groups.append([state])
    return groups


def format_report(r: StageReport) -> str:
    line = (
        f"[{r.stage:>8}] {r.action:<8} rows={r.rows:<6} failed={r.failed:<5} "
        f"computed={r.computed:<6} time={r.seconds:7.2f}s  hash={r.config_hash[:10]}"
    )
    if r.streamed_with:
        line += f"  (streamed with {', '.join(r.streamed_with)})"
    return line


def _prepare(state: StageState, url: str) -> None:
    """Clear what the plan said to clear, then mark the attempt as started."""
    ensure_held(url)  # a run whose lease was taken over clears nothing
    if state.action == "repair":
        # the stage is uncommitted from here on: an interrupted repair resumes like any partial stage
        remove_parts(url, state.spec.name, [COMMIT_MARKER] + [n for n in state.problems if n.endswith(".parquet")])
        if any(not n.endswith(".parquet") for n in state.problems):  # the row count is off: redo from scratch
            reset_stage(url, state.spec.name)
    elif state.action in ("replace", "clear"):
        log.warning("stage %s: %s", state.spec.name,
                    "replacing the results of another config (--overwrite)" if state.action == "replace"
                    else "clearing uncommitted parts of another config")
        reset_stage(url, state.spec.name)
    write_started(url, state.spec.name, state.config_hash)


def _commit(state: StageState, conf: dict, url: str, seconds: float, execution: tuple[str, ...] = ()) -> tuple[int, int]:
    """Count the stage's rows and write its commit marker (with the config it computed from and,
    for streamed stages, the stages that shared its execution and its ``seconds``)."""
    ensure_held(url)  # a run whose lease was taken over commits nothing: the two writers' rows would mix
    spec = state.spec
    parts = file_sizes(stage_url(url, spec.name))
    rows, failed = count_rows(url, spec)
    extra = {"config": _jsonable(stage_config(conf, spec)), STORAGE_STOPS: True}
    if len(execution) > 1:
        extra["execution"] = list(execution)
    if state.problems:
        extra["repaired"] = dict(state.problems)
    write_commit(url, CommitInfo(spec.name, spec.manifest, state.config_hash, rows, failed, seconds=seconds,
                                 extra=extra, parts=parts, artifacts=artifact_sizes(url, spec.name, spec.manifest)))
    return rows, failed


def run_seconds(run_url: str) -> float:
    """Wall seconds of a run's committed stages, each execution counted once (the streamed stages
    share one execution and record its time each)."""
    total, seen = 0.0, set()
    for spec in ALL_STAGES:
        commit = read_commit(run_url, spec.name)
        if commit is None:
            continue
        execution = tuple(commit.extra.get("execution") or (spec.name,))
        if execution not in seen:
            seen.add(execution)
            total += commit.seconds
    return total


def run_driver(state: StageState, conf: dict, url: str) -> StageReport:
    """pairs / images / metrics: cheap, computed in-process; tables are streamed into parts."""
    spec = state.spec
    if state.action == "skip":
        return StageReport(spec.name, "skipped", state.commit.rows, state.commit.failed, 0, 0.0, state.config_hash)
    start = time.perf_counter()
    _prepare(state, url)
    for part in part_files(url, spec.name):
        remove_tree(part)
    computed = write_in_parts(spec.load()(conf, url), url, spec, config_hash=state.config_hash)
    seconds = time.perf_counter() - start
    rows, failed = _commit(state, conf, url, seconds)
    action = "repaired" if state.action == "repair" else "ran"
    return StageReport(spec.name, action, rows, failed, computed, seconds, state.config_hash)


def count_rows(url: str, spec: StageSpec) -> tuple[int, int]:
    if spec.manifest == "metrics":
        table = read_stage(url, spec.name, columns=["metric"])
        return table.num_rows, 0
    table = read_stage(url, spec.name, columns=["status"])
    failed = int(pc.sum(pc.equal(table.column("status"), "failed")).as_py() or 0)
    return table.num_rows, failed


def write_in_parts(tables: pa.Table | Iterable[pa.Table], url: str, spec: StageSpec,
                   rows_per_part: int = DRIVER_PART_ROWS, config_hash: str | None = None) -> int:
    """Write a table, or a stream of tables, as part files of ``rows_per_part`` rows (the last one
    shorter; no rows -> one empty part); returns the row count. Holds at most one part.
    ``config_hash``: stamped into each part (:func:`~matchmill.manifests.commit.part_stamp`)."""
    stamp = part_stamp(spec.name, config_hash) if config_hash else None
    pending: list[pa.Table] = []
    pending_rows = parts = total = 0

    def flush() -> None:
        nonlocal pending, pending_rows, parts
        chunk = pa.concat_tables(pending) if pending else schema_of(spec.manifest).empty_table()
        write_manifest(chunk, join(stage_url(url, spec.name), f"part-{parts:05d}.parquet"), spec.manifest,
                       metadata=stamp)
        pending, pending_rows, parts = [], 0, parts + 1

    for table in [tables] if isinstance(tables, pa.Table) else tables:
        start = 0
        while start < table.num_rows:
            take = min(rows_per_part - pending_rows, table.num_rows - start)
            pending.append(table.slice(start, take))
            pending_rows, start, total = pending_rows + take, start + take, total + take
            if pending_rows == rows_per_part:
                flush()
    if pending_rows or parts == 0:
        flush()
    return total


def stage_keys(url: str, stage: str) -> pa.Array:
    """All keys of a stage's parts (one Arrow string array)."""
    spec = get_stage(stage)
    return read_stage(url, stage, columns=[spec.key]).column(spec.key).combine_chunks()


def run_ray_group(group: list[StageState], conf: dict, url: str, echo) -> list[StageReport]:
    """Run a segment of Ray stages (extract alone, or the streamed stages) and commit each."""
    todo = [s for s in group if s.action != "skip"]
    reports: dict[str, StageReport] = {}
    for s in group:
        if s.action == "skip":
            reports[s.spec.name] = StageReport(s.spec.name, "skipped", s.commit.rows, s.commit.failed, 0, 0.0, s.config_hash)
    if not todo:
        return [reports[s.spec.name] for s in group]
    # the segment starts at the first stage to run; stages before it in the group are committed
    todo = group[group.index(todo[0]):]
    done: dict[str, set[str]] = {}
    for state in todo:
        if state.action == "skip":  # committed, after a stage that runs: it takes no new rows
            done[state.spec.name] = set(stage_keys(url, state.spec.name).to_pylist())
            continue
        _prepare(state, url)
        keys, broken = committed_keys(url, state.spec.name, state.spec.manifest, state.spec.key)
        for part in broken:
            log.warning("stage %s: removing unreadable part %s (its rows are redone)", state.spec.name, part)
            remove_tree(part)
        done[state.spec.name] = keys
    first = todo[0].spec
    d0 = done[first.name]
    inputs = [SegmentInput(0, first.input, part_files(url, first.input), drop=sorted(d0) or None)]
    entered: list[set[str]] = [set()]  # keys entering at each position > 0 (position 0: all but d0)
    present = set(d0)  # keys that have not entered yet
    total = count_input_rows(url, first.input) - len(d0)
    computed = {first.name: total}
    for pos in range(1, len(todo)):
        name, prev = todo[pos].spec.name, todo[pos - 1].spec.name
        present &= done[prev]
        enter = present - done[name]
        present -= enter
        entered.append(enter)
        if enter:
            inputs.append(SegmentInput(pos, prev, part_files(url, prev), keep=sorted(enter)))
        total += len(enter)
        computed[name] = total
    cluster_cpus = _cluster_cpus()
    specs = [s.spec for s in todo]
    stateless = frozenset(s.name for s in specs if _stateless(s, conf))
    cpus = fit_reservations(specs, conf, cluster_cpus, stateless)
    note = describe_fit(specs, conf, cpus, cluster_cpus, stateless)
    if note:
        echo(note)
    plans = []
    for pos, state in enumerate(todo):
        name = state.spec.name
        d = done[name]
        # keys entering earlier that this stage already has: written once, never twice
        skip = (d - d0) if pos else set()
        for j in range(1, pos):
            skip |= d & entered[j]
        plans.append(StagePlan(state.spec, pos, stage_url(url, name), state.config_hash, sorted(skip), cpus[name],
                               stateless=name in stateless))
    start = time.perf_counter()
    if computed[todo[-1].spec.name]:
        run_segment(plans, inputs, conf, url)
    seconds = time.perf_counter() - start
    names = tuple(s.spec.name for s in todo)
    for state in todo:
        name = state.spec.name
        rows, failed = _commit(state, conf, url, seconds, names)
        action = "repaired" if state.action == "repair" else "resumed" if done[name] else "ran"
        others = tuple(n for n in names if n != name) if len(names) > 1 else ()
        reports[name] = StageReport(name, action, rows, failed, computed[name], seconds, state.config_hash, others)
    return [reports[s.spec.name] for s in group]


def count_input_rows(url: str, stage: str) -> int:
    """Rows of a stage's parts, from the Parquet footers."""
    total = 0
    for part in part_files(url, stage):
        fs, path = url_to_fs(part)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _stateless(spec: StageSpec, conf: dict) -> bool:
    """A stage whose method loads nothing (``identity = True``) runs in zero-CPU tasks, not a pool."""
    if "method" not in conf.get(spec.name, {}):
        return False
    return load_method(spec.name, conf[spec.name]["method"]).identity


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))
