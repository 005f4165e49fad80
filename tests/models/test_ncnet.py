"""NCNet proposal stage: Conv4d, 4D max-pool offsets, mutual filters, match extraction, end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matchmill.models.ncnet import (
    DEFAULT_CONF,
    Conv4d,
    NCNet,
    NeighConsensus,
    correlation_4d,
    l2_normalize,
    matches_from_volume,
    maxpool4d,
    mutual_matching,
    pooled_correlation,
    transpose_ab,
)
from matchmill.models.resnet import ResNet34Pyramid, normalize_image


def slow_conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Direct 4D cross-correlation, zero padding k//2: a plain loop over every kernel tap."""
    k = weight.shape[-1]
    p = k // 2
    b, cin, d1, d2, d3, d4 = x.shape
    xp = F.pad(x, (p, p) * 4)
    out = bias.view(1, -1, 1, 1, 1, 1).expand(b, -1, d1, d2, d3, d4).clone()
    for t1, t2, t3, t4 in itertools.product(range(k), repeat=4):
        window = xp[:, :, t1 : t1 + d1, t2 : t2 + d2, t3 : t3 + d3, t4 : t4 + d4]
        out += torch.einsum("oc,bcwxyz->bowxyz", weight[:, :, t1, t2, t3, t4], window)
    return out


def translation_consensus_(nc: NCNet) -> NCNet:
    """Set every Conv4d to sum the taps where the A and B displacements agree (zero bias).

    This is the structure NC learns (matches of a locally rigid motion support each other). A randomly
    initialised NC with its final ReLU mostly outputs zeros, so it cannot be used for the identity test.
    """
    for m in nc.modules():
        if isinstance(m, Conv4d):
            k = m.kernel_size
            w = torch.zeros(k, k, k, k)
            for i, j in itertools.product(range(k), repeat=2):
                w[i, j, i, j] = 1.0
            with torch.no_grad():
                m.weight.copy_(w.expand_as(m.weight) / (k * k * m.in_channels))
                m.bias.zero_()
    return nc


# ----------------------------------------------------------------------------- Conv4d


@pytest.mark.parametrize("k, dims", [(3, (4, 5, 3, 4)), (3, (1, 2, 3, 2)), (5, (3, 4, 2, 5))])
def test_conv4d_matches_direct_convolution(k: int, dims: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    conv = Conv4d(2, 3, k)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 2, *dims)
    with torch.no_grad():
        got = conv(x)
    assert got.shape == (2, 3, *dims)
    expected = slow_conv4d(x, conv.weight.detach(), conv.bias.detach())
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_conv4d_weight_layout_conversion_and_checks() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 2, 3, 3, 3)  # (k, Cout, Cin, k, k, k)
    converted = Conv4d.weight_from_sliced_layout(w)
    assert converted.shape == (4, 2, 3, 3, 3, 3)
    assert torch.equal(converted[1, 0, 2], w[2, 1, 0])
    with pytest.raises(ValueError, match="odd"):
        Conv4d(1, 1, 2)
    with pytest.raises(ValueError, match=r"\(B, 1, D1, D2, D3, D4\)"):
        Conv4d(1, 4, 3)(torch.zeros(1, 2, 2, 2, 2, 2))


def test_nc_parameter_count() -> None:
    # 1->16 (16*81 + 16) + 16->1 (16*81 + 1) = 2609, spec §1
    assert sum(p.numel() for p in NCNet().parameters()) == 2609


# ----------------------------------------------------------------------------- pooling and filters


def test_maxpool4d_offsets_reconstruct_argmax() -> None:
    torch.manual_seed(0)
    corr = torch.randn(2, 1, 4, 6, 2, 4)
    pooled, offsets = maxpool4d(corr, k=2)
    assert pooled.shape == (2, 1, 2, 3, 1, 2) and offsets.shape == (2, 4, 2, 3, 1, 2)
    assert offsets.dtype == torch.uint8 and int(offsets.max()) <= 1
    # reference max over each 2x2x2x2 block
    blocks = corr.view(2, 2, 2, 3, 2, 1, 2, 2, 2).amax(dim=(2, 4, 6, 8))
    assert torch.equal(pooled[:, 0], blocks)
    for b, y, x, v, u in itertools.product(*(range(n) for n in (2, 2, 3, 1, 2))):
        i, j, p, q = (int(o) for o in offsets[b, :, y, x, v, u])
        assert corr[b, 0, 2 * y + i, 2 * x + j, 2 * v + p, 2 * u + q] == pooled[b, 0, y, x, v, u]


