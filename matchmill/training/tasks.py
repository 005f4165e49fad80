"""The training tasks, by model name: ``matchmill train NAME`` runs ``TASKS[NAME]``.

Each task class (:class:`.task.TrainTask`) carries its section's defaults (``default_conf``) and
its driver-side checks (``check_conf``); :mod:`.config` and :mod:`.loop` read them from here. A new
trainable method adds its task module and one entry below. Entries are ``"module:Class"`` strings
imported when a task is used (as the method registry's), so that the ``matchmill train`` parser
and config validation of other jobs never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from matchmill.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

    from .task import TrainTask

TASKS: dict[str, str] = {
    "pump": "matchmill.training.pump_task:PumpTask",
    "ncnet": "matchmill.training.ncnet_task:NCNetTask",
    "patch2pix": "matchmill.training.patch2pix_task:Patch2PixTask",
}


def task_class(model: str) -> type[TrainTask]:
    """The task class of ``model``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if model not in TASKS:
        raise ConfigError(f"unknown model {model!r}; expected one of {', '.join(TASKS)}")
    module_name, class_name = TASKS[model].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_task(conf: dict, device: torch.device, rank: int, world: int) -> TrainTask:
    """The task of ``conf["model"]`` for this worker."""
    return task_class(conf["model"])(conf, device, rank, world)
