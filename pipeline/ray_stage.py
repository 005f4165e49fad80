"""Run one Ray stage: read the input manifest, map an actor pool over it, write part files.

The parts are written by the workers themselves (one Parquet file per output batch, published
atomically), so the driver only sees a few counters per part and its memory does not grow with
the number of rows. A killed run leaves complete parts behind; the next run skips their keys.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from matchmill.manifests.commit import part_name
from matchmill.manifests.storage import conform, join, schema_of, url_to_fs, write_manifest


#: Concurrent read tasks per stage (they are IO-bound and reserve no CPU, so cap them here).
READ_TASKS = 2


def plan_reads(urls: list[str], block_rows: int) -> list[dict]:
    """Split the input part files into row ranges of ``block_rows`` rows (one Ray block each).

    Ray Data hands whole blocks to actors, so the block size sets how finely work spreads over
    the actor pool; only Parquet footers are read here.
    """
    items = []
    for url in urls:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        for start in range(0, rows, block_rows):
            items.append({"url": url, "start": start, "length": min(block_rows, rows - start)})
    return items


def read_range(url: str, start: int, length: int, manifest: str) -> pa.Table:
    """Rows [start, start + length) of one part file, reading only the row groups they span."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups, offset, first = [], 0, None
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if offset + n > start and offset < start + length:
                groups.append(i)
                first = offset if first is None else first
            offset += n
        table = pf.read_row_groups(groups)
    return conform(table.slice(start - first, length), schema_of(manifest), where=url)


def read_parts(batch: pa.Table, manifest: str, key: str, done: list[str]) -> pa.Table:
    """Read the row ranges named in ``batch``, minus keys already done (resume)."""
    tables = [read_range(r["url"], r["start"], r["length"], manifest) for r in batch.to_pylist()]
    table = pa.concat_tables(tables) if tables else schema_of(manifest).empty_table()
    return drop_done(table, key, done)


def read_dataset(urls: list[str], manifest: str, key: str, done: list[str], block_rows: int):
    """A Ray Dataset over Parquet part files on any fsspec URL, in blocks of ``block_rows``.

    Reading is a zero-CPU task per block (IO only): it must never wait for CPUs held by the
    stage's actor pool, or a 2-CPU machine with 2 actors deadlocks.
    """
    items = plan_reads(urls, block_rows)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(
        read_parts,
        fn_kwargs={"manifest": manifest, "key": key, "done": done},
        batch_size=1,
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=READ_TASKS),  # zero-CPU tasks need their own cap
        batch_format="pyarrow",
    )


def drop_done(batch: pa.Table, key: str, done: list[str]) -> pa.Table:
    """Remove rows whose key is already in a complete part (resume)."""
    if not done:
        return batch
    mask = pc.invert(pc.is_in(batch.column(key), value_set=pa.array(done, pa.string())))
    return batch.filter(mask)


def write_part(batch: pa.Table, stage_url: str, manifest: str, key: str) -> pa.Table:
    """Write one output batch as a part file; return one counter row for the driver."""
    if batch.num_rows == 0:
        return pa.table({"part": pa.array([], pa.string()), "rows": pa.array([], pa.int64()),
                         "failed": pa.array([], pa.int64()), "seconds": pa.array([], pa.float64())})
    keys = batch.column(key).to_pylist()
    url = join(stage_url, part_name(keys))
    write_manifest(batch, url, manifest)
    failed = int(pc.sum(pc.equal(batch.column("status"), "failed")).as_py() or 0)
    seconds = 0.0
    if "seconds" in batch.column_names:
        seconds = float(pc.sum(pc.fill_null(batch.column("seconds"), 0.0)).as_py() or 0.0)
    return pa.table({"part": [url], "rows": [batch.num_rows], "failed": [failed], "seconds": [seconds]})


def compute_strategy(size: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size)


def run_ray_stage(
    input_urls: list[str],
    actor_cls: type,
    ctor_kwargs: dict[str, Any],
    stage_conf: dict,
    stage_url: str,
    manifest: str,
    input_manifest: str,
    key: str,
    done: list[str],
    part_rows: int,
) -> list[dict]:
    """Execute the stage over the rows not in ``done``; return per-part counters."""

    ds = read_dataset(input_urls, input_manifest, key, done, block_rows=int(stage_conf["batch_size"]))
    num_gpus = float(stage_conf["num_gpus"]) or None  # None, not 0: ray#45201
    custom = {"resources": dict(stage_conf["resources"])} if stage_conf.get("resources") else {}
    ds = ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        batch_size=int(stage_conf["batch_size"]),
        compute=compute_strategy(int(stage_conf["actors"])),
        num_cpus=float(stage_conf["num_cpus"]),
        num_gpus=num_gpus,
        batch_format="pyarrow",
        **custom,  # custom Ray resources (``<stage>.resources``), e.g. to keep RANSAC on CPU workers
    )
    ds = ds.map_batches(
        write_part,
        fn_kwargs={"stage_url": stage_url, "manifest": manifest, "key": key},
        batch_size=part_rows,
        batch_format="pyarrow",
        num_cpus=0,  # IO only: must never wait for CPUs held by the actor pool
    )
    return ds.take_all()