def test_maxpool4d_ties_take_first_slot_and_checks_divisibility() -> None:
    pooled, offsets = maxpool4d(torch.ones(1, 1, 2, 2, 2, 2))
    assert pooled.item() == 1.0 and offsets.flatten().tolist() == [0, 0, 0, 0]
    corr = torch.zeros(1, 1, 2, 2, 2, 2)
    corr[0, 0, 1, 0, 1, 1] = 3.0
    _, offsets = maxpool4d(corr)
    assert offsets.flatten().tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="divisible by 2"):
        maxpool4d(torch.zeros(1, 1, 2, 3, 2, 2))


def test_chunked_pooled_correlation_is_identical() -> None:
    torch.manual_seed(0)
    fa, fb = l2_normalize(torch.randn(1, 8, 6, 4)), l2_normalize(torch.randn(1, 8, 4, 6))
    full = maxpool4d(correlation_4d(fa, fb), 2)
    for rows in (2, 3, 4):
        chunked = pooled_correlation(fa, fb, 2, chunk_rows=rows)
        assert torch.equal(chunked[0], full[0]) and torch.equal(chunked[1], full[1])


def test_l2_normalize_and_correlation() -> None:
    torch.manual_seed(0)
    f = torch.randn(1, 5, 2, 3)
    n = l2_normalize(f)
    assert torch.allclose(n, f / torch.sqrt((f**2).sum(1, keepdim=True) + 1e-6))
    g = torch.randn(1, 5, 4, 1)
    corr = correlation_4d(f, g)
    assert corr.shape == (1, 1, 2, 3, 4, 1)
    assert torch.allclose(corr[0, 0, 1, 2, 3, 0], (f[0, :, 1, 2] * g[0, :, 3, 0]).sum())


def test_mutual_matching_keeps_best_mutual_entry_and_damps_others() -> None:
    torch.manual_seed(0)
    corr = torch.rand(1, 1, 2, 2, 3, 1) * 0.5
    corr[0, 0, 1, 0, 2, 0] = 0.9  # the maximum of its row and of its column
    out = mutual_matching(corr)
    assert torch.allclose(out[0, 0, 1, 0, 2, 0], torch.tensor(0.9), rtol=1e-4)
    flat_in, flat_out = corr.view(4, 3), out.view(4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 2] = False
    assert (flat_out[mask] < flat_in[mask]).all()
    a, b = 0, 1
    expected = flat_in[a, b] ** 3 / ((flat_in[:, b].max() + 1e-5) * (flat_in[a, :].max() + 1e-5))
    assert torch.allclose(flat_out[a, b], expected)


def test_symmetric_nc_commutes_with_transpose() -> None:
    torch.manual_seed(0)
    nc = NeighConsensus([3, 3], [16, 1], symmetric=True)
    for m in nc.modules():
        if isinstance(m, Conv4d):
            torch.nn.init.normal_(m.weight, std=0.2)
            torch.nn.init.constant_(m.bias, 0.05)
    x = torch.randn(1, 1, 2, 3, 4, 2)
    with torch.no_grad():
        y = nc(x)
        y_t = nc(transpose_ab(x))
    assert y.shape == x.shape and y_t.shape == (1, 1, 4, 2, 2, 3)
    assert y.abs().sum() > 0 and (y >= 0).all()
    assert torch.allclose(y_t, transpose_ab(y), atol=1e-5)


# ----------------------------------------------------------------------------- match extraction


# pooled 2x2 grids in A and B (cells row-major 0..3); rows = A cells, columns = B cells.
# best A per B column: b0->a3, b1->a0, b2->a3, b3->a2; best B per A row: a0->b1, a1->b1, a2->b3, a3->b0
# mutual pairs: (a0, b1), (a3, b0), (a2, b3); b2->a3 and a1->b1 are one-sided.
HAND_VOLUME = torch.tensor(
    [
        [0.5, 0.9, 0.1, 0.0],
        [0.1, 0.8, 0.0, 0.2],
        [0.0, 0.1, 0.3, 0.7],
        [0.6, 0.0, 0.4, 0.2],
    ]
)
HAND_MUTUAL = [(0, 1), (3, 0), (2, 3)]  # (a cell, b cell), in B-cell order below


