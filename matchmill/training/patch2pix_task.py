"""Patch2Pix task: the mid and fine regressors on pairs with ground-truth pose, backbone and NC frozen.

Per sample (spec ``patch2pix.md`` §2.10, §4): a pair of ``data.pairs`` with K0, K1, T_0to1 is cropped,
resized to ``size``, run through the frozen backbone and the frozen NC layers
(``patch2pix.ncnet_weights``: a ``matchmill train ncnet`` checkpoint, its run's ``best/`` or a
weights file), its proposals sampled to ``ptmax`` and expanded to 8 anchors each; the loss is the
weakly supervised epipolar loss (:func:`matchmill.models.patch2pix_training.examples_loss`), or with
``patch2pix.loss: pixel | both`` pixel targets from the pair's depth maps and pose
(:mod:`.patch2pix_pixel_loss`, :mod:`.pair_truth`; a pair without truth or overlap is skipped and
counted), alone or added to the epipolar loss.
Optimiser: Adam, lr 5e-4, no weight decay (spec §4).

Validation: held-out pairs, NC proposals refined in eval mode and kept above ``confidence``; pose
AUC@5/10/20 and the median Sampson error (px) of the refined matches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from matchmill.config import ConfigError
from matchmill.datasets.demo.oracle import PairOracle
from matchmill.geometry.pair_metrics import has_pose_gt
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix import DEFAULT_CONF, Patch2Pix, cpu_sized
from matchmill.models.patch2pix_training import examples_loss, make_training_example
from matchmill.models.weights import load_weights

from .checkpoints import weights_file
from .manifest_data import inspect_manifest, read_pair_rows, split_rows
from .pair_features import build_backbone, check_backbone, check_size, validate_on_pose_pairs
from .pair_truth import PairTruth, first_rows_with_truth
from .patch2pix_pixel_loss import PATCH2PIX_LOSSES, pixel_examples_loss
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
        "loss": "epipolar",  # epipolar (paper, from pose) | pixel (true match from depth + pose) | both (sum)
        "pixel_thresholds": [7.0, 2.0],  # pixel loss: (mid, fine) true error (px) under which a match is labelled correct
        "pixel_huber": 1.0,  # pixel loss: Huber transition (px) of the offset regression
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
        if c["loss"] not in PATCH2PIX_LOSSES:
            raise ConfigError(f"patch2pix.loss: expected one of {' | '.join(PATCH2PIX_LOSSES)}, got {c['loss']!r}")
        thr = c["pixel_thresholds"]
        if not (isinstance(thr, list) and len(thr) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in thr)):
            raise ConfigError(f"patch2pix.pixel_thresholds: expected [mid, fine] positive pixels, got {thr!r}")
        if not c["pixel_huber"] > 0:
            raise ConfigError(f"patch2pix.pixel_huber: must be > 0, got {c['pixel_huber']!r}")
        src = inspect_manifest(d["pairs"], ("pairs",), "data.pairs", d["images_dir"])
        if src.ok_rows == 0:
            raise ConfigError(f"data.pairs: {src.url} has no usable pairs ({src.rows} rows, none with status ok)")
        if c["loss"] != "epipolar" and not first_rows_with_truth(read_pair_rows(d["pairs"], "data.pairs", d["images_dir"])):
            raise ConfigError(f"patch2pix.loss: {c['loss']!r} needs pairs with ground truth (K0, K1, T_0to1 and depth maps "
                              f"<scene>/depths/<stem>.h5, or H_0to1); the first pairs of {src.url} have none")
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
        self.uses_truth = c["loss"] != "epipolar"
        self.truth = PairTruth()
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
            oracle = None
            for _ in range(16):
                row = self.train_pairs[int(rng.integers(len(self.train_pairs)))]
                a = self.load(row["path0"])
                b = self.load(row["path1"]) if a is not None else None
                if b is not None and self.uses_truth:
                    oracle = self._oracle(row, a, b)
                    b = b if oracle is not None else None  # no truth / no visible overlap: counted, draw another
                if b is not None:
                    break
            else:
                why = dict(self.truth.skipped) if self.uses_truth else next(iter(self.skipped.values()), "?")
                raise ValueError(f"16 pairs in a row could not be read or had no ground truth (e.g. {why})")
            ex = make_training_example(a, b, row["K0"], row["K1"], row["T_0to1"], self.backbone, self.ncnet,
                                       ptmax=int(self.task_conf["ptmax"]), seed=int(rng.integers(2**31)),
                                       size=self.size, crop0=row["crop0"], crop1=row["crop1"])
            if self.uses_truth:
                ex["oracle"] = oracle
            examples.append(ex)
            keys.append(row["pair_id"])
        return ExampleBatch(examples, keys, int(step))

    def _oracle(self, row: dict, a: np.ndarray, b: np.ndarray) -> PairOracle | None:
        """The pair's oracle in the network frames, or None (counted) without truth or overlap."""
        sizes = []
        for image, crop in ((a, row["crop0"]), (b, row["crop1"])):
            h, w = image.shape[:2]
            sizes.append((min(w, int(crop[0])), min(h, int(crop[1]))) if crop else (w, h))
        if self.truth.cell_targets(row, sizes[0], sizes[1], self.size, 16) is None:  # overlap check on a 16 px grid
            return None
        return self.truth.oracle(row, sizes[0], sizes[1]).resized(self.size, self.size)

    def loss(self, net: nn.Module, batch: ExampleBatch) -> tuple[Tensor, dict[str, float]]:
        mode = self.task_conf["loss"]
        if mode != "epipolar":
            pixel_conf = {k: self.task_conf[k] for k in ("pixel_thresholds", "pixel_huber")}
            loss, stats = pixel_examples_loss(net, batch.examples, mode, pixel_conf)
            stats["pairs_skipped"] = float(self.truth.num_skipped)
            return loss, stats
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
