"""The training tasks, by model name: ``matchmill train NAME`` runs ``TASKS[NAME]``.

Each task class (:class:`.task.TrainTask`) carries its section's defaults (``default_conf``) and
its driver-side checks (``check_conf``); :mod:`.config` and :mod:`.loop` read them from here. A new
trainable method adds its task module and one entry below.
"""

from __future__ import annotations

import torch

from matchmill.config import ConfigError

from .ncnet_task import NCNetTask
from .patch2pix_task import Patch2PixTask
from .pump_task import PumpTask
from .task import TrainTask

TASKS: dict[str, type[TrainTask]] = {
    "pump": PumpTask,
    "ncnet": NCNetTask,
    "patch2pix": Patch2PixTask,
}


def task_class(model: str) -> type[TrainTask]:
    """``TASKS[model]``; an unknown name is a :class:`ConfigError` listing the known ones."""
    try:
        return TASKS[model]
    except KeyError:
        raise ConfigError(f"unknown model {model!r}; expected one of {', '.join(TASKS)}") from None


def make_task(conf: dict, device: torch.device, rank: int, world: int) -> TrainTask:
    """The task of ``conf["model"]`` for this worker."""
    return task_class(conf["model"])(conf, device, rank, world)
