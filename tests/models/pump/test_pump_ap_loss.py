"""Pixel AP loss: exact on perfectly separated scores, worse on random descriptors, masking, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from matchmill.models.pump.ap_loss import ap_loss, pixel_ap, ring_offsets, sample_queries, soft_ap

BLOCK = 5  # side of the constant-descriptor blocks of the "perfect" maps


def _block_code_maps(h: int, w: int) -> torch.Tensor:
    """(1, C, h, w): one-hot descriptor per 5x5 block (C = number of blocks), so blocks are orthogonal."""
    by, bx = h // BLOCK, w // BLOCK
    ids = torch.arange(by * bx).view(by, bx).repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return F.one_hot(ids, by * bx).permute(2, 0, 1).float().unsqueeze(0)


def _block_centres(h: int, w: int, margin: int = 2) -> torch.Tensor:
    """(Q, 2) (x, y) centres of the blocks at least ``margin`` blocks from the border."""
    ys = torch.arange(margin, h // BLOCK - margin) * BLOCK + BLOCK // 2
    xs = torch.arange(margin, w // BLOCK - margin) * BLOCK + BLOCK // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1)


def _random_unit(shape, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=1)


def _translation(tx: float, ty: float, batch: int = 1) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]).repeat(batch, 1, 1)


def test_candidate_sets_have_the_spec_sizes() -> None:
    assert len(ring_offsets(0, 2)) == 13
    assert len(ring_offsets(4, 7)) == 104
    q = sample_queries(256, 256, None, torch.Generator().manual_seed(0))
    assert q.shape == (784, 2) and int(q.min()) >= 16 and int(q.max()) < 240


def test_soft_ap_bins() -> None:
    is_pos = torch.tensor([True, True, False, False, False])
    valid = torch.ones(5, dtype=torch.bool)
    assert soft_ap(torch.tensor([1.0, 1.2, 0.0, -0.3, -1.0]), is_pos, valid).item() == pytest.approx(1.0)
    # all positives below all negatives: precision 2/5 at the positives' bin
    assert soft_ap(torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]), is_pos, valid).item() == pytest.approx(0.4, abs=1e-6)
    # positives and negatives in the same bin: precision = 2/5 there
    assert soft_ap(torch.full((5,), 0.5), is_pos, valid).item() == pytest.approx(0.4, abs=1e-6)
    # an invalid candidate is ignored entirely
    masked = torch.tensor([True, True, False, True, True])
    assert soft_ap(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]), is_pos, masked).item() == pytest.approx(1.0)
    # partial ranking lies strictly between
    ap = soft_ap(torch.tensor([0.9, 0.5, 0.7, 0.1, 0.0]), is_pos, valid).item()
    assert 0.6 < ap < 1.0


def test_perfectly_separated_descriptors_give_zero_loss() -> None:
    """Positives (radius 2 around the GT block centre) share the query's one-hot code: similarity 1;
    the negative ring and distractors lie in other blocks: similarity 0; same-block distractors are zeroed."""
    h, w = 60, 70
    desc = _block_code_maps(h, w)
    q = _block_centres(h, w)
    H = _translation(BLOCK * 2, -BLOCK)  # GT = another block centre
    desc1 = torch.roll(desc, shifts=(BLOCK, -BLOCK * 2), dims=(2, 3))  # desc1(x, y) = desc(x + 10, y - 5) = desc(H x)
    loss = ap_loss(desc1, desc, H, {"num_distractors": 500}, torch.Generator().manual_seed(0), queries=q)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # the same maps with a GT off by 3 px: the "positives" are now wrong, the loss is large
    wrong = ap_loss(desc1, desc, _translation(BLOCK * 2 + 3, -BLOCK), None, torch.Generator().manual_seed(0), queries=q)
    assert wrong.item() > 0.5


def test_random_descriptors_score_worse_than_smooth_ones() -> None:
    H = torch.eye(3).repeat(2, 1, 1)
    rand = _random_unit((2, 32, 64, 64), 0)
    smooth = F.normalize(F.avg_pool2d(torch.randn(2, 32, 72, 72, generator=torch.Generator().manual_seed(1)), 9, 1), dim=1)
    l_rand = ap_loss(rand, rand, H, None, torch.Generator().manual_seed(0)).item()
    l_smooth = ap_loss(smooth, smooth, H, None, torch.Generator().manual_seed(0)).item()
    assert l_rand > 0.6  # only the GT pixel itself is similar
    assert l_smooth < 0.5 * l_rand
    unrelated = ap_loss(rand, _random_unit((2, 32, 64, 64), 9), H, None, torch.Generator().manual_seed(0)).item()
    assert unrelated > l_rand


def test_gradient_reaches_both_descriptor_maps() -> None:
    d1 = _random_unit((2, 16, 48, 48), 0).requires_grad_()
    d2 = _random_unit((2, 16, 48, 48), 1).requires_grad_()
    loss = ap_loss(d1, d2, _translation(2.0, -1.0, 2), None, torch.Generator().manual_seed(0))
    loss.backward()
    for g in (d1.grad, d2.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # a plain gradient step on the descriptors lowers the loss
    with torch.no_grad():
        n1 = F.normalize(d1 - 50.0 * d1.grad, dim=1)
        n2 = F.normalize(d2 - 50.0 * d2.grad, dim=1)
    assert ap_loss(n1, n2, _translation(2.0, -1.0, 2), None, torch.Generator().manual_seed(0)) < loss


def test_queries_mapped_outside_img2_are_ignored() -> None:
    h = w = 48
    d1, d2 = _random_unit((1, 16, h, w), 0), _random_unit((1, 16, h, w), 1)
    q = torch.tensor([[10, 20], [20, 20], [30, 20], [40, 20], [44, 30]])
    H = _translation(12.0, 0.0)  # x + 12 > 47 for the last two queries
    ap, valid = pixel_ap(d1, d2, H, q, torch.tensor([[5, 5], [40, 40]]))
    assert valid.tolist() == [[True, True, True, False, False]]
    g = torch.Generator
    full = ap_loss(d1, d2, H, {"num_distractors": 64}, g().manual_seed(0), queries=q)
    inside = ap_loss(d1, d2, H, {"num_distractors": 64}, g().manual_seed(0), queries=q[:3])
    assert full.item() == pytest.approx(inside.item(), abs=1e-6)
    # garbage descriptors at the ignored queries change nothing
    d1b = d1.clone()
    d1b[..., 20, 40] = -d1b[..., 20, 40]
    d1b[..., 30, 44] = 0.0
    assert ap_loss(d1b, d2, H, {"num_distractors": 64}, g().manual_seed(0), queries=q).item() == pytest.approx(full.item(), abs=1e-6)
    # every query out (or a non-finite H): loss 0, still differentiable
    d1r = d1.clone().requires_grad_()
    none = ap_loss(d1r, d2, _translation(100.0, 0.0), None, g().manual_seed(0))
    none.backward()
    assert none.item() == 0.0 and d1r.grad is not None
    nan_h = torch.full((1, 3, 3), float("nan"))
    assert ap_loss(d1, d2, nan_h, None, g().manual_seed(0)).item() == 0.0


def test_bad_input_is_named() -> None:
    d = _random_unit((1, 8, 40, 40), 0)
    with pytest.raises(ValueError, match="same"):
        ap_loss(d, _random_unit((1, 8, 40, 44), 0), torch.eye(3)[None])
    with pytest.raises(ValueError, match=r"H must be a \(B, 3, 3\)"):
        ap_loss(d, d, torch.eye(3))
    with pytest.raises(ValueError, match="border"):
        ap_loss(d, d, torch.eye(3)[None], {"border": 20})
    with pytest.raises(ValueError, match="unknown AP loss config keys"):
        ap_loss(d, d, torch.eye(3)[None], {"queries": 5})
