"""PUMP descriptor nets: ConvMixer and R2D2 call contract, sizes, input checks, weights files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matchmill.models.pump.convmixer import DEFAULT_CONF, PumpConvMixer, cpu_sized
from matchmill.models.pump.net_io import load_net_weights, normalize_images, save_net_weights
from matchmill.models.pump.r2d2 import R2D2Net
from matchmill.models.resnet import normalize_image


def _net(seed: int = 0, **conf) -> PumpConvMixer:
    torch.manual_seed(seed)
    return PumpConvMixer(cpu_sized(conf)).eval()


def _trained_stats(net: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """Give BatchNorm non-trivial running statistics (a fresh net has mean 0 / var 1 everywhere)."""
    g = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(2, 3, 32, 32, generator=g))
    return net.eval()


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_param_counts_match_the_spec() -> None:
    torch.manual_seed(0)
    full = PumpConvMixer()
    assert _n_params(full) == 3_469_568  # spec §1.1, by hand from the config
    assert sum(v.numel() for v in full.state_dict().values()) == 3_485_200  # + BN running stats
    assert _n_params(PumpConvMixer(cpu_sized())) == 327_104  # DESIGN.md: width 128 ~ 0.33 M
    assert _n_params(R2D2Net()) == 484_000  # spec §1.2, descriptor-only
    assert cpu_sized()["width"] == 128 and cpu_sized()["stem_width"] == 32
    assert DEFAULT_CONF["width"] == 512 and DEFAULT_CONF["depth"] == 7 and DEFAULT_CONF["kernel_size"] == 9


@pytest.mark.parametrize("arch", ["convmixer_full", "convmixer_cpu", "r2d2"])
def test_output_is_unit_norm_at_full_resolution(arch: str) -> None:
    torch.manual_seed(0)
    net = {"convmixer_full": lambda: PumpConvMixer(), "convmixer_cpu": lambda: PumpConvMixer(cpu_sized()), "r2d2": R2D2Net}[arch]()
    net = _trained_stats(net)
    h, w = (36, 52) if arch != "r2d2" else (37, 53)  # R2D2 accepts any size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (2, 128, h, w)
    assert torch.allclose(y.norm(dim=1), torch.ones(2, h, w), atol=1e-5)
    assert y.std(dim=(2, 3)).mean() > 1e-3  # not a constant map
    assert not torch.allclose(y[0], y[1])  # depends on the input


def test_convmixer_checks_its_input() -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"multiples of 4, got 30x32"):
        net(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="float"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown PumpConvMixer config keys"):
        PumpConvMixer({"widht": 64})
    with pytest.raises(ValueError, match="patch_size"):
        PumpConvMixer({"patch_size": 3})


def test_channels_last_is_a_pure_speed_option() -> None:
    a = _trained_stats(_net(3, channels_last=True))
    b = _net(4, channels_last=False)
    load_net_weights(b, a.state_dict())
    x = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_r2d2_dilations_follow_the_spec_layer_table() -> None:
    """Spec §1.2, dilated mode: each stride 2 of Quad_L2Net (convs 2 and 4, and the three 2x2
    convs that replace its 8x8 conv) doubles the dilation of what follows: 2x2 convs at 4, 8, 16."""
    net = R2D2Net()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [3] * 6 + [2] * 3
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 2, 2, 4, 4, 8, 16]
    assert all(c.stride == (1, 1) and c.dilation[0] == c.dilation[1] for c in convs)
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 128, 128, 128]
    net = _trained_stats(net)
    for h, w in ((1, 1), (17, 40), (37, 53)):
        with torch.no_grad():
            assert tuple(net(torch.randn(1, 3, h, w)).shape) == (1, 128, h, w)


def test_r2d2_receptive_field_is_51_px() -> None:
    """Layout of the docstring: 1 + 2+2+2 + 4+4 + 8 + 4+8+16 = 51 px, i.e. +-25 px around a pixel."""
    net = _trained_stats(R2D2Net())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0, :, 32, 32] += 5.0
    with torch.no_grad():
        changed = (net(x) - net(x2)).abs().amax(dim=1)[0] > 1e-6
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert int(ys.min()) == 32 - 25 and int(ys.max()) == 32 + 25
    assert int(xs.min()) == 32 - 25 and int(xs.max()) == 32 + 25


def test_normalize_images_matches_single_image_normalisation() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 8, 12, 3), dtype=np.uint8)
    batch = normalize_images(torch.from_numpy(imgs))
    assert tuple(batch.shape) == (2, 3, 8, 12)
    assert torch.allclose(batch[1:2], normalize_image(imgs[1]), atol=1e-6)
    assert torch.allclose(normalize_images(torch.from_numpy(imgs).permute(0, 3, 1, 2)), batch)
    with pytest.raises(ValueError, match="uint8"):
        normalize_images(torch.zeros(1, 8, 8, 3))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_round_trip(tmp_path, suffix: str) -> None:
    src = _trained_stats(_net(1))
    path = save_net_weights(src, tmp_path / f"pump{suffix}")
    dst = PumpConvMixer(cpu_sized({"weights": str(path)})).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    r2 = _trained_stats(R2D2Net())
    r2_path = save_net_weights(r2, tmp_path / f"r2d2{suffix}")
    with torch.no_grad():
        assert torch.equal(r2(x), R2D2Net({"weights": str(r2_path)}).eval()(x))


def test_bad_weights_name_the_keys(tmp_path) -> None:
    full = PumpConvMixer()
    state = {k: v.contiguous() for k, v in _net().state_dict().items()}  # width-128 weights
    with pytest.raises(ValueError, match=r"mis-shaped keys .*patch_embed\.0\.weight: expected \(512, 128, 4, 4\), got \(128, 32, 4, 4\)"):
        load_net_weights(full, state)
    partial = dict(state)
    del partial["blocks.6.pw.0.bias"]
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.6\.pw\.0\.bias.*unexpected keys \(1\): extra\.weight"):
        load_net_weights(_net(), partial)
    before = _net(2).state_dict()["head.weight"].clone()
    net = _net(2)
    with pytest.raises(ValueError):
        load_net_weights(net, partial)
    assert torch.equal(net.state_dict()["head.weight"], before)  # nothing copied on error
    load_net_weights(net, partial, strict=False)  # non-strict: loads what matches
    assert torch.equal(net.state_dict()["head.weight"], state["head.weight"])

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        PumpConvMixer(cpu_sized({"weights": str(tmp_path / "nope.pth")}))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        PumpConvMixer(cpu_sized({"weights": str(junk)}))
    pickled = tmp_path / "pickled.pth"
    torch.save({"net": object.__new__(torch.nn.ReLU)}, str(pickled))  # arbitrary object: refused weights-only
    with pytest.raises(ValueError, match="pickled.pth"):
        PumpConvMixer(cpu_sized({"weights": str(pickled)}))
