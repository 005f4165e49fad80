"""Validation metrics of the training runs: PUMP MMA@3 on synthetic pairs, pose AUC + Sampson error.

Both are computed on held-out data with fixed seeds, so epochs (and runs) are comparable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq
from matchmill.geometry.homography import warp_points
from matchmill.geometry.pose import estimate_relative_pose, pose_auc, relative_pose_error
from matchmill.methods.mutual_nn import mutual_nearest
from matchmill.models.pump.net_io import normalize_images

__all__ = ["mutual_nn", "grid_mma", "PoseSample", "pose_metrics"]


def mutual_nn(d1: Tensor, d2: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of ``(N1, D)`` and ``(N2, D)`` descriptors -> index arrays ``(M,)``, ``(M,)``
    (:func:`matchmill.methods.mutual_nn.mutual_nearest`, the one definition, on CPU copies)."""
    pairs, _ = mutual_nearest(d1.detach().float().cpu().numpy(), d2.detach().float().cpu().numpy())
    return pairs[:, 0], pairs[:, 1]


@torch.no_grad()
def grid_mma(net: nn.Module, pairs: Sequence, device: torch.device, threshold: float = 3.0, grid: int = 8) -> dict[str, float]:
    """Mean MMA@``threshold`` of dense descriptors on synthetic pairs (eval mode).

    Protocol: image-1 descriptors on a ``grid`` px lattice (points whose ground truth lands on
    image-2 content) are matched to **all** image-2 pixels by mutual nearest neighbour; a match
    is correct when within ``threshold`` px of ``H``'s prediction.

    Args:
        net: ``(B, 3, S, S)`` normalised RGB -> ``(B, D, S, S)`` unit descriptors.
        pairs: :class:`matchmill.models.pump.synthetic.TrainingPair` with finite ``H``.

    Returns:
        ``mma@<t>`` (mean over pairs) and ``matches`` (mean count).
    """
    was = net.training
    net.eval()
    mmas, counts = [], []
    try:
        for pair in pairs:
            n = pair.img1.shape[0]
            imgs = torch.from_numpy(np.stack([pair.img1, pair.img2])).to(device)
            desc = net(normalize_images(imgs)).float()
            desc1, desc2 = desc[0], desc[1]
            D = desc1.shape[0]
            g = np.arange(grid // 2, n, grid, dtype=np.float64)
            gx, gy = np.meshgrid(g, g)
            pts = np.stack([gx.ravel(), gy.ravel()], 1)
            gt = np.rint(warp_points(pts, pair.H))
            ok = (gt >= 0).all(1) & (gt[:, 0] < pair.img2.shape[1]) & (gt[:, 1] < pair.img2.shape[0])
            ok[ok] &= pair.img2[gt[ok, 1].astype(int), gt[ok, 0].astype(int)].max(-1) > 0
            pts = pts[ok]
            if len(pts) == 0:
                continue
            q = desc1[:, pts[:, 1].astype(int), pts[:, 0].astype(int)].t()
            i1, i2 = mutual_nn(q, desc2.reshape(D, -1).t())
            w2 = desc2.shape[-1]
            p2 = np.stack([i2 % w2, i2 // w2], 1).astype(np.float64)
            err = np.linalg.norm(warp_points(pts[i1], pair.H) - p2, axis=1)
            mmas.append(float((err <= threshold).mean()) if len(err) else 0.0)
            counts.append(len(err))
    finally:
        net.train(was)
    key = f"mma@{threshold:g}"
    return {key: float(np.mean(mmas)) if mmas else 0.0, "matches": float(np.mean(counts)) if counts else 0.0}


class PoseSample:
    """Matches of one held-out pair in a frame where ``K0``, ``K1`` hold, with its ground truth."""

    def __init__(self, matches: np.ndarray, K0: np.ndarray, K1: np.ndarray, T_0to1: np.ndarray) -> None:
        self.matches = np.asarray(matches, np.float64).reshape(-1, 4)
        self.K0, self.K1 = np.asarray(K0, np.float64).reshape(3, 3), np.asarray(K1, np.float64).reshape(3, 3)
        self.T = np.asarray(T_0to1, np.float64).reshape(4, 4)


def pose_metrics(samples: Sequence[PoseSample], thresholds=(5, 10, 20), ransac_px: float = 0.5) -> dict[str, float]:
    """Pose AUC@thresholds (OpenCV essential, LoFTR protocol) and the median Sampson error (px) of all matches.

    A pair with fewer than 5 matches or a failed estimate counts as an infinite error.
    """
    errors, sampson, counts = [], [], []
    for s in samples:
        m = s.matches
        counts.append(len(m))
        est = estimate_relative_pose(m[:, :2], m[:, 2:], s.K0, s.K1, threshold_px=ransac_px) if len(m) >= 5 else None
        if est is None:
            errors.append(np.inf)
        else:
            r_err, t_err = relative_pose_error(s.T, est[0], est[1])
            errors.append(max(r_err, t_err))
        if len(m):
            F = fundamental_from_pose(s.K0, s.K1, s.T)
            sampson.append(np.sqrt(sampson_distance_sq(F, m[:, :2], m[:, 2:])))
    aucs = pose_auc(errors, thresholds)
    out = {f"auc@{int(t)}": float(v) for t, v in aucs.items()}
    out["sampson_median"] = float(np.median(np.concatenate(sampson))) if sampson else float("nan")
    out["matches"] = float(np.mean(counts)) if counts else 0.0
    return out
