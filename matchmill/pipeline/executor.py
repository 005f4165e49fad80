"""Run a segment of Ray stages as one streaming Ray Data execution.

A segment is ``[extract]`` (a barrier: a pair needs both of its images) or ``[propose, refine,
verify]``: one dataset flows read -> propose pool -> write propose parts -> refine pool -> write
refine parts -> verify pool -> write verify parts, with every actor pool alive at the same time
(a GPU pool and a CPU pool are busy together on a cluster). Each stage still writes its own part
files (written by the workers, published atomically) and is committed by the driver on its own.

Resume, per stage: every input row carries ``_enter``, the position of the first stage of the
segment that lacks its key. Rows missing from the first stage are read from its input stage;
rows the first stage has but the second lacks are read from the first stage's parts and enter at
the second; and so on. A stage computes and writes only rows with ``_enter <= position`` and
passes the others on untouched, so a resumed run redoes exactly the missing keys of each stage.

The driver holds no rows: reads are planned from Parquet footers and the workers write parts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matchmill.manifests.commit import part_name, part_stamp
from matchmill.manifests.schemas import MANIFESTS
from matchmill.manifests.storage import (
    StorageUnavailable,
    conform,
    join,
    open_parquet,
    storage_remote_args,
    url_to_fs,
    with_retries,
    write_manifest,
)

from .graph import StageSpec, _import

log = logging.getLogger(__name__)

ENTER = "_enter"

#: Concurrent read tasks and write tasks per operator (IO-bound, zero CPU reserved, so capped here:
#: uncapped zero-CPU tasks make Ray start a worker process per task, a second of CPU each).
READ_TASKS = 2
WRITE_TASKS = 2


@dataclass
class SegmentInput:
    """Rows entering the segment at ``position``: the parts of ``stage``, keeping ``keep`` keys
    (None = all) and dropping ``drop`` keys."""

    position: int
    stage: str
    urls: list[str]
    keep: list[str] | None = None
    drop: list[str] | None = None


@dataclass
class StagePlan:
    """How one stage of the segment runs."""

    spec: StageSpec
    position: int
    stage_url: str
    config_hash: str
    skip: list[str]  # keys this stage already has although they enter earlier (written once only)
    cpus: float  # CPUs reserved per actor (scaled when the segment's pools must share the cluster)
    stateless: bool  # no model to load: run as zero-CPU tasks instead of an actor pool


def _trace(event: str, what: str = "") -> None:
    """Append ``time pid event what`` to $MATCHMILL_TRACE (a debugging aid for start-up costs)."""
    path = os.environ.get("MATCHMILL_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.time():.3f} {os.getpid()} {event} {what}\n")


# --------------------------------------------------------------------------- reading


def plan_reads(inputs: list[SegmentInput], block_rows: int) -> list[dict]:
    """Row ranges of ``block_rows`` rows (one Ray block each) over the inputs' part files.

    Ray Data hands whole blocks to actors, so the block size sets how finely work spreads over
    the actor pool; only Parquet footers are read here.
    """
    items = []
    for inp in inputs:
        for url in inp.urls:
            fs, path = url_to_fs(url)

            def footer(fs=fs, path=path) -> int:
                with fs.open(path, "rb") as f:
                    return pq.ParquetFile(f).metadata.num_rows

            rows = with_retries(footer, "read", url, writing=False)
            for start in range(0, rows, block_rows):
                items.append({"url": url, "start": start, "length": min(block_rows, rows - start),
                              "position": inp.position, "stage": inp.stage})
    return items


def read_range(url: str, start: int, length: int, manifest: str) -> pa.Table:
    """Rows [start, start + length) of one part file, reading only the row groups they span."""
    fs, path = url_to_fs(url)

    def read() -> tuple[pa.Table, int]:
        with fs.open(path, "rb") as f:
            pf = open_parquet(f)
            groups, offset, first = [], 0, None
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if offset + n > start and offset < start + length:
                    groups.append(i)
                    first = offset if first is None else first
                offset += n
            return pf.read_row_groups(groups), first

    table, first = with_retries(read, "read", url, writing=False)
    return conform(table.slice(start - first, length), MANIFESTS[manifest][0], where=url)


def read_blocks(batch: pa.Table, carrier: pa.Schema, key: str, filters: dict[int, dict]) -> pa.Table:
    """Read the row ranges named in ``batch``; filter each by its input's keep / drop keys; tag
    rows with ``_enter``; conform to the segment's carrier schema."""
    _trace("read")
    tables = []
    for item in batch.to_pylist():
        table = read_range(item["url"], item["start"], item["length"], item["stage"])
        f = filters.get(item["position"], {})
        if f.get("keep") is not None:
            table = table.filter(pc.is_in(table.column(key), value_set=pa.array(f["keep"], pa.string())))
        if f.get("drop"):
            table = table.filter(pc.invert(pc.is_in(table.column(key), value_set=pa.array(f["drop"], pa.string()))))
        table = conform(table, carrier, where=item["url"])
        tables.append(table.append_column(ENTER, pa.array([item["position"]] * table.num_rows, pa.int8())))
    if not tables:
        return _with_enter(carrier).empty_table()
    return pa.concat_tables(tables)


