"""What a person sees: ``matchmill run`` without Ray's chatter (back with ``--verbose``), and
``matchmill show --failed`` leading with each failed row's full error text."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.helpers.paths import DEMO_CONFIG

pytestmark = pytest.mark.ray

#: Lines of Ray's that must not reach the console of a default ``matchmill run``.
NOISE = (
    "Started a local Ray instance",
    "constructor arguments in the object store",  # the driver's C++ core_worker.cc advice
    "Registered dataset logger",
    "Progress bars will be disabled",  # tqdm missing
    "Progress bars disabled",
    "Starting execution of Dataset",
    "Execution plan of Dataset",
    "execution finished in",
    "Token authentication is enabled",
    "Set ray log level from environment variable",
    "The maximum number of concurrent tasks",
)


def matchmill(*args: str, cwd, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATCHMILL_CACHE": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL", "RAY_DATA_LOG_LEVEL"):
        env.pop(name, None)  # the defaults are under test
    return subprocess.run([sys.executable, "-m", "matchmill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)


def tiny(tmp_path, run_name: str) -> list[str]:
    return ["data.demo_num_cameras=4", "data.demo_width=160", "data.demo_height=120", f"storage=file://{tmp_path}/runs",
            f"run_name={run_name}", "ray.num_cpus=2", "ray.progress_bars=true"]


def test_default_run_prints_no_ray_chatter(tmp_path):
    out = matchmill("run", str(DEMO_CONFIG), *tiny(tmp_path, "quiet"), cwd=tmp_path, cache=tmp_path / "cache")
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-3000:]
    for stage in ("pairs", "extract", "verify", "metrics"):
        assert f"[{stage:>8}] ran" in out.stdout
    assert f"run: file://{tmp_path}/runs/quiet" in out.stdout
    assert [line for line in console.splitlines() if any(n in line for n in NOISE)] == []


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """``run --verbose --until extract`` over a pairs file whose second line names a missing image."""
    tmp = tmp_path_factory.mktemp("console")
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((120, 160)) * 255).astype(np.uint8), (5, 5), 0)
    cv2.imwrite(str(images / "a.jpg"), base)
    cv2.imwrite(str(images / "b.jpg"), np.roll(base, 3, axis=1))
    (tmp / "pairs.txt").write_text("a.jpg b.jpg\na.jpg missing.jpg\n")
    overrides = [f"storage=file://{tmp}/runs", "run_name=bad", "ray.num_cpus=2", "data.source=pairs_file",
                 f"data.pairs_file={tmp / 'pairs.txt'}", f"data.images_dir={images}"]
    out = matchmill("run", str(DEMO_CONFIG), *overrides, "--until", "extract", "--verbose", cwd=tmp, cache=tmp / "cache")
    # exit code 1 (when failed rows exceed max_failed_fraction) still commits the stage
    assert out.returncode in (0, 1) and "[ extract] ran" in out.stdout, (out.stdout + out.stderr)[-3000:]
    return tmp, f"file://{tmp}/runs/bad", out


def test_verbose_brings_ray_info_back(failed_run):
    _, _, out = failed_run
    console = out.stdout + out.stderr
    ray_info = [line for line in console.splitlines() if "\tINFO " in line or " INFO worker.py" in line]
    assert any("Started a local Ray instance" in line or "Starting execution of Dataset" in line for line in ray_info), \
        console[-3000:]


def test_show_failed_leads_with_each_error_in_full(failed_run):
    tmp, url, _ = failed_run
    out = matchmill("show", url, "extract", "--failed", cwd=tmp, cache=tmp / "cache")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("missing.jpg  ") and "missing.jpg" in lines[0][len("missing.jpg  "):]
    assert "file not found" in lines[0]
    title = "extract: 1 failed of 3 rows"  # a.jpg, b.jpg, missing.jpg
    assert title in lines and lines.index(title) > 0  # the table comes after the error text

    ok = matchmill("show", url, "pairs", "--failed", cwd=tmp, cache=tmp / "cache")
    assert ok.returncode == 0 and ok.stdout.strip() == "pairs: no failed rows (2 rows)", ok.stdout + ok.stderr
