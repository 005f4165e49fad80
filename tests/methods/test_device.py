"""matchmill.models.device and the learned stage methods' devices: CPU here, fail fast on a missing GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from matchmill.models.device import AMP_CHOICES, DeviceError, autocast, choose_device
from matchmill.config import ConfigError
from matchmill.pipeline.config import load_config

from tests.helpers.paths import DEMO_CONFIG

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")

#: (stage, registered method) of every learned method in matchmill/methods/registry.py
LEARNED = [("extract", "resnet34"), ("extract", "pump"), ("propose", "ncnet"), ("propose", "pump-pyramid"),
           ("refine", "patch2pix")]


@no_cuda
def test_choose_device_is_the_cpu_here() -> None:
    assert choose_device() == torch.device("cpu")
    assert choose_device(want_gpu=False) == choose_device(want_gpu=0.0) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("want", [True, 1, 0.5])
def test_asking_for_a_gpu_without_one_is_one_line_naming_what(want) -> None:
    with pytest.raises(DeviceError) as err:
        choose_device(want_gpu=want, what=f"extract.num_gpus={want}")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"extract.num_gpus={want} but no CUDA device is visible"), msg
    assert "set extract.num_gpus=0 to run on CPU" in msg
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        choose_device(want_gpu=True)  # without `what`


def test_choose_device_does_not_import_ray() -> None:
    code = ("import sys, matchmill.models.device as d; d.choose_device(); d.ray_gpu_ids(); "
            "sys.exit(3 if 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_autocast_is_a_no_op_on_cpu_and_checks_the_value() -> None:
    x = torch.randn(4, 4)
    for amp in AMP_CHOICES:
        with autocast(torch.device("cpu"), amp):
            assert (x @ x).dtype == torch.float32
            assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="'fp32'"):
        autocast(torch.device("cpu"), "fp32")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_on_cuda_uses_the_asked_dtype() -> None:
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        ctx = autocast(torch.device("cuda", 0), amp)
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == dtype and ctx.device == "cuda"
    assert not isinstance(autocast(torch.device("cuda", 0), "none"), torch.autocast)


def _features(extractor, image: np.ndarray) -> dict[str, np.ndarray]:
    feats = extractor(image)
    feats["scale"] = feats.pop("net_scale")  # the extract stage's frame: the image given is the original
    return feats


@no_cuda
def test_learned_methods_run_on_the_chosen_device_and_return_numpy() -> None:
    from matchmill.methods.ncnet import NCNetProposer
    from matchmill.methods.patch2pix import Patch2PixRefiner, ResNet34Extractor
    from matchmill.methods.pump import PumpExtractor, PumpPyramidProposer

    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    resnet, pump = ResNet34Extractor({}), PumpExtractor({"dense_min_scale": 1.0})
    ncnet, p2p = NCNetProposer({"num_gpus": 0}), Patch2PixRefiner({"confidence": 0.0})
    pyramid = PumpPyramidProposer({"base_scale": 1.0, "post_filter": False})
    for method in (resnet, pump, ncnet, p2p):
        assert method.device == torch.device("cpu")
        assert {p.device for p in method.net.parameters()} == {torch.device("cpu")}
    assert pyramid.device == torch.device("cpu")

    f_res, f_pump = _features(resnet, image), _features(pump, image)
    assert all(isinstance(v, np.ndarray) for v in (*f_res.values(), *f_pump.values()))
    assert f_res["f4"].dtype == np.float16 and f_res["f4"].shape == (256, 8, 12)
    assert f_pump["dense_0"].dtype == np.float16 and f_pump["dense_0"].shape == (128, 64, 96)
    matches, scores = ncnet(f_res, f_res)
    assert isinstance(matches, np.ndarray) and matches.shape == (len(scores), 4) and len(scores) > 0
    fine, conf = p2p(matches, scores, f_res, f_res)
    assert isinstance(fine, np.ndarray) and fine.shape == (len(conf), 4) and conf.dtype == np.float32
    dense, dense_scores = pyramid(f_pump, f_pump)
    assert isinstance(dense, np.ndarray) and dense.shape == (len(dense_scores), 4) and len(dense) > 0


@no_cuda
@pytest.mark.parametrize("stage,method", LEARNED)
def test_a_method_given_a_gpu_without_one_fails_in_init(stage: str, method: str) -> None:
    from matchmill.methods.registry import load_method

    with pytest.raises(DeviceError) as err:
        load_method(stage, method)({"num_gpus": 1})
    assert str(err.value).startswith(f"{stage}.num_gpus=1 but no CUDA device is visible"), str(err.value)


@no_cuda
def test_the_stage_actor_passes_num_gpus_to_its_method(tmp_path) -> None:
    from matchmill.stages.extract import ExtractActor
    from matchmill.stages.refine import RefineActor

    conf = load_config(DEMO_CONFIG, ["extract.method=pump", "extract.num_gpus=0.5", "refine.method=patch2pix",
                                     "refine.num_gpus=1"])
    with pytest.raises(DeviceError, match=r"^extract\.num_gpus=0\.5 but no CUDA device"):
        ExtractActor(conf, f"file://{tmp_path}", "hash")
    with pytest.raises(DeviceError, match=r"^refine\.num_gpus=1 but no CUDA device"):
        RefineActor(conf, f"file://{tmp_path}")
    cpu = load_config(DEMO_CONFIG, ["refine.method=patch2pix"])
    assert RefineActor(cpu, f"file://{tmp_path}").refiner.device == torch.device("cpu")


def test_amp_is_checked_at_config_time() -> None:
    with pytest.raises(ConfigError, match="extract.amp: 'fp32'"):
        load_config(DEMO_CONFIG, ["extract.method=pump", "extract.amp=fp32"])
    with pytest.raises(ConfigError, match="refine.amp"):
        load_config(DEMO_CONFIG, ["refine.method=patch2pix", "refine.amp=half"])
    conf = load_config(DEMO_CONFIG, ["extract.method=resnet34", "extract.amp=bf16", "propose.method=ncnet"])
    assert conf["extract"]["amp"] == "bf16" and conf["propose"]["amp"] == "none"
