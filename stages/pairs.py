"""Pairs stage (driver side): build the pairs manifest from the configured data source."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from matchmill.manifests.schemas import PAIRS, STATUS_FAILED, STATUS_OK
from matchmill.manifests.storage import conform

log = logging.getLogger(__name__)

_MATRIX_SIZES = {"K0": 9, "K1": 9, "T_0to1": 16, "H_0to1": 9}

#: Pair dicts converted to Arrow at a time (bounds the driver's Python objects per pair).
CHUNK_ROWS = 1024


def demo_root(conf: dict) -> Path:
    """Where the generated demo scene lives; generated on first use."""
    from matchmill.datasets.demo_scene import ensure_demo_scene

    data = conf["data"]
    if data["root"]:
        return Path(data["root"])
    cache = Path(os.environ.get("MATCHMILL_CACHE", Path.home() / ".cache" / "matchmill"))
    root = cache / f"demo-seed{conf['seed']}-{data['demo_num_cameras']}cams-{data['demo_width']}x{data['demo_height']}"
    ensure_demo_scene(  # a no-op when the same scene (and generator version) is already there
        root,
        seed=conf["seed"],
        num_cameras=data["demo_num_cameras"],
        width=data["demo_width"],
        height=data["demo_height"],
    )
    return root


def check_source(conf: dict) -> None:
    """Fail (FileNotFoundError naming the key) when the data source cannot be read; writes nothing.

    Called by the runner before any stage is touched, so a wrong ``data.root`` never costs a
    committed stage."""
    import fsspec

    data = conf["data"]
    source = data["source"]

    def must_exist(key: str) -> None:
        value = data[key]
        fs, path = fsspec.core.url_to_fs(str(value))
        if not fs.exists(path):
            raise FileNotFoundError(f"data.{key} {str(value)!r} does not exist (data.source={source})")

    if source in ("megadepth", "hpatches", "oxford") or (source == "demo" and data["root"]):
        must_exist("root")
    if source == "pairs_file":
        must_exist("pairs_file")
        if data["images_dir"]:
            must_exist("images_dir")


def source_rows(conf: dict) -> Iterable[dict]:
    """Pair dicts (PAIRS field names) from ``data.source`` (pairs files are streamed)."""
    data = conf["data"]
    source = data["source"]
    pairs_conf = {**conf["pairs"], "seed": conf["pairs"].get("seed", conf["seed"])}
    if source in ("demo", "megadepth"):
        from matchmill.datasets.megadepth import select_megadepth_pairs

        root = demo_root(conf) if source == "demo" else Path(data["root"])
        if not root.exists():
            raise FileNotFoundError(f"data.root {str(root)!r} does not exist")
        return select_megadepth_pairs(root, pairs_conf)
    if source == "hpatches":
        from matchmill.datasets.hpatches import list_hpatches_pairs

        return list_hpatches_pairs(data["root"], sequences=data["sequences"])
    if source == "oxford":
        from matchmill.datasets.hpatches import list_oxford_pairs

        return list_oxford_pairs(data["root"])
    if source == "pairs_file":
        from matchmill.datasets.pairs_file import iter_pairs_file

        if str(data["pairs_file"]).endswith(".parquet"):  # a ready PAIRS manifest (any GT kind)
            from matchmill.manifests.storage import read_manifest

            table = read_manifest(str(data["pairs_file"]), "pairs")
            return (row for batch in table.to_batches(max_chunksize=CHUNK_ROWS) for row in batch.to_pylist())
        return iter_pairs_file(data["pairs_file"], data["images_dir"] or data["root"] or ".")
    raise ValueError(f"data.source: unknown source {source!r}")


def check_row(row: dict) -> str | None:
    """Return an error text when a pair row cannot be used, else None."""
    for key, size in _MATRIX_SIZES.items():
        value = row.get(key)
        if value is None:
            continue
        if len(value) != size:
            return f"{key} has {len(value)} values, expected {size}"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            return f"{key} contains NaN or infinite values"
    for key in ("image0", "image1", "path0", "path1"):
        if not row.get(key):
            return f"missing {key}"
    return None


def build(conf: dict, run_url: str | None = None) -> Iterator[pa.Table]:
    """The pairs stage: PAIRS tables streamed from ``data.source`` (see :func:`iter_pair_tables`)."""
    return iter_pair_tables(conf)


def build_pairs(conf: dict) -> pa.Table:
    """Collect, check and de-duplicate pair rows into a PAIRS table."""
    return pa.concat_tables(list(iter_pair_tables(conf)))


def iter_pair_tables(conf: dict, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """:func:`build_pairs` as PAIRS tables of at most ``chunk_rows`` rows (at least one table).

    The driver holds one chunk of pair dicts at a time plus the set of pair ids seen (for
    de-duplication), so its memory hardly grows with the length of a streamed pairs file."""
    rows, seen, emitted = [], set(), False
    for row in source_rows(conf):
        if row["pair_id"] in seen:
            log.warning("duplicate pair %s dropped", row["pair_id"])
            continue
        seen.add(row["pair_id"])
        if row.get("status", STATUS_OK) == STATUS_OK:
            error = check_row(row)
            if error:
                row = {**row, "status": STATUS_FAILED, "error": f"pairs: {row['pair_id']}: {error}"}
        rows.append({**{"status": STATUS_OK, "error": None}, **row})
        if len(rows) >= chunk_rows:
            yield conform(pa.Table.from_pylist(rows, schema=PAIRS), PAIRS, where="pairs")
            rows, emitted = [], True
    if rows or not emitted:
        table = pa.Table.from_pylist(rows, schema=PAIRS) if rows else PAIRS.empty_table()
        yield conform(table, PAIRS, where="pairs")
