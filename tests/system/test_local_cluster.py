"""A real two-node Ray cluster on this machine (deploy/local-cluster.sh): `matchmill run --address`
gives the embedded run's results with work on both nodes, and a run that loses the second node
(its raylet killed mid-stage) still completes every row once with the same matches.

Real `ray start` processes (a head and one worker, 1 CPU each, token authentication on), real
`matchmill run` subprocesses; the test's own embedded Ray (``ray_local``) runs the reference."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from matchmill.manifests.commit import read_commit, read_stage
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG, REPO

pytestmark = pytest.mark.ray

SCRIPT = REPO / "deploy" / "local-cluster.sh"
BIN = Path(sys.executable).parent
#: The GCS declares a lost node dead after 3 missed checks 0.5 s apart (default 5 x 3 s): the
#: run that loses its worker stays short. The nodes inherit these from `local-cluster.sh start`.
HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
          "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}
#: Same overrides for every run compared here. 8-row parts: a stage writes several parts, so
#: "mid-stage" (some parts written, the stage not committed) is observable from outside. Half a CPU
#: per streamed actor (an execution key: same config hash, same results): Ray Data spreads the
#: propose and verify actors over the two 1-CPU nodes, and after the worker is lost the head still
#: fits both. With 1 CPU each, an actor restarted from the lost node waits for a CPU the other
#: pool holds; when that is propose's, verify waits for propose and the run stalls until Ray Data's
#: 30-minute no-progress guard (seen here; deploy/README.md, "Losing a node").
OVERRIDES = ("part_rows=8", "propose.num_cpus=0.5", "verify.num_cpus=0.5")
#: Columns that must agree row for row (paths differ: they name each run's own folders).
SAME = ("pair_id", "status", "num_matches", "matches", "scores", "model", "num_inliers", "inliers",
        "H_est", "F_est", "R_err", "t_err", "pose_error", "corner_error")
STREAMED = ("propose", "refine", "verify")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.update(OMP_WAIT_POLICY="PASSIVE", RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY=str(BIN / "ray"), PYTHON=sys.executable)
    return env


def _script(*args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _driver_env(state: Path) -> dict[str, str]:
    """The driver's environment as the script prints it (`export K=V` / `unset K` lines)."""
    env = _clean_env()
    for line in (state / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
        elif line.startswith("unset "):
            env.pop(line.split()[1], None)
    return env


class Cluster:
    def __init__(self, state: Path, start_output: str):
        self.state = state
        self.start_output = start_output
        self.address = (state / "address").read_text().strip()
        self.env = _driver_env(state)

    def nodes(self) -> list[dict]:
        """Every node the GCS knows (alive or dead) with the stage actors placed on it last and
        how often those were restarted (an actor that lost its node restarts on another one)."""
        code = (
            "import json, ray, ray._private.state as st\n"
            "ray.init(logging_level='ERROR', log_to_driver=False)\n"
            "actors = {}\n"
            "for a in st.actors().values():\n"
            "    if 'StageActor' in a['ActorClassName']:\n"
            "        actors.setdefault(a['Address']['NodeID'], []).append(a['NumRestarts'])\n"
            "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources'],\n"
            "                   'stage_actors': len(actors.get(n['NodeID'], [])),\n"
            "                   'restarts': sum(actors.get(n['NodeID'], []))} for n in ray.nodes()]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    # short: each node's Unix sockets live under its temp dir in here (~100 characters at most)
    state = Path(tempfile.mkdtemp(prefix="mmc", dir="/tmp"))
    env = {**_clean_env(), **HEALTH}
    groups: list[int] = []
    try:
        started = _script("start", "--workers", "1", "--cpus-per-node", "1", "--dir", str(state), env=env, timeout=180)
        groups = [int(p.read_text()) for p in state.glob("*.pid")]
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield Cluster(state, started.stdout)
    finally:
        groups = groups or [int(p.read_text()) for p in state.glob("*.pid")]
        try:
            _script("stop", "--grace", "3", "--dir", str(state), env=env, timeout=60)
        finally:
            for pgid in groups:  # whatever `stop` left: only the process groups this fixture started
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            shutil.rmtree(state, ignore_errors=True)


def _conf(storage: Path, demo_root: Path, run_name: str) -> dict:
    return load_config(DEMO_CONFIG, [f"storage=file://{storage}", f"data.root={demo_root}",
                                     f"run_name={run_name}", *OVERRIDES])


def _run_args(storage: Path, demo_root: Path, run_name: str, address: str) -> list[str]:
    return [sys.executable, "-m", "matchmill", "run", str(DEMO_CONFIG), f"storage=file://{storage}",
            f"data.root={demo_root}", f"run_name={run_name}", *OVERRIDES, "--address", address]


def _rows(run_url: str, stage: str = "verify") -> dict[str, dict]:
    table = read_stage(run_url, stage)
    ids = table.column("pair_id").to_pylist()
    assert len(ids) == len(set(ids)), f"{stage}: duplicated pairs {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    cols = [c for c in SAME if c in table.column_names]
    return {row["pair_id"]: row for row in table.select(cols).to_pylist()}


def _summary(run_url: str) -> dict:
    return json.loads((Path(run_url[len("file://"):]) / "metrics" / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(ray_local, demo_root, tmp_path_factory):
    """The embedded run (the test process's own local Ray): what a cluster run must reproduce."""
    conf = _conf(tmp_path_factory.mktemp("embedded"), demo_root, "demo")
    t0 = time.monotonic()
    result = run_pipeline(conf, echo=lambda _: None)
    return result.run_url, time.monotonic() - t0


@pytest.fixture(scope="module")
def clean_run(cluster, reference, demo_root, tmp_path_factory):
    storage = tmp_path_factory.mktemp("cluster")
    t0 = time.monotonic()
    out = subprocess.run(_run_args(storage, demo_root, "demo", cluster.address), env=cluster.env, capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return f"file://{storage}/demo", wall, out, cluster.nodes()


def test_start_prints_the_driver_line_and_the_token_step(cluster):
    assert re.search(rf"matchmill run \S+ --address {re.escape(cluster.address)}", cluster.start_output)
    env = (cluster.state / "env").read_text()
    assert "export RAY_AUTH_MODE=token" in env and f"export RAY_AUTH_TOKEN_PATH={cluster.state}/auth_token" in env
    assert len((cluster.state / "auth_token").read_text().strip()) == 64
    assert oct((cluster.state / "auth_token").stat().st_mode & 0o777) == "0o600"


def test_a_driver_without_the_token_gets_one_line_saying_what_to_set(cluster, demo_root, tmp_path):
    # Ray retries a refused connection ~20 times, 1 s apart, before it gives up; 2 here
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"
    out = subprocess.run(_run_args(tmp_path, demo_root, "demo", cluster.address), env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("matchmill: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0], errors[0]


def test_two_node_run_matches_the_embedded_run_with_work_on_both_nodes(reference, clean_run):
    ref_url, ref_wall = reference
    url, wall, out, nodes = clean_run
    ref, got = _rows(ref_url), _rows(url)
    assert sorted(got) == sorted(ref) and len(got) == 40
    assert got == ref  # same matches, inliers, poses per pair
    assert _summary(url) == _summary(ref_url)
    assert len(nodes) == 2 and all(n["alive"] for n in nodes), nodes
    worker = next(n for n in nodes if "node1" in n["resources"])
    head = next(n for n in nodes if "head" in n["resources"])
    assert worker["stage_actors"] > 0 and head["stage_actors"] > 0, nodes
    assert sum(n["restarts"] for n in nodes) == 0, nodes  # a clean run: no actor lost
    seconds = {s: read_commit(url, s).seconds for s in ("extract", "verify")}
    ref_seconds = {s: read_commit(ref_url, s).seconds for s in ("extract", "verify")}
    print(f"\nextract / streamed stages: embedded {ref_seconds['extract']:.1f} / {ref_seconds['verify']:.1f} s, "
          f"two-node {seconds['extract']:.1f} / {seconds['verify']:.1f} s")
    print(f"embedded run {ref_wall:.1f} s; two-node run {wall:.1f} s (subprocess, incl. start-up); "
          f"stage actors per node: head {head['stage_actors']}, worker {worker['stage_actors']}")


def test_losing_the_worker_node_mid_stage_still_completes_every_row(cluster, clean_run, demo_root, tmp_path):
    """The run resumes after extract (pairs, images, extract committed, copied from the clean run:
    `--until extract` then `run` would leave the same folder) and loses the worker node while the
    streamed stages propose -> refine -> verify are half done."""
    clean_url, _, _, clean_nodes = clean_run
    worker_id = next(n["id"] for n in clean_nodes if "node1" in n["resources"])
    run_dir = tmp_path / "demo"
    for folder in ("pairs", "images", "extract", "artifacts"):  # a run's artifacts are its own (relative refs)
        shutil.copytree(Path(clean_url[len("file://"):]) / folder, run_dir / folder)
    proc = subprocess.Popen(_run_args(tmp_path, demo_root, "demo", cluster.address), env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    killed_at = None
    try:
        deadline = time.monotonic() + 180
        while killed_at is None:  # mid-stage: a streamed stage has written parts, verify is not committed
            assert proc.poll() is None, f"the run ended before the node could be killed:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "the run never reached the streamed stages"
            written = sum(len(list((run_dir / s).glob("part-*.parquet"))) for s in ("propose", "refine"))
            if written and not (run_dir / "verify" / "_COMMITTED.json").exists():
                killed = _script("kill-node", "1", "--dir", str(cluster.state), env=cluster.env, timeout=30)
                assert killed.returncode == 0, killed.stderr
                killed_at = {s: len(list((run_dir / s).glob("part-*.parquet"))) for s in STREAMED}
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=180)  # a clean run streams in ~10 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, output[-4000:]
    assert re.search(r"\[ extract\] skipped", output), output[-3000:]
    url = f"file://{run_dir}"
    assert killed_at["verify"] < 5 and read_commit(url, "verify") is not None, killed_at
    for stage in STREAMED:  # every pair exactly once in every stage: none lost, none duplicated
        rows = _rows(url, stage)
        assert sorted(rows) == sorted(_rows(clean_url, stage)) and len(rows) == 40, stage
    assert _rows(url) == _rows(clean_url)  # same matches, inliers, poses
    assert _summary(url) == _summary(clean_url)
    nodes = {n["id"]: n for n in cluster.nodes()}
    assert not nodes[worker_id]["alive"], nodes  # the worker really was lost, and stayed lost
    # the run had a stage actor on the lost node: Ray restarted it on the head, or (when the head's
    # actors finished the stage first) Ray Data dropped it with the node, where the table still places it
    restarts = sum(n["restarts"] for n in nodes.values())
    clean_on_worker = next(n["stage_actors"] for n in clean_nodes if n["id"] == worker_id)
    assert restarts >= 1 or nodes[worker_id]["stage_actors"] > clean_on_worker, nodes
    seconds = read_commit(url, "verify").seconds
    clean_seconds = read_commit(clean_url, "verify").seconds
    print(f"\nworker killed with parts written {killed_at}; streamed stages took {seconds:.1f} s "
          f"(clean two-node run {clean_seconds:.1f} s); 40/40 rows in every streamed stage, 0 lost, 0 duplicated; "
          f"stage actors restarted: {restarts}")
