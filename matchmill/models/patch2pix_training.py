"""Patch2Pix training helpers: one training example per image pair, one optimiser step per batch.

Pure PyTorch / numpy (OpenCV only to resize images, like the extract stage); no Ray, no storage.
Implemented from ``docs/specs/patch2pix.md`` sections 2.10, 3 and 4 (a description of the official
code, not the code itself). The Ray Train loop, checkpoints and data loading live elsewhere and
call these functions.

Flow for one image pair::

    image0, image1 (H, W, 3) uint8, K0, K1, T_0to1
      -- optional right/bottom crop (K unchanged) --> resize to multiples of 16 (K' = A K)
      -- frozen ResNet34Pyramid (no grad) --> pyramids f0..f4 of both images
      -- NCNet on f4, all mutual proposals, threshold 0 --> (M, 4) network-frame proposals
      (+ optional caller-supplied extra proposals, e.g. perturbed ground truth)
      -- shuffle, truncate / tile cyclically --> exactly ``ptmax`` proposals (spec 2.10)
      F = K1'^-T [t]x R K0'^-1 (x1^T F x0 = 0 in the network frame)

    training_step: proposals --expand_anchors (panc 8)--> 8 * ptmax anchors --Patch2Pix (train)-->
      mid, fine --patch2pix_loss per pair--> batch_loss --> backward --> optimizer.step

Frames. Every pixel coordinate here uses the OpenCV pixel-centre convention of the rest of
matchmill: the centre of the top-left pixel is (0, 0). Resizing a ``w x h`` image to ``w' x h'``
maps ``x' = (x + 0.5) * s_x - 0.5`` with ``s_x = w' / w`` (same for y), which is what
``cv2.resize`` does and what :func:`matchmill.geometry.frames.to_original` inverts. In matrix
form that is ``A = [[s_x, 0, (s_x - 1) / 2], [0, s_y, (s_y - 1) / 2], [0, 0, 1]]`` and
``K' = A K``: ``fx, fy`` scale by ``s`` and ``c' = s (c + 0.5) - 0.5``. The reference code uses
the plain ``diag(s_x, s_y, 1) K`` (corner convention); the difference is a ``(s - 1) / 2`` px
shift of the principal point, which matters for sub-pixel supervision.

Deliberate deviations from the reference (spec section numbers in brackets):

- A pair with no proposal at all yields an example with ``valid = False`` and zero proposals,
  which :func:`training_step` skips; the reference inserts ``ptmax`` copies of proposal index 0
  (an arbitrary row) [2.10]. With NCNet and threshold 0 this only happens when no mutual pair
  exists, which the global maximum of the volume rules out; it can happen with a positive
  threshold or when every candidate was dropped.
- The frozen backbone runs in eval mode (BatchNorm running statistics), see
  :class:`matchmill.models.resnet.ResNet34Pyramid` [1, caveat].
- Pairs are forwarded one at a time, so the regressors' BatchNorm statistics are computed per
  pair (8 * ptmax anchors) rather than over the whole batch of pairs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from matchmill.geometry.epipolar import fundamental_from_pose
from matchmill.geometry.frames import floor_to_multiple
from matchmill.models.patch2pix import (
    Patch2Pix,
    batch_loss,
    expand_anchors,
    merge_conf,
    patch2pix_loss,
    sampson_distance_sq_torch,
)
from matchmill.models.resnet import normalize_image

__all__ = [
    "MULTIPLE",
    "EXAMPLE_KEYS",
    "SOURCE_NCNET",
    "SOURCE_EXTRA",
    "resize_matrix",
    "scale_intrinsics",
    "network_size",
    "resize_image",
    "sample_proposals",
    "depth_correspondences",
    "make_training_example",
    "examples_loss",
    "training_step",
    "evaluate_examples",
    "recalibrate_batchnorm",
]

#: Image sides are multiples of this: stride-8 features pooled 2x2 by NCNet's 4D max-pool.
MULTIPLE = 16
#: ``proposal_source`` value of a proposal that came from NCNet.
SOURCE_NCNET = 0
#: ``proposal_source`` value of a caller-supplied extra proposal.
SOURCE_EXTRA = 1
#: Keys of the dict returned by :func:`make_training_example`.
EXAMPLE_KEYS = (
    "feats0", "feats1", "proposals", "proposal_source", "F", "K0", "K1", "T_0to1",
    "size0", "size1", "scale0", "scale1", "n_ncnet", "n_extra", "valid",
)


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _as_matrix(value: Any, n: int, name: str) -> np.ndarray:
    """(n, n) float64 from an (n, n) or flat (n*n,) array-like; ValueError otherwise."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (n * n,):
        arr = arr.reshape(n, n)
    if arr.shape != (n, n) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a finite ({n}, {n}) matrix or flat ({n * n},) list, got shape {arr.shape}")
    return arr


