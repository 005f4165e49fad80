"""``matchmill train`` on a real local Ray (TorchTrainer, gloo, CPU): determinism, resume, two
workers, NaN stop, the NCNet -> Patch2Pix chain and loading what it wrote into the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matchmill.cli import main
from matchmill.training.checkpoints import list_checkpoints, read_best
from matchmill.training.config import load_train_config
from matchmill.training.trainer import run_training
from matchmill.training.train_log import read_log

from tests.helpers.train_fixtures import REPO, demo_pairs_manifest, tiny_overrides

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory) -> str:
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("train-manifests") / "pairs.parquet")


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("train-runs")


def _train(model, storage, pairs_url, *extra, steps=4):
    conf = load_train_config(model, None, tiny_overrides(model, storage, pairs_url, steps=steps) + list(extra))
    return run_training(conf, echo=lambda *_: None)


def _losses(url: str) -> np.ndarray:
    df = read_log(url).to_pandas()
    return df[df["kind"] == "train"].sort_values("step")["loss"].to_numpy()


@pytest.fixture(scope="module")
def pump_reference(ray_local, storage, pairs_url):
    """One worker, 4 steps in one go (checkpoints at steps 2 and 4)."""
    return _train("pump", storage, pairs_url, "run_name=pump-a")


def test_pump_checkpoint_holds_weights_optimizer_rng_and_config_and_status_lists_it(pump_reference, capsys):
    a = pump_reference
    folder = a.checkpoint[len("file://"):]
    from matchmill.training.checkpoints import load_checkpoint

    ck = load_checkpoint(folder)
    assert ck["state"]["step"] == 4 and ck["state"]["model"] == "pump" and "mma@3" in ck["state"]["val"]
    assert ck["optimizer"]["state"] and "torch_cpu" in ck["rng"]
    assert json.loads(open(f"{folder}/config.json").read())["pump"]["u_fraction"] == 0.5
    best = read_best(a.run_url)
    assert best is not None and best["step"] in (2, 4) and best["metric"] == "mma@3"
    val = read_log(a.run_url).to_pandas().query("kind == 'val'")
    assert val["step"].tolist() == [2, 4] and val["mma@3"].between(0, 1).all()
    # the weekly benchmark job's checkpoint picker reads exactly this layout
    from tests.deploy.test_deploy import load_script

    picker = load_script("newest_checkpoint")
    assert picker.newest_checkpoint(a.run_url) == f"{a.checkpoint}/model.safetensors"
    assert picker.newest_checkpoint(a.run_url, which="best") == f"{a.run_url}/best/model.safetensors"
    assert main(["status", a.run_url]) == 0
    out = capsys.readouterr().out
    assert "model: pump" in out and "latest step: 4" in out and "checkpoints (2)" in out and "best: step" in out


def test_two_workers_follow_the_one_worker_curve(pump_reference, storage, pairs_url):
    two = _train("pump", storage, pairs_url, "run_name=pump-2w", "scaling.workers=2")
    one, both = _losses(pump_reference.run_url), _losses(two.run_url)
    assert len(both) == 4 and np.isfinite(both).all()
    # Same global batch (samples seeded by step and index); DDP averages the gradients. What
    # differs: BatchNorm statistics per worker (1 sample each instead of 2) and the AP loss's
    # query draws; measured gap on this job < 0.05 of the loss.
    print('one worker', one, 'two workers', both, 'max rel gap', np.max(np.abs(both - one) / np.abs(one)))
    np.testing.assert_allclose(both, one, rtol=0.2)


def test_nan_loss_stops_naming_step_and_samples_and_keeps_the_last_good_checkpoint(ray_local, storage, pairs_url, capsys):
    args = ["train", "pump", str(REPO / "configs" / "train-pump.yaml"),
            *[o for o in tiny_overrides("pump", storage, pairs_url, steps=4, epoch_steps=1)
              if not o.startswith(("pump.lr=", "pump.u_fraction="))],  # a key is given once on the command line
            "run_name=pump-nan", "pump.lr=1e30", "pump.u_fraction=0.0"]  # weights ~1e30 after step 1
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "training stopped at step 2: non-finite" in err and "demo/" in err and "(step 1)" in err
    url = f"file://{storage}/pump-nan"
    assert [c["step"] for c in list_checkpoints(url)] == [1]


def test_ncnet_then_patch2pix_and_the_pipeline_loads_their_weights(ray_local, storage, pairs_url):
    from matchmill.methods.ncnet import NCNetProposer
    from matchmill.methods.patch2pix import Patch2PixRefiner

    nc = _train("ncnet", storage, pairs_url, "run_name=nc", steps=2)
    assert nc.step == 2 and {"auc@5", "auc@10", "auc@20", "sampson_median"} <= {k[4:] for k in nc.metrics if k.startswith("val/")}
    p2p = _train("patch2pix", storage, pairs_url, "run_name=p2p", f"patch2pix.ncnet_weights={nc.run_url}", steps=2)
    assert p2p.step == 2 and "val/auc@10" in p2p.metrics
    log = read_log(p2p.run_url).to_pandas().query("kind == 'train'")
    assert log["loss"].notna().all() and (log["geo"] >= 0).all()
    # what `matchmill train` writes is what the stages read, strictly
    proposer = NCNetProposer({"weights": f"{nc.checkpoint}/model.safetensors"})
    refiner = Patch2PixRefiner({"weights": f"{p2p.run_url}/best/model.safetensors"})
    from safetensors.torch import load_file

    saved = load_file(p2p.checkpoint[len("file://"):] + "/model.safetensors")
    if read_best(p2p.run_url)["step"] == 2:
        assert all(torch.equal(refiner.net.state_dict()[k].cpu(), v) for k, v in saved.items())
    assert set(proposer.net.state_dict()) == set(load_file(nc.checkpoint[len("file://"):] + "/model.safetensors"))


def test_fine_tune_from_a_checkpoint_starts_from_its_weights(ray_local, storage, pairs_url):
    nc = list_checkpoints(f"file://{storage}/nc")
    assert nc, "needs the NCNet run of the previous test"
    first = _train("ncnet", storage, pairs_url, "run_name=nc-ft", f"train.from={nc[-1]['url']}", "ncnet.lr=0.0", steps=1)
    from safetensors.torch import load_file

    before = load_file(nc[-1]["url"][len("file://"):] + "/model.safetensors")
    after = load_file(first.checkpoint[len("file://"):] + "/model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the weights are exactly the ones given


def test_checkpoints_on_s3_resume_and_match_the_file_run(pump_reference, storage, pairs_url, monkeypatch):
    """storage=s3://... against a real S3-protocol server on loopback (moto): checkpoints, log and
    best/ land in the bucket, a rerun resumes from there, and the curve equals the file:// run."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    pytest.importorskip("s3fs")
    import boto3
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="train")
        base = tiny_overrides("pump", storage, pairs_url, steps=2)
        conf = load_train_config("pump", None, base + ["storage=s3://train/runs", "run_name=pump-a"])
        first = run_training(conf, echo=lambda *_: None)
        assert first.run_url == "s3://train/runs/pump-a" and [c["step"] for c in first.checkpoints] == [2]
        conf = load_train_config("pump", None, tiny_overrides("pump", storage, pairs_url, steps=4)
                                 + ["storage=s3://train/runs", "run_name=pump-a"])
        resumed = run_training(conf, echo=lambda *_: None)
        assert resumed.step == 4 and [c["step"] for c in resumed.checkpoints] == [2, 4]
        assert resumed.checkpoint.startswith("s3://train/runs/pump-a/checkpoint_")
        np.testing.assert_array_equal(_losses(resumed.run_url), _losses(pump_reference.run_url))
        assert read_best(resumed.run_url)["metric"] == "mma@3"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _processes_named(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _wait_for_checkpoint(url: str, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not list_checkpoints(url):
        assert time.monotonic() < deadline, f"no checkpoint under {url} after {timeout} s"
        time.sleep(0.1)


def test_killed_worker_is_restarted_from_the_newest_checkpoint_with_the_same_curve(pump_reference, storage, pairs_url):
    """SIGKILL the training worker process (found through Ray's state API) after its first
    checkpoint: Ray Train's FailureConfig restarts it from that checkpoint and the run ends with
    every step logged once and the same losses as an undisturbed run."""
    import os
    import signal
    import threading

    conf = load_train_config("pump", None, tiny_overrides("pump", storage, pairs_url, steps=16, epoch_steps=2)
                             + ["run_name=pump-kill", "train.max_failures=2"])
    url = f"file://{storage}/pump-kill"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=run_training(conf, echo=lambda *_: None)), daemon=True)
    thread.start()
    _wait_for_checkpoint(url)
    # the worker actor's process (Ray titles it ray::RayTrainWorker...); the dashboard-backed state
    # API is off in the tests' Ray, so the process table is searched instead
    workers = _processes_named("RayTrainWorker")
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive() and "r" in result
    assert result["r"].step == 16
    steps = read_log(url).to_pandas().query("kind == 'train'")["step"].tolist()
    assert steps == list(range(1, 17))
    np.testing.assert_array_equal(_losses(url)[:4], _losses(pump_reference.run_url))


