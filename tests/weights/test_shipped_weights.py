"""The weights that ship (matchmill/weights/): present, small, loadable strictly, named by ``shipped:NAME``; a
learned method without weights says so in one line."""

from __future__ import annotations

import pytest
import torch

from matchmill.pipeline.config import load_config
from matchmill.methods.registry import random_init_methods, random_init_warning
from matchmill.weights import SHIPPED, is_shipped, shipped_path

from tests.helpers.paths import DEMO_CONFIG

LEARNED_CONFIG = DEMO_CONFIG.parent / "demo-learned.yaml"

MAX_TOTAL_BYTES = 30 * 2**20  # the budget for everything under matchmill/weights/


def _module_for(name: str) -> torch.nn.Module:
    """A freshly built module of the layout shipped file ``name`` holds."""
    from matchmill.models.ncnet import NCNet
    from matchmill.models.patch2pix import CPU_CONF, Patch2Pix
    from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized

    if name.startswith("pump-convmixer"):
        return PumpConvMixer(cpu_sized())
    if name.startswith("ncnet-"):
        return NCNet()
    if name == "patch2pix-pump-cpu":
        return Patch2Pix({**CPU_CONF, "feat_channels": [3, 128, 128, 128]})
    return Patch2Pix(CPU_CONF)


def test_every_shipped_file_is_present_and_all_fit_the_budget():
    sizes = {name: shipped_path(name).stat().st_size for name in SHIPPED}
    assert sum(sizes.values()) <= MAX_TOTAL_BYTES, sizes


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_strictly_and_are_trained(name):
    from matchmill.models.weights import load_weights, read_state_dict

    module = _module_for(name)
    fresh = {k: v.clone() for k, v in module.state_dict().items()}
    load_weights(module, f"shipped:{name}", strict=True)
    state = read_state_dict(f"shipped:{name}")
    assert all(v.dtype in (torch.float16, torch.float32, torch.int64) for v in state.values())
    changed = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(v, fresh[k])]
    assert len(changed) >= len([k for k in fresh if fresh[k].is_floating_point()]) // 2  # not a saved random init
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_unknown_shipped_name_lists_the_known_ones():
    assert is_shipped("shipped:pump-convmixer-cpu") and not is_shipped("/w/pump.safetensors")
    with pytest.raises(FileNotFoundError, match="known: .*pump-convmixer-cpu"):
        shipped_path("shipped:nope")


def test_learned_presets_and_demo_learned_use_shipped_weights(demo_root):
    from matchmill.methods.presets import PRESETS

    for preset, overrides in PRESETS.items():
        learned = [k for k in overrides if k.endswith(".method") and overrides[k] not in ("sift", "mnn", "identity")]
        for key in learned:
            stage = key.split(".")[0]
            if overrides[key] == "pump-pyramid":  # no net in that proposer
                continue
            if overrides[key] == "resnet34":  # the seed-0 init the shipped NC / regressors were trained on
                assert f"{stage}.weights" not in overrides
                continue
            assert is_shipped(overrides[f"{stage}.weights"]), (preset, stage)
    conf = load_config(LEARNED_CONFIG, [f"data.root={demo_root}"])
    assert random_init_methods(conf) == [] and random_init_warning(conf) is None


def test_a_learned_method_without_weights_gives_one_warning_line(demo_root):
    conf = load_config(LEARNED_CONFIG, [f"data.root={demo_root}", "extract.weights=null",
                                                     "refine.weights=null"])
    assert random_init_methods(conf) == ["extract.method=pump", "refine.method=patch2pix"]
    line = random_init_warning(conf)
    assert "\n" not in line and "extract.method=pump" in line and "random initialisation" in line
    assert random_init_warning(conf, ("propose",)) is None  # only the stages that will run
    sift = load_config(DEMO_CONFIG, [f"data.root={demo_root}"])
    assert random_init_warning(sift) is None


def test_pack_stores_fp16_that_loads_back_within_fp16_precision(tmp_path):
    from safetensors.torch import save_file

    from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized
    from matchmill.models.weights import load_weights, read_state_dict
    from matchmill.evaluation.release.pack import pack

    torch.manual_seed(0)
    net = PumpConvMixer(cpu_sized())
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src))
    out = pack(str(src), "pump-convmixer-cpu", out_dir=tmp_path / "out" if (tmp_path / "out").mkdir() is None else None)
    state = read_state_dict(str(out))
    assert all(v.dtype == torch.float16 for k, v in state.items() if net.state_dict()[k].is_floating_point())
    back = PumpConvMixer(cpu_sized())
    load_weights(back, str(out), strict=True)
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(back.state_dict()[k], v, rtol=1e-3, atol=1e-4), k
