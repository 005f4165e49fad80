"""Training jobs that must fail before Ray starts, and the pieces of a run that need no Ray."""

from __future__ import annotations

import os
import pickle

import pyarrow.parquet as pq
import pytest
import torch

from matchmill.cli import main
from matchmill.config import ConfigError
from matchmill.training.config import load_train_config

from tests.helpers.train_fixtures import REPO, demo_pairs_manifest, rows_manifest, tiny_overrides

CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory) -> str:
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("manifests") / "pairs.parquet")


@pytest.mark.parametrize("model", ["pump", "ncnet", "patch2pix"])
def test_shipped_job_files_validate(model, pairs_url, tmp_path):
    conf = load_train_config(model, CONFIGS / f"train-{model}.yaml",
                             [f"data.pairs={pairs_url}", f"data.images={pairs_url}", "patch2pix.ncnet_weights=null"][: 3 if model == "patch2pix" else 2])
    assert conf["model"] == model and conf["run_name"].startswith(model)
    assert conf[model]["val_pairs"] >= 1


def test_unknown_key_wrong_type_and_other_models_section_are_named(pairs_url):
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown config key"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "train.stpes=3"])
    with pytest.raises(ConfigError, match=r"train\.steps: expected int"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "train.steps=many"])
    with pytest.raises(ConfigError, match="section of another model"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "pump.lr=0.1"])
    with pytest.raises(ConfigError, match=r"multiple of scaling\.workers=2"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "scaling.workers=2", "train.batch_size=3"])
    with pytest.raises(ConfigError, match=r"train\.amp: 'fp32'"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "train.amp=fp32"])


def test_missing_manifest_is_named(tmp_path):
    missing = f"file://{tmp_path}/nowhere"
    with pytest.raises(ConfigError, match=rf"data\.pairs: {missing} does not exist"):
        load_train_config("patch2pix", None, [f"data.pairs={missing}"])
    with pytest.raises(ConfigError, match=r"data\.pairs: required"):
        load_train_config("ncnet", None, [])


def test_empty_manifest_is_refused(tmp_path):
    url = rows_manifest([], tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match="has no usable pairs"):
        load_train_config("patch2pix", None, [f"data.pairs={url}"])
    with pytest.raises(ConfigError, match="no usable rows"):
        load_train_config("pump", None, [f"data.images={url}"])


def test_manifest_without_ground_truth_is_refused_for_patch2pix(pairs_url, tmp_path):
    rows = pq.read_table(pairs_url[len("file://"):]).to_pylist()
    for r in rows:
        r["K0"] = r["K1"] = r["T_0to1"] = None
    url = rows_manifest(rows, tmp_path / "mined.parquet")
    with pytest.raises(ConfigError, match="no pairs with pose ground truth"):
        load_train_config("patch2pix", None, [f"data.pairs={url}"])
    # PUMP's U data needs no ground truth: the same manifest is fine there
    conf = load_train_config("pump", None, [f"data.images={url}", f"data.pairs={url}", "pump.u_fraction=0.5"])
    assert conf["pump"]["u_fraction"] == 0.5


def test_unwritable_checkpoint_url_fails_before_ray_starts(pairs_url, tmp_path, capsys):
    import ray

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    was_running = ray.is_initialized()
    code = main(["train", "ncnet", str(CONFIGS / "train-ncnet.yaml"), f"data.pairs={pairs_url}", f"storage=file://{blocker}/runs"])
    assert code == 2
    assert "not writable" in capsys.readouterr().err
    assert ray.is_initialized() == was_running  # failed before Ray was started


def test_corrupt_image_is_skipped_counted_and_training_data_goes_on(pairs_url, tmp_path):
    from matchmill.training.pump_task import PumpTask

    rows = pq.read_table(pairs_url[len("file://"):]).to_pylist()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    for i, r in enumerate(rows[::2]):
        r["path0"], r["image0"] = str(broken), f"broken-{i}.jpg"
    url = rows_manifest(rows, tmp_path / "with-broken.parquet")
    conf = load_train_config("pump", None, tiny_overrides("pump", tmp_path, url) + ["pump.u_fraction=0.0", "data.val_fraction=0.0"])
    task = PumpTask(conf, torch.device("cpu"))
    task.setup_data()
    for step in range(1, 21):
        batch = task.local_batch(step, [0, 1])
        assert tuple(batch.tensors["image1"].shape) == (2, 48, 48, 3)
        assert not any(k.startswith("broken") for k in batch.keys)
    assert list(task.skipped) == [str(broken)]
    assert "not a readable image" in task.skipped[str(broken)]


