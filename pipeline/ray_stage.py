"""Run one Ray stage: read the input manifest, map an actor pool over it, write part files.

The parts are written by the workers themselves (one Parquet file per output batch, published
atomically), so the driver only sees a few counters per part and its memory does not grow with
the number of rows. A killed run leaves complete parts behind; the next run skips their keys.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from matchmill.manifests.commit import part_name
from matchmill.manifests.storage import join, read_manifest, schema_of, write_manifest


def read_parts(batch: pa.Table, manifest: str, key: str, done: list[str]) -> pa.Table:
    """Read (and validate) the part files named in ``batch["url"]``, minus keys already done."""
    tables = [read_manifest(url, manifest) for url in batch.column("url").to_pylist()]
    table = pa.concat_tables(tables) if tables else schema_of(manifest).empty_table()
    return drop_done(table, key, done)


def read_dataset(urls: list[str], manifest: str, key: str, done: list[str]):
    """A Ray Dataset over Parquet part files on any fsspec URL.

    Reading is a zero-CPU task per part file (IO only): it must never wait for CPUs held by
    the stage's actor pool, or a 2-CPU machine with 2 actors deadlocks.
    """
    items = ray.data.from_items([{"url": u} for u in urls], override_num_blocks=len(urls))
    return items.map_batches(
        read_parts,
        fn_kwargs={"manifest": manifest, "key": key, "done": done},
        batch_size=1,
        num_cpus=0,
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

    ds = read_dataset(input_urls, input_manifest, key, done)
    num_gpus = float(stage_conf["num_gpus"]) or None  # None, not 0: ray#45201
    ds = ds.map_batches(
        actor_cls,
        fn_constructor_kwargs=ctor_kwargs,
        batch_size=int(stage_conf["batch_size"]),
        compute=compute_strategy(int(stage_conf["actors"])),
        num_cpus=float(stage_conf["num_cpus"]),
        num_gpus=num_gpus,
        batch_format="pyarrow",
    )
    ds = ds.map_batches(
        write_part,
        fn_kwargs={"stage_url": stage_url, "manifest": manifest, "key": key},
        batch_size=part_rows,
        batch_format="pyarrow",
        num_cpus=0,  # IO only: must never wait for CPUs held by the actor pool
    )
    return ds.take_all()
