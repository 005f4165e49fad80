"""The same stage code as a Ray run, called in a plain in-process loop (no Ray).

Used by the tests on reference data and by the overhead benchmark, which compares a Ray run's
wall time with the summed compute time of exactly these calls. It iterates the stage specs
(matchmill/pipeline/graph.py) like the Ray runner does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from matchmill.manifests.storage import join, write_manifest
from matchmill.stages.images import unique_images
from matchmill.stages.pairs import build_pairs

from .graph import STAGES
from .runner import stage_hashes


@dataclass
class InProcessResult:
    tables: dict[str, pa.Table] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage call
    extract_calls: int = 0
    run_url: str = ""  # where the parts and artifacts were written (artifact_uri is relative to it)


def run_inprocess(conf: dict, run_url: str, pairs: pa.Table | None = None) -> InProcessResult:
    """Run pairs -> images -> extract -> propose -> refine -> verify sequentially in this process.

    Each Ray stage's output is written under ``run_url`` as one part file, exactly where the Ray
    run writes its parts (pair stages read the extract manifest and artifacts back the same way).
    """
    out = InProcessResult(run_url=run_url)
    hashes = stage_hashes(conf)
    pairs = build_pairs(conf) if pairs is None else pairs
    out.tables.update(pairs=pairs, images=unique_images(pairs))
    for spec in STAGES:
        if spec.kind != "ray":
            continue
        actor = spec.load()(conf, run_url, hashes[spec.name])
        start = time.perf_counter()
        table = actor(out.tables[spec.input])
        out.seconds[spec.name] = time.perf_counter() - start
        out.tables[spec.name] = table
        write_manifest(table, join(run_url, spec.name, "part-00000.parquet"), spec.manifest)
    out.extract_calls = out.tables["images"].num_rows
    return out
