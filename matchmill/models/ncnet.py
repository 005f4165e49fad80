"""NCNet-style patch proposals on the 1/8 backbone map (Patch2Pix's "adapted NCNet").

Written from the spec (``docs/specs/patch2pix.md`` §2), not from any reference implementation.

Pipeline for one image pair (f4 features at stride 8, ``ksize`` = k = 2):

1. L2-normalise both maps along channels: ``f / sqrt(sum(f^2) + 1e-6)``.
2. Correlate every cell of A with every cell of B (batched matmul) -> ``(B, 1, hA, wA, hB, wB)``.
3. 4D max-pool, window k in all four dims, recording where each maximum sat (offsets in
   ``{0..k-1}^4``, taken on the *raw* correlation) -> 1/16 grid.
4. Soft mutual-NN ``s * (s / maxA) * (s / maxB)``.
5. Neighbourhood consensus: two Conv4d (3^4) layers 1->16->1, ReLU after each, symmetric in A<->B.
6. Soft mutual-NN again.
7. Matches in both directions (softmax over the other image's cells; score = max probability),
   relocated to the 1/8 grid by ``idx * k + offset`` and to pixels by ``8 * idx + 4``.
8. Mutual check (pairs found in both directions; score of the B->A direction) and ``score > threshold``.

Memory (fp32, stride-8 features, H x W input, n = (H/8)(W/8) cells per image):

- raw correlation: ``n_A * n_B`` floats, i.e. it grows with the *square* of the image area:
  240x320 -> 1200^2 = 1.4e6 (5.8 MB); 320x480 -> 2400^2 = 5.8e6 (23 MB);
  768x1024 -> 12288^2 = 1.5e8 (604 MB). ``corr_chunk_rows`` bounds this term to a slab of A rows;
- pooled volume (1/16): ``n_A n_B / k^4`` floats plus 4 uint8 offsets per pooled cell;
- inside NC the first Conv4d holds 16 channels of the pooled volume (x2 while accumulating):
  768x1024 -> 9.4e6 cells x 16 x 4 B = 0.6 GB per copy. This term dominates once the raw volume is chunked.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import merge_conf

__all__ = [
    "DEFAULT_CONF",
    "Conv4d",
    "NeighConsensus",
    "NCNet",
    "l2_normalize",
    "correlation_4d",
    "maxpool4d",
    "pooled_correlation",
    "mutual_matching",
    "transpose_ab",
    "matches_from_volume",
    "relocalize_matches",
]

DEFAULT_CONF: dict = {
    "ksize": 2,  # 4D max-pool window per dim (1/8 -> 1/16); feature grids must be divisible by it; 1 = no pooling
    "nc_kernels": [3, 3],  # Conv4d kernel size of each NC layer (odd; zero padding k//2 keeps the size)
    "nc_channels": [16, 1],  # output channels of each NC layer; the last must be 1 (IVD / Patch2Pix config)
    "symmetric": True,  # NC(x) + NC(x^T)^T with ^T the A<->B transpose (NCNet symmetric mode)
    "nc_threshold": 0.0,  # keep proposals with score > nc_threshold (Patch2Pix 0.0; standalone NCNet baseline 0.9)
    "mutual": True,  # keep only pairs found in both directions (mutual NN on the pooled grid)
    "fallback_unfiltered": False,  # original quirk: no mutual pair -> keep all candidates; False -> empty result
    "upsample": 8,  # stride of the input feature map: 8 for f4 with change_stride, 16 without
    "center": True,  # pixel = upsample * idx + upsample // 2 (cell centre); False -> upper-left corner
    "normalize_eps": 1e-6,  # eps inside the sqrt of the feature L2 normalisation
    "mutual_eps": 1e-5,  # added to the max denominators of the soft mutual-NN filter
    "corr_chunk_rows": 0,  # A rows (1/8 grid, multiple of ksize) correlated+pooled at once; 0 = all (bounds memory)
}


# ----------------------------------------------------------------------------- volume operations


def l2_normalize(feat: Tensor, eps: float = 1e-6) -> Tensor:
    """Channel-wise L2 normalisation with the eps inside the square root.

    Args:
        feat: :math:`(B, C, H, W)`.
        eps: added to the sum of squares.

    Returns:
        :math:`(B, C, H, W)`, ``feat / sqrt(sum_c feat^2 + eps)``.
    """
    return feat / torch.sqrt(feat.pow(2).sum(dim=1, keepdim=True) + eps)


def correlation_4d(feat_a: Tensor, feat_b: Tensor) -> Tensor:
    """Dense dot products between every cell of A and every cell of B.

    Args:
        feat_a: :math:`(B, C, h_A, w_A)`.
        feat_b: :math:`(B, C, h_B, w_B)`.

    Returns:
        :math:`(B, 1, h_A, w_A, h_B, w_B)` volume, no ReLU and no extra normalisation.
    """
    b, c, ha, wa = feat_a.shape
    hb, wb = feat_b.shape[-2:]
    corr = torch.bmm(feat_a.reshape(b, c, ha * wa).transpose(1, 2), feat_b.reshape(b, c, hb * wb))
    return corr.view(b, 1, ha, wa, hb, wb)


def maxpool4d(corr: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
    """4D max-pool (window = stride = k in all four dims) with the position of each maximum.

    The volume is split into its k^4 strided sub-volumes ``corr[..., i::k, j::k, p::k, q::k]``, visited
    in lexicographic slot order ``s = ((i*k + j)*k + p)*k + q``; the running maximum keeps the first
    slot on ties (strict ``>``), like an argmax over the stacked sub-volumes, without materialising
    the stack (peak memory = input + a few pooled-size tensors).

    Args:
        corr: :math:`(B, 1, h_A, w_A, h_B, w_B)`, every spatial dim divisible by ``k``.
        k: window size (1..8).

    Returns:
        ``pooled`` :math:`(B, 1, h_A/k, w_A/k, h_B/k, w_B/k)` and ``offsets``
        :math:`(B, 4, h_A/k, w_A/k, h_B/k, w_B/k)` ``uint8`` (i, j, p, q) in ``{0..k-1}``, such that
        ``corr[b, 0, y*k+i, x*k+j, v*k+p, u*k+q] == pooled[b, 0, y, x, v, u]``.
    """
    if corr.ndim != 6 or corr.shape[1] != 1:
        raise ValueError(f"expected a single-channel (B, 1, hA, wA, hB, wB) volume, got {tuple(corr.shape)}")
    if not 1 <= k <= 8:
        raise ValueError(f"pool size k must be in [1, 8], got {k}")
    dims = tuple(corr.shape[2:])
    if any(d % k for d in dims):
        raise ValueError(f"4D max-pool with k={k} needs every grid dim divisible by {k}, got (hA, wA, hB, wB)={dims}")
    best = corr[:, :, ::k, ::k, ::k, ::k].clone()  # slot 0
    slot = torch.zeros(best.shape, dtype=torch.int16, device=corr.device)
    for s in range(1, k**4):
        i, j, p, q = s // k**3, (s // k**2) % k, (s // k) % k, s % k
        sub = corr[:, :, i::k, j::k, p::k, q::k]
        better = sub > best
        best = torch.where(better, sub, best)
        slot.masked_fill_(better, s)
    # decode the slot as a mixed-radix base-k number: q = s mod k, then p, j, i
    digits = [(slot // k**3) % k, (slot // k**2) % k, (slot // k) % k, slot % k]
    offsets = torch.cat(digits, dim=1).to(torch.uint8)
    return best, offsets


def pooled_correlation(feat_a: Tensor, feat_b: Tensor, k: int = 2, chunk_rows: int = 0) -> tuple[Tensor, Tensor]:
    """Correlation followed by :func:`maxpool4d`, optionally over slabs of A rows to bound memory.

    Args:
        feat_a: :math:`(B, C, h_A, w_A)` normalised features.
        feat_b: :math:`(B, C, h_B, w_B)` normalised features.
        k: pool size.
        chunk_rows: A rows correlated at once (rounded down to a multiple of ``k``, at least ``k``);
            0 correlates everything at once. Results are identical either way.

    Returns:
        ``pooled`` :math:`(B, 1, h_A/k, w_A/k, h_B/k, w_B/k)` and ``offsets`` (B, 4, same) uint8.
    """
    ha = feat_a.shape[2]
    if chunk_rows <= 0 or chunk_rows >= ha:
        return maxpool4d(correlation_4d(feat_a, feat_b), k)
    step = max(k, (chunk_rows // k) * k)
    parts = [maxpool4d(correlation_4d(feat_a[:, :, r : r + step], feat_b), k) for r in range(0, ha, step)]
    return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)


def mutual_matching(corr: Tensor, eps: float = 1e-5) -> Tensor:
    """Soft mutual nearest-neighbour filter ``s * (s / maxA) * (s / maxB)``.

    ``maxA`` is the maximum over all A cells for the same B cell, ``maxB`` over all B cells for the
    same A cell; both denominators get ``+ eps``. A mutual best entry keeps (almost exactly) its value,
    the others are damped by their two ratios.

    Args:
        corr: :math:`(B, 1, h_A, w_A, h_B, w_B)`.
        eps: denominator offset.

    Returns:
        :math:`(B, 1, h_A, w_A, h_B, w_B)`.
    """
    b, c, ha, wa, hb, wb = corr.shape
    flat = corr.reshape(b, c, ha * wa, hb * wb)
    max_over_a = flat.max(dim=2, keepdim=True).values  # per B cell
    max_over_b = flat.max(dim=3, keepdim=True).values  # per A cell
    out = flat * (flat / (max_over_a + eps)) * (flat / (max_over_b + eps))
    return out.view(b, c, ha, wa, hb, wb)


def transpose_ab(corr: Tensor) -> Tensor:
    """Swap the A and B grids: :math:`(B, C, h_A, w_A, h_B, w_B) \\to (B, C, h_B, w_B, h_A, w_A)` (a view)."""
    return corr.permute(0, 1, 4, 5, 2, 3)


# ----------------------------------------------------------------------------- 4D convolution


class Conv4d(nn.Module):
    """4D convolution (cross-correlation) as a sum of 3D convolutions over the first kernel dim.

    ``out[:, :, a] = bias + sum_t conv3d(in[:, :, a + t - p], weight[:, :, t])`` with zero padding
    ``p = k // 2`` in all four dims, so the output has the input's size. The first spatial dim is
    folded into the batch, so each of the k kernel slices is one ``conv3d`` call; out-of-range input
    slices are skipped instead of padding (no padded copy of the volume). Bias is added once.

    Weight layout: ``weight`` is :math:`(C_{out}, C_{in}, k, k, k, k)`, the natural extension of
    ``nn.Conv3d``'s layout (NCNet checkpoints store the permuted ``(k, C_out, C_in, k, k, k)``; use
    :meth:`weight_from_sliced_layout` to convert). ``bias`` is :math:`(C_{out},)`.

    Shape:
        - Input: :math:`(B, C_{in}, D_1, D_2, D_3, D_4)`
        - Output: :math:`(B, C_{out}, D_1, D_2, D_3, D_4)`
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Conv4d kernel_size must be odd and positive, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init (Kaiming-uniform with a=sqrt(5); bias U(-1/sqrt(fan_in), ..))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size**4
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def weight_from_sliced_layout(weight: Tensor) -> Tensor:
        """Convert a ``(k, C_out, C_in, k, k, k)`` weight (NCNet checkpoint layout) to ``(C_out, C_in, k, k, k, k)``."""
        if weight.ndim != 6:
            raise ValueError(f"expected a 6-d (k, Cout, Cin, k, k, k) weight, got {tuple(weight.shape)}")
        return weight.permute(1, 2, 0, 3, 4, 5).contiguous()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 6 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv4d expects (B, {self.in_channels}, D1, D2, D3, D4), got {tuple(x.shape)}")
        b, cin, d1, d2, d3, d4 = x.shape
        k, p = self.kernel_size, self.kernel_size // 2
        xt = x.transpose(1, 2)  # (B, D1, Cin, D2, D3, D4)
        out = x.new_zeros(b, d1, self.out_channels, d2, d3, d4)
        for t in range(k):
            # output slice a reads input slice a + t - p; keep the a for which it exists
            lo, hi = max(0, p - t), min(d1, d1 + p - t)
            if lo >= hi:
                continue
            src = xt[:, lo + t - p : hi + t - p].reshape(b * (hi - lo), cin, d2, d3, d4)
            res = F.conv3d(src, self.weight[:, :, t], bias=None, padding=p)
            out[:, lo:hi] += res.view(b, hi - lo, self.out_channels, d2, d3, d4)
        if self.bias is not None:
            out += self.bias.view(1, 1, -1, 1, 1, 1)
        return out.transpose(1, 2)  # (B, Cout, D1, D2, D3, D4), a view


