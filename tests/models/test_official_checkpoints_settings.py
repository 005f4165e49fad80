"""Settings that official checkpoints carry next to their tensors are honoured or refused, never ignored.

A Patch2Pix file's ``regressor_config`` (conv strides, window size, ...), its top-level
``feat_idx`` / ``change_stride`` / ``backbone``, an NCNet file's ``args`` and an R2D2 file's ``net``
string describe the net the tensors belong to. Settings that change the function without changing
a shape (strides [2, 2], psize 12, change_stride False, feat_idx [0, 4]) used to load silently.
Files are built here in the official layouts (see test_official_checkpoints.py) from random
CPU-sized nets; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from matchmill.methods.patch2pix import Patch2PixRefiner
from matchmill.models import official_settings
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix import Patch2Pix, cpu_sized
from matchmill.models.pump.r2d2 import R2D2Net
from matchmill.models.resnet import ResNet34Pyramid
from matchmill.models.weights import load_weights, read_state_dict

from .test_official_checkpoints import (
    _with_dilations,
    filled,
    nc_shapes,
    patch2pix_shapes,
    r2d2_shapes,
    torchvision_resnet_shapes,
)

CHANNELS = [3, 64, 64, 128]  # f0..f3 of the ResNet34 pyramid (feat_dim 259)
STRIDES = [1, 2, 4, 8]
H, W = 48, 64


def _regressor_config(**settings) -> argparse.Namespace:
    """The CPU-sized net's settings in the official Namespace (widths 128, strides [2, 1], psize 16)."""
    base = dict(conv_dims=[128, 128], conv_kers=[3, 3], conv_strs=[2, 1], fc_dims=[128, 64], feat_comb="pre",
                psize=[16, 16], pshift=8, panc=8, shared=False, feat_dim=259)
    return argparse.Namespace(**{**base, **settings})


def _official_key(ours: str) -> str:
    m = re.fullmatch(r"(mid|fine)_regressor\.(convs|fcs)\.(.+)", ours)
    return f"regress_{m[1]}.{'conv' if m[2] == 'convs' else 'fc'}.{m[3]}"


def _random_regressors(conf: dict, seed: int = 0) -> Patch2Pix:
    """A Patch2Pix with random weights and BatchNorm statistics (so every layer matters)."""
    torch.manual_seed(seed)
    net = Patch2Pix(conf).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _save_patch2pix(path, net: Patch2Pix, top: dict | None = None, **settings) -> None:
    """``net``'s regressors in the official layout, wrapped as utils/train/helper.py saves them."""
    state = OrderedDict((_official_key(k), v.clone()) for k, v in net.state_dict().items())
    ckpt = {"backbone": "ResNet34", "feat_idx": [0, 1, 2, 3], "change_stride": True,
            "regressor_config": _regressor_config(**settings), "state_dict": state, "last_epoch": 3}
    ckpt.update(top or {})
    torch.save(ckpt, path)