def _hand_out() -> dict:
    corr = HAND_VOLUME.view(1, 1, 2, 2, 2, 2)
    offsets = torch.zeros(1, 4, 4, 4, dtype=torch.uint8)
    offsets[0, :, 0, 1] = torch.tensor([1, 0, 0, 1])
    offsets[0, :, 3, 0] = torch.tensor([0, 1, 1, 1])
    offsets[0, :, 2, 3] = torch.tensor([1, 1, 0, 0])
    return {"corr": corr, "offsets": offsets.view(1, 4, 2, 2, 2, 2)}


def _expected_pixels(a: int, b: int, offsets: torch.Tensor) -> list[float]:
    i, j, p, q = (int(o) for o in offsets.view(4, 4, 4)[:, a, b])
    ya, xa = divmod(a, 2)
    yb, xb = divmod(b, 2)
    fine = [xa * 2 + j, ya * 2 + i, xb * 2 + q, yb * 2 + p]  # 1/8 grid (x1, y1, x2, y2)
    return [8.0 * v + 4.0 for v in fine]


def test_mutual_check_on_hand_built_volume() -> None:
    out = _hand_out()
    matches, scores = NCNet().extract_matches(out)
    assert matches.dtype == torch.float32 and scores.dtype == torch.float32
    order = sorted(HAND_MUTUAL, key=lambda ab: ab[1])  # proposals come in B-cell order
    expected = torch.tensor([_expected_pixels(a, b, out["offsets"]) for a, b in order])
    assert torch.equal(matches, expected)
    # e.g. (a0, b1) with offsets (1, 0, 0, 1): A fine cell (y=1, x=0), B fine cell (y=0, x=3)
    assert matches[1].tolist() == [4.0, 12.0, 28.0, 4.0]
    softmax_over_a = torch.softmax(HAND_VOLUME, dim=0)
    assert torch.allclose(scores, torch.stack([softmax_over_a[a, b] for a, b in order]))


def test_non_mutual_union_and_threshold() -> None:
    out = _hand_out()
    ncnet = NCNet()
    matches, scores = ncnet.extract_matches(out, mutual=False)
    # 4 B->A candidates + the A->B candidates that are not mutual (a1->b1), each pair once
    assert len(matches) == 5 and len(torch.unique(matches, dim=0)) == 5
    _, mutual_scores = ncnet.extract_matches(out)
    cut = float(mutual_scores.median())
    _, kept = ncnet.extract_matches(out, threshold=cut)
    assert torch.equal(kept, mutual_scores[mutual_scores > cut])


def test_empty_results_have_fixed_shapes() -> None:
    out = _hand_out()
    matches, scores = NCNet({"nc_threshold": 1.0}).extract_matches(out)  # softmax scores never exceed 1
    assert tuple(matches.shape) == (0, 4) and tuple(scores.shape) == (0,)
    assert matches.dtype == torch.float32 and scores.dtype == torch.float32
    empty = torch.zeros(1, 1, 0, 2, 2, 2)
    m, s = matches_from_volume(empty, torch.zeros(1, 4, 0, 2, 2, 2, dtype=torch.uint8))
    assert tuple(m.shape) == (0, 4) and tuple(s.shape) == (0,)


