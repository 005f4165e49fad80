"""Dense PUMP matching with the untrained (seeded) CPU-sized ConvMixer: identity, shift, degenerate
input, multi-scale, per-pixel pyramid maps, post-filter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized
from matchmill.models.pump.dense_match import match_single_scale, pyramid_maps_for_pixel
from matchmill.models.pump.multiscale_match import match_multiscale, relative_scales
from matchmill.models.pump.net_io import normalize_images
from matchmill.models.pump.post_filter import post_filter

H, W = 96, 128


def texture(seed: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: coarse cubic-upsampled noise + blurred fine noise (no repeated structure)."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    return np.clip(0.5 * coarse + 0.5 * fine, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def describe():
    torch.manual_seed(0)
    net = PumpConvMixer(cpu_sized()).eval()

    def run(image: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return net(normalize_images(torch.from_numpy(np.ascontiguousarray(image))[None]))[0]

    return run


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return texture(0, H, W)


@pytest.fixture(scope="module")
def desc(describe, image) -> torch.Tensor:
    return describe(image)


@pytest.fixture(scope="module")
def identity_matches(desc) -> np.ndarray:
    return match_single_scale(desc, desc)


def test_identical_images_match_on_the_identity(identity_matches):
    matches = identity_matches
    assert matches.dtype == np.float32 and matches.shape[1] == 5
    cells = (H // 4) * (W // 4)
    assert len(matches) >= 0.5 * cells
    assert np.all(matches[:, 0] % 4 == 2) and np.all(matches[:, 1] % 4 == 2)  # atomic patch centres
    err = np.abs(matches[:, :2] - matches[:, 2:4]).max(axis=1)
    assert (err <= 8).mean() >= 0.99  # DeepMatching's sanity check: within 2 atomic cells
    # reciprocity: at most one match per 4x4 block of img2
    blocks = set(map(tuple, (matches[:, 2:4] // 4).astype(int)))
    assert len(blocks) == len(matches)


def test_shifted_pair_recovers_the_shift(describe):
    """Two crops of one descriptor map, offset by (dx, dy) = (8, 12).

    The crops are taken from the descriptors of the whole image, not by running the net on each
    crop: the untrained net's 232-px receptive field and zero padding make every descriptor encode
    its distance to the image borders, so two independently described crops would match by
    position rather than by content.
    """
    big = describe(texture(1, 112, 144))
    d1, d2 = big[:, :H, :W], big[:, 12 : 12 + H, 8 : 8 + W]  # d2(x, y) = d1(x + 8, y + 12)
    matches = match_single_scale(d1, d2)
    offset = matches[:, 2:4] - matches[:, :2]
    inside = (matches[:, 0] >= 8) & (matches[:, 1] >= 12)  # img1 points that are visible in img2
    assert inside.sum() >= 0.5 * (H // 4) * (W // 4) * 0.8
    good = np.abs(offset[inside] - [-8, -12]).max(axis=1) <= 4
    assert good.mean() >= 0.95
    np.testing.assert_array_equal(np.median(offset[inside], axis=0), [-8, -12])


def test_degenerate_input_gives_no_matches_or_a_clear_error(desc):
    empty = match_single_scale(desc[:, :3, :3], desc)
    assert empty.shape == (0, 5) and empty.dtype == np.float32
    assert match_single_scale(desc, desc[:, :2, :50]).shape == (0, 5)
    constant = torch.zeros_like(desc)
    constant[0] = 1.0
    assert match_single_scale(constant, desc).shape == (0, 5)
    assert match_single_scale(desc, constant).shape == (0, 5)
    with pytest.raises(ValueError, match=r"desc1 must be a \(C, H, W\)"):
        match_single_scale(desc[None], desc)
    with pytest.raises(ValueError, match="channels differ"):
        match_single_scale(desc, desc[:64])
    nan = desc.clone()
    nan[0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="desc2 holds non-finite"):
        match_single_scale(desc, nan)
    with pytest.raises(ValueError, match="unknown"):
        match_single_scale(desc, desc, {"budget": 1})


def test_multiscale_recovers_a_2x_downscaling(describe, image, desc):
    """img2 = img1 blurred and downscaled 2x (bilinear); img1 maps stored at scales 1 and 0.5."""
    small = cv2.resize(cv2.GaussianBlur(image, (0, 0), 0.8), (W // 2, H // 2), interpolation=cv2.INTER_LINEAR)
    half = cv2.resize(image, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    maps1 = [(1.0, desc), (0.5, describe(half))]
    maps2 = [(1.0, describe(small))]
    assert relative_scales(0.5, 2.0) == pytest.approx([0.5, 2**-0.5, 1.0, 2**0.5, 2.0])
    matches = match_multiscale(maps1, maps2, (W, H), (W // 2, H // 2), {"max_scale": 2.0})
    assert len(matches) >= 0.5 * (H // 8) * (W // 8)
    expected = (matches[:, :2] + 0.5) / 2 - 0.5  # pixel-centre mapping of a 2x downscaling
    err = np.linalg.norm(matches[:, 2:4] - expected, axis=1)
    assert (err <= 2).mean() >= 0.9
    # same answer with the images given the other way round (img1 stays the atomic-patch image inside)
    swapped = match_multiscale(maps2, maps1, (W // 2, H // 2), (W, H), {"max_scale": 2.0})
    np.testing.assert_array_equal(swapped[:, [2, 3, 0, 1, 4]], matches)
    # single scale (relative scale 1 only) does not recover it
    single = match_multiscale(maps1, maps2, (W, H), (W // 2, H // 2), {"max_scale": 1.0})
    single_err = np.linalg.norm(single[:, 2:4] - ((single[:, :2] + 0.5) / 2 - 0.5), axis=1)
    assert (single_err <= 2).mean() < 0.5


def test_multiscale_without_any_usable_scale_is_a_clear_error(desc):
    with pytest.raises(ValueError, match="no relative scale"):
        match_multiscale([(0.5, desc)], [(0.5, desc)], (W, H), (W, H), {"max_scale": 1.0})
    with pytest.raises(ValueError, match=r"maps1\[0\]"):
        match_multiscale([(1.0, desc[None])], [(1.0, desc)], (W, H), (W, H))


def test_pyramid_maps_for_pixel_follow_the_patch(desc):
    x, y = 61, 45
    levels = pyramid_maps_for_pixel(desc, desc, x, y)
    assert [lv["level"] for lv in levels] == list(range(len(levels))) and len(levels) >= 4
    for lv in levels:
        stride = 2 ** lv["level"]
        assert lv["patch_size"] == 4 * stride
        assert lv["map"].shape == (-(-H // stride), -(-W // stride))
        assert lv["top3"].shape == (3, 3)
        best = lv["top3"][0]
        assert best[2] == pytest.approx(lv["map"].max())
        cx, cy = lv["centre"]
        assert abs(cx - x) <= 2 and abs(cy - y) <= 2
        # identical images: the best cell lies on the patch centre, up to one cell of the level
        assert abs(best[0] - cx) <= stride and abs(best[1] - cy) <= stride
    with pytest.raises(ValueError, match="outside"):
        pyramid_maps_for_pixel(desc, desc, W + 1, 0)


def test_post_filter_keeps_a_consistent_cluster_and_drops_isolated_matches():
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(10, 70, 4), np.arange(10, 50, 4))  # 15 x 10 = 150 matches on a 4-px grid
    p1 = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64)
    cluster = np.concatenate([p1, p1 + [30.0, -5.0], rng.uniform(1, 2, (len(p1), 1))], axis=1)
    isolated = np.concatenate([rng.uniform(100, 400, (40, 4)), rng.uniform(5, 6, (40, 1))], axis=1)
    isolated[:, 0] += np.arange(40) * 40  # far apart from each other in img1
    matches = np.concatenate([isolated[:20], cluster, isolated[20:]]).astype(np.float32)
    kept = post_filter(matches, {"min_cc_size": 50})
    assert kept.shape == (len(cluster), 5)
    np.testing.assert_array_equal(kept[:, :4], cluster[:, :4].astype(np.float32))
    np.testing.assert_allclose(kept[:, 4], cluster[:, 4] + np.log2(len(cluster)), rtol=1e-6)
    # direction consistency: with img2 rotated by 180 deg every offset pair is opposite -> no links
    rotated = cluster.copy()
    rotated[:, 2:4] = 200 - rotated[:, 2:4]
    assert post_filter(rotated.astype(np.float32), {"min_cc_size": 1}).shape == (0, 5)
    assert len(post_filter(rotated.astype(np.float32), {"min_cc_size": 1, "max_angle_deg": 180})) == len(cluster)
    # a component of exactly min_cc_size members is dropped, one more is kept
    line = np.stack([np.arange(51) * 4.0, np.zeros(51), np.arange(51) * 4.0, np.zeros(51), np.ones(51)], axis=1)
    assert len(post_filter(line[:50], {"min_cc_size": 50})) == 0
    assert len(post_filter(line, {"min_cc_size": 50})) == 51
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        post_filter(np.zeros((3, 4)))


def test_post_filter_on_real_matches_keeps_the_identity_cluster(identity_matches):
    matches = identity_matches
    rng = np.random.default_rng(1)
    noise = np.concatenate([rng.uniform(0, W, (30, 1)), rng.uniform(0, H, (30, 1)), rng.uniform(0, W, (30, 1)), rng.uniform(0, H, (30, 1)), np.ones((30, 1))], axis=1)
    noise[:, 2:4] = W + 200 + noise[:, 2:4] * 5  # far from anything in img2
    kept = post_filter(np.concatenate([matches, noise]).astype(np.float32))
    assert len(kept) >= 0.95 * len(matches)
    assert np.all(np.abs(kept[:, :2] - kept[:, 2:4]).max(axis=1) <= 8)
