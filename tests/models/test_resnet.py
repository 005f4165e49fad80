"""Truncated ResNet34 pyramid: shapes, strides, torchvision-layout weight loading, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matchmill.models.resnet import (
    DEFAULT_CONF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNet34Pyramid,
    load_torchvision_state_dict,
    load_weights_file,
    normalize_image,
)


@pytest.fixture(scope="module")
def model() -> ResNet34Pyramid:
    torch.manual_seed(0)
    return ResNet34Pyramid().eval()


def _fresh(seed: int, **conf) -> ResNet34Pyramid:
    torch.manual_seed(seed)
    return ResNet34Pyramid(conf).eval()


def _torchvision_like(model: ResNet34Pyramid, seed: int = 1) -> dict[str, torch.Tensor]:
    """The model's own state dict plus the layer4 / fc keys a torchvision resnet34 file also holds."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["layer4.0.conv1.weight"] = torch.randn(512, 256, 3, 3, generator=g)
    sd["layer4.0.downsample.0.weight"] = torch.randn(512, 256, 1, 1, generator=g)
    sd["layer4.2.bn2.running_var"] = torch.rand(512, generator=g)
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


@pytest.mark.parametrize(
    "change_stride, f4_hw",
    [(True, (8, 12)), (False, (4, 6))],
)
def test_pyramid_shapes_and_strides(change_stride: bool, f4_hw: tuple[int, int]) -> None:
    net = _fresh(0, change_stride=change_stride)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = net(x)
    assert len(feats) == 5
    assert [f.shape[1] for f in feats] == net.channels == [3, 64, 64, 128, 256]
    assert net.strides == ([1, 2, 4, 8, 8] if change_stride else [1, 2, 4, 8, 16])
    for f, s in zip(feats, net.strides):
        assert tuple(f.shape) == (2, f.shape[1], 64 // s, 96 // s)
    assert tuple(feats[4].shape[2:]) == f4_hw
    assert feats[0] is x  # f0 is the normalised image itself
    first = net.layer3[0]
    expected = (1, 1) if change_stride else (2, 2)
    assert first.conv1.stride == expected and first.downsample[0].stride == expected
    assert first.conv2.stride == (1, 1)


def test_layout_matches_torchvision_resnet34(model: ResNet34Pyramid) -> None:
    params = list(model.named_parameters())
    # conv1/bn1 (3) + layer1 (18) + layer2 (27) + layer3 (39): Patch2Pix's freeze_feat=87
    assert len(params) == 87
    assert abs(sum(p.numel() for _, p in params) / 1e6 - 8.17) < 0.01
    sd = model.state_dict()
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["layer1.0.conv1.weight"].shape) == (64, 64, 3, 3)
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert tuple(sd["layer3.0.downsample.0.weight"].shape) == (256, 128, 1, 1)
    assert tuple(sd["layer3.5.bn2.running_mean"].shape) == (256,)
    assert "layer1.0.downsample.0.weight" not in sd
    assert not any(k.startswith(("layer4.", "fc.")) for k in sd)


def test_default_conf_and_frozen_bn(model: ResNet34Pyramid) -> None:
    assert DEFAULT_CONF["change_stride"] is True
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not model.bn1.training  # frozen backbone keeps BN in eval
    trainable = _fresh(0, frozen=False).train()
    assert trainable.bn1.training and all(p.requires_grad for p in trainable.parameters())
    with pytest.raises(ValueError, match="unknown ResNet34Pyramid config keys"):
        ResNet34Pyramid({"stride": 8})


def test_state_dict_round_trip_ignores_layer4_and_fc(model: ResNet34Pyramid) -> None:
    sd = _torchvision_like(model)
    # old torchvision files (resnet34-333f7ec4.pth) have no BN counters: they must stay optional
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    other = _fresh(7)
    assert not torch.equal(other.conv1.weight, model.conv1.weight)
    report = load_torchvision_state_dict(other, sd)
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["ignored"]) == {k for k in sd if k.startswith(("layer4.", "fc."))}
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(other(x)[4], model(x)[4])


def test_missing_and_misshaped_keys_are_named(model: ResNet34Pyramid) -> None:
    sd = _torchvision_like(model)
    del sd["layer2.0.downsample.0.weight"]
    del sd["bn1.running_var"]
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    before = model.conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_torchvision_state_dict(model, sd)
    msg = str(err.value)
    assert "layer2.0.downsample.0.weight" in msg and "bn1.running_var" in msg
    assert "layer1.0.conv1.weight: expected (64, 64, 3, 3), got (64, 64, 1, 1)" in msg
    assert torch.equal(model.conv1.weight, before)  # nothing loaded on error


def test_non_strict_loads_what_matches(model: ResNet34Pyramid) -> None:
    sd = _torchvision_like(_fresh(3))
    del sd["bn1.running_var"]
    sd["extra.weight"] = torch.zeros(1)
    target = _fresh(4)
    keep = target.bn1.running_var.clone()
    report = load_torchvision_state_dict(target, sd, strict=False)
    assert report["missing"] == ["bn1.running_var"] and report["unexpected"] == ["extra.weight"]
    assert torch.equal(target.bn1.running_var, keep)
    assert torch.equal(target.conv1.weight, sd["conv1.weight"])
    with pytest.raises(ValueError, match="unexpected keys .*extra.weight"):
        load_torchvision_state_dict(target, sd | {"bn1.running_var": keep})
    bad = sd | {"bn1.running_var": keep, "conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"conv1.weight: expected \(64, 3, 7, 7\)"):
        load_torchvision_state_dict(target, bad, strict=False)


def test_load_weights_file(tmp_path, model: ResNet34Pyramid) -> None:
    from safetensors.torch import save_file

    sd = _torchvision_like(model)
    pth, st = tmp_path / "r34.pth", tmp_path / "r34.safetensors"
    torch.save(sd, pth)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    for path in (pth, st, tmp_path / "ckpt.pth"):
        loaded = load_weights_file(path)
        assert set(loaded) == set(sd) and torch.equal(loaded["fc.weight"], sd["fc.weight"])
    net = ResNet34Pyramid({"weights": str(pth)})
    assert torch.equal(net.layer3[5].conv2.weight, model.layer3[5].conv2.weight)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_weights_file(junk)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        load_weights_file(tmp_path / "list.pth")


def test_normalize_image() -> None:
    img = np.zeros((5, 7, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    x = normalize_image(img)
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    expected = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (128 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]]
    expected.append((0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2])
    assert torch.allclose(x[0, :, 2, 3], torch.tensor(expected), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        normalize_image(np.zeros((5, 7), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        normalize_image(np.zeros((5, 7, 3), np.float32))


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 32, 32, 3), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)],
)
def test_bad_input_names_expected_shape(model: ResNet34Pyramid, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(bad)
