"""PUMP training pairs: the returned homography explains the pixels, draws respect the spec's ranges."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from matchmill.models.pump.synthetic import (
    CPU_SYNTH_CONF,
    SYNTH_CONF,
    _rot90_matrix,
    make_synthetic_pair,
    make_unsupervised_pair,
    random_tilt,
)

CROP = 96
CONF = {**CPU_SYNTH_CONF, "crop_size": CROP, "window_size": 144, "short_side_range": (120.0, 360.0)}


def _texture(seed: int, h: int = 180, w: int = 240) -> np.ndarray:
    """Smooth multi-scale colour texture: interpolation errors stay small, any misalignment shows."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    for cell, amp in ((24, 90.0), (8, 50.0), (3, 25.0)):
        small = rng.uniform(-1, 1, size=(h // cell + 2, w // cell + 2, 3))
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def _warp_errors(pair, shift: float = 0.0) -> tuple[float, float]:
    """Mean |img2 - warp(img1, H)| on img2 pixels whose preimage lies well inside img1 and has content,
    and the same with H moved by ``shift`` px (a wrong homography)."""
    n = pair.img1.shape[0]
    masks = []
    for H in (pair.H, np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1.0]]) @ pair.H):
        inside = cv2.warpPerspective(np.full((n, n), 255, np.uint8), H, (n, n), flags=cv2.INTER_NEAREST)
        masks.append(cv2.erode(inside, np.ones((9, 9), np.uint8)) > 0)
    valid = masks[0] & masks[1] & (pair.img2.max(-1) > 0)
    assert valid.mean() > 0.25, "too little overlap to check"
    errs = []
    for H in (pair.H, np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1.0]]) @ pair.H):
        warped = cv2.warpPerspective(pair.img1, H, (n, n), flags=cv2.INTER_LINEAR).astype(np.float64)
        errs.append(float(np.abs(warped - pair.img2)[valid].mean()))
    return errs[0], errs[1]


@pytest.mark.parametrize("seed", range(6))
def test_homography_maps_img1_onto_img2(seed: int) -> None:
    pair = make_synthetic_pair(_texture(seed), np.random.default_rng(seed), {**CONF, "noise_amplitude": 0.0})
    assert pair.img1.shape == pair.img2.shape == (CROP, CROP, 3) and pair.img1.dtype == np.uint8
    assert pair.H.shape == (3, 3) and np.isfinite(pair.H).all()
    err, err_shifted = _warp_errors(pair, shift=1.0)
    assert err < 4.5, pair.info
    assert err_shifted > 2.0 * err, (err, err_shifted)  # a homography 1 px off is clearly worse


def test_rot90_undo_keeps_the_homography_exact() -> None:
    """Large rotations (allowed here up to 120 deg) trigger the 90-degree undo of step 6."""
    conf = {**CONF, "noise_amplitude": 0.0, "max_rotation_deg": 120.0, "tilt_max_frac": 0.1}
    seen = set()
    for seed in range(40):
        pair = make_synthetic_pair(_texture(seed), np.random.default_rng(100 + seed), conf)
        seen.add(pair.info["rot90"])
        if pair.info["rot90"]:
            err, err_shifted = _warp_errors(pair, shift=1.0)
            assert err < 4.5 and err_shifted > 2.0 * err, pair.info
            # residual rotation of the final H is within the tolerance
            J = pair.H[:2, :2] - np.outer(pair.H[:2, 2], pair.H[2, :2])  # Jacobian at (0, 0) up to scale
            residual = math.degrees(math.atan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1]))
            assert abs(residual) <= conf["rot90_tolerance_deg"] + 15.0
    assert len(seen - {0}) >= 2, seen
    n = 5
    img = np.arange(n * n).reshape(n, n)
    for k in range(4):
        R = _rot90_matrix(k, n)
        rotated = np.rot90(img, k)
        for y in range(n):
            for x in range(n):
                x2, y2, _ = R @ np.array([x, y, 1.0])
                assert rotated[int(round(y2)), int(round(x2))] == img[y, x]


def test_noise_is_uniform_amplitude_25_on_img2_only() -> None:
    image = _texture(7)
    clean = make_synthetic_pair(image, np.random.default_rng(3), {**CONF, "noise_amplitude": 0.0})
    noisy = make_synthetic_pair(image, np.random.default_rng(3), CONF)
    assert np.array_equal(clean.H, noisy.H) and np.array_equal(clean.img1, noisy.img1)
    diff = noisy.img2.astype(np.int32) - clean.img2.astype(np.int32)
    assert 0.5 < np.abs(diff).mean() and np.abs(diff).max() <= 17  # 12.5 + rounding, bicubic overshoot
    assert abs(diff.mean()) < 1.0  # zero-mean


def test_same_seed_same_pair() -> None:
    image = _texture(1)
    a = make_synthetic_pair(image, np.random.default_rng(42), CONF)
    b = make_synthetic_pair(image, np.random.default_rng(42), CONF)
    c = make_synthetic_pair(image, np.random.default_rng(43), CONF)
    assert np.array_equal(a.img1, b.img1) and np.array_equal(a.img2, b.img2) and np.array_equal(a.H, b.H)
    assert not np.array_equal(a.H, c.H)


