"""The feature-pyramid backbones NCNet and Patch2Pix read (matchmill/models/backbones.py), PUMP's in particular."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matchmill.models.backbones import BACKBONES, PumpPyramid, build_backbone


def test_pump_pyramid_levels_strides_and_channels():
    net = build_backbone("pump", seed=0)
    x = torch.randn(2, 3, 64, 96)
    levels = net(x)
    assert net.strides == [1, 2, 4, 8, 8] and net.channels == [3, 128, 128, 128, 128]
    for f, s, c in zip(levels, net.strides, net.channels):
        assert tuple(f.shape) == (2, c, 64 // s, 96 // s)
    assert torch.equal(levels[0], x)  # f0 is the normalised image, as in the ResNet34 pyramid
    assert torch.allclose(levels[1].norm(dim=1), torch.ones(2, 32, 48), atol=1e-5)  # f1: unit descriptors
    assert torch.allclose(levels[3], F.avg_pool2d(levels[2], 2), atol=1e-6)
    assert torch.allclose(levels[4], F.avg_pool2d(levels[1], 4), atol=1e-6)


def test_pump_pyramid_reads_the_descriptor_net_it_wraps():
    """f1 is the map the ConvMixer's dense output is upsampled from: the pyramid is the trained net."""
    net = build_backbone("pump", seed=3)
    x = torch.randn(1, 3, 32, 48)
    mixed, half = net.net.forward_levels(x)
    up = F.normalize(F.interpolate(half, size=(32, 48), mode="bilinear", align_corners=False), dim=1)
    assert torch.allclose(up, net.net(x), atol=1e-6)
    levels = net(x)
    assert torch.allclose(levels[1], F.normalize(half, dim=1), atol=1e-6) and torch.equal(levels[2], mixed)


def test_backbones_are_frozen_and_stay_in_eval_mode():
    for name in BACKBONES:
        net = build_backbone(name).train()
        assert not any(p.requires_grad for p in net.parameters())
        assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_same_seed_same_backbone_and_weights_override_the_seed(tmp_path):
    from safetensors.torch import save_file

    a, b, c = build_backbone("pump", seed=1), build_backbone("pump", seed=1), build_backbone("pump", seed=2)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x)[4], b(x)[4]) and not torch.equal(a(x)[4], c(x)[4])
    path = tmp_path / "pump.safetensors"
    save_file({k: v.contiguous() for k, v in c.net.state_dict().items()}, str(path))
    loaded = build_backbone("pump", weights=str(path), seed=1)
    assert torch.equal(loaded(x)[4], c(x)[4])


def test_bad_input_and_unknown_backbone_are_clear_errors():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_backbone("pump")(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="patch size 4"):
        from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized

        PumpPyramid(PumpConvMixer(cpu_sized({"patch_size": 8})))


def test_pump_extractor_stores_the_pyramid_and_ncnet_patch2pix_read_it():
    """extract.method=pump pyramid=true -> propose.method=ncnet -> refine.method=patch2pix on stage code."""
    from matchmill.methods.ncnet import NCNetProposer
    from matchmill.methods.patch2pix import Patch2PixRefiner
    from matchmill.methods.pump import PumpExtractor

    rng = np.random.default_rng(0)
    base = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    image = np.kron(base, np.ones((4, 4, 1), np.uint8))[:230, :310]  # 310 x 230: not a multiple of 16
    ext = PumpExtractor({"pyramid": True, "dense": False})
    feats = ext(image)
    assert "dense_0" not in feats and "dense_scales" not in feats
    assert [feats[f"f{i}"].shape[0] for i in range(5)] == [3, 128, 128, 128, 128]
    assert feats["f0"].shape[1] % 16 == 0 and feats["f0"].shape[2] % 16 == 0
    assert feats["f4"].dtype == np.float16
    feats["scale"] = feats["net_scale"]  # what the extract stage adds (network -> original frame)
    matches, scores = NCNetProposer({})(feats, feats)
    assert len(matches) > 0 and matches.shape[1] == 4
    refiner = Patch2PixRefiner({"confidence": 0.0})
    refined, conf = refiner(matches, scores, feats, feats)
    assert refined.shape == matches.shape and len(conf) == len(matches)
    assert refiner.net.conf["feat_channels"] == [3, 128, 128, 128]  # followed the stored pyramid
    with pytest.raises(ValueError, match="feat_channels"):
        Patch2PixRefiner({"feat_channels": [3, 64, 64, 128]})(matches, scores, feats, feats)


def test_pump_extractor_refuses_to_store_nothing():
    from matchmill.methods.pump import PumpExtractor

    with pytest.raises(ValueError, match="nothing to store"):
        PumpExtractor({"dense": False})
