"""What the report's pictures are made of: the picture records and where a run's per-pair data lies.

The leaf module of the report's drawing code: :mod:`.figures` (the curves and the orchestration)
and :mod:`.pair_drawings` (the example pairs) both build on it, and it imports neither, so the two
never import each other. :mod:`.render` needs only these records to lay the pictures out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from matchmill.manifests.storage import exists, join, read_bytes

PAIRS_FILE = "pairs.parquet"
RUN_URL_FILE = "run_url.txt"


@dataclass(frozen=True)
class Picture:
    """One PNG of the report, stored next to the report files."""

    kind: str  # "mma" | "homography_accuracy" | "pose_cdf" | "matches"
    title: str
    file: str  # name relative to the report folder
    caption: str = ""
    method: str = ""  # for example pairs: the method drawn
    pair: str = ""  # for example pairs: the pair id


@dataclass
class BenchmarkPictures:
    """The pictures of one (benchmark, dataset) and the notes on those that could not be made."""

    curves: list[Picture] = field(default_factory=list)
    matches: list[Picture] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class PairData:
    """One method's per-pair table of its latest run, or why it is unavailable."""

    table: pa.Table | None
    url: str
    problem: str = ""


def pairs_url(out_url: str, method: str) -> str:
    return join(out_url, method, PAIRS_FILE)



def read_run_url(data: PairData, out_url: str, method: str) -> str | None:
    """The matchmill run folder behind a method's bench run: a ``run_url`` column of the
    per-pair table, else ``<out_url>/<method>/run_url.txt``."""
    if data.table is not None and "run_url" in data.table.column_names:
        urls = [u for u in data.table.column("run_url").to_pylist() if u]
        if urls:
            return urls[0]
    url = join(out_url, method, RUN_URL_FILE)
    try:
        if exists(url):
            return read_bytes(url).decode().strip() or None
    except Exception:  # noqa: BLE001 - unreachable storage: no run folder
        return None
    return None