def _pair(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    fa = [torch.randn(1, c, H // s, W // s, generator=g) for c, s in zip(CHANNELS, STRIDES)]
    fb = [torch.randn(1, c, H // s, W // s, generator=g) for c, s in zip(CHANNELS, STRIDES)]
    matches = torch.rand(64, 4, generator=g) * torch.tensor([W, H, W, H], dtype=torch.float32)
    return fa, fb, matches


def _run(net: Patch2Pix) -> dict:
    fa, fb, m = _pair()
    with torch.no_grad():
        return net(fa, fb, m, (W, H), (W, H))


def _message(fn) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


# ----------------------------------------------------------------------------- Patch2Pix regressor_config


def test_strides_2_2_refused_by_a_net_built_otherwise(tmp_path) -> None:
    src = _random_regressors({**cpu_sized(), "conv_strides": [2, 2]})
    path = tmp_path / "p2p_s22.pth"
    _save_patch2pix(path, src, conv_strs=[2, 2])
    net = Patch2Pix(cpu_sized()).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    msg = _message(lambda: load_weights(net, path))
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: regressor_config.conv_strs = [2, 2] is not supported by this Patch2Pix "
                          "(it builds conv_strides = [2, 1]); build it with conv_strides = [2, 2]"), msg
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())  # nothing copied
    # what the refusal prevents: the same tensors in the [2, 1] net compute another function
    raw = read_state_dict(path)
    raw.metadata.clear()  # as a raw state dict, which carries no settings to check
    load_weights(net, raw)
    gap = (_run(net)["mid"] - _run(src)["mid"]).abs().max().item()
    assert gap > 0.5, gap


def test_strides_2_2_honoured_by_net_and_refine_stage(tmp_path) -> None:
    src = _random_regressors({**cpu_sized(), "conv_strides": [2, 2]})
    path = tmp_path / "p2p_s22.pth"
    _save_patch2pix(path, src, conv_strs=[2, 2])
    direct = Patch2Pix({**cpu_sized(), "conv_strides": [2, 2]}).eval()
    load_weights(direct, path)
    refiner = Patch2PixRefiner({"weights": str(path)})  # builds the regressors from the file's settings
    assert refiner.net.conf["conv_strides"] == [2, 2]
    want = _run(src)
    for net in (direct, refiner.net):
        got = _run(net)
        for key in ("mid", "fine", "fine_conf"):
            assert torch.equal(got[key], want[key]), key


def test_psize_honoured_unequal_psize_refused(tmp_path) -> None:
    src = _random_regressors({**cpu_sized(), "psize": 12})
    path = tmp_path / "p2p_p12.pth"
    _save_patch2pix(path, src, psize=[12, 12])
    msg = _message(lambda: load_weights(Patch2Pix(cpu_sized()), path))
    assert "regressor_config.psize = [12, 12] is not supported by this Patch2Pix (it builds psize = 16)" in msg, msg
    refiner = Patch2PixRefiner({"weights": str(path)})
    assert refiner.net.conf["psize"] == 12
    assert torch.equal(_run(refiner.net)["fine"], _run(src)["fine"])
    _save_patch2pix(path, src, psize=[16, 8])  # mid and fine windows of different sizes: one psize here
    for load in (lambda: load_weights(Patch2Pix(cpu_sized()), path), lambda: Patch2PixRefiner({"weights": str(path)})):
        msg = _message(load)
        assert f"{path}: regressor_config.psize = [16, 8] is not supported (matchmill builds one even window side" in msg, msg


@pytest.mark.parametrize(
    "settings,top,expected",
    [
        ({"feat_comb": "post"}, {}, "regressor_config.feat_comb = 'post' is not supported (matchmill builds 'pre'"),
        ({"ptype": ["center", "corner"]}, {}, "regressor_config.ptype = ['center', 'corner'] is not supported"),
        ({"dropout": 0.1}, {}, "regressor_config.dropout = 0.1 is not a setting matchmill knows"),
        ({"panc": 3}, {}, "regressor_config.panc = 3 is not supported (matchmill builds 1 or 8"),
        # levels f0 + f4 (3 + 256 channels) have the same feat_dim 259 as f0..f3: only feat_idx tells them apart
        ({}, {"feat_idx": [0, 4]}, "feat_idx = [0, 4] is not supported by this Patch2Pix (it builds feat_idx = [0, 1, 2, 3])"),
    ],
)
def test_settings_matchmill_cannot_build_are_refused(tmp_path, settings, top, expected) -> None:
    path = tmp_path / "p2p.pth"
    _save_patch2pix(path, _random_regressors(cpu_sized()), top, **settings)
    msg = _message(lambda: load_weights(Patch2Pix(cpu_sized()), path))
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg, msg
    msg = _message(lambda: Patch2PixRefiner({"weights": str(path)}))  # the refine stage: refused too
    assert expected.split(" is not")[0] in msg, msg


def test_feat_dim_picks_the_pyramid(tmp_path) -> None:
    """feat_dim 387 is the PUMP pyramid (3 + 128 * 3): a ResNet34-sized net refuses it, the refine stage
    builds the regressors for that pyramid."""
    path = tmp_path / "p2p_pump.pth"
    _save_patch2pix(path, _random_regressors({**cpu_sized(), "feat_channels": [3, 128, 128, 128]}), feat_dim=387)
    msg = _message(lambda: load_weights(Patch2Pix(cpu_sized()), path))
    assert ("regressor_config.feat_dim = 387 is not supported by this Patch2Pix "
            "(it builds feat_channels = [3, 64, 64, 128])") in msg, msg
    assert Patch2PixRefiner({"weights": str(path)}).net.conf["feat_channels"] == [3, 128, 128, 128]


def test_default_settings_load_as_before_and_training_only_settings_are_not_compared(tmp_path) -> None:
    src = _random_regressors(cpu_sized())
    path = tmp_path / "p2p.pth"
    _save_patch2pix(path, src, psize=16, pshift=4, panc=1)  # psize as one int; expansion settings of training
    net = Patch2Pix(cpu_sized()).eval()
    load_weights(net, path)
    assert torch.equal(_run(net)["fine"], _run(src)["fine"])
    refiner = Patch2PixRefiner({"weights": str(path)})
    assert {k: refiner.net.conf[k] for k in ("pshift", "panc", "psize")} == {"pshift": 4, "panc": 1, "psize": 16}
    assert official_settings.conf_from_checkpoint("patch2pix", read_state_dict(path).metadata) == {
        "conv_dims": [128, 128], "conv_kernels": [3, 3], "conv_strides": [2, 1], "fc_dims": [128, 64],
        "psize": 16, "pshift": 4, "panc": 1, "shared": False}
    assert official_settings.conf_from_checkpoint("patch2pix", {}) == {}


def test_paper_widths_build_the_refine_stage_whatever_cpu_sized_says(tmp_path) -> None:
    official = filled({k: v for k, v in patch2pix_shapes(conv_dims=(64, 64), fc_dims=(64, 32)).items()
                       if k.startswith("regress_")})
    path = tmp_path / "p2p_w64.pth"
    torch.save({"regressor_config": _regressor_config(conv_dims=[64, 64], fc_dims=[64, 32]), "state_dict": official}, path)
    refiner = Patch2PixRefiner({"weights": str(path)})  # cpu_sized True would build 128: the file decides
    assert refiner.net.conf["conv_dims"] == [64, 64]
    assert torch.equal(refiner.net.mid_regressor.fcs[6].bias, official["regress_mid.fc.6.bias"])


def test_shared_regressors(tmp_path) -> None:
    src = _random_regressors({**cpu_sized(), "shared": True})
    path = tmp_path / "p2p_shared.pth"
    _save_patch2pix(path, src, shared=True)  # both key sets, the same tensors
    msg = _message(lambda: load_weights(Patch2Pix(cpu_sized()), path))
    assert "regressor_config.shared = True is not supported by this Patch2Pix (it builds shared = False)" in msg, msg
    refiner = Patch2PixRefiner({"weights": str(path)})
    assert refiner.net.fine_regressor is refiner.net.mid_regressor
    assert torch.equal(_run(refiner.net)["fine"], _run(src)["fine"])


def test_metadata_survives_a_read_and_saves_as_a_plain_dict(tmp_path) -> None:
    path = tmp_path / "p2p.pth"
    _save_patch2pix(path, _random_regressors(cpu_sized()), conv_strs=[2, 2])
    state = read_state_dict(path)
    assert state.metadata["regressor_config"].conv_strs == [2, 2] and "state_dict" not in state.metadata
    assert read_state_dict(state).metadata == state.metadata  # a mapping passed back in keeps it
    torch.save(state, tmp_path / "copy.pth")  # re-saved: tensors only, loadable weights-only
    again = torch.load(tmp_path / "copy.pth", weights_only=True)
    assert type(again) is OrderedDict and list(again) == list(state)
    assert all(torch.equal(again[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- ResNet34 from a Patch2Pix file


def _backbone_file(path, **top) -> dict:
    official = filled({**torchvision_resnet_shapes(layers=(1, 1, 1, 1), fc=False, prefix="extract."), **nc_shapes("ncn.")})
    torch.save({"backbone": "ResNet34", "feat_idx": [0, 1, 2, 3], "change_stride": True,
                "regressor_config": _regressor_config(), "state_dict": official, **top}, path)
    return official


def test_change_stride_honoured_or_refused(tmp_path) -> None:
    path = tmp_path / "p2p_nostride.pth"
    official = _backbone_file(path, change_stride=np.bool_(False))
    small = {"layers": [1, 1, 1]}
    msg = _message(lambda: load_weights(ResNet34Pyramid(small), path))
    assert msg == (f"{path}: change_stride = False is not supported by this ResNet34Pyramid (it builds change_stride = True); "
                   "build it with change_stride = False"), msg
    msg = _message(lambda: ResNet34Pyramid({**small, "weights": str(path)}))  # the extract stage's path
    assert "change_stride = False is not supported" in msg, msg
    net = ResNet34Pyramid({**small, "change_stride": False})
    load_weights(net, path)
    assert torch.equal(net.layer3[0].conv1.weight, official["extract.layer3.0.conv1.weight"])
    assert official_settings.conf_from_checkpoint("resnet34", read_state_dict(path).metadata) == {"change_stride": False}
    load_weights(NCNet(), path)  # the NC layers take no backbone setting
    _backbone_file(path, backbone="ResNet50")
    msg = _message(lambda: load_weights(ResNet34Pyramid(small), path))
    assert msg.startswith(f"{path}: backbone = 'ResNet50' is not supported (matchmill builds 'ResNet34')"), msg


# ----------------------------------------------------------------------------- NCNet args, R2D2 net string


def test_ncnet_symmetric_mode(tmp_path) -> None:
    official = filled(nc_shapes("NeighConsensus."))
    args = argparse.Namespace(ncons_kernel_sizes=[3, 3], ncons_channels=[16, 1], symmetric_mode=False, lr=5e-4)
    torch.save({"args": args, "state_dict": official, "epoch": 5}, tmp_path / "ncnet.pth.tar")
    msg = _message(lambda: load_weights(NCNet(), tmp_path / "ncnet.pth.tar"))
    assert "args.symmetric_mode = False is not supported by this NCNet (it builds symmetric = True)" in msg, msg
    load_weights(NCNet({"symmetric": False}), tmp_path / "ncnet.pth.tar")


@pytest.mark.parametrize(
    "net_string,expected",
    [
        ("Quad_L2Net_ConfCFS()", None),
        ("Quad_L2Net_ConfCFS(mchan=4, dilated=True)", None),
        ("Fast_Quad_L2Net_ConfCFS()", "net = 'Fast_Quad_L2Net_ConfCFS()' is not supported"),
        ("Quad_L2Net(relu22=True)", "net relu22 = True is not supported"),
        ("Quad_L2Net_ConfCFS(mchan=6)", "net mchan = 6 is not supported by this R2D2Net (it builds mchan = 4)"),
        ("__import__('os').system('true')", "net = \"__import__('os').system('true')\" is not supported"),
    ],
)
def test_r2d2_net_string(tmp_path, net_string, expected) -> None:
    official = filled(r2d2_shapes())
    torch.save({"net": net_string, "state_dict": OrderedDict((f"module.{k}", v) for k, v in official.items())},
               tmp_path / "r2d2.pt")
    net = _with_dilations(R2D2Net(), (1, 1, 1, 2, 2, 4, 4, 8, 16))
    if expected is None:
        load_weights(net, tmp_path / "r2d2.pt")
        assert torch.equal(net.layers[0].weight, official["ops.0.weight"])
    else:
        msg = _message(lambda: load_weights(net, tmp_path / "r2d2.pt"))
        assert msg.startswith(f"{tmp_path / 'r2d2.pt'}: ") and expected in msg, msg