def test_random_draws_respect_the_spec_ranges() -> None:
    image = _texture(2)
    h, w = image.shape[:2]
    lo, hi = CONF["short_side_range"]
    sides, swaps, flips = set(), set(), set()
    for seed in range(40):
        info = make_synthetic_pair(image, np.random.default_rng(seed), CONF).info
        assert abs(info["rotation_deg"]) <= 20.0
        assert lo <= info["short_side"] <= hi
        assert 1 / 1.3 <= info["aspect_change"] <= 1.3
        assert 1 / 1.5 <= info["scale_jitter"] <= 1.5
        assert 1 <= info["tilt"]["offset"] < math.ceil(0.5 * max(w, h))
        # img2 after rotation + rescale: short side = drawn value, up to the aspect change
        w2, h2 = info["img2_size"]
        ratio = min(w2, h2) / info["short_side"]
        assert 1 / math.sqrt(1.3) - 0.02 <= ratio <= math.sqrt(1.3) + 0.02
        sides.add(info["tilt"]["side"])
        swaps.add(info["swapped"])
        flips.add(info["flipped"])
    assert sides == {"left", "right", "top", "bottom"} and swaps == {True, False} and flips == {True, False}


def test_rotation_and_scale_show_in_the_homography() -> None:
    """No tilt, swap, flip, aspect change or jitter: H is the drawn rotation at (about) equal scale."""
    conf = {**CONF, "tilt_max_frac": 0.0, "swap_prob": 0.0, "flip_prob": 0.0, "max_aspect_change": 1.0,
            "max_scale_jitter": 1.0, "noise_amplitude": 0.0}
    checked = 0
    for seed in range(8):
        pair = make_synthetic_pair(_texture(seed), np.random.default_rng(seed), conf)
        (x0, y0, x1, y1), (u0, v0, u1, v1) = pair.info["window1"], pair.info["window2"]
        if x1 - x0 != y1 - y0 or u1 - u0 != v1 - v0:
            continue  # a clipped window changes the aspect on purpose
        A = pair.H[:2, :2] / pair.H[2, 2]
        assert np.allclose(pair.H[2, :2], 0.0, atol=1e-9)  # rotation + rescale + crops: affine
        angle = math.degrees(math.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1]))
        assert abs(angle - pair.info["rotation_deg"]) < 1e-6
        scale = math.sqrt(abs(np.linalg.det(A)))
        assert abs(math.log(scale)) < 0.05, scale  # windows equalise the content scale
        checked += 1
    assert checked >= 3


def test_tilt_moves_one_side_apart() -> None:
    H, info = random_tilt(200, 100, np.random.default_rng(0))
    corners = np.array([[-0.5, -0.5], [199.5, -0.5], [199.5, 99.5], [-0.5, 99.5]])
    p = np.c_[corners, np.ones(4)] @ H.T
    moved = p[:, :2] / p[:, 2:] - corners
    assert (np.abs(moved) > 1e-6).any(axis=1).sum() == 2
    assert np.isclose(np.abs(moved).max(), info["offset"])
    H0, info0 = random_tilt(200, 100, np.random.default_rng(0), max_frac=0.0)
    assert info0["offset"] == 0 and np.allclose(H0, np.eye(3))


def test_unsupervised_pair() -> None:
    a, b = _texture(3), _texture(4, 150, 200)
    pair = make_unsupervised_pair(a, b, np.random.default_rng(0), CONF)
    assert pair.img1.shape == pair.img2.shape == (CROP, CROP, 3) and np.isnan(pair.H).all()
    again = make_unsupervised_pair(a, b, np.random.default_rng(0), CONF)
    assert np.array_equal(pair.img1, again.img1) and np.array_equal(pair.img2, again.img2)
    # correspondences of a 0.8x zoom: used to place the crops on the matching content
    ys, xs = np.mgrid[10:170:10, 10:230:10]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    corr = np.concatenate([pts, pts * 0.8], axis=1)
    pair = make_unsupervised_pair(a, b, np.random.default_rng(1), {**CONF, "swap_prob": 0.0}, corr)
    assert pair.info["num_correspondences"] > 50 and np.isnan(pair.H).all()
    with pytest.raises(ValueError, match=r"correspondences must be a finite \(N, 4\)"):
        make_unsupervised_pair(a, b, np.random.default_rng(0), CONF, np.zeros((3, 2)))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) uint8"):
        make_synthetic_pair(np.zeros((50, 50), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_b"):
        make_unsupervised_pair(_texture(0), np.zeros((50, 50, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown synthetic pair config keys"):
        make_synthetic_pair(_texture(0), np.random.default_rng(0), {"crop": 64})
    with pytest.raises(ValueError, match="short_side_range"):
        make_synthetic_pair(_texture(0), np.random.default_rng(0), {"short_side_range": (500, 100)})
    assert SYNTH_CONF["crop_size"] == 256 and SYNTH_CONF["noise_amplitude"] == 25.0
