"""NCNet and Patch2Pix trained on the PUMP pyramid (``backbone: pump``), in-process (no Ray): the task
reads the backbone's channels, a step has finite gradients on the trained net only, validation runs;
and the shipped training job files validate."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from matchmill.training.config import load_train_config

from tests.helpers.train_fixtures import REPO, demo_pairs_manifest, tiny_overrides


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory) -> str:
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("manifests") / "pairs.parquet")


@pytest.fixture(scope="module")
def pump_weights(tmp_path_factory) -> str:
    from matchmill.models.backbones import build_backbone

    net = build_backbone("pump", seed=7).net
    path = tmp_path_factory.mktemp("w") / "pump.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def _task(model, tmp_path, pairs_url, *extra):
    from matchmill.training.ncnet_task import NCNetTask
    from matchmill.training.patch2pix_task import Patch2PixTask

    conf = load_train_config(model, None, tiny_overrides(model, tmp_path, pairs_url) + list(extra))
    task = (NCNetTask if model == "ncnet" else Patch2PixTask)(conf, torch.device("cpu"))
    task.setup_data()
    return task


@pytest.mark.parametrize("model", ["ncnet", "patch2pix"])
def test_a_step_on_the_pump_pyramid_trains_only_the_task_net(model, tmp_path, pairs_url, pump_weights):
    task = _task(model, tmp_path, pairs_url, f"{model}.backbone=pump", f"{model}.backbone_weights={pump_weights}")
    assert task.backbone.channels == [3, 128, 128, 128, 128]
    net = task.build_net()
    if model == "patch2pix":
        assert net.conf["feat_channels"] == [3, 128, 128, 128]  # the regressors read the PUMP levels
    loss, parts = task.loss(net, task.local_batch(1, [0, 1]))
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in task.backbone.parameters())  # frozen
    metrics = task.validate(net)
    assert {"auc@5", "auc@10", "auc@20"} <= set(metrics)


def test_backbone_weights_are_the_ones_given(tmp_path, pairs_url, pump_weights):
    from matchmill.models.backbones import build_backbone

    task = _task("ncnet", tmp_path, pairs_url, "ncnet.backbone=pump", f"ncnet.backbone_weights={pump_weights}")
    ref = build_backbone("pump", seed=7)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(task.backbone(x)[4], ref(x)[4])


def test_unknown_backbone_is_refused_before_training(tmp_path, pairs_url):
    from matchmill.config import ConfigError

    with pytest.raises(ConfigError, match="ncnet.backbone: 'vgg16' is not one of resnet34, pump"):
        load_train_config("ncnet", None, tiny_overrides("ncnet", tmp_path, pairs_url) + ["ncnet.backbone=vgg16"])


@pytest.mark.parametrize("name", ["train-pump", "train-ncnet-pump", "train-patch2pix-pump",
                                  "train-ncnet-resnet34", "train-patch2pix-resnet34"])
def test_shipped_weights_job_files_validate(name, pairs_url, pump_weights):
    model = name.split("-")[1]
    extra = [f"data.pairs={pairs_url}"] + ([f"data.images={pairs_url}"] if model == "pump" else [])
    if "pump" in name and model != "pump":
        extra.append(f"{model}.backbone_weights={pump_weights}")
    if model == "patch2pix":
        extra.append("patch2pix.ncnet_weights=null")
    conf = load_train_config(model, REPO / "configs" / "shipped" / f"{name}.yaml", extra)
    assert conf["run_name"] == f"shipped-{name[len('train-'):]}"
