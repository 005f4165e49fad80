"""matchmill.models.weights: one weights-only loader for every net (round trips, refusals, key errors)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from matchmill.models.weights import load_weights, read_state_dict


def _pump() -> nn.Module:
    from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized

    return PumpConvMixer(cpu_sized())


def _ncnet() -> nn.Module:
    from matchmill.models.ncnet import NCNet

    return NCNet()


def _patch2pix() -> nn.Module:
    from matchmill.models.patch2pix import Patch2Pix, cpu_sized

    return Patch2Pix(cpu_sized())


def _resnet() -> nn.Module:
    from matchmill.models.resnet import ResNet34Pyramid

    return ResNet34Pyramid({"layers": [1, 1, 1]})  # the ResNet34 layout, one block per layer (CPU-sized)


NETS: dict[str, Callable[[], nn.Module]] = {"pump": _pump, "ncnet": _ncnet, "patch2pix": _patch2pix, "resnet34": _resnet}


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = make().eval()
    with torch.no_grad():  # BN running stats are all 0 / 1 on a fresh net: make every buffer differ too
        for buf in net.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return net


def _save(net: nn.Module, path: Path) -> Path:
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_round_trip(tmp_path, name: str, suffix: str) -> None:
    src, dst = _seeded(NETS[name], 0), _seeded(NETS[name], 1)
    key = next(k for k, v in src.state_dict().items() if v.is_floating_point())
    assert not torch.equal(src.state_dict()[key], dst.state_dict()[key])
    load_weights(dst, _save(src, tmp_path / f"{name}{suffix}"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_checkpoint_prefix_url_and_dtype(tmp_path) -> None:
    src = _seeded(_ncnet, 0)
    torch.save({"model": {f"ncnet.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    half = _seeded(_ncnet, 1).half()
    load_weights(half, f"file://{tmp_path / 'ckpt.pth'}", prefix="ncnet.")
    for k, v in src.state_dict().items():
        assert half.state_dict()[k].dtype == torch.float16, k  # the net's dtype is kept
        assert torch.equal(half.state_dict()[k], v.half()), k
    with pytest.raises(ValueError, match="no keys under prefix 'backbone.'"):
        load_weights(_ncnet(), tmp_path / "ckpt.pth", prefix="backbone.")
    renamed = {"stem." + k: v for k, v in src.state_dict().items()}
    dst = _seeded(_ncnet, 2)
    load_weights(dst, renamed, key_map=lambda k: k.removeprefix("stem."))
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_batchnorm_counters_stay_optional(tmp_path) -> None:
    src = _seeded(_resnet, 0)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = _seeded(_resnet, 1)
    load_weights(dst, state)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


class _Exploit:
    """Unpickling this runs ``touch <marker>`` (what a malicious weights file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_pickled_code_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with open(tmp_path / "evil_raw.pt", "wb") as f:
        pickle.dump({"w": _Exploit(marker)}, f, protocol=2)
    with open(tmp_path / "evil_v4.pt", "wb") as f:
        pickle.dump({"w": _Exploit(marker)}, f, protocol=4)
    for name in ("evil.pth", "evil_raw.pt", "evil_v4.pt"):
        with pytest.raises(ValueError) as err:
            read_state_dict(tmp_path / name)
        msg = str(err.value)
        assert str(tmp_path / name) in msg and "pickled objects/code" in msg and "only weights are loaded" in msg, msg
        with pytest.raises(ValueError, match="pickled objects/code"):
            load_weights(_ncnet(), tmp_path / name)
    assert "posix.system" in _message(tmp_path / "evil.pth")  # names what the file would have run
    assert not marker.exists()  # the payload never ran
    torch.load(tmp_path / "evil.pth", weights_only=False)  # control: an unsafe load does run it
    assert marker.exists()


def _message(path: Path) -> str:
    with pytest.raises(ValueError) as err:
        read_state_dict(path)
    return str(err.value)


def test_a_pickled_module_is_refused(tmp_path) -> None:
    torch.save(_ncnet(), tmp_path / "whole_net.pth")
    msg = _message(tmp_path / "whole_net.pth")
    assert "whole_net.pth" in msg and "pickled objects/code" in msg and "NCNet" in msg, msg


def test_missing_file_and_non_weights() -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_state_dict("/nonexistent/nope.safetensors")
    with pytest.raises(FileNotFoundError, match="memory://weights-test/none.pth"):
        read_state_dict("memory://weights-test/none.pth")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        read_state_dict({"w": [1, 2]})


def test_misshaped_and_missing_keys_are_named_and_nothing_is_copied(tmp_path) -> None:
    src = _seeded(_ncnet, 0)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    first = sorted(state)[0]
    state[first] = torch.zeros(2, 2)
    path = _save_dict(state, tmp_path / "bad_shape.safetensors")
    dst = _seeded(_ncnet, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_weights(dst, path)
    msg = str(err.value)
    assert f"{first}: expected {tuple(src.state_dict()[first].shape)}, got (2, 2)" in msg and str(path) in msg, msg
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in before.items())  # checked before copying

    del state[first]
    last = sorted(state)[-1]
    del state[last]
    with pytest.raises(ValueError) as err:
        load_weights(dst, _save_dict(state, tmp_path / "missing.pth"))
    msg = str(err.value)
    assert f"missing keys (2): {first}, {last}" in msg and "missing.pth" in msg, msg
    load_weights(dst, state, strict=False)  # non-strict: the matching keys load
    assert torch.equal(dst.state_dict()[sorted(state)[0]], src.state_dict()[sorted(state)[0]])


def _save_dict(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_a_stage_given_weights_of_the_wrong_net_names_the_keys(tmp_path) -> None:
    from matchmill.methods.ncnet import NCNetProposer
    from matchmill.methods.patch2pix import Patch2PixRefiner

    pump_file = _save(_seeded(_pump, 0), tmp_path / "pump.safetensors")
    with pytest.raises(ValueError) as err:
        NCNetProposer({"weights": str(pump_file)})
    msg = str(err.value)
    assert "pump.safetensors" in msg and "unexpected keys" in msg and "patch_embed.0.weight" in msg, msg
    assert "missing keys" in msg and all(k in msg for k in _ncnet().state_dict()), msg

    ncnet = _seeded(_ncnet, 0)
    partial = {k: v for k, v in list(ncnet.state_dict().items())[1:]}  # used to load silently (non-strict)
    dropped = next(iter(ncnet.state_dict()))
    with pytest.raises(ValueError, match=f"missing keys \\(1\\): {dropped}"):
        NCNetProposer({"weights": str(_save_dict(partial, tmp_path / "partial.pth"))})
    with pytest.raises(ValueError, match="missing keys"):
        Patch2PixRefiner({"weights": str(_save(ncnet, tmp_path / "ncnet.pth"))})
    loaded = NCNetProposer({"weights": str(_save(ncnet, tmp_path / "ncnet.safetensors"))})
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in ncnet.state_dict().items())
