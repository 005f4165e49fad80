"""PUMP uniqueness loss (supplementary §A) and the full unsupervised loss (both directions, gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from matchmill.models.pump.unsupervised_loss import DEFAULT_CONF, pyramid_top, uniqueness_loss, unsupervised_loss

EPS = 0.03


def one_hot_top(b: int = 2, p: int = 5, h: int = 4, w: int = 6, value: float = 1.0) -> torch.Tensor:
    top = torch.zeros(b, p, h * w, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    top[torch.arange(b)[:, None], torch.arange(p)[None, :], torch.randint(0, h * w, (b, p), generator=g)] = value
    return top.view(b, p, h, w)


def test_one_hot_gives_minus_one_over_one_plus_eps_squared():
    """A one-hot row of value 1: T~ = 1 / (1 + eps) -> loss = -(1 / 1.03)^2 = -0.94259..."""
    loss = uniqueness_loss(one_hot_top(), eps=EPS)
    assert loss.item() == pytest.approx(-((1 / (1 + EPS)) ** 2), rel=1e-12)
    assert loss.item() == pytest.approx(-0.9425959091337516, rel=1e-12)


def test_eps_to_zero_limit_is_minus_one():
    top = one_hot_top(value=0.7)  # any positive value: the normalisation removes it when eps = 0
    assert uniqueness_loss(top, eps=0.0).item() == pytest.approx(-1.0, abs=1e-12)
    losses = [uniqueness_loss(top, eps=e).item() for e in (1e-2, 1e-4, 1e-6)]
    assert losses[0] > losses[1] > losses[2] > -1.0
    assert losses[2] == pytest.approx(-1.0, abs=1e-5)


def test_spread_mass_is_larger_exact_value():
    """k equal cells of value 1: loss = -k (1 / (k + eps))^2, above the one-hot value."""
    h, w = 4, 6
    for k in (2, 3, 8):
        top = torch.zeros(1, 1, h * w, dtype=torch.float64)
        top[0, 0, :k] = 1.0
        loss = uniqueness_loss(top.view(1, 1, h, w), eps=EPS).item()
        assert loss == pytest.approx(-k * (1 / (k + EPS)) ** 2, rel=1e-12)
        assert loss > uniqueness_loss(one_hot_top(1, 1, h, w), eps=EPS).item()


def test_monotone_as_mass_concentrates():
    """Rows T = (1 - a) uniform + a one-hot (after rectification, sum 1): loss = -(1/n + a^2 (1 - 1/n)) / (1 + eps)^2."""
    n = 24
    losses = []
    for a in torch.linspace(0, 1, 11, dtype=torch.float64):
        rect = torch.full((n,), (1 - a.item()) / n, dtype=torch.float64)
        rect[5] += a
        top = rect.pow(1 / 1.5).view(1, 1, 4, 6)  # so that max(top, 0)^1.5 = rect
        loss = uniqueness_loss(top, eps=EPS).item()
        assert loss == pytest.approx(-(1 / n + a.item() ** 2 * (1 - 1 / n)) / (1 + EPS) ** 2, rel=1e-10)
        losses.append(loss)
    assert all(x > y for x, y in zip(losses, losses[1:]))


def test_negative_correlations_are_rectified_away():
    top = one_hot_top()
    noisy = top - 0.5 * (top == 0).double()  # negative everywhere but the peaks
    assert uniqueness_loss(noisy, eps=EPS).item() == pytest.approx(uniqueness_loss(top, eps=EPS).item(), rel=1e-12)


def test_uniqueness_loss_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, P, h, w\)"):
        uniqueness_loss(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        uniqueness_loss(torch.zeros(1, 1, 2, 2), eps=-1.0)


# ----------------------------------------------------------------------------- full loss


def smooth_unit_maps(seed: int, b: int = 1, c: int = 16, h: int = 96, w: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(b, c, h, w, generator=g, dtype=torch.float64), 7, 1, 3)
    return F.normalize(x, dim=1)


def test_default_conf_matches_the_spec():
    assert DEFAULT_CONF["eps"] == 0.03 and DEFAULT_CONF["atleast"] == 5 and DEFAULT_CONF["sub"] == 2
    assert DEFAULT_CONF["border"] == 16 and DEFAULT_CONF["rectify_p"] == 1.5 and DEFAULT_CONF["border_exponent"] == 0.9


def test_unsupervised_loss_averages_both_directions_and_prefers_matching_pairs():
    a, b = smooth_unit_maps(1), smooth_unit_maps(2)
    conf = dict(DEFAULT_CONF)
    ab = uniqueness_loss(pyramid_top(a, b, conf), EPS)
    ba = uniqueness_loss(pyramid_top(b, a, conf), EPS)
    assert unsupervised_loss(a, b).item() == pytest.approx(0.5 * (ab + ba).item(), rel=1e-12)
    assert unsupervised_loss(a, b, {"both_directions": False}).item() == pytest.approx(ab.item(), rel=1e-12)
    same = unsupervised_loss(a, a).item()
    assert -1.0 <= same < unsupervised_loss(a, b).item() <= 0.0  # an identical pair is matched more uniquely


def test_unsupervised_loss_gradient_matches_finite_differences():
    conf = {"border": 0, "sub": 1, "atleast": 2}
    a = smooth_unit_maps(3, c=4, h=24, w=28).requires_grad_(True)
    b = smooth_unit_maps(4, c=4, h=24, w=28).requires_grad_(True)
    loss = unsupervised_loss(a, b, conf)
    ga, gb = torch.autograd.grad(loss, (a, b))
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0
    g = torch.Generator().manual_seed(5)
    step = 1e-6
    for _ in range(3):
        va, vb = torch.randn(a.shape, generator=g, dtype=a.dtype), torch.randn(b.shape, generator=g, dtype=b.dtype)
        with torch.no_grad():
            plus = unsupervised_loss(a + step * va, b + step * vb, conf)
            minus = unsupervised_loss(a - step * va, b - step * vb, conf)
        numeric = (plus - minus).item() / (2 * step)
        analytic = ((ga * va).sum() + (gb * vb).sum()).item()
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_unsupervised_loss_rejects_bad_input():
    a = smooth_unit_maps(1, c=4, h=64, w=64)
    with pytest.raises(ValueError, match="desc_a"):
        unsupervised_loss(a[0], a)
    with pytest.raises(ValueError, match="batch or channels"):
        unsupervised_loss(a, a[:, :3])
    with pytest.raises(ValueError, match="unknown"):
        unsupervised_loss(a, a, {"epsilon": 0.1})
    with pytest.raises(ValueError, match="too small"):
        unsupervised_loss(a[..., :30, :30], a[..., :30, :30])
