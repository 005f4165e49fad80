"""PUMP training task: AP loss on synthetic pairs (S) + 0.3 * uniqueness loss on real pairs (U).

Data (spec ``pump.md`` §2.4, §2.5):

- S: each sample draws an image of ``data.images`` (an images or pairs manifest) and makes a
  synthetic homography pair from it (:func:`matchmill.models.pump.synthetic.make_synthetic_pair`);
- U: with ``pump.u_fraction > 0``, that share of each global batch is real pairs of ``data.pairs``
  (any pairs manifest: a run's pairs stage, a SuperGlue list, a mined-pairs manifest; no ground
  truth needed), augmented and cropped by ``make_unsupervised_pair``.

Validation: MMA@3 of the grid protocol (:func:`matchmill.training.validation.grid_mma`) on
``val_pairs`` synthetic pairs of the held-out images, fixed seed ``val_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from matchmill.config import ConfigError
from matchmill.models.pump.convmixer import cpu_sized
from matchmill.models.pump.extract import build_descriptor_net
from matchmill.models.pump.synthetic import CPU_SYNTH_CONF, make_synthetic_pair, make_unsupervised_pair, merge_conf
from matchmill.models.pump.training import collate_pairs, compute_losses, make_optimizer

from .manifest_data import inspect_manifest, read_image_rows, read_pair_rows, split_rows
from .task import TrainTask, sample_rng
from .validation import grid_mma


def _synth_conf(c: dict) -> dict:
    try:
        return merge_conf({**CPU_SYNTH_CONF, **(c["synth"] or {})})
    except ValueError as exc:
        raise ConfigError(f"pump.synth: {exc}") from exc


@dataclass
class PumpBatch:
    """One worker's share of a global batch: ``image1``, ``image2`` ``(b, S, S, 3)`` uint8, ``H`` ``(b, 3, 3)``."""

    tensors: dict[str, Tensor]
    keys: list[str] = field(default_factory=list)
    step: int = 0
    indices: list[int] = field(default_factory=list)  # global-batch index of each sample


