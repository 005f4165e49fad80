"""Run a job: walk the stage graph, skip committed stages, resume partial ones, commit each.

Rerun = resume:
- a stage committed with the same config hash is skipped;
- an uncommitted stage with the same hash redoes only the keys its complete parts lack;
- a stage whose hash changed (its config or anything upstream changed) is cleared and redone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from matchmill.manifests.commit import (
    CommitInfo,
    committed_keys,
    part_files,
    read_commit,
    read_stage,
    read_started,
    reset_stage,
    stage_url,
    write_commit,
    write_started,
)
from matchmill.manifests.schemas import SCHEMA_VERSION
from matchmill.manifests.storage import (
    check_writable,
    join,
    read_manifest,
    remove_tree,
    schema_of,
    url_to_fs,
    write_manifest,
)

from .config import ConfigError, run_url, stage_hash
from .graph import STAGE_NAMES, STAGES, StageSpec, section_value

log = logging.getLogger(__name__)

DRIVER_PART_ROWS = 10_000


@dataclass
class StageReport:
    """One line of the per-stage summary."""

    stage: str
    action: str  # ran | resumed | skipped
    rows: int
    failed: int
    computed: int  # rows computed in this run
    seconds: float
    config_hash: str


@dataclass
class RunResult:
    run_url: str
    stages: list[StageReport] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def stage_hashes(conf: dict) -> dict[str, str]:
    """Config hash of every stage; each includes the hashes of the stages it depends on."""
    hashes: dict[str, str] = {}
    for spec in STAGES:
        parts = [spec.name] + [section_value(conf, s) for s in spec.sections]
        upstream = "|".join(hashes[d] for d in spec.depends)
        hashes[spec.name] = stage_hash(parts, upstream or None)
    return hashes


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


def run_pipeline(conf: dict, until: str | None = None, address: str | None = None, echo=print) -> RunResult:
    """Run (or resume) the whole job described by a validated config."""
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"--until: unknown stage {until!r}; stages: {', '.join(STAGE_NAMES)}")
    url = check_storage(conf)
    hashes = stage_hashes(conf)
    result = RunResult(run_url=url)
    ray_started = False
    for spec in STAGES:
        if spec.kind == "ray" and not ray_started:
            from .runtime import init_ray

            init_ray(conf, address)
            ray_started = True
        report = run_stage(spec, conf, url, hashes[spec.name])
        pa.default_memory_pool().release_unused()  # hand a stage's transient Arrow buffers back to the OS
        result.stages.append(report)
        echo(format_report(report))
        if spec.name == until:
            echo(f"stopped after {until} (--until)")
            break
    if until is None or until == "metrics":
        from matchmill.stages.metrics import read_summary

        result.metrics = read_summary(url)
    return result


def format_report(r: StageReport) -> str:
    return (
        f"[{r.stage:>8}] {r.action:<8} rows={r.rows:<6} failed={r.failed:<5} "
        f"computed={r.computed:<6} time={r.seconds:7.2f}s  hash={r.config_hash[:10]}"
    )


def run_stage(spec: StageSpec, conf: dict, url: str, config_hash: str) -> StageReport:
    commit = read_commit(url, spec.name)
    if commit and commit.config_hash == config_hash and commit.schema_version == SCHEMA_VERSION:
        return StageReport(spec.name, "skipped", commit.rows, commit.failed, 0, 0.0, config_hash)
    started = read_started(url, spec.name)
    if commit is not None or (started is not None and started != config_hash):
        log.warning("stage %s: config changed, clearing its previous results", spec.name)
        reset_stage(url, spec.name)
        started = None
    write_started(url, spec.name, config_hash)
    start = time.perf_counter()
    if spec.kind == "driver":
        computed = run_driver_stage(spec, conf, url, config_hash)
        action = "ran"
    else:
        computed, resumed = run_distributed_stage(spec, conf, url, config_hash)
        action = "resumed" if resumed else "ran"
    seconds = time.perf_counter() - start
    rows, failed = count_rows(url, spec)
    write_commit(url, CommitInfo(spec.name, spec.manifest, config_hash, rows, failed, seconds=seconds))
    return StageReport(spec.name, action, rows, failed, computed, seconds, config_hash)


def count_rows(url: str, spec: StageSpec) -> tuple[int, int]:
    if spec.manifest == "metrics":
        table = read_stage(url, spec.name, spec.manifest, columns=["metric"])
        return table.num_rows, 0
    table = read_stage(url, spec.name, spec.manifest, columns=["status"])
    failed = int(pc.sum(pc.equal(table.column("status"), "failed")).as_py() or 0)
    return table.num_rows, failed


def write_in_parts(tables: pa.Table | Iterable[pa.Table], url: str, spec: StageSpec,
                   rows_per_part: int = DRIVER_PART_ROWS) -> int:
    """Write a table, or a stream of tables, as part files of ``rows_per_part`` rows (the last one
    shorter; no rows -> one empty part); returns the row count. Holds at most one part."""
    pending: list[pa.Table] = []
    pending_rows = parts = total = 0

    def flush() -> None:
        nonlocal pending, pending_rows, parts
        chunk = pa.concat_tables(pending) if pending else schema_of(spec.manifest).empty_table()
        write_manifest(chunk, join(stage_url(url, spec.name), f"part-{parts:05d}.parquet"), spec.manifest)
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


def run_driver_stage(spec: StageSpec, conf: dict, url: str, config_hash: str) -> int:
    """pairs / images / metrics: cheap, computed in-process; pairs are streamed into parts."""
    for part in part_files(url, spec.name):
        remove_tree(part)
    if spec.name == "pairs":
        from matchmill.stages.pairs import iter_pair_tables

        return write_in_parts(iter_pair_tables(conf), url, spec)
    elif spec.name == "images":
        from matchmill.stages.images import IMAGE_SOURCE_COLUMNS, unique_images

        # one pairs part at a time: the driver holds the unique images, never every pair
        table = unique_images(read_manifest(part, "pairs", IMAGE_SOURCE_COLUMNS) for part in part_files(url, "pairs"))
    elif spec.name == "metrics":
        from matchmill.stages.metrics import compute_metrics

        table = compute_metrics(url, conf)
    else:  # pragma: no cover - graph and code out of sync
        raise RuntimeError(f"no driver implementation for stage {spec.name}")
    return write_in_parts(table, url, spec)


def actor_for(spec: StageSpec, conf: dict, url: str, config_hash: str) -> tuple[type, dict]:
    section = conf[spec.name]
    if spec.name == "extract":
        from matchmill.stages.extract import ExtractActor

        return ExtractActor, {
            "conf": section,
            "run_url": url,
            "config_hash": config_hash,
            "max_image_pixels": conf["data"]["max_image_pixels"],
        }
    if spec.name == "propose":
        from matchmill.stages.propose import ProposeActor

        return ProposeActor, {"conf": section, "run_url": url}
    if spec.name == "refine":
        from matchmill.stages.refine import RefineActor

        return RefineActor, {"conf": section, "run_url": url}
    if spec.name == "verify":
        from matchmill.stages.verify import VerifyActor

        return VerifyActor, {"conf": section}
    raise RuntimeError(f"no actor for stage {spec.name}")  # pragma: no cover


def run_distributed_stage(spec: StageSpec, conf: dict, url: str, config_hash: str) -> tuple[int, bool]:
    """Map the stage's actor pool over the input rows it has not written yet."""
    from .ray_stage import run_ray_stage

    done, broken = committed_keys(url, spec.name, spec.manifest, spec.key)
    for part in broken:
        log.warning("stage %s: removing unreadable part %s (its rows are redone)", spec.name, part)
        remove_tree(part)
    inputs = part_files(url, spec.input)
    todo = count_todo(url, spec, done)
    if not inputs or todo <= 0:
        return 0, bool(done)
    actor_cls, kwargs = actor_for(spec, conf, url, config_hash)
    counters = run_ray_stage(
        inputs,
        actor_cls,
        kwargs,
        conf[spec.name],
        stage_url(url, spec.name),
        spec.manifest,
        get_manifest(spec.input),
        spec.key,
        sorted(done),
        conf["part_rows"],
    )
    return sum(int(c["rows"]) for c in counters), bool(done)


def count_todo(url: str, spec: StageSpec, done: set[str]) -> int:
    """Input rows whose key is not in ``done``, counted in Arrow (no Python object per row)."""
    keys = read_stage(url, spec.input, get_manifest(spec.input), columns=[spec.key]).column(spec.key)
    if not done:
        return len(keys)
    return len(keys) - int(pc.sum(pc.is_in(keys, value_set=pa.array(sorted(done), pa.string()))).as_py() or 0)


def get_manifest(stage: str) -> str:
    from .graph import get_stage

    return get_stage(stage).manifest
