"""What every training task provides to the driver (:mod:`.config`: defaults and checks) and to the
per-worker loop (:mod:`.loop`), and the shared helpers. The tasks register in ``TASKS``
(:mod:`.tasks`); this module imports none of them.

A task owns its data (read by the worker from manifests), its net, its loss and its validation.
Samples are seeded per (seed, step, index in the global batch), never per worker: worker ``r`` of
``W`` takes the global-batch indices ``i`` with ``i % W == r``, so one worker and several see the
same global batch at every step.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from matchmill.datasets.image_io import ImageError

from .manifest_data import ImageCache

__all__ = ["TrainTask", "sample_rng", "local_indices", "LossModule"]


def sample_rng(seed: int, step: int, index: int, salt: int = 0) -> np.random.Generator:
    """The generator of one sample: depends on the job seed, the step and the sample's global index only."""
    return np.random.default_rng([int(seed), int(step), int(index), int(salt)])


def local_indices(batch_size: int, rank: int, world: int) -> list[int]:
    """Global-batch indices this worker computes: ``i % world == rank``."""
    return [i for i in range(int(batch_size)) if i % int(world) == int(rank)]


class LossModule(nn.Module):
    """``forward(batch) -> (loss, parts)`` around the trained net, so DDP sees one forward per step
    (Patch2Pix forwards each pair separately inside it)."""

    def __init__(self, net: nn.Module, fn) -> None:
        super().__init__()
        self.net = net
        self._fn = fn

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return self._fn(self.net, batch)


class TrainTask:
    """Base class: see the module docstring. A subclass sets ``name``, ``metric``, ``metric_mode``
    and ``default_conf`` (its section's keys, one comment each), may add driver-side checks in
    :meth:`check_conf`, and is registered in ``TASKS`` (:mod:`.tasks`)."""

    name = "task"
    metric = "loss"  # validation metric that picks the best checkpoint
    metric_mode = "max"  # "max" or "min"
    default_conf: dict[str, Any] = {}  # the keys of the job's section named after the task

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Driver-side checks of a merged, typed job config (values, manifests), before Ray
        starts; raise :class:`matchmill.config.ConfigError` naming the key."""

    def __init__(self, conf: dict, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.conf = conf
        self.task_conf = conf[conf["model"]]
        self.device = device
        self.rank, self.world = int(rank), int(world)
        self.seed = int(conf["seed"])
        self.images = ImageCache(int(conf["data"]["max_image_pixels"]))
        self.skipped: dict[str, str] = {}  # path -> error of every image that could not be used

    # -- data -------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """Read the manifests (in the worker) and split them; raise ValueError when nothing is usable."""
        raise NotImplementedError

    def num_train_samples(self) -> int:
        """Size of the training set (an epoch is this many samples, unless ``train.epoch_steps``)."""
        raise NotImplementedError

    def local_batch(self, step: int, indices: Sequence[int]) -> Any:
        """This worker's samples of the global batch at ``step``; ``.keys`` (list of str) names them."""
        raise NotImplementedError

    def load(self, path: str, crop=None) -> np.ndarray | None:
        """An image, or None (recorded in :attr:`skipped`) when it cannot be read."""
        try:
            return self.images.get(path, crop)
        except ImageError as exc:
            self.skipped[path] = str(exc)
            return None

    # -- model ------------------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        """The trained net (seeded init, same on every worker), on :attr:`device`."""
        raise NotImplementedError

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in net.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=float(self.task_conf["lr"]), weight_decay=float(self.task_conf["weight_decay"]))

    def loss(self, net: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss (mean over this worker's samples) and floats to log."""
        raise NotImplementedError

    def validate(self, net: nn.Module) -> dict[str, float]:
        """Validation metrics on the held-out data (rank 0 only); must hold :attr:`metric`."""
        raise NotImplementedError