class NeighConsensus(nn.Module):
    """Neighbourhood-consensus filter: a stack of Conv4d + ReLU, optionally symmetric in A<->B.

    Args:
        kernel_sizes: Conv4d kernel size per layer.
        channels: output channels per layer (input has 1 channel; the last should be 1).
        symmetric: output ``net(x) + transpose_ab(net(transpose_ab(x)))``.

    Shape:
        - Input: :math:`(B, 1, h_A, w_A, h_B, w_B)`
        - Output: :math:`(B, C_{last}, h_A, w_A, h_B, w_B)`, non-negative.
    """

    def __init__(self, kernel_sizes: Sequence[int] = (3, 3), channels: Sequence[int] = (16, 1), symmetric: bool = True):
        super().__init__()
        if len(kernel_sizes) != len(channels) or not channels:
            raise ValueError(f"need one kernel size per layer, got kernels {list(kernel_sizes)} channels {list(channels)}")
        layers: list[nn.Module] = []
        cin = 1
        for k, cout in zip(kernel_sizes, channels):
            layers += [Conv4d(cin, int(cout), int(k)), nn.ReLU(inplace=True)]
            cin = int(cout)
        self.net = nn.Sequential(*layers)
        self.symmetric = symmetric

    def forward(self, x: Tensor) -> Tensor:
        if not self.symmetric:
            return self.net(x)
        return self.net(x) + transpose_ab(self.net(transpose_ab(x)))


