"""Frame conversions (matchmill/geometry/frames.py): the one definition of original <-> network pixels."""

from __future__ import annotations

import numpy as np
import pytest

from matchmill.geometry.frames import floor_to_multiple, resize_max, resize_to_multiple, to_network, to_original


def test_unit_scale_is_the_identity_bit_for_bit():
    pts = np.random.default_rng(0).uniform(0, 640, (1000, 2)).astype(np.float32)
    assert np.array_equal(to_original(pts, (1.0, 1.0)), pts)  # no float32 (x + 0.5) * 1 - 0.5 drift
    assert np.array_equal(to_network(pts, (1.0, 1.0)), pts)


def test_pixel_centre_convention_and_round_trip():
    assert to_original(np.array([[0.0, 0.0]]), (2.0, 4.0)).tolist() == [[0.5, 1.5]]  # centre of the first 2x4 block
    pts = np.random.default_rng(1).uniform(0, 300, (500, 2)).astype(np.float32)
    back = to_network(to_original(pts, (2.5, 1.5)), (2.5, 1.5))
    assert np.abs(back - pts).max() < 1e-4


def test_resize_to_multiple_and_its_scale():
    image = np.zeros((250, 330, 3), np.uint8)
    resized, scale = resize_to_multiple(image, 16)
    assert resized.shape == (240, 320, 3) and scale.tolist() == [330 / 320, 250 / 240]
    small, s = resize_max(image, 165)
    assert small.shape[:2] == (125, 165) and s == (2.0, 2.0)
    with pytest.raises(ValueError, match="too small for the net"):
        floor_to_multiple(20, 100, 16)
