"""Whole demo runs compared row for row: the fault, object-store and storage tests check that a run
which survived faults gives the same rows as a clean one (the ``demo_reference`` fixture)."""

from __future__ import annotations

#: The demo run the fault and object-store tests compare against (24 pairs of 14 images).
REFERENCE_OVERRIDES = ("pairs.max_pairs_per_scene=24",)
#: Stages whose rows a faulty run must reproduce exactly (metrics are compared as a summary).
COMPARED_STAGES = ("pairs", "images", "extract", "propose", "refine", "verify")


def run_results(run_url: str) -> dict:
    """A run's rows per stage, sorted by key, timing columns dropped; and its metrics summary.
    Two runs of one config give equal results (seeds per row), whatever faults one survived."""
    from matchmill.manifests.commit import read_stage
    from matchmill.pipeline.graph import get_stage
    from matchmill.stages.metrics import read_summary

    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for stage in COMPARED_STAGES:
        table = read_stage(run_url, stage).sort_by(get_stage(stage).key)
        table = table.drop_columns([c for c in ("seconds",) if c in table.column_names])
        if "artifact_uri" in table.column_names:  # absolute URLs (older versions): compare them relative to the run
            i = table.column_names.index("artifact_uri")
            relative = pc.replace_substring(table.column(i), run_url.rstrip("/") + "/", "<run>/")
            table = table.set_column(i, pa.field("artifact_uri", pa.string()), relative)
        out[stage] = table
    out["metrics"] = read_summary(run_url)
    return out


def assert_same_results(a: dict, b: dict) -> None:
    for stage in COMPARED_STAGES:
        assert a[stage].num_rows == b[stage].num_rows, stage
        assert a[stage].equals(b[stage]), f"{stage}: rows differ"
    assert a["metrics"] == b["metrics"]