# ----------------------------------------------------------------------------- match extraction


def relocalize_matches(feat_a: Tensor, feat_b: Tensor, matches: Tensor, radius: int = 2, upsample: int = 8,
                       center: bool = True, eps: float = 1e-6) -> Tensor:
    """Move each proposal to the best raw-correlation cell pair within ``radius`` cells of it.

    NC selects *which* regions match; its filtered volume need not peak on the exact cell: a
    weakly supervised NC (whose loss rewards a peaked volume, not a well placed one) can learn
    kernels that shift the peak by a cell or two. This search over the ``(2r+1)^2`` cells around the
    match in A times those around it in B keeps the pair of highest feature correlation (matchmill's
    addition, not in NCNet / Patch2Pix; ``radius=0`` returns ``matches`` unchanged).

    Args:
        feat_a: :math:`(1, C, h_A, w_A)` the features NC correlated (f4), unnormalised.
        feat_b: :math:`(1, C, h_B, w_B)`.
        matches: :math:`(N, 4)` pixel proposals ``x1, y1, x2, y2`` on the ``upsample`` grid.
        radius: search radius in cells.
        upsample: grid stride in pixels; ``center`` adds ``upsample // 2`` (as :func:`matches_from_volume`).

    Returns:
        :math:`(N, 4)` relocated proposals on the same grid, same dtype.
    """
    if radius <= 0 or len(matches) == 0:
        return matches
    if feat_a.ndim != 4 or feat_a.shape[0] != 1 or feat_b.ndim != 4 or feat_b.shape[0] != 1:
        raise ValueError(f"relocalize_matches expects (1, C, h, w) features, got {tuple(feat_a.shape)}, {tuple(feat_b.shape)}")
    shift = upsample // 2 if center else 0
    fa, fb = l2_normalize(feat_a, eps)[0], l2_normalize(feat_b, eps)[0]
    r = int(radius)
    steps = torch.arange(-r, r + 1, device=matches.device)
    offs = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1).reshape(-1, 2)  # (K, 2) dx, dy

    def around(xy: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        cell = torch.round((xy.float() - shift) / upsample).long()
        cells = cell[:, None, :] + offs[None]  # (N, K, 2)
        cells[..., 0] = cells[..., 0].clamp(0, f.shape[2] - 1)
        cells[..., 1] = cells[..., 1].clamp(0, f.shape[1] - 1)
        return cells, f[:, cells[..., 1], cells[..., 0]].permute(1, 2, 0)  # (N, K, C)

    cells_a, va = around(matches[:, :2], fa)
    cells_b, vb = around(matches[:, 2:], fb)
    sim = torch.einsum("nic,njc->nij", va.float(), vb.float()).reshape(len(matches), -1)
    best = sim.argmax(dim=1)
    n, k = torch.arange(len(matches), device=matches.device), offs.shape[0]
    qa, qb = cells_a[n, best // k], cells_b[n, best % k]
    return (torch.cat([qa, qb], dim=1) * upsample + shift).to(matches.dtype)




def _empty_matches(device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    return torch.zeros((0, 4), dtype=torch.float32, device=device), torch.zeros((0,), dtype=torch.float32, device=device)


def matches_from_volume(
    corr: Tensor,
    offsets: Tensor,
    k: int = 2,
    upsample: int = 8,
    center: bool = True,
    mutual: bool = True,
    threshold: float = 0.0,
    fallback_unfiltered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Proposals from a filtered pooled volume of one image pair.

    Direction B->A: for every B cell, softmax over all A cells; score = max probability, match = argmax.
    Direction A->B: the same for every A cell over B cells. Each pooled 4D cell (a, b) is relocated to
    the fine grid with ``idx * k + offset`` per dim and to pixels with ``upsample * idx (+ upsample // 2)``.

    ``mutual=True`` keeps the pairs found in both directions (= mutual NN on the pooled grid), scored
    by the B->A direction and ordered by B cell (row-major). ``mutual=False`` keeps the union of both
    directions, each pair once (B->A candidates first, then the A->B ones that are not mutual), where
    the original concatenates both lists with duplicates. ``fallback_unfiltered`` reproduces the
    original quirk of keeping that union when no mutual pair exists; by default (deliberate deviation)
    that case yields no proposals. Finally ``score > threshold``.

    Args:
        corr: :math:`(1, 1, h_A, w_A, h_B, w_B)` pooled volume (e.g. NC output).
        offsets: :math:`(1, 4, h_A, w_A, h_B, w_B)` integer max-pool offsets (zeros when ``k == 1``).
        k: pool size used to produce ``offsets``.
        upsample: stride of the fine grid in pixels (8 for f4 with change_stride).
        center: add ``upsample // 2``.
        mutual: apply the mutual check.
        threshold: keep ``score > threshold``.
        fallback_unfiltered: see above.

    Returns:
        ``matches`` :math:`(N, 4)` float32 ``x1, y1, x2, y2`` pixels, ``scores`` :math:`(N,)` float32.
    """
    if corr.ndim != 6 or corr.shape[:2] != (1, 1):
        raise ValueError(f"expected a (1, 1, hA, wA, hB, wB) volume for one pair, got {tuple(corr.shape)}")
    _, _, ha, wa, hb, wb = corr.shape
    if tuple(offsets.shape) != (1, 4, ha, wa, hb, wb):
        raise ValueError(f"offsets must be (1, 4, {ha}, {wa}, {hb}, {wb}), got {tuple(offsets.shape)}")
    n_a, n_b = ha * wa, hb * wb
    if n_a == 0 or n_b == 0:
        return _empty_matches(corr.device)
    flat = corr.reshape(n_a, n_b).float()
    score_b2a, a_of_b = F.softmax(flat, dim=0).max(dim=0)  # (n_b,): best A cell for each B cell
    score_a2b, b_of_a = F.softmax(flat, dim=1).max(dim=1)  # (n_a,): best B cell for each A cell
    b_idx = torch.arange(n_b, device=corr.device)
    a_idx = torch.arange(n_a, device=corr.device)
    is_mutual_b = b_of_a[a_of_b] == b_idx  # per B cell: its B->A candidate is mutual
    if mutual and (bool(is_mutual_b.any()) or not fallback_unfiltered):
        cell_a, cell_b, scores = a_of_b[is_mutual_b], b_idx[is_mutual_b], score_b2a[is_mutual_b]
    else:
        extra = a_of_b[b_of_a] != a_idx  # A->B candidates not already present as B->A candidates
        cell_a = torch.cat([a_of_b, a_idx[extra]])
        cell_b = torch.cat([b_idx, b_of_a[extra]])
        scores = torch.cat([score_b2a, score_a2b[extra]])
    keep = scores > threshold
    cell_a, cell_b, scores = cell_a[keep], cell_b[keep], scores[keep]
    if scores.numel() == 0:
        return _empty_matches(corr.device)
    off = offsets.reshape(4, n_a, n_b)[:, cell_a, cell_b].long()  # (4, N): i, j (A rows/cols), p, q (B)
    ya = torch.div(cell_a, wa, rounding_mode="floor") * k + off[0]
    xa = (cell_a % wa) * k + off[1]
    yb = torch.div(cell_b, wb, rounding_mode="floor") * k + off[2]
    xb = (cell_b % wb) * k + off[3]
    shift = upsample // 2 if center else 0
    matches = torch.stack([xa, ya, xb, yb], dim=1).float() * upsample + shift
    return matches, scores.float()


# ----------------------------------------------------------------------------- module


class NCNet(nn.Module):
    """NCNet proposal head of Patch2Pix: correlation, 4D max-pool, NC filtering, mutual matches.

    Args:
        conf: overrides of :data:`DEFAULT_CONF` (unknown keys raise ``ValueError``).

    Shape:
        - ``feat_a``: :math:`(B, C, h_A, w_A)`, ``feat_b``: :math:`(B, C, h_B, w_B)` (f4 at 1/8),
          with ``h_A, w_A, h_B, w_B`` divisible by ``ksize``.
        - Output dict of :meth:`forward`:
          ``corr`` :math:`(B, 1, h_A/k, w_A/k, h_B/k, w_B/k)` filtered volume (NC + mutual, >= 0);
          ``offsets`` :math:`(B, 4, h_A/k, w_A/k, h_B/k, w_B/k)` uint8 max-pool offsets (i, j, p, q);
          ``shape_a`` / ``shape_b``: the fine grids ``(h, w)``.

    Memory grows with the product of the two images' areas; see the module docstring. The NC
    parameters are 2,609 floats with the default config.

    Example:
        >>> ncnet = NCNet().eval()
        >>> with torch.no_grad():
        ...     out = ncnet(f4_a, f4_b)            # f4 from ResNet34Pyramid, B == 1
        ...     matches, scores = ncnet.extract_matches(out)
    """

    #: Its entry in matchmill/models/official_checkpoints.py (which official checkpoint layouts it reads).
    checkpoint_kind = "ncnet"

    default_conf = DEFAULT_CONF

    def __init__(self, conf: Mapping | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(DEFAULT_CONF, conf, "NCNet")
        channels = list(self.conf["nc_channels"])
        if not channels or channels[-1] != 1:
            raise ValueError(f"the last NC layer must output 1 channel, got nc_channels={channels}")
        if not 1 <= int(self.conf["ksize"]) <= 8:
            raise ValueError(f"ksize must be in [1, 8], got {self.conf['ksize']}")
        self.nc = NeighConsensus(self.conf["nc_kernels"], channels, symmetric=bool(self.conf["symmetric"]))

    def _check_features(self, feat_a: Tensor, feat_b: Tensor) -> None:
        k = int(self.conf["ksize"])
        for name, f in (("feat_a", feat_a), ("feat_b", feat_b)):
            if not isinstance(f, Tensor) or f.ndim != 4:
                raise ValueError(f"{name} must be a (B, C, h, w) tensor, got {getattr(f, 'shape', type(f).__name__)}")
            if min(f.shape) == 0:
                raise ValueError(f"{name} is empty: {tuple(f.shape)} (image smaller than {k * self.conf['upsample']} px?)")
            if f.shape[2] % k or f.shape[3] % k:
                raise ValueError(
                    f"{name} grid (h, w)={tuple(f.shape[2:])} must be divisible by ksize={k} "
                    f"(resize images to multiples of {k * self.conf['upsample']} px)"
                )
        if feat_a.shape[:2] != feat_b.shape[:2]:
            raise ValueError(f"feat_a and feat_b must share (B, C), got {tuple(feat_a.shape)} and {tuple(feat_b.shape)}")

    def forward(self, feat_a: Tensor, feat_b: Tensor) -> dict:
        """Filtered pooled correlation volume and max-pool offsets.

        Args:
            feat_a: :math:`(B, C, h_A, w_A)` image-A features (unnormalised f4).
            feat_b: :math:`(B, C, h_B, w_B)` image-B features.

        Returns:
            dict with ``corr``, ``offsets``, ``shape_a``, ``shape_b`` (see the class docstring).
        """
        self._check_features(feat_a, feat_b)
        k = int(self.conf["ksize"])
        eps_n, eps_m = float(self.conf["normalize_eps"]), float(self.conf["mutual_eps"])
        fa, fb = l2_normalize(feat_a, eps_n), l2_normalize(feat_b, eps_n)
        pooled, offsets = pooled_correlation(fa, fb, k, int(self.conf["corr_chunk_rows"]))
        corr = mutual_matching(pooled, eps_m)
        corr = self.nc(corr)
        corr = mutual_matching(corr, eps_m)
        return {
            "corr": corr,
            "offsets": offsets,
            "shape_a": tuple(feat_a.shape[2:]),
            "shape_b": tuple(feat_b.shape[2:]),
        }

    def extract_matches(
        self, out: Mapping, threshold: float | None = None, mutual: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pixel proposals for one pair (B == 1) from :meth:`forward`'s output.

        Args:
            out: :meth:`forward` output.
            threshold: override of ``conf["nc_threshold"]`` (keep ``score > threshold``).
            mutual: override of ``conf["mutual"]``.

        Returns:
            ``matches`` :math:`(N, 4)` float32 ``x1, y1, x2, y2`` in pixels of the network input frame
            (cell centres ``8 * idx + 4`` by default) and ``scores`` :math:`(N,)` float32 (B->A softmax
            maximum). ``N`` may be 0: then the shapes are ``(0, 4)`` and ``(0,)``.
        """
        corr = out["corr"]
        if corr.shape[0] != 1:
            raise ValueError(f"extract_matches handles one pair (B == 1), got B == {corr.shape[0]}")
        return matches_from_volume(
            corr,
            out["offsets"],
            k=int(self.conf["ksize"]),
            upsample=int(self.conf["upsample"]),
            center=bool(self.conf["center"]),
            mutual=bool(self.conf["mutual"] if mutual is None else mutual),
            threshold=float(self.conf["nc_threshold"] if threshold is None else threshold),
            fallback_unfiltered=bool(self.conf["fallback_unfiltered"]),
        )
