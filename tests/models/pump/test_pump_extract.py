"""PUMP extraction helpers: scale pyramid, padding, per-keypoint sampling and its coordinate mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.models.pump.convmixer import PumpConvMixer, cpu_sized
from matchmill.models.pump.extract import (
    build_descriptor_net,
    choose_scale_indices,
    dense_descriptors,
    descriptor_scales,
    run_padded,
    sample_at_keypoints,
)


class PixelCoordinates(nn.Module):
    """Deterministic 3-channel "descriptor" (x, y, K) of every pixel: its column, row and a constant.

    Translation-equivariant like a real net (padding right / bottom changes nothing) and linear in
    x, y, so bilinear sampling is exact; after renormalisation ``K * d0 / d2`` is the sampled x.
    """

    multiple = 4
    K = 1000.0

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the net a device / dtype

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError("multiple of 4 expected")
        B, _, h, w = x.shape
        v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        return torch.stack([u, v, torch.full_like(u, self.K)]).expand(B, 3, h, w) + self.dummy


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_descriptor_scales() -> None:
    assert np.allclose(descriptor_scales(), [1.0, 0.8409, 0.7071, 0.5946, 0.5, 0.4204, 0.3536], atol=1e-4)
    assert np.allclose(descriptor_scales(0.5, 0.8), [2 ** -0.5, 2 ** -0.75, 0.5])
    assert np.allclose(descriptor_scales(0.7, 2.0, 2), [2.0, 2 ** 0.5, 1.0, 2 ** -0.5])
    with pytest.raises(ValueError, match="min_scale"):
        descriptor_scales(0.5, 0.4)


def test_dense_descriptors_any_size_and_scale() -> None:
    torch.manual_seed(0)
    net = PumpConvMixer(cpu_sized()).eval()
    image = _image(61, 83)
    scales = descriptor_scales(0.5, 1.0)
    maps = dense_descriptors(net, image, scales)
    assert [s for s, _ in maps] == scales
    for s, m in maps:
        assert tuple(m.shape) == (128, round(61 * s), round(83 * s))
        assert torch.allclose(m.norm(dim=0), torch.ones(()), atol=1e-5)
    # padding only adds pixels right / bottom: on a multiple-of-4 image it is the plain forward
    x = torch.randn(1, 3, 32, 44)
    with torch.no_grad():
        assert torch.equal(run_padded(net, x), net(x))
        assert tuple(run_padded(net, x[..., :31, :42]).shape) == (1, 128, 31, 42)
    with pytest.raises(ValueError, match="eval mode"):
        dense_descriptors(net.train(), image, [1.0])
    with pytest.raises(ValueError, match="scales"):
        dense_descriptors(net.eval(), image, [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_descriptors(net, image[..., 0], [1.0])


def test_sampling_at_integer_pixels_is_indexing() -> None:
    g = torch.Generator().manual_seed(0)
    fmap = F.normalize(torch.randn(16, 20, 30, generator=g), dim=0)
    kp = np.array([[0, 0], [29, 19], [7, 3], [12, 18]], np.float64)
    out = sample_at_keypoints([(1.0, fmap), (0.5, fmap[:, ::2, ::2])], kp)  # no sizes: finest = scale 1
    want = fmap[:, kp[:, 1].astype(int), kp[:, 0].astype(int)].t().numpy()
    assert out.dtype == np.float32 and np.allclose(out, want, atol=1e-6)
    # half-pixel positions: the renormalised mean of the two neighbours
    mid = sample_at_keypoints([(1.0, fmap)], np.array([[7.5, 3.0]]))
    assert np.allclose(mid[0], F.normalize(fmap[:, 3, 7] + fmap[:, 3, 8], dim=0).numpy(), atol=1e-6)


def test_keypoints_map_back_to_the_same_place_at_every_scale() -> None:
    """x_s = (x + 0.5) w / W - 0.5: every scale must sample the keypoint where the scale-1 image has it."""
    net = PixelCoordinates().eval()
    H, W = 75, 101  # not multiples of 4: every scale is padded
    scales = descriptor_scales()
    maps = dense_descriptors(net, _image(H, W), scales)
    rng = np.random.default_rng(0)
    kp = np.stack([rng.uniform(2, W - 3, 50), rng.uniform(2, H - 3, 50)], axis=1)
    for j, (s, fmap) in enumerate(maps):
        h, w = fmap.shape[1:]
        assert (h, w) == (round(H * s), round(W * s))
        sizes = np.full(50, 32.0 / s)  # R2D2 convention: size 32 / s -> scale s
        assert (choose_scale_indices(scales, 50, sizes) == j).all()
        got = sample_at_keypoints(maps, kp, sizes).astype(np.float64)
        xs, ys = PixelCoordinates.K * got[:, 0] / got[:, 2], PixelCoordinates.K * got[:, 1] / got[:, 2]
        assert np.allclose(xs, (kp[:, 0] + 0.5) * w / W - 0.5, atol=2e-3), s
        assert np.allclose(ys, (kp[:, 1] + 0.5) * h / H - 0.5, atol=2e-3), s
        assert np.allclose((xs + 0.5) * W / w - 0.5, kp[:, 0], atol=2e-3 / s)  # and back
    with pytest.raises(ValueError, match="image_size"):
        sample_at_keypoints(maps[1:], kp)
    got = sample_at_keypoints(maps[1:], kp, image_size=(W, H)).astype(np.float64)  # finest available: 0.84
    w1 = maps[1][1].shape[2]
    assert np.allclose(PixelCoordinates.K * got[:, 0] / got[:, 2], (kp[:, 0] + 0.5) * w1 / W - 0.5, atol=2e-3)


def test_scale_choice_rule() -> None:
    scales = descriptor_scales()
    sizes = np.array([32.0, 64.0, 8.0, 1000.0, 32 / 0.6])
    assert choose_scale_indices(scales, 5, sizes).tolist() == [0, 4, 0, 6, 3]  # clipped to the range
    assert choose_scale_indices(scales, 5, sizes, {"mode": "finest"}).tolist() == [0] * 5
    assert choose_scale_indices(scales, 2, np.array([64.0, 128.0]), {"ref_size": 64.0}).tolist() == [0, 4]
    with pytest.raises(ValueError, match="positive"):
        choose_scale_indices(scales, 2, np.array([32.0, 0.0]))
    with pytest.raises(ValueError, match="mode"):
        choose_scale_indices(scales, 1, np.array([32.0]), {"mode": "nearest"})


def test_build_descriptor_net() -> None:
    net = build_descriptor_net("convmixer", cpu=True)
    assert not net.training and net.conf["width"] == 128
    assert build_descriptor_net("r2d2").multiple == 1
    with pytest.raises(ValueError, match="unknown PUMP descriptor arch"):
        build_descriptor_net("vgg")


def _blob_image(h: int = 480, w: int = 640, n: int = 400, seed: int = 0) -> np.ndarray:
    """Gray RGB image of ``n`` Gaussian blobs, sigma log-uniform in [1.5, 40] px: SIFT finds keypoints at every size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 128.0, np.float32)
    for _ in range(n):
        sigma = float(np.exp(rng.uniform(np.log(1.5), np.log(40.0))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(40, 90)
        r = int(4 * sigma) + 1
        x0, x1, y0, y1 = max(0, int(cx) - r), min(w, int(cx) + r + 1), max(0, int(cy) - r), min(h, int(cy) + r + 1)
        if x0 < x1 and y0 < y1:
            d2 = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2
            img[y0:y1, x0:x1] += amp * np.exp(-d2 / (2 * sigma**2))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_sift_keypoints_spread_over_the_scales_by_size() -> None:
    """PumpExtractor with SIFT keypoints: the descriptor scale follows the SIFT size (OpenCV
    ``KeyPoint.size`` = 2 sigma, ``SIFT_REF_SIZE`` = 3.2), not R2D2's 32 (which sent ~all to scale 1)."""
    from matchmill.geometry.frames import to_network
    from matchmill.models.pump.extract import SIFT_REF_SIZE
    from matchmill.methods.pump import PumpExtractor

    ext = PumpExtractor({"keypoints": "sift"})
    ext.net = PixelCoordinates().eval()  # descriptors (x_s, y_s, K): the sampled map's scale can be read back
    out = ext(_blob_image())
    scales = np.array(descriptor_scales(min_scale=0.3))
    sizes = out["scales"].astype(np.float64)
    assert len(sizes) > 200 and sizes.max() > 8 * sizes.min()
    pts = to_network(out["keypoints"], out["net_scale"]).astype(np.float64)
    d = out["descriptors"].astype(np.float64)
    xy_s = PixelCoordinates.K * d[:, :2] / d[:, 2:3]  # (x_s, y_s) = (x + 0.5) * s - 0.5 in the map of scale s
    k = np.argmax(pts, axis=1)[:, None]  # the larger coordinate gives the better-conditioned ratio
    ratio = (np.take_along_axis(xy_s, k, 1) + 0.5) / (np.take_along_axis(pts, k, 1) + 0.5)
    used = np.abs(ratio - scales[None]).argmin(axis=1)  # index of the scale each descriptor came from
    assert np.abs(ratio[:, 0] - scales[used]).max() < 0.01
    assert np.mean(used == 0) < 0.5  # R2D2's ref_size 32 put ~94 % of these keypoints at scale 1
    assert (used == choose_scale_indices(scales, len(sizes), sizes / out["net_scale"].mean(), {"ref_size": SIFT_REF_SIZE})).all()
    assert len(np.unique(used)) == len(scales)  # every scale 1 .. 0.354 is used
    order = np.argsort(sizes, kind="stable")
    assert (np.diff(used[order]) >= 0).all()  # larger keypoints never get a finer scale
    assert np.median(sizes[used == len(scales) - 1]) > 4 * np.median(sizes[used == 0])
