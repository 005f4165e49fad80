"""Patch2Pix refinement: mid and fine regressors, patch expansion, weakly supervised loss.

Implemented from ``docs/specs/patch2pix.md`` sections 3-5 (a description of the official code, not
the code itself). The proposal stage (backbone, NCNet) lives elsewhere; this module starts from
a feature pyramid per image and a set of (N, 4) pixel matches ``[xA, yA, xB, yB]``.

Pipeline per image pair::

    matches (N, 4) --collect 16x16 windows around int(match) in A and B--> (N, 2*sumC, 16, 16)
        --mid RegressorHead--> offset (N, 4), conf (N,) --> mid = clamp(matches + offset)
        --collect windows around int(mid)--> fine RegressorHead --> fine = clamp(mid + offset)

Conventions:

- Pixel-index coordinates (pixel (i, j) has centre (j, i), no 0.5 shift), x right, y down,
  as in the reference code. Outputs are clamped to ``[0, W] x [0, H]`` (W, not W - 1).
- Epipolar convention: ``x_B^T F x_A = 0`` (``F`` maps image-A points to lines in B), the
  same as :mod:`matchmill.geometry.epipolar`.
- Squared Sampson distance (px^2) everywhere; thresholds 50 / 5 are squared pixels.

Deliberate deviations from the reference behaviour (each one is documented where it happens):

- ``forward`` on N = 0 matches returns empty outputs (the reference code crashes, issue #6).
- :func:`filter_matches` returns an EMPTY result when no match passes the confidence threshold
  (the reference returns all matches as a fallback).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

import torch.nn.functional as nnf
from torch import Tensor, nn

from matchmill.config import merge_conf as strict_merge  # this module's own merge_conf adds its value checks

__all__ = [
    "DEFAULT_CONF",
    "CPU_CONF",
    "cpu_sized",
    "merge_conf",
    "PyramidTables",
    "pyramid_tables",
    "collect_patch_features",
    "RegressorHead",
    "Patch2Pix",
    "expand_anchors",
    "sampson_distance_sq_torch",
    "balanced_bce",
    "patch2pix_loss",
    "batch_loss",
    "filter_matches",
]

DEFAULT_CONF: dict[str, Any] = {
    "psize": 16,  # side (px) of the square window gathered around each match in both images
    "feat_idx": [0, 1, 2, 3],  # pyramid levels used for refinement (0 = image, 1 = conv1, 2 = layer1, 3 = layer2)
    "feat_channels": [3, 64, 64, 128],  # channels of each used level, aligned with feat_idx (sum 259)
    "feat_strides": [1, 2, 4, 8],  # cumulative stride (px per cell) of each used level, aligned with feat_idx
    "conv_dims": [512, 512],  # output channels of the two regressor convs (CPU-sized variant: 128)
    "conv_kernels": [3, 3],  # kernel sizes of the two convs (padding k // 2)
    "conv_strides": [2, 1],  # strides of the two convs: 16x16 -> 8x8 -> 8x8, then max-pool to 1x1
    "fc_dims": [512, 256],  # hidden widths of the two FC layers before the 5-way output (CPU: 128, 64)
    "regr_batch": 1200,  # matches per regressor mini-batch at inference (training runs one batch)
    "panc": 8,  # anchors per proposal in training (local patch expansion); 1 = no expansion
    "pshift": 8,  # pixel shift of the expansion anchors (psize / 2 in the reference)
    "cls_thresholds": [50.0, 5.0],  # (mid, fine) squared Sampson px^2 below which an INPUT is labelled correct
    "geo_thresholds": [50.0, 5.0],  # (mid, fine) squared Sampson px^2: inputs whose OUTPUT enters the geometric loss
    "weight_cls": 10.0,  # alpha: weight of the classification loss against the geometric loss
    "weight_geo": [1.0, 1.0],  # (mid, fine) weights of the two geometric terms
    "confidence": 0.25,  # fine confidence a match must exceed to be kept at inference (the refine stage key)
    "shared": False,  # True: mid and fine stages share one regressor's weights
}


def cpu_sized(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CPU-sized variant of ``conf`` (default :data:`DEFAULT_CONF`): regressor widths 128.

    conv_dims [128, 128] and fc_dims [128, 64] (the last FC keeps the reference's 2:1 ratio).
    Everything else, including the feature pyramid, is unchanged.
    """
    out = merge_conf(conf)
    out["conv_dims"] = [128, 128]
    out["fc_dims"] = [128, 64]
    return out


