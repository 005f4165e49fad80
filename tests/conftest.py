"""Shared fixtures: one small local Ray per test session, the demo scene generated once."""

from __future__ import annotations

import os
import time
from pathlib import Path

# OpenMP threads spin-wait by default; on a 2-core machine shared with Ray workers that costs
# several times the compute (measured: a training step 4.5 s -> 1.2 s). Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def shared_data(sub: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"{path} is absent (reference data lives beside the repository, not in it)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray shared by all pipeline tests."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from matchmill.datasets.demo_scene import ensure_demo_scene

    root = tmp_path_factory.getbasetemp() / "matchmill_demo"
    ensure_demo_scene(root, seed=0)
    return root


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


@pytest.fixture(scope="session")
def demo_reference(tmp_path_factory, ray_local, demo_root) -> dict:
    """Results of one clean ``file://`` demo run (see :data:`REFERENCE_OVERRIDES`)."""
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.runner import run_pipeline

    storage = tmp_path_factory.mktemp("reference_runs")
    conf = load_config(DEMO_CONFIG, [f"storage=file://{storage}", f"data.root={demo_root}", *REFERENCE_OVERRIDES])
    start = time.monotonic()
    result = run_pipeline(conf, echo=lambda _: None)
    out = run_results(result.run_url)
    out["run_url"] = result.run_url  # copy it (shutil.copytree), never change it: the session shares it
    out["seconds"] = {"run": time.monotonic() - start, **{r.stage: r.seconds for r in result.stages}}
    return out