def _with_enter(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(ENTER, pa.int8()))


def carrier_schema(inputs: list[SegmentInput]) -> pa.Schema:
    """The union of the inputs' schemas (fields by name, first wins; all nullable but keys)."""
    fields: dict[str, pa.Field] = {}
    for inp in sorted(inputs, key=lambda i: i.position):
        schema, key = MANIFESTS[inp.stage]
        for f in schema:
            if f.name not in fields:
                fields[f.name] = f if f.name in (key, "status") else f.with_nullable(True)
    return pa.schema(list(fields.values()))


# --------------------------------------------------------------------------- stage operators


class StageActor:
    """Ray Data callable class: one stage's actor over a segment's rows.

    Rows with ``_enter <= position`` are computed by the stage's implementation; later rows pass
    through untouched (conformed to this stage's output schema).
    """

    def __init__(self, implementation: str, conf: dict, run_url: str, config_hash: str, position: int, manifest: str,
                 read_args: dict | None = None):
        self.read_args = read_args  # the segment's first pool reads its input ranges itself
        _trace("actor-init-start", implementation)
        self.impl = _import(implementation)(conf, run_url, config_hash)
        _trace("actor-init-end", implementation)
        self.position = position
        self.schema = MANIFESTS[manifest][0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        _trace("actor-call", str(self.position))
        if self.read_args is not None:
            batch = read_blocks(batch, **self.read_args)
        return apply_stage(self.impl, batch, self.position, self.schema)


def apply_stage(impl, batch: pa.Table, position: int, schema: pa.Schema) -> pa.Table:
    enter = batch.column(ENTER)
    mine = pc.less_equal(enter, position)
    todo = batch.filter(mine)
    out = []
    if todo.num_rows:
        done = impl(todo.drop_columns([ENTER]))
        out.append(done.append_column(ENTER, todo.column(ENTER)))
    rest = batch.filter(pc.invert(mine))
    if rest.num_rows:
        enter_rest = rest.column(ENTER)
        rest = conform(rest.drop_columns([ENTER]), schema, where="pass-through rows")
        out.append(rest.append_column(ENTER, enter_rest))
    if not out:
        return _with_enter(schema).empty_table()
    return pa.concat_tables(out)


def stateless_stage(batch: pa.Table, implementation: str, conf: dict, run_url: str, config_hash: str,
                    position: int, manifest: str) -> pa.Table:
    """A stage whose method loads nothing (the identity refiner), run inside a zero-CPU task."""
    impl = _import(implementation)(conf, run_url, config_hash)
    return apply_stage(impl, batch, position, MANIFESTS[manifest][0])


def write_stage_part(batch: pa.Table, stage_url: str, manifest: str, key: str, position: int,
                     skip: list[str], last: bool, stamp: dict | None = None) -> pa.Table:
    """Write this stage's rows of the batch (``_enter <= position``, minus ``skip``) as one part
    file; pass the batch on to the next stage, or (last stage) return one counter row."""
    mine = batch.filter(pc.less_equal(batch.column(ENTER), position))
    if skip and mine.num_rows:
        mine = mine.filter(pc.invert(pc.is_in(mine.column(key), value_set=pa.array(skip, pa.string()))))
    url = None
    if mine.num_rows:
        url = join(stage_url, part_name(mine.column(key).to_pylist()))
        write_manifest(mine.drop_columns([ENTER]), url, manifest, metadata=stamp)
    if not last:
        return batch
    return pa.table({"part": pa.array([url] if url else [], pa.string()),
                     "rows": pa.array([mine.num_rows] if url else [], pa.int64())})


# --------------------------------------------------------------------------- the segment


def fit_reservations(specs: list[StageSpec], conf: dict, cluster_cpus: float,
                     stateless: frozenset[str] = frozenset()) -> dict[str, float]:
    """CPUs each stage's actors reserve so that all the segment's pools are alive together.

    Stateful pools whose total reservation exceeds the cluster's CPUs are scaled down by the same
    factor (they then share the CPUs through the OS scheduler; each actor keeps the thread count
    of its configured ``num_cpus``). Stages pinned by custom resources are left as configured.
    """
    want = {s.name: float(conf[s.name]["num_cpus"]) for s in specs}
    total = sum(want[s.name] * int(conf[s.name]["actors"]) for s in specs
                if not conf[s.name].get("resources") and s.name not in stateless)
    if cluster_cpus <= 0 or total <= cluster_cpus + 1e-9:
        return want
    factor = cluster_cpus / total
    return {name: (cpus if conf[name].get("resources") or name in stateless else math.floor(cpus * factor * 1000) / 1000)
            for name, cpus in want.items()}


def run_segment(plans: list[StagePlan], inputs: list[SegmentInput], conf: dict, run_url: str) -> int:
    """Execute the segment over ``inputs``; returns the number of parts the last stage wrote."""
    import ray

    first = plans[0].spec
    key = first.key
    carrier = carrier_schema(inputs)
    block_rows = int(conf[first.name]["batch_size"])
    items = plan_reads([i for i in inputs if i.urls], block_rows)
    if not items:
        return 0
    filters = {i.position: {"keep": i.keep, "drop": i.drop} for i in inputs}
    read_args = {"carrier": carrier, "key": key, "filters": filters}
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    remote = storage_remote_args()  # the driver's storage endpoint / credentials reach every worker
    if plans[0].stateless:  # nothing to host the reads: read in zero-CPU tasks
        ds = ds.map_batches(
            read_blocks,
            fn_kwargs=read_args,
            batch_size=1,
            num_cpus=0,  # IO only: must never wait for CPUs held by the actor pools
            compute=ray.data.TaskPoolStrategy(size=READ_TASKS),
            batch_format="pyarrow",
            **remote,
        )
    for plan in plans:
        spec, section = plan.spec, conf[plan.spec.name]
        args = dict(implementation=spec.implementation, conf=conf, run_url=run_url,
                    config_hash=plan.config_hash, position=plan.position, manifest=spec.manifest)
        reads_here = plan is plans[0] and not plan.stateless
        if reads_here:
            # the first pool reads its own blocks (one read range per call): no read tasks, hence no
            # extra worker processes, which cost a second of CPU each on a small machine
            args["read_args"] = read_args
        if plan.stateless:
            ds = ds.map_batches(stateless_stage, fn_kwargs=args, batch_size=int(section["batch_size"]),
                                num_cpus=0, compute=ray.data.TaskPoolStrategy(size=WRITE_TASKS),
                                batch_format="pyarrow", **remote)
        else:
            num_gpus = float(section["num_gpus"]) or None  # None, not 0: ray#45201
            custom = {"resources": dict(section["resources"])} if section.get("resources") else {}
            ds = ds.map_batches(
                StageActor,
                fn_constructor_kwargs=args,
                batch_size=1 if reads_here else int(section["batch_size"]),
                compute=ray.data.ActorPoolStrategy(size=int(section["actors"])),
                num_cpus=plan.cpus,
                num_gpus=num_gpus,
                batch_format="pyarrow",
                **remote,
                **custom,  # custom Ray resources (``<stage>.resources``), e.g. RANSAC on CPU workers
            )
        ds = ds.map_batches(
            write_stage_part,
            fn_kwargs=dict(stage_url=plan.stage_url, manifest=spec.manifest, key=spec.key,
                           position=plan.position, skip=plan.skip, last=plan is plans[-1],
                           stamp=part_stamp(spec.name, plan.config_hash)),
            batch_size=int(conf["part_rows"]),
            num_cpus=0,  # IO only
            compute=ray.data.TaskPoolStrategy(size=WRITE_TASKS),
            batch_format="pyarrow",
            **remote,
        )
    _trace("execute", ",".join(p.spec.name for p in plans))
    with _held_ray_data_errors() as held:
        try:
            out = ds.take_all()
        except Exception as exc:  # noqa: BLE001 - only a storage error is unwrapped; others re-raised as they are
            cause = storage_cause(exc)
            if cause is None:
                raise
            held.records.clear()
            cause.stage = ", ".join(p.spec.name for p in plans)
            raise cause from None  # plainly: Ray's wrappers and logs say nothing the driver's one line does not
    _trace("executed", ",".join(p.spec.name for p in plans))
    if os.environ.get("MATCHMILL_DATA_STATS"):  # debugging aid: Ray Data's per-operator timings
        print(ds.stats())
    return len(out)


#: The last line of a worker's traceback (as Ray carries it in the text of its RayTaskError) when
#: a :class:`StorageUnavailable` stopped it.
_STORAGE_LINE = re.compile(r"^matchmill\.manifests\.storage\.StorageUnavailable: (.+)$", re.MULTILINE)


def storage_cause(exc: BaseException) -> StorageUnavailable | None:
    """The :class:`StorageUnavailable` a worker raised, or None.

    Ray wraps a worker's exception in a RayTaskError (the original as ``cause``) and Ray Data
    first wraps it in a UserCodeException, whose ``__cause__`` does not survive the trip to the
    driver; the worker's traceback does, as text, so the error is found there when not as an object."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # RayTaskError: is-a the cause's type too, but its text is a traceback
        if isinstance(e, StorageUnavailable) and not isinstance(cause, BaseException):
            return e
        todo += [cause, e.__cause__, e.__context__]
    found = _STORAGE_LINE.findall(str(exc))
    return StorageUnavailable(found[-1].strip()) if found else None


#: Ray Data's loggers that report a failed task on the console before the error reaches the driver.
_RAY_DATA_ERROR_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


class _HeldRecords(logging.Filter):
    """Holds the ERROR records of its loggers instead of emitting them, until :meth:`release`."""

    def __init__(self) -> None:
        super().__init__("matchmill-held")
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.records.append(record)
        return False

    def release(self) -> None:
        for record in self.records:
            logging.getLogger(record.name).callHandlers(record)
        self.records.clear()


@contextlib.contextmanager
def _held_ray_data_errors():
    """Ray Data's ERROR lines about a failed task are held while the segment runs: dropped when the
    failure is a storage error (the driver says it in one line), emitted as they were otherwise."""
    held = _HeldRecords()
    loggers = [logging.getLogger(name) for name in _RAY_DATA_ERROR_LOGGERS]
    for logger in loggers:
        logger.addFilter(held)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(held)
        held.release()  # Ray Data's own lines about any other error, as it logged them


def describe_fit(specs: list[StageSpec], conf: dict, cpus: dict[str, float], cluster_cpus: float,
                 stateless: frozenset[str] = frozenset()) -> str | None:
    """One line when :func:`fit_reservations` scaled the reservations, else None."""
    changed = [s.name for s in specs if abs(cpus[s.name] - float(conf[s.name]["num_cpus"])) > 1e-9]
    if not changed:
        return None
    names = ", ".join(s.name for s in specs)
    actors = sum(int(conf[s.name]["actors"]) for s in specs if s.name not in stateless)
    per = ", ".join(f"{n} {cpus[n]:g}" for n in changed)
    return (f"{names} stream together: {actors} actors share the cluster's {cluster_cpus:g} CPUs "
            f"(CPUs reserved per actor: {per})")