def merge_conf(conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Deep copy of :data:`DEFAULT_CONF` updated with ``conf``; validated.

    Raises:
        ValueError: on unknown keys or inconsistent values.
    """
    out = strict_merge(DEFAULT_CONF, conf, "Patch2Pix")
    _validate_conf(out)
    return out


def _validate_conf(conf: Mapping[str, Any]) -> None:
    """Raise ValueError on an inconsistent conf."""
    n_levels = len(conf["feat_idx"])
    for key in ("feat_channels", "feat_strides"):
        if len(conf[key]) != n_levels:
            raise ValueError(f"{key} must have one entry per feat_idx level ({n_levels}), got {conf[key]}")
    if conf["psize"] <= 0 or conf["psize"] % 2:
        raise ValueError(f"psize must be a positive even integer, got {conf['psize']}")
    if len(conf["conv_dims"]) != len(conf["conv_kernels"]) or len(conf["conv_dims"]) != len(conf["conv_strides"]):
        raise ValueError("conv_dims, conv_kernels and conv_strides must have the same length")
    for key in ("cls_thresholds", "geo_thresholds", "weight_geo"):
        if len(conf[key]) != 2:
            raise ValueError(f"{key} must be a (mid, fine) pair, got {conf[key]}")
    if conf["regr_batch"] <= 0 or conf["panc"] not in (1, 8):
        raise ValueError("regr_batch must be > 0 and panc must be 1 or 8")


CPU_CONF: dict[str, Any] = cpu_sized(DEFAULT_CONF)

_NORM_EPS = 1e-6  # per-pixel L2 normalisation epsilon of the gathered windows
# Window centres within this many pixels of an integer are snapped to it before truncation: an
# integer pixel mapped to original pixels and back (geometry.frames, float32) comes back a few
# 1e-6 px off, and 99.99999 must not truncate to 99 (a window one pixel off). Exact integers and
# everything farther than this from an integer truncate as before.
_SNAP_TOL = 1e-3


# --------------------------------------------------------------------------------------------
# Feature windows
# --------------------------------------------------------------------------------------------


class PyramidTables(NamedTuple):
    """Gather-friendly view of one image's feature pyramid (built once, reused by both stages).

    Attributes:
        tables: per level, (H_j * W_j, C_j) contiguous rows (one feature vector per cell).
        sqnorms: per level, (H_j * W_j,) squared L2 norm of each cell's vector.
        shapes: per level, (H_j, W_j).
        strides: per level, cumulative stride s_j.
    """

    tables: list[Tensor]
    sqnorms: list[Tensor]
    shapes: list[tuple[int, int]]
    strides: list[int]


def pyramid_tables(feats: Sequence[Tensor], strides: Sequence[int]) -> PyramidTables:
    """Row tables of a pyramid: (1, C_j, H_j, W_j) maps -> (H_j * W_j, C_j) (see PyramidTables).

    Gathering rows of a contiguous channel-last table is ~3x faster than gathering from the
    transposed view of an NCHW map, and the squared norms let the per-pixel normalisation be
    computed from (N, P, P) gathers instead of a pass over the (N, P, P, sumC) windows.
    """
    if len(feats) != len(strides) or len(feats) == 0:
        raise ValueError(f"need one stride per feature level: {len(feats)} levels, {len(strides)} strides")
    tables, sqnorms, shapes = [], [], []
    for j, f in enumerate(feats):
        if f.dim() != 4 or f.shape[0] != 1:
            raise ValueError(f"feats[{j}] must have shape (1, C, H, W), got {tuple(f.shape)}")
        _, c, h, w = f.shape
        table = f[0].reshape(c, h * w).t().contiguous()
        tables.append(table)
        sqnorms.append((table * table).sum(dim=1))
        shapes.append((h, w))
    return PyramidTables(tables, sqnorms, shapes, [int(s) for s in strides])


def _window_pieces(levels: PyramidTables, centers: Tensor, psize: int, eps: float) -> list[Tensor]:
    """Normalised per-level windows, each (N, P, P, C_j); concatenated they are unit vectors."""
    if centers.dim() != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must have shape (N, 2), got {tuple(centers.shape)}")
    n = centers.shape[0]
    device = levels.tables[0].device
    c = centers.detach()
    if c.is_floating_point():
        nearest = torch.round(c)
        c = torch.where((c - nearest).abs() <= _SNAP_TOL, nearest, c)
    cell = torch.trunc(c).to(device=device, dtype=torch.long)  # (N, 2) int(x), int(y)
    offsets = torch.arange(psize, device=device) - psize // 2  # (P,)
    px = cell[:, 0:1] + offsets  # (N, P) pixel x of each window column
    py = cell[:, 1:2] + offsets  # (N, P) pixel y of each window row
    pieces, sq = [], None
    for table, sqn, (h, w), s in zip(levels.tables, levels.sqnorms, levels.shapes, levels.strides):
        ix = torch.div(px, s, rounding_mode="floor").clamp_(0, w - 1)  # (N, P)
        iy = torch.div(py, s, rounding_mode="floor").clamp_(0, h - 1)  # (N, P)
        flat = (iy[:, :, None] * w + ix[:, None, :]).reshape(-1)  # (N*P*P,) row-major (y, x)
        pieces.append(table.index_select(0, flat).view(n, psize, psize, table.shape[1]))
        level_sq = sqn.index_select(0, flat).view(n, psize, psize, 1)
        sq = level_sq if sq is None else sq + level_sq
    scale = torch.rsqrt(sq + eps)  # (N, P, P, 1): 1 / sqrt(sum over all levels of v^2 + eps)
    return [piece * scale for piece in pieces]


def collect_patch_features(
    feats: Sequence[Tensor],
    centers: Tensor,
    strides: Sequence[int],
    psize: int = 16,
    eps: float = _NORM_EPS,
) -> Tensor:
    """Gather a psize x psize pixel window of multi-level features around each centre.

    The centre is truncated to integers (``int(x), int(y)``), after snapping coordinates within
    ``_SNAP_TOL`` (1e-3 px) of an integer to it (float round-trip noise of frame conversions
    must not move a window by a pixel); the window covers pixel offsets
    ``d in {-psize/2, ..., psize/2 - 1}``. Level ``j`` with stride ``s_j`` is read at cell
    ``(floor((y + dy) / s_j), floor((x + dx) / s_j))`` clamped to the map, i.e. every level is
    replicated (nearest neighbour) onto the same pixel grid. The levels are concatenated and
    each pixel's vector is L2-normalised: ``v / sqrt(sum(v^2) + eps)``. Vectorised: one
    ``index_select`` per level, no loop over matches.

    Window pixel ``[psize/2, psize/2]`` is the centre pixel itself (offset 0).

    Args:
        feats: one map per level, each (1, C_j, H_j, W_j).
        centers: (N, 2) pixel positions (x, y), float or int. Not differentiated (indices only).
        strides: (L,) cumulative stride of each level, e.g. [1, 2, 4, 8].
        psize: window side in pixels (even).
        eps: normalisation epsilon.

    Returns:
        (N, sum_j C_j, psize, psize) features, dtype of ``feats[0]``, in channels-last memory
        format (``.contiguous()`` gives NCHW storage if needed).
    """
    pieces = _window_pieces(pyramid_tables(feats, strides), centers, psize, eps)
    return torch.cat(pieces, dim=-1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# Regressor
# --------------------------------------------------------------------------------------------


class RegressorHead(nn.Module):
    """Patch-pair regressor (``FeatRegressNet`` layout of spec section 3).

    Layers: conv k0/s0 (no bias) + BN -> conv k1/s1 (no bias) + BN -> ReLU (a single one, none
    between the convs) -> MaxPool over the remaining spatial extent -> [Linear + BN1d + ReLU]
    per ``fc_dims`` -> Linear -> 5.

    Outputs: ``offset = psize * tanh(relu(o[:, :4])) - psize / 2`` in ``[-psize/2, psize/2)`` and
    ``conf = sigmoid(o[:, 4])`` in (0, 1); both open bounds hold exactly in floating point (the
    saturated values are clamped just inside). The ReLU is kept from the reference: a negative
    pre-activation gives offset -psize/2 and zero gradient.

    Args:
        in_channels: 2 * sum of the pyramid channels (A and B windows stacked), e.g. 518.
        psize: window side, e.g. 16.
        conv_dims, conv_kernels, conv_strides: conv layer widths, kernels, strides.
        fc_dims: hidden FC widths.

    Shape:
        - Input: (N, in_channels, psize, psize)
        - Output: offset (N, 4), conf (N,)
    """

    def __init__(
        self,
        in_channels: int,
        psize: int = 16,
        conv_dims: Sequence[int] = (512, 512),
        conv_kernels: Sequence[int] = (3, 3),
        conv_strides: Sequence[int] = (2, 1),
        fc_dims: Sequence[int] = (512, 256),
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.psize = int(psize)
        convs: list[nn.Module] = []
        size, cin = self.psize, self.in_channels
        for cout, k, s in zip(conv_dims, conv_kernels, conv_strides):
            convs += [nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
            size = (size + 2 * (k // 2) - k) // s + 1
            cin = cout
        if size < 1:
            raise ValueError(f"convs reduce a {psize}x{psize} window to nothing")
        convs += [nn.ReLU(inplace=True), nn.MaxPool2d(size)]
        self.convs = nn.Sequential(*convs)
        fcs: list[nn.Module] = []
        for cout in fc_dims:
            fcs += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
            cin = cout
        fcs.append(nn.Linear(cin, 5))
        self.fcs = nn.Sequential(*fcs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform conv / linear weights, zero biases, BN2d weight ~ N(1, 0.02), bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, P, P) -> offset (N, 4) in [-P/2, P/2), conf (N,) in (0, 1)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.psize, self.psize):
            raise ValueError(
                f"RegressorHead expects (N, {self.in_channels}, {self.psize}, {self.psize}), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:  # BatchNorm cannot run on an empty batch
            return x.new_zeros((0, 4)), x.new_zeros((0,))
        o = self.fcs(self.convs(x).flatten(1))  # (N, 5)
        half = self.psize / 2
        offset = self.psize * torch.tanh(torch.relu(o[:, :4])) - half
        conf = torch.sigmoid(o[:, 4])
        # In floating point tanh / sigmoid saturate to exactly 1 (fp32: tanh for inputs >~ 9), which
        # would give offset == +psize/2 and conf == 1. Clamp to the largest value below the open
        # bound; gradient-neutral, since the saturated tanh / sigmoid already have zero derivative.
        top = torch.nextafter(o.new_tensor(half), o.new_tensor(0.0))
        one = torch.nextafter(o.new_tensor(1.0), o.new_tensor(0.0))
        tiny = torch.finfo(o.dtype).tiny
        return torch.minimum(offset, top), torch.minimum(conf, one).clamp(min=tiny)


# --------------------------------------------------------------------------------------------
# Full refiner
# --------------------------------------------------------------------------------------------


def _check_matches(matches: Tensor, name: str = "matches") -> None:
    """Raise ValueError unless ``matches`` is a floating (N, 4) tensor."""
    if not isinstance(matches, Tensor) or matches.dim() != 2 or matches.shape[1] != 4:
        shape = tuple(matches.shape) if isinstance(matches, Tensor) else type(matches).__name__
        raise ValueError(f"{name} must be a (N, 4) tensor [xA, yA, xB, yB], got {shape}")
    if not matches.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {matches.dtype}")


def _clamp_to_images(matches: Tensor, size_a: Sequence[float], size_b: Sequence[float]) -> Tensor:
    """Clamp (N, 4) matches to [0, W] x [0, H] of each image (sizes given as (W, H))."""
    upper = matches.new_tensor([size_a[0], size_a[1], size_b[0], size_b[1]])
    return torch.minimum(torch.clamp(matches, min=0.0), upper)


class Patch2Pix(nn.Module):
    """Mid + fine patch-to-pixel refinement of (N, 4) matches.

    Args:
        conf: overrides of :data:`DEFAULT_CONF` (unknown keys raise ValueError).

    ``forward`` returns a dict:
        - ``mid``: (N, 4) mid-stage matches, ``clamp(matches + offset_mid)``;
        - ``mid_conf``: (N,) mid confidence (only used by the loss);
        - ``fine``: (N, 4) final matches, ``clamp(mid + offset_fine)``;
        - ``fine_conf``: (N,) final confidence.

    The fine windows are gathered at ``int(mid)``; ``mid`` is NOT detached, so the fine
    geometric loss back-propagates into the mid regressor through the additive path
    ``fine = mid + offset_fine``. In training mode all matches go through the regressors as one
    batch (BatchNorm statistics over the whole pair); in eval mode they are processed in chunks
    of ``regr_batch`` (results do not depend on the chunking since BN uses running stats).
    """

    #: Its entry in matchmill/models/official_checkpoints.py (which official checkpoint layouts it reads).
    checkpoint_kind = "patch2pix"

    default_conf = DEFAULT_CONF

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(conf)
        c = self.conf
        in_channels = 2 * sum(c["feat_channels"])
        kwargs = dict(
            psize=c["psize"],
            conv_dims=c["conv_dims"],
            conv_kernels=c["conv_kernels"],
            conv_strides=c["conv_strides"],
            fc_dims=c["fc_dims"],
        )
        self.mid_regressor = RegressorHead(in_channels, **kwargs)
        self.fine_regressor = self.mid_regressor if c["shared"] else RegressorHead(in_channels, **kwargs)

    # -- input handling ----------------------------------------------------------------------

    def _select_levels(self, feats: Sequence[Tensor], name: str) -> list[Tensor]:
        """The ``feat_idx`` levels of a pyramid, with their channel counts checked."""
        idx = self.conf["feat_idx"]
        if len(feats) <= max(idx):
            raise ValueError(f"{name} has {len(feats)} levels; feat_idx {idx} needs at least {max(idx) + 1}")
        out = [feats[i] for i in idx]
        for i, f, c in zip(idx, out, self.conf["feat_channels"]):
            if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[0] != 1 or f.shape[1] != c:
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"{name}[{i}] must have shape (1, {c}, H, W), got {shape}")
        return out

    @staticmethod
    def _check_size(size: Sequence[float], name: str) -> tuple[float, float]:
        """(W, H) as floats; ValueError unless two positive numbers."""
        if len(size) != 2 or not all(float(v) > 0 for v in size):
            raise ValueError(f"{name} must be (W, H) with positive entries, got {size!r}")
        return float(size[0]), float(size[1])

    # -- computation ---------------------------------------------------------------------------

    def _regress(self, head: RegressorHead, ta: PyramidTables, tb: PyramidTables, m: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets (N, 4) and confidences (N,) of ``head`` for windows around int(m)."""
        psize = self.conf["psize"]
        pieces = _window_pieces(ta, m[:, :2], psize, _NORM_EPS) + _window_pieces(tb, m[:, 2:], psize, _NORM_EPS)
        x = torch.cat(pieces, dim=-1).permute(0, 3, 1, 2)  # (N, 2 * sumC, P, P), channels-last
        return head(x)

    def _refine(self, ta: PyramidTables, tb: PyramidTables, m: Tensor, sa, sb) -> dict[str, Tensor]:
        """Mid then fine stage on one batch of (N, 4) matches."""
        off_mid, conf_mid = self._regress(self.mid_regressor, ta, tb, m)
        mid = _clamp_to_images(m + off_mid.to(m.dtype), sa, sb)
        off_fine, conf_fine = self._regress(self.fine_regressor, ta, tb, mid)
        fine = _clamp_to_images(mid + off_fine.to(m.dtype), sa, sb)
        return {"mid": mid, "mid_conf": conf_mid, "fine": fine, "fine_conf": conf_fine}

    def forward(
        self,
        feats_a: Sequence[Tensor],
        feats_b: Sequence[Tensor],
        matches: Tensor,
        image_size_a: Sequence[float],
        image_size_b: Sequence[float],
    ) -> dict[str, Tensor]:
        """Refine coarse matches of one image pair.

        Args:
            feats_a: pyramid of image A indexed by level, level ``i`` (1, C_i, H_i, W_i); the
                levels in ``conf['feat_idx']`` are used (level 0 is the normalised image).
            feats_b: same for image B.
            matches: (N, 4) float [xA, yA, xB, yB] pixels in the frame of the feature pyramid,
                on the device of the features. In training these are the anchors
                (:meth:`make_anchors`); the loss needs them too.
            image_size_a: (W, H) of image A (clamping bounds).
            image_size_b: (W, H) of image B.

        Returns:
            dict with ``mid`` (N, 4), ``mid_conf`` (N,), ``fine`` (N, 4), ``fine_conf`` (N,).
            N = 0 gives empty tensors of those shapes.
        """
        fa = self._select_levels(feats_a, "feats_a")
        fb = self._select_levels(feats_b, "feats_b")
        _check_matches(matches)
        sa = self._check_size(image_size_a, "image_size_a")
        sb = self._check_size(image_size_b, "image_size_b")
        if not bool(torch.isfinite(matches).all()):
            raise ValueError("matches contain non-finite values")
        n = matches.shape[0]
        if self.training and n == 1:
            raise ValueError("training needs at least 2 matches per pair (BatchNorm batch statistics)")
        if n == 0:
            empty4 = matches.new_zeros((0, 4))
            empty = fa[0].new_zeros((0,))
            return {"mid": empty4, "mid_conf": empty, "fine": empty4.clone(), "fine_conf": empty.clone()}
        ta = pyramid_tables(fa, self.conf["feat_strides"])  # built once for both stages and all chunks
        tb = pyramid_tables(fb, self.conf["feat_strides"])
        chunk = self.conf["regr_batch"]
        if self.training or n <= chunk:
            return self._refine(ta, tb, matches, sa, sb)
        parts = [self._refine(ta, tb, matches[i : i + chunk], sa, sb) for i in range(0, n, chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def make_anchors(self, proposals: Tensor) -> Tensor:
        """Regressor inputs for (N, 4) proposals: in training with ``panc == 8`` the (8N, 4)
        :func:`expand_anchors` (shift ``pshift``); otherwise the proposals themselves."""
        _check_matches(proposals, "proposals")
        if self.training and self.conf["panc"] == 8:
            return expand_anchors(proposals, self.conf["pshift"])
        return proposals

    @torch.no_grad()
    def predict(
        self,
        feats_a: Sequence[Tensor],
        feats_b: Sequence[Tensor],
        matches: Tensor,
        image_size_a: Sequence[float],
        image_size_b: Sequence[float],
        threshold: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Inference: forward + :func:`filter_matches` (threshold default ``conf["confidence"]``).

        Call ``.eval()`` first. Returns (M, 4) fine matches and (M,) fine confidences, M <= N,
        possibly M = 0.
        """
        out = self(feats_a, feats_b, matches, image_size_a, image_size_b)
        thr = self.conf["confidence"] if threshold is None else threshold
        return filter_matches(out["fine"], out["fine_conf"], thr)


def expand_anchors(matches: Tensor, shift: float = 8) -> Tensor:
    """Local patch expansion: replace each proposal by 8 anchor pairs (training only).

    Order: proposal-major. Rows ``8 i .. 8 i + 7`` come from proposal ``i``; with
    ``D = [(-s, -s), (+s, -s), (-s, +s), (+s, +s)]`` (dx, dy):

    - rows ``8 i + k``, k = 0..3: A's point moved by ``D[k]``, B's point unchanged;
    - rows ``8 i + 4 + k``, k = 0..3: A's point unchanged, B's point moved by ``D[k]``.

    So ``expand_anchors(m).view(N, 8, 4)[:, k]`` is anchor ``k`` of every proposal. Anchors
    are not clamped (window collection clamps its reads to the feature maps).

    Args:
        matches: (N, 4) [xA, yA, xB, yB].
        shift: pixel shift s (``pshift``, 8 = psize / 2).

    Returns:
        (8N, 4) anchors, same dtype / device.
    """
    _check_matches(matches)
    s = float(shift)
    d = matches.new_tensor([[-s, -s], [s, -s], [-s, s], [s, s]])  # (4, 2)
    zero = torch.zeros_like(d)
    delta = torch.cat([torch.cat([d, zero], 1), torch.cat([zero, d], 1)], 0)  # (8, 4)
    return (matches[:, None, :] + delta[None]).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def sampson_distance_sq_torch(F: Tensor, x1: Tensor, x2: Tensor, eps: float = 1e-8) -> Tensor:
    """Squared Sampson distance (px^2) for ``x2^T F x1 = 0``, differentiable.

    ``phi = (x2^T F x1)^2 / ((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2 + eps)``,
    computed in float64 and returned in the (promoted) dtype of ``x1``, ``x2``.

    ``F`` is first scaled to unit Frobenius norm. phi is invariant to the scale of F except
    through ``eps``; without the normalisation a pixel-frame ``K^-T E K^-1`` (entries ~ 1/f^2,
    denominator ~ 1e-5) would be biased by eps at the 1e-3 level, while the reference builds F
    in a form scaled by det(K) where eps is negligible. Normalising makes the result independent
    of how the caller scaled F.

    Args:
        F: (3, 3), or (B, 3, 3) with B = 1 or B = N (one matrix per correspondence).
        x1: (N, 2) points in the first image (A).
        x2: (N, 2) points in the second image (B).

    Returns:
        (N,) squared distances.
    """
    if x1.dim() != 2 or x1.shape[1] != 2 or x2.shape != x1.shape:
        raise ValueError(f"x1 and x2 must both be (N, 2), got {tuple(x1.shape)} and {tuple(x2.shape)}")
    n = x1.shape[0]
    if F.shape[-2:] != (3, 3) or F.dim() not in (2, 3) or (F.dim() == 3 and F.shape[0] not in (1, n)):
        raise ValueError(f"F must be (3, 3), (1, 3, 3) or (N={n}, 3, 3), got {tuple(F.shape)}")
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    f = F.to(torch.float64)
    f = f / torch.linalg.matrix_norm(f, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    ones = x1.new_ones((n, 1), dtype=torch.float64)
    h1 = torch.cat([x1.to(torch.float64), ones], dim=1)  # (N, 3)
    h2 = torch.cat([x2.to(torch.float64), ones], dim=1)  # (N, 3)
    if f.dim() == 2:
        fx1 = h1 @ f.t()  # (N, 3) rows F x1
        ftx2 = h2 @ f  # (N, 3) rows F^T x2
    else:
        fx1 = (f @ h1[:, :, None])[..., 0]
        ftx2 = (f.transpose(1, 2) @ h2[:, :, None])[..., 0]
    num = (h2 * fx1).sum(dim=1) ** 2
    den = fx1[:, 0] ** 2 + fx1[:, 1] ** 2 + ftx2[:, 0] ** 2 + ftx2[:, 1] ** 2
    return (num / (den + eps)).to(dtype)


def balanced_bce(conf: Tensor, labels: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy, mean over elements.

    Positives are weighted ``#neg / #pos``, negatives 1:
    ``mean_i w_i * -(y_i log p_i + (1 - y_i) log(1 - p_i))``. With no positives the weight is
    undefined; callers skip that case (see :func:`patch2pix_loss`). With no negatives the
    positive weight is 0 and the loss is 0.

    Args:
        conf: (N,) probabilities in (0, 1).
        labels: (N,) bool or {0, 1}.

    Returns:
        scalar tensor.
    """
    if conf.shape != labels.shape or conf.dim() != 1:
        raise ValueError(f"conf and labels must both be (N,), got {tuple(conf.shape)} and {tuple(labels.shape)}")
    y = labels.to(conf.dtype)
    n_pos = y.sum()
    n_neg = y.numel() - n_pos
    weight = torch.where(labels.bool(), n_neg / n_pos.clamp(min=1), torch.ones_like(y)).detach()
    return nnf.binary_cross_entropy(conf, y, weight=weight, reduction="mean")


def patch2pix_loss(
    pred: Mapping[str, Tensor],
    inputs: Tensor,
    F: Tensor,
    conf: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Weakly supervised Patch2Pix loss of one image pair (spec section 4).

    With ``phi`` the squared Sampson distance under ``F`` (x_B^T F x_A = 0), thresholds
    ``(t_cls_mid, t_cls_fine) = cls_thresholds`` and ``(t_geo_mid, t_geo_fine) = geo_thresholds``:

    - labels (no gradient): mid = ``phi(inputs) < t_cls_mid``, fine = ``phi(mid) < t_cls_fine``;
    - ``cls = BCE_bal(mid_conf, mid labels) + BCE_bal(fine_conf, fine labels)``; when either
      stage has zero positives the whole pair is skipped, classification AND geometric parts
      (``cls_valid = geo_valid = False``, ``loss = 0``; spec: "the pair contributes nothing");
    - ``geo_mid = mean phi(mid)`` over inputs with ``phi(inputs) < t_geo_mid``;
      ``geo_fine = mean phi(fine)`` over those with ``phi(mid) < t_geo_fine`` (selection
      without gradient); an empty selection skips that term;
      ``geo = w_mid * geo_mid + w_fine * geo_fine`` (``geo_valid`` if at least one term exists);
    - ``loss = weight_cls * cls + geo``.

    Skipped terms are zeros still attached to the graph (``backward`` works and yields zero
    gradients), so a pair with nothing to learn is harmless.

    Args:
        pred: output of :meth:`Patch2Pix.forward`: ``mid`` (N, 4), ``mid_conf`` (N,),
            ``fine`` (N, 4), ``fine_conf`` (N,).
        inputs: (N, 4) matches (anchors) fed to the mid stage.
        F: (3, 3) fundamental matrix, A -> B, in the pixel frame of the matches.
        conf: Patch2Pix conf (thresholds and weights); default :data:`DEFAULT_CONF`.

    Returns:
        dict with scalar tensors ``loss``, ``cls``, ``geo``, ``cls_mid``, ``cls_fine``,
        ``geo_mid``, ``geo_fine`` and Python values ``n_pos_mid``, ``n_pos_fine``,
        ``cls_valid``, ``geo_valid``.
    """
    c = merge_conf(conf)
    _check_matches(inputs, "inputs")
    n = inputs.shape[0]
    for key, shape in (("mid", (n, 4)), ("fine", (n, 4)), ("mid_conf", (n,)), ("fine_conf", (n,))):
        if key not in pred or tuple(pred[key].shape) != shape:
            got = tuple(pred[key].shape) if key in pred else "missing"
            raise ValueError(f"pred[{key!r}] must have shape {shape}, got {got}")
    mid, fine = pred["mid"], pred["fine"]
    # attached zero: keeps skipped terms in the graph so that backward() never fails
    zero = sum(pred[k].sum() for k in ("mid", "fine", "mid_conf", "fine_conf")) * 0.0
    with torch.no_grad():
        phi_in = sampson_distance_sq_torch(F, inputs[:, :2], inputs[:, 2:])
    phi_mid = sampson_distance_sq_torch(F, mid[:, :2], mid[:, 2:])
    phi_fine = sampson_distance_sq_torch(F, fine[:, :2], fine[:, 2:])
    phi_mid_ng = phi_mid.detach()

    lbl_mid = phi_in < c["cls_thresholds"][0]
    lbl_fine = phi_mid_ng < c["cls_thresholds"][1]
    n_pos_mid, n_pos_fine = int(lbl_mid.sum()), int(lbl_fine.sum())
    cls_valid = n_pos_mid > 0 and n_pos_fine > 0
    if cls_valid:
        cls_mid = balanced_bce(pred["mid_conf"], lbl_mid)
        cls_fine = balanced_bce(pred["fine_conf"], lbl_fine)
    else:
        cls_mid = cls_fine = zero
    cls = cls_mid + cls_fine

    # spec §4: a pair where either stage has zero positives contributes nothing, geometric part included
    sel_mid = (phi_in < c["geo_thresholds"][0]) & cls_valid
    sel_fine = (phi_mid_ng < c["geo_thresholds"][1]) & cls_valid
    geo_mid = phi_mid[sel_mid].mean() if bool(sel_mid.any()) else zero
    geo_fine = phi_fine[sel_fine].mean() if bool(sel_fine.any()) else zero
    geo_valid = bool(sel_mid.any()) or bool(sel_fine.any())
    w_mid, w_fine = c["weight_geo"]
    geo = w_mid * geo_mid + w_fine * geo_fine
    return {
        "loss": c["weight_cls"] * cls + geo,
        "cls": cls,
        "geo": geo,
        "cls_mid": cls_mid,
        "cls_fine": cls_fine,
        "geo_mid": geo_mid,
        "geo_fine": geo_fine,
        "n_pos_mid": n_pos_mid,
        "n_pos_fine": n_pos_fine,
        "cls_valid": cls_valid,
        "geo_valid": geo_valid,
    }


def batch_loss(results: Sequence[Mapping[str, Any]], conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Batch loss ``L = weight_cls * mean_pairs(L_cls) + mean_pairs(L_geo)``.

    Each mean runs over the pairs whose part is valid (``cls_valid`` / ``geo_valid`` from
    :func:`patch2pix_loss`); a part with no valid pair contributes 0.

    Args:
        results: per-pair outputs of :func:`patch2pix_loss`.
        conf: Patch2Pix conf (for ``weight_cls``).

    Returns:
        dict with ``loss``, ``cls``, ``geo`` (scalar tensors) and ``n_cls``, ``n_geo`` (number
        of pairs in each mean). When ``n_cls == n_geo == 0`` the loss is a zero that may not
        require grad (e.g. all pairs empty): check ``loss.requires_grad`` before ``backward``.
    """
    c = merge_conf(conf)
    if not results:
        raise ValueError("batch_loss needs at least one per-pair result")
    cls_terms = [r["cls"] for r in results if r["cls_valid"]]
    geo_terms = [r["geo"] for r in results if r["geo_valid"]]
    zero = sum(r["loss"] for r in results) * 0.0
    cls = torch.stack(cls_terms).mean() if cls_terms else zero
    geo = torch.stack(geo_terms).mean() if geo_terms else zero
    return {
        "loss": c["weight_cls"] * cls + geo,
        "cls": cls,
        "geo": geo,
        "n_cls": len(cls_terms),
        "n_geo": len(geo_terms),
    }


# --------------------------------------------------------------------------------------------
# Inference filter
# --------------------------------------------------------------------------------------------


def filter_matches(fine: Tensor, fine_conf: Tensor, threshold: float = 0.25) -> tuple[Tensor, Tensor]:
    """Keep matches whose fine confidence is strictly above ``threshold``.

    Deviation from the reference: when nothing passes, the result is EMPTY ((0, 4) matches and
    (0,) scores), not all matches. A pair where nothing survives thus yields an empty, valid row
    instead of a set of matches the model itself rejected.

    Args:
        fine: (N, 4) matches.
        fine_conf: (N,) confidences.
        threshold: confidence threshold c (0.25 by default, as in the reference).

    Returns:
        (M, 4) matches and (M,) scores, M <= N, detached.
    """
    _check_matches(fine, "fine")
    if fine_conf.shape != (fine.shape[0],):
        raise ValueError(f"fine_conf must have shape ({fine.shape[0]},), got {tuple(fine_conf.shape)}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    keep = fine_conf > threshold
    return fine[keep].detach(), fine_conf[keep].detach()
