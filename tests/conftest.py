"""Shared fixtures: one small local Ray per test session, the demo scene generated once."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

# OpenMP threads spin-wait by default; on a 2-core machine shared with Ray workers that costs
# several times the compute (measured: a training step 4.5 s -> 1.2 s). Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The default storage (matchmill.config.default_storage) of every run a test makes without a storage
# of its own, subprocesses included: a temp folder for the whole session, never the user's
# ~/.local/share/matchmill/runs nor a $MATCHMILL_RUNS set outside the tests.
_DEFAULT_RUNS = tempfile.mkdtemp(prefix="matchmill-test-runs-")
os.environ["MATCHMILL_RUNS"] = _DEFAULT_RUNS
atexit.register(shutil.rmtree, _DEFAULT_RUNS, ignore_errors=True)

import pytest

from tests.helpers.paths import DEMO_CONFIG
from tests.helpers.runs import REFERENCE_OVERRIDES, run_results


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
    from matchmill.datasets.demo import ensure_demo_scene

    root = tmp_path_factory.getbasetemp() / "matchmill_demo"
    ensure_demo_scene(root, seed=0)
    return root


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