def test_forward_checks_inputs() -> None:
    ncnet = NCNet()
    with pytest.raises(ValueError, match="divisible by ksize=2"):
        ncnet(torch.zeros(1, 8, 4, 5), torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="share"):
        ncnet(torch.zeros(1, 8, 4, 4), torch.zeros(1, 6, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        ncnet(torch.zeros(8, 4, 4), torch.zeros(8, 4, 4))
    with pytest.raises(ValueError, match="B == 1"):
        ncnet.extract_matches({"corr": torch.zeros(2, 1, 2, 2, 2, 2), "offsets": torch.zeros(2, 4, 2, 2, 2, 2)})
    with pytest.raises(ValueError, match="unknown NCNet config keys"):
        NCNet({"thres": 0.5})
    assert DEFAULT_CONF["ksize"] == 2 and DEFAULT_CONF["upsample"] == 8


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def backbone() -> ResNet34Pyramid:
    torch.manual_seed(0)
    return ResNet34Pyramid().eval()


def _noise_image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_identical_images_match_on_identity(backbone: ResNet34Pyramid) -> None:
    torch.manual_seed(0)
    ncnet = translation_consensus_(NCNet()).eval()
    x = normalize_image(_noise_image(0, 96, 128))
    with torch.no_grad():
        f4 = backbone(x)[4]
        out = ncnet(f4, f4.clone())
    assert out["corr"].shape == (1, 1, 6, 8, 6, 8) and out["offsets"].shape == (1, 4, 6, 8, 6, 8)
    matches, scores = ncnet.extract_matches(out)
    assert len(matches) >= 0.9 * 6 * 8
    on_identity = (matches[:, 0] == matches[:, 2]) & (matches[:, 1] == matches[:, 3])
    assert on_identity.float().mean() >= 0.9
    assert ((matches[:, :2] - 4) % 8 == 0).all() and (matches[:, [0, 2]] < 128).all() and (matches[:, [1, 3]] < 96).all()
    assert ((scores > 0) & (scores <= 1)).all()


def test_shifted_features_matches_follow_the_shift() -> None:
    """B is A moved left by 2 cells (16 px): proposals satisfy x1 - x2 == 16, y1 == y2 (A/B order check).

    Synthetic features, because untrained ResNet34 features mostly encode image position (padding
    effects), not content, so they cannot follow a shift.
    """
    torch.manual_seed(0)
    big = torch.randn(1, 32, 12, 18)
    fa, fb = big[..., :16], big[..., 2:]  # cell x in A == cell x - 2 in B
    ncnet = translation_consensus_(NCNet()).eval()
    with torch.no_grad():
        matches, _ = ncnet.extract_matches(ncnet(fa, fb))
    assert len(matches) >= 0.8 * 6 * 7  # pooled cells with a counterpart
    shifted = (matches[:, 0] - matches[:, 2] == 16) & (matches[:, 1] == matches[:, 3])
    assert shifted.float().mean() >= 0.9


def test_random_init_ncnet_runs_and_chunking_is_exact(backbone: ResNet34Pyramid) -> None:
    torch.manual_seed(0)
    plain = NCNet().eval()
    chunked = NCNet({"corr_chunk_rows": 2}).eval()
    chunked.load_state_dict(plain.state_dict())
    with torch.no_grad():
        fa = backbone(normalize_image(_noise_image(2, 64, 96)))[4]
        fb = backbone(normalize_image(_noise_image(3, 64, 96)))[4]
        o1, o2 = plain(fa, fb), chunked(fa, fb)
    assert torch.equal(o1["offsets"], o2["offsets"]) and torch.allclose(o1["corr"], o2["corr"])
    matches, scores = plain.extract_matches(o1)
    assert matches.shape[1] == 4 and scores.shape == (len(matches),)


def test_batched_forward_equals_per_pair() -> None:
    torch.manual_seed(0)
    ncnet = NCNet().eval()
    for m in ncnet.modules():
        if isinstance(m, Conv4d):
            torch.nn.init.normal_(m.weight, std=0.2)
            torch.nn.init.constant_(m.bias, 0.05)
    fa, fb = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 6, 4)
    with torch.no_grad():
        both = ncnet(fa, fb)
        for i in range(2):
            one = ncnet(fa[i : i + 1], fb[i : i + 1])
            assert torch.allclose(both["corr"][i : i + 1], one["corr"], atol=1e-6)
            assert torch.equal(both["offsets"][i : i + 1], one["offsets"])
    assert both["shape_a"] == (4, 6) and both["shape_b"] == (6, 4)


def test_relocalize_moves_a_shifted_proposal_to_the_best_raw_correlation():
    """A proposal one or two cells off its true partner lands on it; radius 0 leaves it; far ones stay within radius."""
    from matchmill.models.ncnet import relocalize_matches

    torch.manual_seed(0)
    fa = torch.randn(1, 32, 6, 8)
    fb = torch.randn(1, 32, 6, 8)
    fb[0, :, 3, 5] = fa[0, :, 2, 1]  # cell (x=1, y=2) of A matches cell (x=5, y=3) of B
    true = torch.tensor([[1 * 8 + 4, 2 * 8 + 4, 5 * 8 + 4, 3 * 8 + 4]], dtype=torch.float32)
    off = true + torch.tensor([[8.0, 0.0, -16.0, 8.0]])  # A one cell right, B two left and one down
    assert torch.equal(relocalize_matches(fa, fb, off, radius=2), true)
    assert torch.equal(relocalize_matches(fa, fb, off, radius=0), off)
    moved = relocalize_matches(fa, fb, off, radius=1)
    assert (moved - off).abs().max() <= 8 and moved.dtype == off.dtype
    assert relocalize_matches(fa, fb, off[:0], radius=2).shape == (0, 4)