def resize_matrix(scale_xy: Sequence[float]) -> np.ndarray:
    """(3, 3) pixel map of a resize by ``(s_x, s_y)`` = new size / old size, pixel-centre convention.

    ``[x', y', 1]^T = A [x, y, 1]^T`` with ``x' = (x + 0.5) s_x - 0.5`` and ``y' = (y + 0.5) s_y - 0.5``.
    """
    sx, sy = (float(v) for v in scale_xy)
    if not (sx > 0 and sy > 0):
        raise ValueError(f"scale factors must be positive, got {scale_xy!r}")
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: Any, scale_xy: Sequence[float]) -> np.ndarray:
    """Intrinsics of a resized image: ``K' = A K`` with ``A`` = :func:`resize_matrix`.

    Args:
        K: (3, 3) or flat (9,) intrinsics, OpenCV pixel convention.
        scale_xy: (s_x, s_y) = new size / old size.

    Returns:
        (3, 3) float64: ``fx' = s_x fx``, ``fy' = s_y fy``, ``cx' = s_x (cx + 0.5) - 0.5`` (same for y).
    """
    return resize_matrix(scale_xy) @ _as_matrix(K, 3, "K")


def _map_points(points: np.ndarray, scale_xy: Sequence[float]) -> np.ndarray:
    """(N, 2) pixels -> resized frame, ``x' = (x + 0.5) s - 0.5``."""
    s = np.asarray(scale_xy, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) + 0.5) * s - 0.5


