"""Official released checkpoints (PUMP, Patch2Pix, NCNet, torchvision ResNet34, R2D2) load into our modules.

The state dicts are built here with the official key names and shapes (read from the authors'
model definitions: naver/pump core/conv_mixer.py, GrumpyZhou/patch2pix networks/*.py,
ignacio-rocco/ncnet lib/model.py + lib/conv4d.py, naver/r2d2 nets/patchnet.py), every tensor
filled with its own values, saved in the official wrapping, and loaded strictly through
``load_weights`` (what ``extract/propose/refine.weights`` use). No real checkpoint is downloaded.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from matchmill.models import official_checkpoints as oc
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix import DEFAULT_CONF as P2P_CONF
from matchmill.models.patch2pix import Patch2Pix, cpu_sized as p2p_cpu
from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized as pump_cpu
from matchmill.models.pump.r2d2 import R2D2Net
from matchmill.models.resnet import ResNet34Pyramid
from matchmill.models.weights import load_weights, read_state_dict

# ----------------------------------------------------------------------------- official layouts


def _bn(prefix: str, ch: int, affine: bool = True) -> dict[str, tuple]:
    out = {f"{prefix}.running_mean": (ch,), f"{prefix}.running_var": (ch,), f"{prefix}.num_batches_tracked": ()}
    if affine:
        out.update({f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)})
    return out


def pump_shapes(width: int = 512, depth: int = 7, kernel: int = 9, out_dim: int = 128, patch: int = 4) -> dict[str, tuple]:
    """naver/pump ``ConvMixer(output_dim, hidden_dim=width, depth, patch_size, kernel_size)``, preconv=1:
    one ``nn.Sequential``, keys by index."""
    stem = width // 4
    s = {"0.weight": (stem, 3, 5, 5), "0.bias": (stem,), **_bn("2", stem),
         "3.weight": (width, stem, patch, patch), "3.bias": (width,), **_bn("5", width)}
    for b in range(depth):
        i = 6 + 4 * b
        s.update({f"{i}.fn.0.weight": (width, 1, kernel, kernel), f"{i}.fn.0.bias": (width,), **_bn(f"{i}.fn.2", width),
                  f"{i + 1}.weight": (width, width, 1, 1), f"{i + 1}.bias": (width,), **_bn(f"{i + 3}", width)})
    head = 6 + 4 * depth
    s.update({f"{head}.weight": (out_dim * (patch // 2) ** 2, width, 1, 1), f"{head}.bias": (out_dim * (patch // 2) ** 2,)})
    return s


def torchvision_resnet_shapes(layers=(3, 4, 6, 3), fc: bool = True, prefix: str = "") -> dict[str, tuple]:
    """torchvision ``resnet34`` layout (BasicBlock): conv1, bn1, layerL.B.{conv1,bn1,conv2,bn2,downsample}, fc."""
    s = {f"{prefix}conv1.weight": (64, 3, 7, 7), **_bn(f"{prefix}bn1", 64)}
    cin = 64
    for li, (blocks, cout) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{li}.{b}"
            s.update({f"{p}.conv1.weight": (cout, cin if b == 0 else cout, 3, 3), **_bn(f"{p}.bn1", cout),
                      f"{p}.conv2.weight": (cout, cout, 3, 3), **_bn(f"{p}.bn2", cout)})
            if b == 0 and (li > 1 or cin != cout):
                s.update({f"{p}.downsample.0.weight": (cout, cin, 1, 1), **_bn(f"{p}.downsample.1", cout)})
        cin = cout
    if fc:
        s.update({f"{prefix}fc.weight": (1000, 512), f"{prefix}fc.bias": (1000,)})
    return s


def nc_shapes(prefix: str, kernels=(3, 3), channels=(16, 1)) -> dict[str, tuple]:
    """NCNet ``NeighConsensus.conv``: Conv4d at even indices, weights pre-permuted (k, Cout, Cin, k, k, k)."""
    s, cin = {}, 1
    for i, (k, cout) in enumerate(zip(kernels, channels)):
        s[f"{prefix}conv.{2 * i}.weight"] = (k, cout, cin, k, k, k)
        s[f"{prefix}conv.{2 * i}.bias"] = (cout,)
        cin = cout
    return s


def regressor_shapes(prefix: str, conv_dims=(512, 512), fc_dims=(512, 256), feat_dim: int = 259) -> dict[str, tuple]:
    """Patch2Pix ``FeatRegressNet`` (feat_comb 'pre'): conv = [conv, BN, conv, BN, ReLU, MaxPool],
    fc = [Linear, BN1d, ReLU, Linear, BN1d, ReLU, Linear(5)]."""
    c0, c1 = conv_dims
    f0, f1 = fc_dims
    return {f"{prefix}conv.0.weight": (c0, 2 * feat_dim, 3, 3), **_bn(f"{prefix}conv.1", c0),
            f"{prefix}conv.2.weight": (c1, c0, 3, 3), **_bn(f"{prefix}conv.3", c1),
            f"{prefix}fc.0.weight": (f0, c1), f"{prefix}fc.0.bias": (f0,), **_bn(f"{prefix}fc.1", f0),
            f"{prefix}fc.3.weight": (f1, f0), f"{prefix}fc.3.bias": (f1,), **_bn(f"{prefix}fc.4", f1),
            f"{prefix}fc.6.weight": (5, f1), f"{prefix}fc.6.bias": (5,)}


def patch2pix_shapes(conv_dims=(512, 512), fc_dims=(512, 256), regressors: bool = True) -> dict[str, tuple]:
    """GrumpyZhou/patch2pix ``Patch2Pix``: extract (ResNet34 incl. layer4, no fc), ncn, regress_mid / regress_fine."""
    s = {**torchvision_resnet_shapes(fc=False, prefix="extract."), **nc_shapes("ncn.")}
    if regressors:
        s.update({**regressor_shapes("regress_mid.", conv_dims, fc_dims), **regressor_shapes("regress_fine.", conv_dims, fc_dims)})
    return s


def r2d2_shapes(mchan: int = 4, dim: int = 128) -> dict[str, tuple]:
    """naver/r2d2 ``Quad_L2Net_ConfCFS``: ``ops`` ModuleList (conv, BN(affine=False), ReLU, ...), ``clf``, ``sal``."""
    layout = [(3, 8, True, True), (3, 8, True, True), (3, 16, True, True), (3, 16, True, True), (3, 32, True, True),
              (3, 32, True, True), (2, 32, True, False), (2, 32, True, False), (2, 0, False, False)]
    s, i, cin = {}, 0, 3
    for k, mult, bn, relu in layout:
        cout = mult * mchan if mult else dim
        s[f"ops.{i}.weight"], s[f"ops.{i}.bias"] = (cout, cin, k, k), (cout,)
        i += 1
        if bn:
            s.update(_bn(f"ops.{i}", cout, affine=False))
            i += 1
        i += int(relu)
        cin = cout
    s.update({"clf.weight": (2, dim, 1, 1), "clf.bias": (2,), "sal.weight": (1, dim, 1, 1), "sal.bias": (1,)})
    return s


def filled(shapes: dict[str, tuple]) -> OrderedDict:
    """Every tensor gets its own values: key number ``i`` holds ``i + arange(n) / (n + 1)`` (so a tensor
    landing in the wrong parameter, or permuted, is caught); counters hold ``i``."""
    out = OrderedDict()
    for i, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(i, dtype=torch.long)
            continue
        n = int(np.prod(shape)) if shape else 1
        out[key] = (i + 1 + torch.arange(n, dtype=torch.float32) / (n + 1)).reshape(shape)
    return out


def _n_learnable(shapes: dict[str, tuple]) -> int:
    return sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


# ----------------------------------------------------------------------------- assertions


def assert_landed(net: nn.Module, official: dict, key_of, convert=lambda ours, t: t) -> int:
    """Every parameter / buffer of ``net`` equals the official tensor ``key_of(our key)``."""
    n = 0
    for ours, value in net.state_dict().items():
        src = key_of(ours)
        want = convert(ours, official[src])
        assert torch.equal(value, want.to(value.dtype)), f"{ours} <- {src}"
        n += 1
    return n


def conv4d_to_ours(ours: str, t: torch.Tensor) -> torch.Tensor:
    return t.permute(1, 2, 0, 3, 4, 5) if t.ndim == 6 else t


def _pump_key(ours: str, depth: int = 7) -> str:
    parts = ours.split(".")
    if parts[0] in ("stem", "patch_embed"):
        return f"{(0 if parts[0] == 'stem' else 3) + int(parts[1])}.{parts[2]}"
    if parts[0] == "blocks":
        b, sub, idx, name = int(parts[1]), parts[2], int(parts[3]), parts[4]
        return f"{6 + 4 * b}.fn.{idx}.{name}" if sub == "dw" else f"{7 + 4 * b + idx}.{name}"
    assert parts[0] == "head"
    return f"{6 + 4 * depth}.{parts[1]}"


def _p2p_key(ours: str) -> str:
    stage, rest = ours.split("_regressor.")
    return f"regress_{stage}." + rest.replace("convs.", "conv.", 1).replace("fcs.", "fc.", 1)


def _message(fn) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


# ----------------------------------------------------------------------------- PUMP


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


def _official_like_convmixer(width: int, depth: int = 7, kernel: int = 9, out_dim: int = 128) -> nn.Sequential:
    """A plain ``nn.Sequential`` with the official module indices (from the spec's layer list), to check
    that the key map preserves what each tensor does, not only where it goes."""
    stem = width // 4
    ops = [nn.Conv2d(3, stem, 5, padding=2), nn.ReLU(), nn.BatchNorm2d(stem),
           nn.Conv2d(stem, width, 4, stride=4), nn.ReLU(), nn.BatchNorm2d(width)]
    for _ in range(depth):
        ops += [_Residual(nn.Sequential(nn.Conv2d(width, width, kernel, groups=width, padding=kernel // 2), nn.ReLU(),
                                        nn.BatchNorm2d(width))),
                nn.Conv2d(width, width, 1), nn.ReLU(), nn.BatchNorm2d(width)]
    ops += [nn.Conv2d(width, out_dim * 4, 1), nn.PixelShuffle(2), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
    return nn.Sequential(*ops)


def test_pump_official_shapes_are_the_paper_model() -> None:
    assert _n_learnable(pump_shapes()) == 3_469_568  # spec §1.1, counted from the official layout
    assert len(PumpConvMixer().state_dict()) == len(pump_shapes())  # one official tensor per tensor of ours


@pytest.mark.parametrize("wrapping", ["raw", "last", "dataparallel"])
def test_pump_checkpoint_paper_size(tmp_path, wrapping: str) -> None:
    official = filled(pump_shapes())
    payload = {
        "raw": official,  # checkpoints/PUMP.pt, PUMP-stytrf.pt, model.pt
        "last": {"model": official, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                 "loss": OrderedDict(), "epoch": 12},  # model.pt.last of naver/pump tools/trainer.py
        "dataparallel": OrderedDict((f"module.{k}", v) for k, v in official.items()),
    }[wrapping]
    torch.save(payload, tmp_path / "PUMP.pt")
    net = PumpConvMixer()
    load_weights(net, tmp_path / "PUMP.pt", strict=True)
    assert assert_landed(net, official, _pump_key) == len(official)
    assert PumpConvMixer({"weights": str(tmp_path / "PUMP.pt")}).stem[0].weight.equal(official["0.weight"])


def test_pump_cpu_sized_official_layout_loads_and_computes_the_same(tmp_path) -> None:
    torch.manual_seed(0)
    ref = _official_like_convmixer(128).eval()
    with torch.no_grad():
        for buf in ref.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    state = ref.state_dict()
    assert set(state) == set(pump_shapes(128)) and all(tuple(v.shape) == pump_shapes(128)[k] for k, v in state.items())
    torch.save(state, tmp_path / "PUMP-cpu.pt")
    net = PumpConvMixer(pump_cpu()).eval()
    load_weights(net, tmp_path / "PUMP-cpu.pt")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        want = F.normalize(ref(x), dim=1)
        assert torch.allclose(net(x), want, atol=1e-5)


def test_pump_paper_file_into_cpu_sized_net_names_the_keys(tmp_path) -> None:
    torch.save(filled(pump_shapes()), tmp_path / "PUMP.pt")
    msg = _message(lambda: load_weights(PumpConvMixer(pump_cpu()), tmp_path / "PUMP.pt"))
    assert "PUMP ConvMixer checkpoint" in msg and "PUMP.pt" in msg, msg
    assert "0.weight -> stem.0.weight: expected (32, 3, 5, 5), got (128, 3, 5, 5)" in msg, msg


def test_pump_corrupted_checkpoint_names_the_key(tmp_path) -> None:
    official = filled(pump_shapes())
    del official["34.bias"]  # head bias
    official["6.fn.0.weight"] = torch.zeros(512, 1, 7, 7)
    official["99.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "bad.pt")
    net = PumpConvMixer()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    msg = _message(lambda: load_weights(net, tmp_path / "bad.pt"))
    assert "missing keys (1): 34.bias -> head.bias" in msg, msg
    assert "6.fn.0.weight -> blocks.0.dw.0.weight: expected (512, 1, 9, 9), got (512, 1, 7, 7)" in msg, msg
    assert "unexpected keys (1): 99.weight" in msg, msg
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())  # nothing copied
    # non-strict: missing / unexpected are allowed, mis-shaped never
    del official["99.weight"]
    official["6.fn.0.weight"] = torch.zeros(512, 1, 9, 9)
    load_weights(net, official, strict=False)
    assert torch.equal(net.blocks[0].dw[0].weight, official["6.fn.0.weight"])


# ----------------------------------------------------------------------------- Patch2Pix


def _patch2pix_checkpoint(state: dict, change_stride: bool = True, **settings) -> dict:
    """The dict of utils/train/helper.py save_ckpt (metadata: argparse Namespace, NumPy values);
    ``settings`` replace entries of the ``regressor_config`` Namespace (the paper's by default)."""
    cfg = argparse.Namespace(**{**dict(conv_dims=[512, 512], conv_kers=[3, 3], conv_strs=[2, 1], fc_dims=[512, 256],
                                       feat_comb="pre", psize=[16, 16], pshift=8, panc=8, shared=False, feat_dim=259),
                                **settings})
    return {"last_epoch": 24, "best_vals": [np.float64(1.2), np.float64(0.8), np.inf, 0.0], "backbone": "ResNet34",
            "feat_idx": [0, 1, 2, 3], "change_stride": change_stride, "regressor_config": cfg, "state_dict": state,
            "optim": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
            "lr_scheduler": {"milestones": {5: 1}, "gamma": 0.2, "last_epoch": 24}}


def test_patch2pix_full_checkpoint_feeds_all_three_stages(tmp_path) -> None:
    official = filled(patch2pix_shapes())
    assert _n_learnable(regressor_shapes("r.")) == 5_145_093  # spec §1: each regressor ~5.145 M
    path = tmp_path / "patch2pix_pretrained.pth"
    torch.save(_patch2pix_checkpoint(official), path)
    read_state_dict(path)  # the metadata does not stop a weights-only read

    refiner = Patch2Pix(P2P_CONF)
    load_weights(refiner, path, strict=True)
    assert assert_landed(refiner, official, _p2p_key) == 2 * len(regressor_shapes("r."))

    ncnet = NCNet()
    load_weights(ncnet, path, strict=True)
    assert assert_landed(ncnet, official, lambda k: k.replace("nc.net.", "ncn.conv."), conv4d_to_ours) == 4
    w_off, w_ours = official["ncn.conv.0.weight"], ncnet.nc.net[0].weight  # (k, Cout, Cin, k, k, k) -> (Cout, Cin, k^4)
    assert w_ours.shape == (16, 1, 3, 3, 3, 3) and w_ours[5, 0, 2, 1, 0, 2] == w_off[2, 5, 0, 1, 0, 2]

    backbone = ResNet34Pyramid()  # paper size: layer1..3 = 3, 4, 6 blocks, change_stride
    load_weights(backbone, path, strict=True)
    assert assert_landed(backbone, official, lambda k: f"extract.{k}") == len(backbone.state_dict())
    via_conf = ResNet34Pyramid({"weights": str(path)})  # the extract stage's path (build_backbone)
    assert torch.equal(via_conf.layer3[5].bn2.running_var, official["extract.layer3.5.bn2.running_var"])


def test_patch2pix_cpu_sized_regressors(tmp_path) -> None:
    official = filled(patch2pix_shapes(conv_dims=(128, 128), fc_dims=(128, 64)))
    torch.save(_patch2pix_checkpoint(official, conv_dims=[128, 128], fc_dims=[128, 64]), tmp_path / "cpu.pth")
    net = Patch2Pix(p2p_cpu())
    load_weights(net, tmp_path / "cpu.pth")
    assert assert_landed(net, official, _p2p_key) == len(net.state_dict())
    # the paper file into the CPU-sized net: its regressor_config names the widths first
    torch.save(_patch2pix_checkpoint(filled(patch2pix_shapes())), tmp_path / "paper.pth")
    msg = _message(lambda: load_weights(Patch2Pix(p2p_cpu()), tmp_path / "paper.pth"))
    assert msg.startswith(f"{tmp_path / 'paper.pth'}: regressor_config.conv_dims = [512, 512] is not supported"), msg
    assert "(it builds conv_dims = [128, 128])" in msg and "build it with conv_dims = [512, 512], fc_dims = [512, 256]" in msg
    # the same tensors without settings (a raw state dict): the keys are named
    torch.save(filled(patch2pix_shapes()), tmp_path / "raw.pth")
    msg = _message(lambda: load_weights(Patch2Pix(p2p_cpu()), tmp_path / "raw.pth"))
    assert "Patch2Pix checkpoint" in msg and "regress_mid" in msg, msg
    assert "regress_mid.conv.0.weight -> mid_regressor.convs.0.weight: expected (128, 518, 3, 3), got (512, 518, 3, 3)" in msg


def test_patch2pix_corrupted_checkpoint_names_the_keys(tmp_path) -> None:
    official = filled(patch2pix_shapes())
    del official["regress_fine.fc.6.bias"]
    official["ncn.conv.0.weight"] = torch.zeros(3, 8, 1, 3, 3, 3)
    official["regress_mid.conv.9.weight"] = torch.zeros(1)
    torch.save(_patch2pix_checkpoint(official), tmp_path / "bad.pth")
    msg = _message(lambda: load_weights(Patch2Pix(P2P_CONF), tmp_path / "bad.pth"))
    assert "missing keys (1): regress_fine.fc.6.bias -> fine_regressor.fcs.6.bias" in msg, msg
    assert "unexpected keys (1): regress_mid.conv.9.weight" in msg, msg
    msg = _message(lambda: load_weights(NCNet(), tmp_path / "bad.pth"))
    assert "ncn.conv.0.weight -> nc.net.0.weight: expected (3, 16, 1, 3, 3, 3), got (3, 8, 1, 3, 3, 3)" in msg, msg
    assert "bad.pth" in msg and "ncn." in msg, msg


def test_adapted_ncnet_pretrain_has_no_regressors(tmp_path) -> None:
    """``ncn_ivd_5ep.pth`` (Patch2Pix's pretrained NCNet): backbone + NC layers in Patch2Pix names."""
    official = filled(patch2pix_shapes(regressors=False))
    torch.save(official, tmp_path / "ncn_ivd_5ep.pth")
    ncnet = NCNet()
    load_weights(ncnet, tmp_path / "ncn_ivd_5ep.pth")
    assert assert_landed(ncnet, official, lambda k: k.replace("nc.net.", "ncn.conv."), conv4d_to_ours) == 4
    backbone = ResNet34Pyramid()
    load_weights(backbone, tmp_path / "ncn_ivd_5ep.pth")
    assert torch.equal(backbone.conv1.weight, official["extract.conv1.weight"])
    msg = _message(lambda: load_weights(Patch2Pix(P2P_CONF), tmp_path / "ncn_ivd_5ep.pth"))
    assert "holds none of the keys this net takes" in msg and "missing keys (48)" in msg, msg
    assert "regress_mid.conv.0.weight -> mid_regressor.convs.0.weight" in msg, msg


def test_propose_stage_takes_the_official_file(tmp_path) -> None:
    from matchmill.methods.ncnet import NCNetProposer

    official = filled(patch2pix_shapes())
    torch.save(_patch2pix_checkpoint(official), tmp_path / "patch2pix_pretrained.pth")
    proposer = NCNetProposer({"weights": str(tmp_path / "patch2pix_pretrained.pth")})
    assert torch.equal(proposer.net.nc.net[2].bias, official["ncn.conv.2.bias"])


# ----------------------------------------------------------------------------- NCNet (ignacio-rocco)


def _immatchnet_checkpoint(state: dict, kernels, channels) -> dict:
    """lib/torch_util save_checkpoint of ncnet train.py: args Namespace, NumPy losses."""
    return {"epoch": 5, "args": argparse.Namespace(ncons_kernel_sizes=list(kernels), ncons_channels=list(channels), lr=5e-4),
            "state_dict": state, "best_test_loss": np.float64(-0.3), "optimizer": {"state": {}, "param_groups": []},
            "train_loss": np.zeros(5), "test_loss": np.linspace(0, 1, 5)}


@pytest.mark.parametrize("name,kernels,channels", [("ivd", (3, 3), (16, 1)), ("pfpascal", (5, 5, 5), (16, 16, 1))])
def test_ncnet_checkpoint(tmp_path, name, kernels, channels) -> None:
    official = filled({"FeatureExtraction.model.0.weight": (64, 3, 7, 7), "FeatureExtraction.model.1.running_mean": (64,),
                       **nc_shapes("NeighConsensus.", kernels, channels)})
    path = tmp_path / f"ncnet_{name}.pth.tar"
    torch.save(_immatchnet_checkpoint(official, kernels, channels), path, _use_new_zipfile_serialization=False)  # 2018 files
    net = NCNet({"nc_kernels": list(kernels), "nc_channels": list(channels)})
    load_weights(net, path)
    n = assert_landed(net, official, lambda k: k.replace("nc.net.", "NeighConsensus.conv."), conv4d_to_ours)
    assert n == 2 * len(kernels)
    msg = _message(lambda: load_weights(ResNet34Pyramid(), path))
    assert "ResNet-101" in msg and "NCNet checkpoint" in msg, msg
    if name == "pfpascal":  # PF-Pascal NC layers into the IVD-config NCNet: named, with the conf to use
        msg = _message(lambda: load_weights(NCNet(), path))
        assert msg.startswith(f"{path}: args.ncons_kernel_sizes = [5, 5, 5] is not supported by this NCNet "
                              f"(it builds nc_kernels = [3, 3])"), msg
        assert "build it with nc_kernels = [5, 5, 5], nc_channels = [16, 16, 1]" in msg, msg
        del official["NeighConsensus.conv.4.weight"]  # a file whose args say the IVD net: its tensors decide
        torch.save(_immatchnet_checkpoint(official, (3, 3), (16, 1)), path)
        msg = _message(lambda: load_weights(NCNet(), path))
        assert "unexpected keys (1): NeighConsensus.conv.4.bias" in msg and "ncnet_pfpascal" in msg, msg


# ----------------------------------------------------------------------------- torchvision ResNet34


def test_torchvision_resnet34(tmp_path) -> None:
    official = filled(torchvision_resnet_shapes())
    torch.save(official, tmp_path / "resnet34-333f7ec4.pth")
    for make in (lambda: ResNet34Pyramid(), lambda: ResNet34Pyramid({"change_stride": False})):
        net = make()
        load_weights(net, tmp_path / "resnet34-333f7ec4.pth")
        assert assert_landed(net, official, lambda k: k) == len(net.state_dict())
    via_conf = ResNet34Pyramid({"weights": str(tmp_path / "resnet34-333f7ec4.pth")})
    assert torch.equal(via_conf.layer2[0].downsample[0].weight, official["layer2.0.downsample.0.weight"])
    # CPU-sized (one block per layer): a torchvision-layout file of that size loads, the full one does not
    small = filled(torchvision_resnet_shapes(layers=(1, 1, 1, 1)))
    net = ResNet34Pyramid({"layers": [1, 1, 1]})
    load_weights(net, small)
    assert assert_landed(net, small, lambda k: k) == len(net.state_dict())
    msg = _message(lambda: load_weights(ResNet34Pyramid({"layers": [1, 1, 1]}), tmp_path / "resnet34-333f7ec4.pth"))
    assert "torchvision ResNet checkpoint" in msg and "unexpected keys" in msg and "layer3.5.conv1.weight" in msg, msg
    assert "layer4." not in msg.split("unexpected keys")[1] and "fc.weight" not in msg, msg  # ignored, never built


# ----------------------------------------------------------------------------- R2D2


def _with_dilations(net: R2D2Net, dilations) -> R2D2Net:
    convs = [m for m in net.layers if isinstance(m, nn.Conv2d)]
    for conv, d in zip(convs, dilations):
        pad = (conv.kernel_size[0] - 1) * d // 2
        conv.dilation, conv.padding = (d, d), (pad, pad)
    return net


def test_r2d2_checkpoint_loads_and_differing_dilations_are_refused(tmp_path) -> None:
    official = filled(r2d2_shapes())
    ckpt = {"net": "Quad_L2Net_ConfCFS()", "state_dict": OrderedDict((f"module.{k}", v) for k, v in official.items())}
    torch.save(ckpt, tmp_path / "r2d2_WASF_N16.pt")
    net = _with_dilations(R2D2Net(), (1, 1, 1, 2, 2, 4, 4, 8, 16))  # naver/r2d2 Quad_L2Net, dilated mode
    load_weights(net, tmp_path / "r2d2_WASF_N16.pt")
    assert assert_landed(net, official, lambda k: k.replace("layers.", "ops.", 1)) == len(net.state_dict())
    other = _with_dilations(R2D2Net(), (1, 1, 1, 2, 2, 4, 4, 4, 4))
    msg = _message(lambda: load_weights(other, tmp_path / "r2d2_WASF_N16.pt"))
    assert "R2D2 checkpoint" in msg and "dilations [1, 1, 1, 2, 2, 4, 4, 8, 16]" in msg, msg
    assert "[1, 1, 1, 2, 2, 4, 4, 4, 4]" in msg, msg


# ----------------------------------------------------------------------------- own layout first, hints, safety


def test_own_layout_first_and_unknown_files_keep_the_old_message(tmp_path) -> None:
    src = NCNet()
    torch.save(src.state_dict(), tmp_path / "own.pth")
    dst = NCNet()
    load_weights(dst, tmp_path / "own.pth")
    assert torch.equal(dst.nc.net[0].weight, src.nc.net[0].weight)
    torch.save(filled(pump_shapes()), tmp_path / "PUMP.pt")
    msg = _message(lambda: load_weights(NCNet(), tmp_path / "PUMP.pt"))
    assert "missing keys (4): nc.net.0.bias" in msg and "unexpected keys" in msg, msg  # the own-layout message
    assert "looks like official layout 'pump'" in msg and "patch2pix, ncnet" in msg, msg
    assert oc.detect_layout(NCNet(), filled(pump_shapes())) is None
    with pytest.raises(ValueError, match="matches no official layout NCNet takes"):
        oc.to_own_layout(NCNet(), {"x.weight": torch.zeros(1)})


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_metadata_allowance_lets_no_code_through(tmp_path) -> None:
    marker = tmp_path / "pwned"
    ckpt = _patch2pix_checkpoint(filled(patch2pix_shapes(regressors=False)))
    ckpt["zz_payload"] = _Exploit(marker)  # after the Namespace / NumPy metadata in the pickle
    torch.save(ckpt, tmp_path / "evil.pth")
    msg = _message(lambda: read_state_dict(tmp_path / "evil.pth"))
    assert "pickled objects/code" in msg and "posix.system" in msg, msg
    assert not marker.exists()
