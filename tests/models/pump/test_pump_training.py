"""PUMP training step: a short CPU run lowers the loss; S / U samples reach the right loss.

The nets here are a small ConvMixer variant (width 64, depth 2, 32-D output; same code as the
paper model, other conf values) on 64 px crops, so the whole file stays well under 30 s on a
busy 2-core machine. ``benchmarks/pump_training.py`` trains the CPU-sized net for real.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from matchmill.models.pump.ap_loss import ap_loss
from matchmill.models.pump.convmixer import PumpConvMixer
from matchmill.models.pump.net_io import normalize_images
from matchmill.models.pump.synthetic import CPU_SYNTH_CONF, make_synthetic_pair, make_unsupervised_pair
from matchmill.models.pump.training import TRAIN_CONF, collate_pairs, make_optimizer, training_step

from tests.models.pump.test_pump_synthetic import _texture

SMALL_NET = {"width": 64, "depth": 2, "out_dim": 32}
PAIR_CONF = {**CPU_SYNTH_CONF, "crop_size": 64, "window_size": 96, "short_side_range": (120.0, 360.0)}
STEP_CONF = {"lr": 1e-3, "ap": {"border": 8, "num_queries": 64}}
STEPS = 24
WINDOW = 6  # two cycles of the 3 batches


@pytest.fixture(scope="module")
def s_pairs():
    return [make_synthetic_pair(_texture(i), np.random.default_rng(i), PAIR_CONF) for i in range(6)]


@pytest.fixture(scope="module")
def u_pair():
    return make_unsupervised_pair(_texture(10), _texture(11, 150, 200), np.random.default_rng(0), PAIR_CONF)


def _run(pairs, steps: int) -> list[float]:
    torch.manual_seed(0)
    net = PumpConvMixer(SMALL_NET)
    opt = make_optimizer(net, STEP_CONF)
    g = torch.Generator().manual_seed(0)
    losses = []
    for s in range(steps):
        batch = collate_pairs([pairs[(2 * s) % len(pairs)], pairs[(2 * s + 1) % len(pairs)]])
        out = training_step(net, batch, opt, STEP_CONF, g)
        assert out["num_s"] == 2 and out["num_u"] == 0 and out["pump_loss"] == 0.0
        losses.append(out["loss"])
    return losses


def test_short_training_run_lowers_the_ap_loss(s_pairs) -> None:
    losses = _run(s_pairs, STEPS)
    first, last = float(np.mean(losses[:WINDOW])), float(np.mean(losses[-WINDOW:]))
    assert last < first - 0.05, (first, last, losses)
    assert np.allclose(_run(s_pairs, 3), losses[:3], atol=1e-6)  # same seeds, same run


def test_defaults_are_the_papers() -> None:
    assert TRAIN_CONF["lr"] == 1e-4 and TRAIN_CONF["weight_decay"] == 5e-4 and TRAIN_CONF["pump_weight"] == 0.3
    opt = make_optimizer(PumpConvMixer(SMALL_NET))
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["weight_decay"] == 5e-4


def test_ap_on_s_samples_and_pump_on_u_samples(s_pairs, u_pair) -> None:
    from matchmill.models.pump.unsupervised_loss import unsupervised_loss

    torch.manual_seed(0)
    net = PumpConvMixer(SMALL_NET)
    batch = collate_pairs([s_pairs[0], u_pair, s_pairs[1]])
    # expected values from the same train-mode forward, computed on an untouched copy
    ref = copy.deepcopy(net).train()
    desc = ref(normalize_images(torch.cat([batch["image1"], batch["image2"]])))
    d1, d2 = desc[:3], desc[3:]
    s = torch.tensor([True, False, True])
    want_ap = ap_loss(d1[s], d2[s], batch["H"][s], STEP_CONF["ap"], torch.Generator().manual_seed(7)).item()
    want_pump = unsupervised_loss(d1[~s], d2[~s]).item()

    before = [p.detach().clone() for p in net.parameters()]
    out = training_step(net, batch, make_optimizer(net, STEP_CONF), STEP_CONF, torch.Generator().manual_seed(7))
    assert out["num_s"] == 2 and out["num_u"] == 1
    assert out["ap_loss"] == pytest.approx(want_ap, abs=1e-5)
    assert out["pump_loss"] == pytest.approx(want_pump, abs=1e-5) and -1.0 <= out["pump_loss"] < 0.0
    assert out["loss"] == pytest.approx(want_ap + 0.3 * want_pump, abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))

    # a U-only batch: the AP part is 0, the PUMP loss alone moves the weights
    u_only = collate_pairs([u_pair])
    before = [p.detach().clone() for p in net.parameters()]
    out = training_step(net, u_only, make_optimizer(net, STEP_CONF), STEP_CONF)
    assert out["num_s"] == 0 and out["ap_loss"] == 0.0 and out["pump_loss"] < 0.0
    assert out["loss"] == pytest.approx(0.3 * out["pump_loss"], abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_bad_batches_are_named(s_pairs) -> None:
    net = PumpConvMixer(SMALL_NET)
    opt = make_optimizer(net)
    batch = collate_pairs(s_pairs[:2])
    batch["H"][1, 0, 0] = float("nan")  # neither finite nor all NaN
    with pytest.raises(ValueError, match=r"batch H rows \[1\] are neither finite"):
        training_step(net, batch, opt)
    with pytest.raises(ValueError, match="lacks"):
        training_step(net, {"image1": batch["image1"]}, opt)
    small = make_synthetic_pair(_texture(0), np.random.default_rng(0), {**PAIR_CONF, "crop_size": 32})
    with pytest.raises(ValueError, match="same shape"):
        collate_pairs([s_pairs[0], small])
    with pytest.raises(ValueError, match="unknown PUMP training config keys"):
        training_step(net, collate_pairs(s_pairs[:1]), opt, {"learning_rate": 1e-3})
