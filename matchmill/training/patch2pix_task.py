"""Patch2Pix task: the mid and fine regressors on pairs with ground-truth pose, backbone and NC frozen.

Per sample (spec ``patch2pix.md`` §2.10, §4): a pair of ``data.pairs`` with K0, K1, T_0to1 is cropped,
resized to ``size``, run through the frozen backbone and the frozen NC layers
(``patch2pix.ncnet_weights``: a ``matchmill train ncnet`` checkpoint, its run's ``best/`` or a
weights file), its proposals sampled to ``ptmax`` and expanded to 8 anchors each; the loss is the
weakly supervised epipolar loss (:func:`matchmill.models.patch2pix_training.examples_loss`).
Optimiser: Adam, lr 5e-4, no weight decay (spec §4).

Validation: held-out pairs, NC proposals refined in eval mode and kept above ``confidence``; pose
AUC@5/10/20 and the median Sampson error (px) of the refined matches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from matchmill.config import ConfigError
from matchmill.geometry.pair_metrics import has_pose_gt
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix import DEFAULT_CONF, Patch2Pix, cpu_sized
from matchmill.models.patch2pix_training import examples_loss, make_training_example
from matchmill.models.weights import load_weights

from .checkpoints import weights_file
from .manifest_data import inspect_manifest, read_pair_rows, split_rows
from .pair_features import build_backbone, check_backbone, check_size, validate_on_pose_pairs
from .task import TrainTask, sample_rng

log = logging.getLogger(__name__)


@dataclass
class ExampleBatch:
    examples: list[dict]
    keys: list[str] = field(default_factory=list)
    step: int = 0


class Patch2PixTask(TrainTask):
    name = "patch2pix"
    metric = "auc@10"
    metric_mode = "max"

    #: The ``patch2pix`` section's keys (the job's other keys: matchmill/training/config.py).
    default_conf: dict[str, Any] = {
        "backbone": "resnet34",  # frozen feature pyramid (f0..f4): resnet34 | pump
        "backbone_weights": None,  # resnet34: torchvision-layout weights; pump: a ConvMixer state dict; None = seeded init
        "backbone_conf": None,  # overrides of models.backbones.PYRAMID_CONF (pump: cpu_sized, net, pools)
        "backbone_seed": 0,  # seed of the backbone's init when no weights are given
        "ncnet_weights": None,  # frozen NC layers: a `matchmill train ncnet` checkpoint / run folder / weights file
        "ncnet_seed": 0,  # seed of the NC init when no weights are given (a warning says the proposals are random)
        "size": [320, 240],  # [W, H] both images are resized to (multiples of 16; the paper trains at 480x320)
        "cpu_sized": True,  # width-128 regressors (CPU budget); False = the paper's width 512
        "net": None,  # overrides of models.patch2pix.DEFAULT_CONF (thresholds, widths, panc, ...)
        "ptmax": 400,  # proposals per pair in training (paper: 400)
        "lr": 5e-4,  # Adam learning rate (paper: 5e-4)
        "weight_decay": 0.0,  # Adam weight decay (paper: 0)
        "val_pairs": 16,  # held-out pairs per validation
        "confidence": 0.25,  # fine confidence a refined validation match must exceed
        "ransac_px": 0.5,  # essential-matrix RANSAC threshold of the validation (px)
    }

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Driver-side checks: values, and a pairs manifest whose rows carry pose ground truth."""
        c, d = conf["patch2pix"], conf["data"]
        check_size(c["size"], "patch2pix.size")
        check_backbone(c, "patch2pix")
        if c["ptmax"] < 2:
            raise ConfigError(f"patch2pix.ptmax: must be >= 2, got {c['ptmax']}")
        if c["net"] is not None and not isinstance(c["net"], dict):
            raise ConfigError(f"patch2pix.net: expected a mapping of overrides or null, got {c['net']!r}")
        src = inspect_manifest(d["pairs"], ("pairs",), "data.pairs", d["images_dir"])
        if src.ok_rows == 0:
            raise ConfigError(f"data.pairs: {src.url} has no usable pairs ({src.rows} rows, none with status ok)")
        if src.pose_rows == 0:
            raise ConfigError(
                f"data.pairs: {src.no_pose_reason()}; Patch2Pix is supervised by the epipolar geometry "
                "of each pair (a mined or unposed list cannot train it)"
            )
        if c["ncnet_weights"]:
            try:
                weights_file(c["ncnet_weights"])
            except FileNotFoundError as exc:
                raise ConfigError(str(exc).replace("train.from", "patch2pix.ncnet_weights")) from exc

    def setup_data(self) -> None:
        d, c = self.conf["data"], self.task_conf
        rows = [r for r in read_pair_rows(d["pairs"], "data.pairs", d["images_dir"]) if has_pose_gt(r)]
        self.train_pairs, self.val_pairs = split_rows(rows, "pair_id", float(d["val_fraction"]))
        if not self.train_pairs:
            raise ValueError(f"data.pairs: no training pairs with pose in {d['pairs']}")
        self.val_pairs = (self.val_pairs or self.train_pairs[:1])[: int(c["val_pairs"])]
        self.size = tuple(c["size"])
        self.backbone = build_backbone(c, self.device)
        torch.manual_seed(int(c["ncnet_seed"]))
        self.ncnet = NCNet().to(self.device).eval()
        if c["ncnet_weights"]:
            load_weights(self.ncnet, weights_file(c["ncnet_weights"]))
        elif self.rank == 0:
            log.warning("patch2pix: the NC layers start from a random init (patch2pix.ncnet_weights is unset): "
                        "train them first with `matchmill train ncnet`")
        for p in self.ncnet.parameters():
            p.requires_grad_(False)

    def num_train_samples(self) -> int:
        return len(self.train_pairs)

    def _net_conf(self) -> dict:
        base = cpu_sized(DEFAULT_CONF) if self.task_conf["cpu_sized"] else dict(DEFAULT_CONF)
        channels = list(self.backbone.channels)[:4]  # the regressors read f0..f3 of the backbone
        return {**base, "feat_channels": channels, **(self.task_conf["net"] or {}),
                "confidence": float(self.task_conf["confidence"])}

    def build_net(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return Patch2Pix(self._net_conf()).to(self.device).train()

    def local_batch(self, step: int, indices: Sequence[int]) -> ExampleBatch:
        examples, keys = [], []
        for i in indices:
            rng = sample_rng(self.seed, step, i)
            for _ in range(16):
                row = self.train_pairs[int(rng.integers(len(self.train_pairs)))]
                a = self.load(row["path0"])
                b = self.load(row["path1"]) if a is not None else None
                if b is not None:
                    break
            else:
                raise ValueError(f"16 pairs in a row could not be read (e.g. {next(iter(self.skipped.values()), '?')})")
            ex = make_training_example(a, b, row["K0"], row["K1"], row["T_0to1"], self.backbone, self.ncnet,
                                       ptmax=int(self.task_conf["ptmax"]), seed=int(rng.integers(2**31)),
                                       size=self.size, crop0=row["crop0"], crop1=row["crop1"])
            examples.append(ex)
            keys.append(row["pair_id"])
        return ExampleBatch(examples, keys, int(step))

    def loss(self, net: nn.Module, batch: ExampleBatch) -> tuple[Tensor, dict[str, float]]:
        loss, stats = examples_loss(net, batch.examples)
        keep = ("cls", "geo", "n_pos_mid", "n_pos_fine", "sampson_in", "sampson_mid", "sampson_fine")
        return loss, {k: float(stats[k]) for k in keep}

    def validate(self, net: nn.Module) -> dict[str, float]:
        confidence = float(self.task_conf["confidence"])

        def refined(pair):
            proposals, _ = self.ncnet.extract_matches(self.ncnet(pair.feats0[4], pair.feats1[4]))
            if not len(proposals):
                return proposals
            return net.predict(pair.feats0[:4], pair.feats1[:4], proposals, self.size, self.size, threshold=confidence)[0]

        return validate_on_pose_pairs(self, net, self.val_pairs, self.backbone, self.size, refined,
                                      float(self.task_conf["ransac_px"]))
