"""The same stage code as a Ray run, called in a plain in-process loop (no Ray).

Used by the tests on reference data and by the overhead benchmark, which compares a Ray run's
wall time with the summed compute time of exactly these calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from matchmill.manifests.storage import join, write_manifest

from .runner import stage_hashes


@dataclass
class InProcessResult:
    tables: dict[str, pa.Table] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage call
    extract_calls: int = 0


def run_inprocess(conf: dict, run_url: str, pairs: pa.Table | None = None) -> InProcessResult:
    """Run pairs -> images -> extract -> propose -> refine -> verify sequentially in this process.

    Feature artifacts and the features manifest are written under ``run_url`` exactly as the
    Ray stage writes them (the propose actor reads them back the same way).
    """
    from matchmill.stages.extract import ExtractActor
    from matchmill.stages.images import unique_images
    from matchmill.stages.pairs import build_pairs
    from matchmill.stages.propose import ProposeActor
    from matchmill.stages.refine import RefineActor
    from matchmill.stages.verify import VerifyActor

    out = InProcessResult()
    hashes = stage_hashes(conf)
    pairs = build_pairs(conf) if pairs is None else pairs
    images = unique_images(pairs)
    out.tables.update(pairs=pairs, images=images)

    start = time.perf_counter()
    extractor = ExtractActor(conf["extract"], run_url, hashes["extract"], conf["data"]["max_image_pixels"])
    features = extractor(images)
    out.seconds["extract"] = time.perf_counter() - start
    out.extract_calls = images.num_rows
    write_manifest(features, join(run_url, "extract", "part-00000.parquet"), "features")
    out.tables["extract"] = features

    table = pairs
    for name, make in (
        ("propose", lambda: ProposeActor(conf["propose"], run_url)),
        ("refine", lambda: RefineActor(conf["refine"], run_url)),
        ("verify", lambda: VerifyActor(conf["verify"])),
    ):
        start = time.perf_counter()
        table = make()(table)
        out.seconds[name] = time.perf_counter() - start
        out.tables[name] = table
    return out
