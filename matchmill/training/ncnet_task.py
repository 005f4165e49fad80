"""NCNet task: the neighbourhood-consensus layers trained with NCNet's weakly supervised loss.

There are no pretrained NC weights here, so the Patch2Pix chain needs this. What the NCNet paper
(Rocco et al. 2018, "Neighbourhood Consensus Networks") does: the feature extractor stays fixed,
only the NC layers learn, from image pairs known to show the same scene and nothing else (no
correspondences); the loss raises the mean best-match score (the max of the soft assignment, in
both directions) on positive pairs and lowers it on negative pairs made by pairing each image A
with the image B of another pair of the batch (rolling the batch), ``L = s(neg) - s(pos)``.

What we keep: frozen backbone (the Patch2Pix ResNet34 pyramid's f4 at stride 8), NC layers
[3, 3] / [16, 1] as Patch2Pix's adapted NCNet, the same score (softmax over the other image's
pooled cells, max, mean over cells, both directions averaged) and loss. What differs: a sample's
negative partner is drawn per sample from another pair (of another scene when the manifest has
several), instead of rolling the batch, so that the global batch does not depend on how it is
split over workers; with a single-scene manifest negatives may overlap their positive, which
weakens the signal (a warning says so). The paper trains on IVD / PF-Pascal; we train on any
pairs manifest.

``ncnet.loss`` picks the loss: ``weak`` (the paper's, above), ``nll`` (negative log-likelihood of
the true cell under the same soft assignment, both directions, on visible cells:
:mod:`.ncnet_losses`, targets from the pairs' depth maps and poses through :mod:`.pair_truth`; a pair
without visible overlap is skipped and counted) or ``weak+nll`` (their sum).

Validation: pose AUC@5/10/20 (OpenCV essential from the mutual NC proposals) and the median
Sampson error of the proposals on held-out pairs with ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.config import ConfigError
from matchmill.geometry.pair_metrics import has_pose_gt
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix_training import resize_image
from matchmill.models.resnet import normalize_image

from .manifest_data import inspect_manifest, read_pair_rows, split_rows
from .ncnet_losses import NCNET_LOSSES, true_cell_nll
from .pair_features import build_backbone, check_backbone, check_size, validate_on_pose_pairs
from .pair_truth import PairTruth, first_rows_with_truth
from .task import TrainTask, sample_rng

log = logging.getLogger(__name__)


def match_scores(corr: Tensor) -> Tensor:
    """NCNet's weak-supervision score per pair: mean over cells of the best soft-assignment probability,
    both directions averaged.

    Args:
        corr: ``(B, 1, hA, wA, hB, wB)`` filtered volume.

    Returns:
        ``(B,)`` scores in ``(0, 1]``.
    """
    b = corr.shape[0]
    flat = corr.reshape(b, corr.shape[2] * corr.shape[3], -1).float()
    a_to_b = F.softmax(flat, dim=2).max(dim=2).values.mean(dim=1)
    b_to_a = F.softmax(flat, dim=1).max(dim=1).values.mean(dim=1)
    return 0.5 * (a_to_b + b_to_a)


@dataclass
class NCBatch:
    """f4 of image A, of its positive B and of its negative B', each ``(b, C, h, w)``; with a loss
    that needs them, the true cells ``target_a2b`` ``(b, hA * wA)`` and ``target_b2a`` ``(b, hB * wB)``
    int64 on the NC grid (-1: no target; :class:`.pair_truth.CellTargets`)."""

    fa: Tensor
    fb: Tensor
    fneg: Tensor
    keys: list[str] = field(default_factory=list)
    step: int = 0
    target_a2b: Tensor | None = None
    target_b2a: Tensor | None = None


class NCNetTask(TrainTask):
    name = "ncnet"
    metric = "auc@10"
    metric_mode = "max"

    #: The ``ncnet`` section's keys (the job's other keys: matchmill/training/config.py).
    default_conf: dict[str, Any] = {
        "backbone": "resnet34",  # frozen feature pyramid read by NC (f4 at stride 8): resnet34 | pump
        "backbone_weights": None,  # resnet34: torchvision-layout weights; pump: a ConvMixer state dict; None = seeded init
        "backbone_conf": None,  # overrides of models.backbones.PYRAMID_CONF (pump: cpu_sized, net, pools)
        "backbone_seed": 0,  # seed of the backbone's init when no weights are given
        "size": [320, 240],  # [W, H] both images are resized to (multiples of 16)
        "loss": "weak",  # weak (paper: peaked volume) | nll (true cell from depth + pose) | weak+nll (sum)
        "lr": 5e-4,  # Adam learning rate (NCNet paper: 5e-4)
        "weight_decay": 0.0,  # Adam weight decay
        "nc": None,  # overrides of models.ncnet.DEFAULT_CONF (nc_kernels, nc_channels, ...)
        "val_pairs": 16,  # held-out pairs per validation (those with pose ground truth)
        "val_threshold": 0.0,  # NC score a validation proposal must exceed
        "ransac_px": 0.5,  # essential-matrix RANSAC threshold of the validation (px)
    }

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Driver-side checks: config values, a pairs manifest with usable rows and some pose ground truth."""
        c, d = conf["ncnet"], conf["data"]
        check_size(c["size"], "ncnet.size")
        check_backbone(c, "ncnet")
        if c["nc"] is not None and not isinstance(c["nc"], dict):
            raise ConfigError(f"ncnet.nc: expected a mapping of overrides or null, got {c['nc']!r}")
        if c["loss"] not in NCNET_LOSSES:
            raise ConfigError(f"ncnet.loss: expected one of {' | '.join(NCNET_LOSSES)}, got {c['loss']!r}")
        src = inspect_manifest(d["pairs"], ("pairs",), "data.pairs", d["images_dir"])
        if "nll" in c["loss"] and not first_rows_with_truth(read_pair_rows(d["pairs"], "data.pairs", d["images_dir"])):
            raise ConfigError(f"ncnet.loss: {c['loss']!r} needs pairs with ground truth (K0, K1, T_0to1 and depth maps "
                              f"<scene>/depths/<stem>.h5, or H_0to1); the first pairs of {src.url} have none")
        if src.ok_rows < 2:
            raise ConfigError(f"data.pairs: {src.url} has {src.ok_rows} usable pairs; NCNet needs >= 2 (a negative is another pair)")
        if src.pose_rows == 0:
            raise ConfigError(f"data.pairs: {src.no_pose_reason()}; NCNet's validation (pose AUC) needs some")
        if src.scenes < 2:
            log.warning("ncnet: %s holds one scene, so a negative pair (another pair's image) may overlap its "
                        "positive; several scenes make the weak supervision sharper", src.url)

    def setup_data(self) -> None:
        d = self.conf["data"]
        rows = read_pair_rows(d["pairs"], "data.pairs", d["images_dir"])
        self.train_pairs, val = split_rows(rows, "pair_id", float(d["val_fraction"]))
        self.val_pairs = [r for r in val if has_pose_gt(r)] or [r for r in rows if has_pose_gt(r)][:1]
        self.val_pairs = self.val_pairs[: int(self.task_conf["val_pairs"])]
        if len(self.train_pairs) < 2:
            raise ValueError(f"data.pairs: {len(self.train_pairs)} training pairs; NCNet needs >= 2")
        self.scenes = sorted({r["scene"] for r in self.train_pairs})
        self.size = tuple(self.task_conf["size"])
        self.backbone = build_backbone(self.task_conf, self.device)
        self._f4: dict[str, Tensor] = {}
        self._sizes: dict[str, tuple[int, int]] = {}  # f4 key -> (W, H) of the cropped image
        self.uses_truth = "nll" in self.task_conf["loss"]
        self.truth = PairTruth()
        nc_conf = {**NCNet.default_conf, **(self.task_conf["nc"] or {})}
        self.cell_stride = 8 * int(nc_conf["ksize"])  # pixels per NC cell: f4's stride 8 x the 4D max-pool

    def num_train_samples(self) -> int:
        return len(self.train_pairs)

    def build_net(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return NCNet(self.task_conf["nc"] or {}).to(self.device).train()

    @torch.no_grad()
    def _f4_of(self, path: str, crop) -> Tensor | None:
        key = f"{path}|{crop}"
        if key not in self._f4:
            image = self.load(path, crop)
            if image is None:
                return None
            f4 = self.backbone(normalize_image(resize_image(image, self.size)).to(self.device))[4]
            self._sizes[key] = (int(image.shape[1]), int(image.shape[0]))
            if len(self._f4) > 256:
                self._f4.pop(next(iter(self._f4)))
            self._f4[key] = f4
        return self._f4[key]

    def local_batch(self, step: int, indices: Sequence[int]) -> NCBatch:
        fa, fb, fn, keys, t_ab, t_ba = [], [], [], [], [], []
        for i in indices:
            rng = sample_rng(self.seed, step, i)
            targets = None
            for _ in range(16):
                row = self.train_pairs[int(rng.integers(len(self.train_pairs)))]
                pool = [r for r in self.train_pairs if r["scene"] != row["scene"]] if len(self.scenes) > 1 else \
                    [r for r in self.train_pairs if r["pair_id"] != row["pair_id"]]
                neg = pool[int(rng.integers(len(pool)))]
                a = self._f4_of(row["path0"], row["crop0"])
                b = self._f4_of(row["path1"], row["crop1"]) if a is not None else None
                n = self._f4_of(neg["path1"], neg["crop1"]) if b is not None else None
                if n is not None and self.uses_truth:
                    targets = self.truth.cell_targets(row, self._sizes[f"{row['path0']}|{row['crop0']}"],
                                                      self._sizes[f"{row['path1']}|{row['crop1']}"], self.size, self.cell_stride)
                    n = n if targets is not None else None  # no truth / no visible overlap: counted, draw another
                if n is not None:
                    break
            else:
                why = dict(self.truth.skipped) if self.uses_truth else next(iter(self.skipped.values()), "?")
                raise ValueError(f"16 pairs in a row could not be read or had no ground truth (e.g. {why})")
            if targets is not None:
                t_ab.append(torch.from_numpy(targets.a2b))
                t_ba.append(torch.from_numpy(targets.b2a))
            fa.append(a)
            fb.append(b)
            fn.append(n)
            keys.append(row["pair_id"])
        batch = NCBatch(torch.cat(fa), torch.cat(fb), torch.cat(fn), keys, int(step))
        if t_ab:
            batch.target_a2b = torch.stack(t_ab).to(self.device)
            batch.target_b2a = torch.stack(t_ba).to(self.device)
        return batch

    def loss(self, net: nn.Module, batch: NCBatch) -> tuple[Tensor, dict[str, float]]:
        mode = self.task_conf["loss"]
        corr = net(batch.fa, batch.fb)["corr"]
        pos = match_scores(corr)
        parts = {"score_pos": float(pos.mean().detach())}
        loss = corr.new_zeros(())
        if "weak" in mode:
            neg = match_scores(net(batch.fa, batch.fneg)["corr"])
            loss = loss + neg.mean() - pos.mean()
            parts["score_neg"] = float(neg.mean().detach())
        if "nll" in mode:
            if batch.target_a2b is None or batch.target_b2a is None:
                raise ValueError(f"ncnet.loss {mode!r}: the batch carries no true cells")
            nll, nll_parts = true_cell_nll(corr, batch.target_a2b, batch.target_b2a)
            loss = loss + nll
            parts.update(nll_parts)
            parts["pairs_skipped"] = float(self.truth.num_skipped)
        return loss, parts

    def validate(self, net: nn.Module) -> dict[str, float]:
        threshold = float(self.task_conf["val_threshold"])

        def proposals(pair):
            return net.extract_matches(net(pair.feats0[4], pair.feats1[4]), threshold=threshold)[0]

        return validate_on_pose_pairs(self, net, self.val_pairs, self.backbone, self.size, proposals,
                                      float(self.task_conf["ransac_px"]))