def test_killed_driver_rerun_resumes_without_redoing_checkpointed_steps(ray_local, storage, pairs_url):
    """SIGKILL the whole `matchmill train` process (its own embedded Ray included) after the first
    checkpoint; the same command again resumes at that checkpoint's step and finishes."""
    import os
    import signal
    import subprocess
    import sys

    args = [sys.executable, "-m", "matchmill", "train", "pump", str(REPO / "configs" / "train-pump.yaml"),
            *tiny_overrides("pump", storage, pairs_url, steps=12, epoch_steps=2), "run_name=pump-driver"]
    url = f"file://{storage}/pump-driver"
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(url)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    import time

    deadline = time.monotonic() + 120  # the dead driver's Ray (and its training worker) goes down with it
    while _processes_named("RayTrainWorker") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_named("RayTrainWorker"), "the killed driver's training worker is still running"
    done = list_checkpoints(url)[-1]["step"]
    assert done < 12
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming {url} from step {done}" in out.stdout
    assert "step: 12" in out.stdout
    log = read_log(url).to_pandas().query("kind == 'train'")
    assert log["step"].tolist() == list(range(1, 13)) and log["loss"].notna().all()


def test_gpus_the_cluster_lacks_fail_in_one_line_before_training(ray_local, storage, pairs_url, capsys):
    args = ["train", "ncnet", str(REPO / "configs" / "train-ncnet.yaml"),
            *tiny_overrides("ncnet", storage, pairs_url), "run_name=nc-gpu", "scaling.gpus_per_worker=1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "scaling.gpus_per_worker=1" in err and "the Ray cluster has 0;" in err and "gpus_per_worker=0 to train on CPU" in err
    assert list_checkpoints(f"file://{storage}/nc-gpu") == []