def network_size(width: int, height: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """``(W', H')``: both sides floored to a multiple of ``multiple`` (as the extract stage does)."""
    return floor_to_multiple(width, height, multiple, what="Patch2Pix training")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with ``size = (W', H')``.

    ``cv2.INTER_AREA`` when shrinking (the extract stage's choice, so training and inference see
    the same pixels), bicubic when enlarging (the reference's interpolation).
    """
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    interp = cv2.INTER_AREA if size[0] <= w and size[1] <= h else cv2.INTER_CUBIC
    return cv2.resize(image, (int(size[0]), int(size[1])), interpolation=interp)


def _check_image(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {desc}")


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------


def sample_proposals(count: int, ptmax: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawing exactly ``ptmax`` proposals from ``count`` candidates (spec 2.10).

    The candidates are shuffled, then truncated (``count >= ptmax``) or tiled cyclically
    (``count < ptmax``: the shuffled order repeats, so every candidate appears
    ``floor(ptmax / count)`` or ``ceil(ptmax / count)`` times).

    Args:
        count: number of candidates (>= 0).
        ptmax: number of indices wanted (>= 1).
        rng: numpy generator (the only source of randomness).

    Returns:
        (ptmax,) int64 indices into the candidates, or (0,) when ``count == 0``.
    """
    if count < 0 or ptmax < 1:
        raise ValueError(f"need count >= 0 and ptmax >= 1, got count={count}, ptmax={ptmax}")
    if count == 0:
        return np.zeros((0,), np.int64)
    perm = rng.permutation(count)
    return perm[np.arange(ptmax) % count].astype(np.int64)


def depth_correspondences(
    depth0: np.ndarray,
    K0: Any,
    K1: Any,
    T_0to1: Any,
    depth1: np.ndarray | None = None,
    size1: tuple[int, int] | None = None,
    step: int = 8,
    rel_tol: float = 0.05,
    noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Ground-truth correspondences from a depth map: image-0 grid pixels projected into image 1.

    Not part of Patch2Pix (which is weakly supervised by F only). It exists so tests and
    experiments with an untrained NCNet can feed proposals that are roughly correct.

    Pixels ``(u, v)`` on a ``step`` grid (offset ``step // 2``) with depth ``z > 0`` are lifted to
    ``X0 = z K0^-1 [u, v, 1]``, moved by ``T_0to1`` and projected with ``K1``. A point is kept when
    it lies in front of camera 1 and inside image 1; with ``depth1`` it must also agree with image
    1's depth at the (rounded) projection within ``rel_tol`` relative (not occluded). Then image-1
    positions get uniform noise in ``[-noise, noise]`` per coordinate.

    Args:
        depth0: (H0, W0) z-depth of image 0, 0 = unknown; OpenCV pixel convention.
        K0, K1: (3, 3) or flat (9,) intrinsics of the same frames as the depth maps.
        T_0to1: (4, 4) or flat (16,) relative pose (x_cam1 = R x_cam0 + t).
        depth1: optional (H1, W1) z-depth of image 1 (occlusion check; also gives its size).
        size1: (W1, H1) of image 1 when ``depth1`` is not given (default: image 0's size).
        step: grid spacing in pixels.
        rel_tol: relative depth agreement of the occlusion check.
        noise: half-width (px) of the uniform perturbation added to the image-1 positions.
        seed: seed of the noise.

    Returns:
        (N, 4) float64 ``[x0, y0, x1, y1]`` in the original OpenCV pixel frames.
    """
    depth0 = np.asarray(depth0, dtype=np.float64)
    if depth0.ndim != 2:
        raise ValueError(f"depth0 must be (H, W), got {depth0.shape}")
    K0m, K1m, T = _as_matrix(K0, 3, "K0"), _as_matrix(K1, 3, "K1"), _as_matrix(T_0to1, 4, "T_0to1")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    h0, w0 = depth0.shape
    if depth1 is not None:
        depth1 = np.asarray(depth1, dtype=np.float64)
        if depth1.ndim != 2:
            raise ValueError(f"depth1 must be (H, W), got {depth1.shape}")
        h1, w1 = depth1.shape
    else:
        w1, h1 = size1 if size1 is not None else (w0, h0)
    vs, us = np.meshgrid(np.arange(step // 2, h0, step), np.arange(step // 2, w0, step), indexing="ij")
    us, vs = us.reshape(-1), vs.reshape(-1)
    z = depth0[vs, us]
    ok = z > 0
    us, vs, z = us[ok], vs[ok], z[ok]
    rays = np.linalg.solve(K0m, np.stack([us, vs, np.ones_like(z)]).astype(np.float64))  # (3, N)
    X1 = T[:3, :3] @ (rays * z) + T[:3, 3:4]
    front = X1[2] > 1e-9
    p1 = (K1m @ X1)[:, front]
    x1, y1 = p1[0] / p1[2], p1[1] / p1[2]
    us, vs, z1 = us[front], vs[front], X1[2, front]
    inside = (x1 >= 0) & (y1 >= 0) & (x1 <= w1 - 1) & (y1 <= h1 - 1)
    us, vs, x1, y1, z1 = us[inside], vs[inside], x1[inside], y1[inside], z1[inside]
    if depth1 is not None:
        d1 = depth1[np.rint(y1).astype(np.int64), np.rint(x1).astype(np.int64)]
        seen = (d1 > 0) & (np.abs(z1 - d1) <= rel_tol * np.maximum(d1, 1e-12))
        us, vs, x1, y1 = us[seen], vs[seen], x1[seen], y1[seen]
    out = np.stack([us, vs, x1, y1], axis=1).astype(np.float64)
    if noise > 0 and len(out):
        out[:, 2:] += np.random.default_rng(seed).uniform(-noise, noise, size=(len(out), 2))
    return out


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


def make_training_example(
    image0: np.ndarray,
    image1: np.ndarray,
    K0: Any,
    K1: Any,
    T_0to1: Any,
    backbone: nn.Module,
    ncnet: nn.Module,
    ptmax: int = 400,
    seed: int = 0,
    *,
    size: tuple[int, int] | None = None,
    crop0: Sequence[int] | None = None,
    crop1: Sequence[int] | None = None,
    extra_proposals: np.ndarray | None = None,
) -> dict[str, Any]:
    """Everything :func:`training_step` needs for one image pair, computed once.

    Steps: optional crop at right/bottom (``crop = (w, h)`` kept, K unchanged); resize to
    ``size`` or, by default, each image's sides floored to a multiple of 16 (K' = A K, see the
    module docstring); frozen backbone pyramids (no grad); NCNet proposals in the network frame
    (all mutual pairs, NC score > 0); optional extra proposals mapped into the same frame (those
    landing outside either image are dropped); the union is shuffled and truncated / tiled to
    exactly ``ptmax`` (:func:`sample_proposals`); ``F`` from K0', K1', T_0to1.

    Args:
        image0, image1: (H, W, 3) uint8 RGB.
        K0, K1: (3, 3) or flat (9,) intrinsics of the original images (OpenCV pixel convention).
        T_0to1: (4, 4) or flat (16,) relative pose, x_cam1 = R x_cam0 + t.
        backbone: :class:`~matchmill.models.resnet.ResNet34Pyramid` (frozen; run without grad).
        ncnet: :class:`~matchmill.models.ncnet.NCNet` (run without grad).
        ptmax: proposals per pair (>= 2 so the regressors' BatchNorm sees >= 2 rows even
            without expansion; the reference uses 400).
        seed: seed of the proposal shuffle.
        size: (W, H) network size for both images, each a multiple of 16 (the reference trains
            at (480, 320)); None floors each image's own size.
        crop0, crop1: (w, h) region kept at the top-left (e.g. a pairs-manifest ``crop0``).
        extra_proposals: (N, 4) ``[x0, y0, x1, y1]`` in original pixels to add to the NCNet pool,
            e.g. perturbed ground truth from :func:`depth_correspondences`.

    Returns:
        dict with (network frame, float32 tensors on the backbone's device unless noted):

        - ``feats0``, ``feats1``: lists of 5 tensors ``[(1, 3, H, W), (1, 64, H/2, W/2),
          (1, 64, H/4, W/4), (1, 128, H/8, W/8), (1, 256, H/8, W/8)]``, detached;
        - ``proposals``: (ptmax, 4) ``[x0, y0, x1, y1]``, or (0, 4) when nothing was proposed;
        - ``proposal_source``: (ptmax,) int64, :data:`SOURCE_NCNET` or :data:`SOURCE_EXTRA`;
        - ``F``: (3, 3) float64, ``x1^T F x0 = 0``;
        - ``K0``, ``K1``: (3, 3) float64 numpy, scaled intrinsics; ``T_0to1``: (4, 4) numpy;
        - ``size0``, ``size1``: (W, H) ints; ``scale0``, ``scale1``: (sx, sy) original / network
          size of the cropped image (as the extract stage's ``net_scale``);
        - ``n_ncnet``, ``n_extra``: candidate counts before sampling;
        - ``valid``: False when there was no candidate (the example is skipped in training).
    """
    _check_image(image0, "image0")
    _check_image(image1, "image1")
    Ks = [_as_matrix(K0, 3, "K0"), _as_matrix(K1, 3, "K1")]
    T = _as_matrix(T_0to1, 4, "T_0to1")
    if int(ptmax) < 2:
        raise ValueError(f"ptmax must be >= 2 (BatchNorm needs >= 2 rows per pair), got {ptmax}")
    if size is not None and (len(size) != 2 or any(int(v) % MULTIPLE or int(v) < 2 * MULTIPLE for v in size)):
        raise ValueError(f"size must be (W, H), each a multiple of {MULTIPLE} and >= {2 * MULTIPLE}, got {size!r}")

    frames = []  # per image: resized image, K', (W, H), scale new/old
    for idx, (image, K, crop) in enumerate(((image0, Ks[0], crop0), (image1, Ks[1], crop1))):
        h, w = image.shape[:2]
        if crop is not None:
            cw, ch = (int(v) for v in crop)
            if not (0 < cw <= w and 0 < ch <= h):
                raise ValueError(f"crop{idx} {crop!r} does not fit image{idx} of size {w}x{h}")
            image, w, h = image[:ch, :cw], cw, ch
        nw, nh = (int(size[0]), int(size[1])) if size is not None else network_size(w, h)
        s = (nw / w, nh / h)
        resized = resize_image(np.ascontiguousarray(image), (nw, nh))
        frames.append((resized, scale_intrinsics(K, s), (nw, nh), s, (w, h)))

    device = next(iter(backbone.parameters())).device
    modes = (backbone.training, ncnet.training)
    backbone.eval()  # frozen: BatchNorm uses running statistics (spec section 1 caveat)
    ncnet.eval()
    try:
        with torch.no_grad():
            feats = [[f.detach() for f in backbone(normalize_image(fr[0]).to(device))] for fr in frames]
            for i, (fr, fs) in enumerate(zip(frames, feats)):
                nw, nh = fr[2]
                c4 = int(backbone.channels[4])  # resnet34: 256, pump: D (matchmill/models/backbones.py)
                want = [(1, 3, nh, nw), (1, c4, nh // 8, nw // 8)]
                if len(fs) != 5 or [tuple(fs[0].shape), tuple(fs[4].shape)] != want:
                    raise ValueError(f"backbone pyramid of image{i} has shapes {[tuple(f.shape) for f in fs]}, "
                                     f"expected 5 levels with f0 {want[0]} and f4 {want[1]}")
            out = ncnet(feats[0][4], feats[1][4])
            nc_matches, _ = ncnet.extract_matches(out, threshold=0.0, mutual=True)
    finally:
        backbone.train(modes[0])
        ncnet.train(modes[1])
    nc_matches = nc_matches.detach().cpu().numpy().astype(np.float64).reshape(-1, 4)

    extra = np.zeros((0, 4), np.float64)
    if extra_proposals is not None:
        extra = np.asarray(extra_proposals, dtype=np.float64)
        if extra.ndim != 2 or extra.shape[1] != 4:
            raise ValueError(f"extra_proposals must be (N, 4) [x0, y0, x1, y1], got {extra.shape}")
        extra = extra[np.isfinite(extra).all(axis=1)]
        (w0, h0), (w1, h1) = frames[0][4], frames[1][4]
        in_crop = (extra >= 0).all(axis=1) & (extra[:, 0] <= w0 - 1) & (extra[:, 1] <= h0 - 1)
        in_crop &= (extra[:, 2] <= w1 - 1) & (extra[:, 3] <= h1 - 1)
        extra = extra[in_crop]
        extra = np.concatenate([_map_points(extra[:, :2], frames[0][3]), _map_points(extra[:, 2:], frames[1][3])], 1)
        (nw0, nh0), (nw1, nh1) = frames[0][2], frames[1][2]
        keep = (extra >= 0).all(axis=1) & (extra[:, 0] <= nw0 - 1) & (extra[:, 1] <= nh0 - 1)
        keep &= (extra[:, 2] <= nw1 - 1) & (extra[:, 3] <= nh1 - 1)
        extra = extra[keep]

    pool = np.concatenate([nc_matches, extra], axis=0)
    source = np.concatenate([np.full(len(nc_matches), SOURCE_NCNET), np.full(len(extra), SOURCE_EXTRA)])
    source = source.astype(np.int64)
    pick = sample_proposals(len(pool), int(ptmax), np.random.default_rng(seed))
    F = fundamental_from_pose(frames[0][1], frames[1][1], T)
    return {
        "feats0": feats[0],
        "feats1": feats[1],
        "proposals": torch.from_numpy(pool[pick].astype(np.float32)).to(device).reshape(-1, 4),
        "proposal_source": torch.from_numpy(source[pick]),
        "F": torch.from_numpy(F).to(device),
        "K0": frames[0][1],
        "K1": frames[1][1],
        "T_0to1": T,
        "size0": frames[0][2],
        "size1": frames[1][2],
        "scale0": (1.0 / frames[0][3][0], 1.0 / frames[0][3][1]),
        "scale1": (1.0 / frames[1][3][0], 1.0 / frames[1][3][1]),
        "n_ncnet": int(len(nc_matches)),
        "n_extra": int(len(extra)),
        "valid": bool(len(pick) > 0),
    }


def _check_example(ex: Mapping[str, Any], i: int) -> None:
    """ValueError unless ``ex`` looks like a :func:`make_training_example` output."""
    missing = [k for k in ("feats0", "feats1", "proposals", "F", "size0", "size1", "valid") if k not in ex]
    if missing:
        raise ValueError(f"example {i} lacks keys {missing} (build it with make_training_example)")
    p, F = ex["proposals"], ex["F"]
    if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[1] != 4:
        raise ValueError(f"example {i}: proposals must be a (N, 4) tensor, got {getattr(p, 'shape', type(p))}")
    if not isinstance(F, Tensor) or tuple(F.shape) != (3, 3):
        raise ValueError(f"example {i}: F must be a (3, 3) tensor, got {getattr(F, 'shape', type(F))}")


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def _anchors(ex: Mapping[str, Any], conf: Mapping[str, Any], device: torch.device) -> Tensor:
    """(8 ptmax, 4) training anchors of an example (``panc == 8``), else its (ptmax, 4) proposals."""
    props = ex["proposals"].to(device)
    return expand_anchors(props, conf["pshift"]) if conf["panc"] == 8 else props


def _sampson_stats(phi_in: Tensor, phi_mid: Tensor, phi_fine: Tensor, conf: Mapping[str, Any]) -> dict[str, float]:
    """Medians of the squared Sampson error (px^2) over inputs already roughly right.

    "Roughly right" = ``phi_in < geo_thresholds[0]`` (the inputs whose mid output enters the
    geometric loss); the same fixed subset every step, so the numbers are comparable over time.
    """
    sel = phi_in < conf["geo_thresholds"][0]
    n = int(sel.sum())
    if n == 0:
        nan = float("nan")
        return {"n_near": 0.0, "sampson_in": nan, "sampson_mid": nan, "sampson_fine": nan, "frac_fine_ok": nan}
    return {
        "n_near": float(n),
        "sampson_in": float(phi_in[sel].median()),
        "sampson_mid": float(phi_mid[sel].median()),
        "sampson_fine": float(phi_fine[sel].median()),
        "frac_fine_ok": float((phi_fine[sel] < conf["cls_thresholds"][1]).float().mean()),
    }


def examples_loss(
    model: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    conf: Mapping[str, Any] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Forward every valid example and return the batch loss (spec section 4), without stepping.

    Per valid example: anchors = :func:`expand_anchors` of its proposals when ``panc == 8``
    (8 * ptmax rows, shift ``pshift``), else the proposals; ``model`` forward (its mode is left
    as the caller set it); :func:`patch2pix_loss` against the example's F; then
    :func:`batch_loss` (``weight_cls * mean_pairs(cls) + mean_pairs(geo)``).

    Args:
        model: :class:`Patch2Pix` regressors, or a wrapper whose ``module`` is one (e.g. DDP);
            ``model.conf`` is read from the unwrapped module.
        examples: outputs of :func:`make_training_example`; invalid ones are skipped.
        conf: overrides of ``model.conf`` for the loss and expansion.

    Returns:
        ``loss``: scalar tensor; when no pair contributes it is ``0 * sum(parameters)`` so that a
        backward still reaches every parameter (data-parallel workers stay in step) and changes
        nothing. ``stats``: floats ``cls``, ``geo``, ``n_cls``, ``n_geo``, ``n_pairs``,
        ``n_anchors``, ``n_pos_mid``, ``n_pos_fine``, ``contributes`` (1.0 / 0.0) and the Sampson
        medians of :func:`_sampson_stats`.
    """
    if not examples:
        raise ValueError("examples_loss needs at least one example")
    inner = getattr(model, "module", model)
    c = merge_conf({**inner.conf, **dict(conf or {})})
    device = next(inner.parameters()).device
    results, phis = [], []
    n_anchors = 0
    for i, ex in enumerate(examples):
        _check_example(ex, i)
        if not ex["valid"] or ex["proposals"].shape[0] == 0:
            continue
        anchors = _anchors(ex, c, device)
        if anchors.shape[0] < 2:
            continue  # BatchNorm needs >= 2 rows; make_training_example guarantees ptmax >= 2
        feats0 = [f.to(device) for f in ex["feats0"]]
        feats1 = [f.to(device) for f in ex["feats1"]]
        pred = model(feats0, feats1, anchors, ex["size0"], ex["size1"])
        F = ex["F"].to(device)
        results.append(patch2pix_loss(pred, anchors, F, c))
        with torch.no_grad():
            phis.append([sampson_distance_sq_torch(F, m[:, :2], m[:, 2:])
                         for m in (anchors, pred["mid"], pred["fine"])])
        n_anchors += int(anchors.shape[0])
    zero = sum(p.sum() for p in inner.parameters()) * 0.0
    if not results:
        stats = {"cls": float("nan"), "geo": float("nan"), "n_cls": 0.0, "n_geo": 0.0}
        stats.update(_sampson_stats(*(torch.zeros(0) for _ in range(3)), c))
        n_pos_mid = n_pos_fine = 0
        loss, contributes = zero, False
    else:
        batch = batch_loss(results, c)
        contributes = bool(batch["n_cls"] + batch["n_geo"] > 0 and isinstance(batch["loss"], Tensor)
                           and batch["loss"].requires_grad)
        loss = batch["loss"] + zero if contributes else zero
        stats = {k: float(batch[k].detach()) if isinstance(batch[k], Tensor) else float(batch[k])
                 for k in ("cls", "geo", "n_cls", "n_geo")}
        stats.update(_sampson_stats(*(torch.cat([p[j] for p in phis]) for j in range(3)), c))
        n_pos_mid = sum(r["n_pos_mid"] for r in results)
        n_pos_fine = sum(r["n_pos_fine"] for r in results)
    stats.update(n_pairs=float(len(results)), n_anchors=float(n_anchors), n_pos_mid=float(n_pos_mid),
                 n_pos_fine=float(n_pos_fine), contributes=1.0 if contributes else 0.0)
    return loss, stats


def training_step(
    model: Patch2Pix,
    optimizer: torch.optim.Optimizer,
    examples: Sequence[Mapping[str, Any]],
    conf: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """One optimiser step on a batch of image pairs (spec section 4): :func:`examples_loss` in
    train mode, ``backward`` and ``optimizer.step()``. No step is taken when no pair contributes
    (e.g. no positives anywhere).

    Args:
        model: Patch2Pix regressors (put in train mode here).
        optimizer: over ``model``'s parameters.
        examples: outputs of :func:`make_training_example`; invalid ones are skipped.
        conf: overrides of ``model.conf`` for the loss and expansion (thresholds, weights, panc,
            pshift); default ``model.conf``.

    Returns:
        floats: ``loss``, ``cls``, ``geo`` (batch values), ``n_cls``, ``n_geo`` (pairs in each
        mean), ``n_pairs`` (pairs forwarded), ``n_anchors``, ``n_pos_mid``, ``n_pos_fine``,
        ``stepped`` (1.0 / 0.0), ``seconds``, and the Sampson medians of
        :func:`_sampson_stats` over all anchors (``sampson_in`` / ``_mid`` / ``_fine`` in px^2,
        ``frac_fine_ok``, ``n_near``).
    """
    start = time.perf_counter()
    model.train()
    loss, stats = examples_loss(model, examples, conf)
    optimizer.zero_grad(set_to_none=True)
    stepped = bool(stats.pop("contributes"))
    if stepped:
        loss.backward()
        optimizer.step()
    out = {"loss": float(loss.detach()) if stepped or stats["n_pairs"] else float("nan"), **stats}
    if not stats["n_pairs"]:
        out["loss"] = float("nan")
    out.update(stepped=1.0 if stepped else 0.0, seconds=time.perf_counter() - start)
    return out


@torch.no_grad()
def evaluate_examples(
    model: Patch2Pix,
    examples: Sequence[Mapping[str, Any]],
    conf: Mapping[str, Any] | None = None,
    expand: bool = False,
    batch_stats: bool = False,
) -> dict[str, float]:
    """Refinement quality on examples, without gradients and without changing the model.

    ``expand=False`` (inference behaviour) refines each example's proposals as they are;
    ``expand=True`` refines the training anchors (:func:`expand_anchors` when ``panc == 8``),
    i.e. exactly the inputs :func:`training_step` fits on held-in examples.

    Over the inputs with ``phi < geo_thresholds[0]`` (pooled over examples) it reports the
    median squared Sampson error (px^2) of the inputs, mid and fine matches and the fraction of
    fine matches under ``cls_thresholds[1]`` (see :func:`_sampson_stats`), plus
    ``mean_conf_near`` / ``mean_conf_far``: mean fine confidence of the fine matches under / over
    that threshold. The model's train/eval mode is restored afterwards.

    Args:
        model: Patch2Pix regressors.
        examples: outputs of :func:`make_training_example`.
        conf: overrides of ``model.conf`` (thresholds, panc, pshift).
        expand: evaluate on the training anchors instead of the proposals.
        batch_stats: run BatchNorm with each pair's batch statistics (the train-mode function
            :func:`training_step` optimises) instead of the running statistics (eval mode,
            inference). The running statistics are left untouched either way.

    Returns:
        floats ``n_near``, ``sampson_in``, ``sampson_mid``, ``sampson_fine``, ``frac_fine_ok``,
        ``mean_conf_near``, ``mean_conf_far``, ``n_proposals``.
    """
    c = merge_conf({**model.conf, **dict(conf or {})})
    was_training = model.training
    saved = {k: v.clone() for k, v in model.named_buffers()}  # BN running stats and counters
    model.train(batch_stats)
    try:
        device = next(model.parameters()).device
        phis, confs = [], []
        for i, ex in enumerate(examples):
            _check_example(ex, i)
            if not ex["valid"] or ex["proposals"].shape[0] == 0:
                continue
            props = _anchors(ex, c, device) if expand else ex["proposals"].to(device)
            if batch_stats and props.shape[0] < 2:
                continue  # BatchNorm batch statistics need >= 2 rows
            pred = model([f.to(device) for f in ex["feats0"]], [f.to(device) for f in ex["feats1"]],
                         props, ex["size0"], ex["size1"])
            F = ex["F"].to(device)
            phis.append([sampson_distance_sq_torch(F, m[:, :2], m[:, 2:]) for m in (props, pred["mid"], pred["fine"])])
            confs.append(pred["fine_conf"])
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])
        model.train(was_training)
    if not phis:
        stats = _sampson_stats(*(torch.zeros(0) for _ in range(3)), c)
        return {**stats, "mean_conf_near": float("nan"), "mean_conf_far": float("nan"), "n_proposals": 0.0}
    phi_in, phi_mid, phi_fine = (torch.cat([p[j] for p in phis]) for j in range(3))
    fine_conf = torch.cat(confs).to(phi_fine.dtype)
    near = phi_fine < c["cls_thresholds"][1]
    return {
        **_sampson_stats(phi_in, phi_mid, phi_fine, c),
        "mean_conf_near": float(fine_conf[near].mean()) if bool(near.any()) else float("nan"),
        "mean_conf_far": float(fine_conf[~near].mean()) if bool((~near).any()) else float("nan"),
        "n_proposals": float(phi_in.numel()),
    }


@torch.no_grad()
def recalibrate_batchnorm(
    model: Patch2Pix,
    examples: Sequence[Mapping[str, Any]],
    conf: Mapping[str, Any] | None = None,
) -> int:
    """Recompute the regressors' BatchNorm running statistics on training anchors ("precise BN").

    During training the running statistics are an exponential average (momentum 0.1) of batch
    statistics taken under weights that kept changing, so right after a short training run
    they lag the weights and eval-mode outputs can differ a lot from train-mode ones (demo
    scene, 2 pairs, 25 Adam steps at lr 5e-4: held-in fine Sampson median ~1 px^2 with batch
    statistics, ~25 px^2 with the running ones, ~3 px^2 after this recalibration). This
    resets them and sets each to the plain average of the per-pair batch statistics over
    ``examples`` (each pair forwarded once, on its training anchors, in train mode, without
    gradients). Weights are not touched; the train/eval mode
    and the BN momenta are restored.

    Args:
        model: Patch2Pix regressors.
        examples: outputs of :func:`make_training_example` (invalid ones are skipped).
        conf: overrides of ``model.conf`` (panc, pshift).

    Returns:
        Number of pairs the statistics were averaged over.

    Raises:
        ValueError: no example has >= 2 anchors (the statistics are left unchanged).
    """
    c = merge_conf({**model.conf, **dict(conf or {})})
    device = next(model.parameters()).device
    usable = []
    for i, ex in enumerate(examples):
        _check_example(ex, i)
        if ex["valid"] and ex["proposals"].shape[0] > 0:
            anchors = _anchors(ex, c, device)
            if anchors.shape[0] >= 2:
                usable.append((ex, anchors))
    if not usable:
        raise ValueError("recalibrate_batchnorm needs at least one example with >= 2 anchors")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [b.momentum for b in bns]
    was_training = model.training
    try:
        for b in bns:
            b.reset_running_stats()
            b.momentum = None  # cumulative average over the forwards below
        model.train()
        for ex, anchors in usable:
            model([f.to(device) for f in ex["feats0"]], [f.to(device) for f in ex["feats1"]],
                  anchors, ex["size0"], ex["size1"])
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.train(was_training)
    return len(usable)