def test_samples_depend_on_step_and_index_not_on_the_worker(pairs_url, tmp_path):
    from matchmill.training.pump_task import PumpTask

    conf = load_train_config("pump", None, tiny_overrides("pump", tmp_path, pairs_url))
    one = PumpTask(conf, torch.device("cpu"), rank=0, world=1)
    w0, w1 = PumpTask(conf, torch.device("cpu"), 0, 2), PumpTask(conf, torch.device("cpu"), 1, 2)
    for t in (one, w0, w1):
        t.setup_data()
    full = one.local_batch(3, [0, 1, 2, 3])
    a, b = w0.local_batch(3, [0, 2]), w1.local_batch(3, [1, 3])
    for name in ("image1", "image2", "H"):
        assert torch.equal(full.tensors[name][[0, 2]].nan_to_num(), a.tensors[name].nan_to_num())
        assert torch.equal(full.tensors[name][[1, 3]].nan_to_num(), b.tensors[name].nan_to_num())
    H = full.tensors["H"]  # u_fraction 0.5 of 4: samples 0, 1 are U (NaN H), 2, 3 are S
    assert torch.isnan(H[:2]).all() and torch.isfinite(H[2:]).all()
    assert not torch.equal(one.local_batch(4, [0, 1, 2, 3]).tensors["image1"], full.tensors["image1"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the crafted file's protocol
def test_checkpoint_round_trip_and_pickled_code_is_refused(tmp_path):
    from matchmill.models.ncnet import NCNet
    from matchmill.training.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = NCNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4))["corr"].sum().backward()
    opt.step()
    folder = save_checkpoint(tmp_path / "ck", net, opt, {}, {"step": 7, "epoch": 1, "model": "ncnet"}, {"model": "ncnet"})
    back = load_checkpoint(folder)
    assert back["state"]["step"] == 7
    assert all(torch.equal(back["model"][k], v) for k, v in net.state_dict().items())
    fresh = torch.optim.Adam(NCNet().parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    with open(folder / "optimizer.pt", "wb") as f:
        pickle.dump({"optimizer": Payload()}, f)
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(folder)
    assert not (tmp_path / "pwned").exists()


def test_log_keeps_the_newest_attempt_of_each_step(tmp_path):
    from matchmill.training.train_log import LogWriter, read_log

    url = f"file://{tmp_path}/run"
    first = LogWriter(url, attempt=1)
    for step in (1, 2, 3):
        first.add("train", step, {"loss": float(step)})
    first.flush()
    second = LogWriter(url, attempt=2)  # resumed after step 2: step 3 is redone
    second.add("train", 3, {"loss": 30.0})
    second.add("val", 3, {"mma@3": 0.5})
    second.flush()
    table = read_log(url).to_pandas()
    train = table[table["kind"] == "train"]
    assert train["step"].tolist() == [1, 2, 3] and train["loss"].tolist() == [1.0, 2.0, 30.0]
    assert table[table["kind"] == "val"]["mma@3"].tolist() == [0.5]


def test_progress_line_names_step_loss_parts_rate_and_eta():
    from matchmill.training.progress import format_progress

    line = format_progress(20, 200, 0.5, {"ap_loss": 0.4, "pump_loss": -0.1, "num_s": 3.0}, 3.25, 552.0, 1)
    assert line.startswith("[train] step 20/200  loss 0.5000")
    assert "ap_loss 0.4" in line and "pump_loss -0.1" in line and "num_s" not in line
    assert "3.25 samples/s" in line and "ETA 9m12s" in line and "skipped images 1" in line



def test_worker_losses_average_to_the_one_worker_loss_of_the_same_global_batch(pairs_url, tmp_path):
    """With BatchNorm frozen (eval), splitting a global batch of S and U samples over two workers and
    averaging their losses (what DDP's gradient mean does) gives the one-worker loss exactly; in
    training mode the only difference left is BatchNorm's per-worker batch statistics."""
    from matchmill.training.pump_task import PumpTask

    conf = load_train_config("pump", None, tiny_overrides("pump", tmp_path, pairs_url))
    B = conf["train"]["batch_size"]
    totals = {}
    for world in (1, 2):
        total = 0.0
        for rank in range(world):
            task = PumpTask(conf, torch.device("cpu"), rank, world)
            task.setup_data()
            net = task.build_net().eval()
            loss, parts = task.loss(net, task.local_batch(1, [i for i in range(B) if i % world == rank]))
            total += float(loss.detach()) / world
        totals[world] = total
    assert totals[1] > 0.1
    assert abs(totals[2] - totals[1]) < 1e-5 * totals[1]


def test_driver_prints_progress_from_the_log_once_per_window_and_per_validation(tmp_path):
    from matchmill.training.progress import ProgressPrinter
    from matchmill.training.train_log import LogWriter

    url = f"file://{tmp_path}/run"
    old = LogWriter(url, attempt=1)
    old.add("train", 1, {"loss": 9.0, "samples_per_s": 1.0})
    old.flush()  # an earlier attempt's part: not reprinted
    lines: list[str] = []
    printer = ProgressPrinter(url, steps=4, echo=lines.append)
    log = LogWriter(url, attempt=2)
    for step in (1, 2):
        log.add("train", step, {"loss": 1.0 / step, "ap_loss": 0.5, "epoch": 0})
    log.rows[-1].update(samples_per_s=3.5, skipped_images=2.0)
    log.add("val", 2, {"mma@3": 0.25, "matches": 40.0, "epoch": 1})
    log.flush()
    printer.poll()
    printer.poll()  # nothing new: nothing printed twice
    assert len(lines) == 2
    assert lines[0].startswith("[train] step 2/4  loss 0.5000") and "3.50 samples/s" in lines[0] and "skipped images 2" in lines[0]
    assert lines[1] == "[val] step 2 epoch 1  matches 40  mma@3 0.25"