class PumpTask(TrainTask):
    name = "pump"
    metric = "mma@3"
    metric_mode = "max"

    #: The ``pump`` section's keys (the job's other keys: matchmill/training/config.py).
    default_conf: dict[str, Any] = {
        "arch": "convmixer",  # descriptor net: convmixer (paper) | r2d2
        "cpu_sized": True,  # width-128 ConvMixer (CPU budget); False = the paper's width 512
        "net": None,  # overrides of the net's DEFAULT_CONF (e.g. {width: 64, depth: 3})
        "lr": 1e-4,  # Adam learning rate (paper: 1e-4, constant)
        "weight_decay": 5e-4,  # Adam weight decay (paper: 5e-4)
        "pump_weight": 0.3,  # weight of the uniqueness loss on U samples (paper: 0.3)
        "u_fraction": 0.0,  # share of each global batch taken from real pairs (U, data.pairs); 0 = S only
        "synth": None,  # overrides of models.pump.synthetic.CPU_SYNTH_CONF (crop_size 128, window 192, ...)
        "ap": None,  # overrides of models.pump.ap_loss.AP_CONF (queries, radii, bins)
        "pump": None,  # overrides of models.pump.unsupervised_loss.DEFAULT_CONF
        "val_pairs": 16,  # held-out synthetic pairs per validation
        "val_seed": 1234,  # seed of the held-out pairs (fixed: every validation sees the same pairs)
        "mma_threshold": 3.0,  # px: the validation MMA threshold
    }

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Driver-side checks of a PUMP job (config values and manifests), before Ray starts."""
        c, d = conf["pump"], conf["data"]
        if c["arch"] not in ("convmixer", "r2d2"):
            raise ConfigError(f"pump.arch: {c['arch']!r} is not convmixer|r2d2")
        if not 0.0 <= c["u_fraction"] <= 1.0:
            raise ConfigError(f"pump.u_fraction: must be in [0, 1], got {c['u_fraction']}")
        for key in ("net", "synth", "ap", "pump"):
            if c[key] is not None and not isinstance(c[key], dict):
                raise ConfigError(f"pump.{key}: expected a mapping of overrides or null, got {c[key]!r}")
        _synth_conf(c)
        n_u = round(conf["train"]["batch_size"] * c["u_fraction"])
        if n_u < conf["train"]["batch_size"]:
            if not d["images"] and not d["pairs"]:
                raise ConfigError("data.images: required for PUMP's synthetic pairs (an images or pairs manifest URL)")
            src = inspect_manifest(d["images"] or d["pairs"], ("images", "pairs"), "data.images" if d["images"] else "data.pairs", d["images_dir"])
            if src.ok_rows == 0:
                raise ConfigError(f"{'data.images' if d['images'] else 'data.pairs'}: {src.url} has no usable rows "
                                  f"({src.rows} rows, none with status ok)")
        if n_u > 0:
            src = inspect_manifest(d["pairs"], ("pairs",), "data.pairs", d["images_dir"])
            if src.ok_rows == 0:
                raise ConfigError(f"data.pairs: {src.url} has no usable pairs ({src.rows} rows, none with status ok)")

    def setup_data(self) -> None:
        d, c = self.conf["data"], self.task_conf
        self.synth = _synth_conf(c)
        self.metric = f"mma@{float(c['mma_threshold']):g}"
        B = int(self.conf["train"]["batch_size"])
        self.n_u = round(B * float(c["u_fraction"]))
        self.train_images, self.val_images = [], []
        if self.n_u < B:
            src, where = (d["images"], "data.images") if d["images"] else (d["pairs"], "data.pairs")
            rows = read_image_rows(src, where, d["images_dir"])
            self.train_images, self.val_images = split_rows(rows, "image_id", float(d["val_fraction"]))
            if not self.train_images:
                raise ValueError(f"{where}: no training images in {src}")
            if not self.val_images:
                self.val_images = self.train_images[:1]
        self.u_pairs = []
        if self.n_u > 0:
            pairs = read_pair_rows(d["pairs"], "data.pairs", d["images_dir"])
            self.u_pairs, _ = split_rows(pairs, "pair_id", float(d["val_fraction"]))
            if not self.u_pairs:
                raise ValueError(f"data.pairs: no training pairs in {d['pairs']}")
            if not self.val_images:  # U only: validate on the images of the pairs
                self.val_images = [{"image_id": p["image0"], "path": p["path0"], "crop": p["crop0"]} for p in self.u_pairs[:4]]
        self._val = None

    def num_train_samples(self) -> int:
        return max(len(self.train_images), len(self.u_pairs))

    def build_net(self) -> nn.Module:
        c = self.task_conf
        conf = dict(c["net"] or {})
        if c["arch"] == "convmixer" and c["cpu_sized"]:
            conf = {**cpu_sized(), **conf}  # explicit net keys (e.g. width) win over the CPU preset
        torch.manual_seed(self.seed)
        net = build_descriptor_net(c["arch"], conf)
        return net.to(self.device).train()

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(net, {"lr": self.task_conf["lr"], "weight_decay": self.task_conf["weight_decay"]})

    # -- samples ----------------------------------------------------------------------------
    def _synthetic(self, rng, images: Sequence[dict]):
        for _ in range(16):  # a broken image is skipped (and counted); the sample draws another one
            row = images[int(rng.integers(len(images)))]
            image = self.load(row["path"], row.get("crop"))
            if image is not None:
                return make_synthetic_pair(image, rng, self.synth), row["image_id"]
        raise ValueError(f"16 images in a row could not be read (e.g. {next(iter(self.skipped.values()), '?')})")

    def _unsupervised(self, rng):
        for _ in range(16):
            row = self.u_pairs[int(rng.integers(len(self.u_pairs)))]
            a = self.load(row["path0"], row.get("crop0"))
            b = self.load(row["path1"], row.get("crop1")) if a is not None else None
            if a is not None and b is not None:
                return make_unsupervised_pair(a, b, rng, self.synth), row["pair_id"]
        raise ValueError(f"16 pairs in a row could not be read (e.g. {next(iter(self.skipped.values()), '?')})")

    def local_batch(self, step: int, indices: Sequence[int]) -> PumpBatch:
        pairs, keys = [], []
        for i in indices:
            rng = sample_rng(self.seed, step, i)
            pair, key = self._unsupervised(rng) if i < self.n_u else self._synthetic(rng, self.train_images)
            pairs.append(pair)
            keys.append(key)
        batch = {k: v.to(self.device) for k, v in collate_pairs(pairs).items()}
        return PumpBatch(batch, keys, int(step), list(indices))

    # -- loss / validation ------------------------------------------------------------------
    def loss(self, net: nn.Module, batch: PumpBatch) -> tuple[Tensor, dict[str, float]]:
        """This worker's part of ``AP(S of the global batch) + pump_weight * PUMP(U of the global batch)``.

        Each part is weighted by this worker's share of the global S (U) samples and by the world
        size, so that the mean over workers (what DDP's gradient averaging computes) equals the
        one-worker loss of the same global batch, however the S and U samples fall on the workers.
        """
        c = self.task_conf
        gens = []  # one per sample, seeded by its global index: its queries do not depend on the worker
        for i in batch.indices:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(sample_rng(self.seed, batch.step, i, 1).integers(2**62)))
            gens.append(g)
        conf = {"lr": c["lr"], "weight_decay": c["weight_decay"], "pump_weight": 1.0, "ap": c["ap"], "pump": c["pump"]}
        _, parts = compute_losses(net, batch.tensors, conf, gens, detach_parts=False)
        B = int(self.conf["train"]["batch_size"])
        n_u_all, n_s_all = self.n_u, B - self.n_u
        w_s = self.world * parts["num_s"] / n_s_all if n_s_all else 0.0
        w_u = self.world * parts["num_u"] / n_u_all if n_u_all else 0.0
        ap, pump = w_s * parts["ap_loss"], w_u * parts["pump_loss"]
        total = ap + float(c["pump_weight"]) * pump
        return total, {"ap_loss": float(ap.detach()), "pump_loss": float(pump.detach()),
                       "num_s": float(parts["num_s"]), "num_u": float(parts["num_u"])}

    def validation_pairs(self) -> list:
        if self._val is None:
            self._val = []
            for j in range(int(self.task_conf["val_pairs"])):
                rng = sample_rng(int(self.task_conf["val_seed"]), 0, j)
                self._val.append(self._synthetic(rng, self.val_images)[0])
        return self._val

    def validate(self, net: nn.Module) -> dict[str, float]:
        return grid_mma(net, self.validation_pairs(), self.device, float(self.task_conf["mma_threshold"]))
