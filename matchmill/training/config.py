"""Training job configuration: defaults, YAML + dotted overrides, validation.

One YAML file per job (``configs/train-pump.yaml``, ...). The model's own section (``pump``,
``ncnet`` or ``patch2pix``) takes its defaults and its checks from the task class registered in
``TASKS`` (:mod:`.tasks`), next to its code. Everything is validated before Ray starts: an
unknown key, a wrong type, a missing manifest or an unwritable checkpoint URL stops with one line
naming the problem. Reading, key and type checks and the keys a pipeline job shares come from
:mod:`matchmill.config`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from matchmill.config import (
    SHARED_JOB_DEFAULTS,
    ConfigError,
    check_keys,
    check_run_name,
    check_storage_url,
    deep_merge,
    default_run_path,
    read_user_config,
    storage_root_url,
    type_ok,
)
from matchmill.models.device import AMP_CHOICES

from .tasks import TASKS, task_class

#: A training job's keys: the shared ones (:data:`matchmill.config.SHARED_JOB_DEFAULTS`: storage,
#: run_name, seed, ray, data.images_dir, data.max_image_pixels) with a training job's own defaults,
#: and its own keys; the model's section is the task's ``default_conf``.
TRAIN_DEFAULTS: dict[str, Any] = deep_merge(SHARED_JOB_DEFAULTS, {
    "storage": None,  # None = the default storage, beside pipeline runs (matchmill.config.default_storage); Ray Train's storage_path
    "run_name": None,  # None = the model name. The same name resumes from its newest checkpoint
    "scaling": {
        "workers": 1,  # Ray Train workers (data-parallel replicas)
        "gpus_per_worker": 0.0,  # GPUs per worker; > 0 uses nccl and fails fast when the cluster has none
        "cpus_per_worker": 1.0,  # CPUs reserved per worker (also torch's intra-op threads on CPU)
    },
    "data": {
        "images": None,  # images (or pairs) manifest for PUMP's synthetic pairs: run URL, stage folder or .parquet
        "pairs": None,  # pairs manifest: a run URL, a stage folder, a .parquet file or a SuperGlue .txt list
        "val_fraction": 0.2,  # share of images (PUMP) or pairs (NCNet, Patch2Pix) held out, chosen by key hash
    },
    "train": {
        "steps": 200,  # optimiser steps in all (a resumed run continues up to this)
        "batch_size": 4,  # global batch (samples per step over all workers; a multiple of scaling.workers)
        "epoch_steps": None,  # steps per epoch (validation + checkpoint); None = training samples / batch_size
        "log_every": 10,  # console line and Parquet log flush every N steps
        "keep_last": 3,  # newest checkpoints kept (the best one is kept apart under best/)
        "amp": "none",  # mixed precision on GPU: none | bf16 | fp16 (ignored on CPU)
        "from": None,  # fine-tune: weights file or checkpoint folder to start the trained net from
        "max_failures": 1,  # worker failures Ray Train recovers from (restart from the newest checkpoint)
    },
})


#: The trainable models (the keys of ``TASKS``).
MODELS = tuple(TASKS)


def default_train_config(model: str) -> dict[str, Any]:
    """The job's defaults with the model's section (its task's ``default_conf``)."""
    conf = copy.deepcopy(TRAIN_DEFAULTS)
    conf[model] = copy.deepcopy(task_class(model).default_conf)
    return conf


def load_train_config(model: str, path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Read YAML, apply dotted overrides, fill defaults, validate. ``conf["model"]`` is set."""
    task_class(model)  # an unknown model is named first
    user = read_user_config(path, overrides)
    written_for = user.pop("model", model)
    if written_for != model:
        raise ConfigError(f"model: the config file is written for {written_for!r}, not {model!r}")
    others = [m for m in TASKS if m != model and m in user]
    if others:
        raise ConfigError(f"{others[0]}: section of another model in a {model} training job")
    defaults = default_train_config(model)
    check_keys(user, defaults)
    conf = deep_merge(defaults, user)
    _check_types(conf, defaults, "")
    conf["model"] = model
    if not conf["run_name"]:
        conf["run_name"] = model
    _absolute_local_urls(conf)
    _check_values(conf)
    return conf


#: Keys holding a manifest, a folder or a weights file: relative local paths are made absolute on
#: the driver, because Ray Train workers run in another working directory.
_PATH_KEYS = (("data", "images"), ("data", "pairs"), ("data", "images_dir"), ("*", "backbone_weights"),
              ("*", "ncnet_weights"), ("train", "from"))


def _absolute(url: str) -> str:
    if url.startswith("file://") and not url.startswith("file:///"):
        return "file://" + str(Path(url[len("file://"):]).resolve())
    if "://" not in url and not url.startswith("shipped:"):
        in_run = None if Path(url).expanduser().exists() else default_run_path(url)
        return in_run or str(Path(url).resolve())  # a run under the default storage (demo, ncnet-demo/best/...)
    return url


def _absolute_local_urls(conf: dict) -> None:
    """Resolve relative ``file://./x`` and plain relative paths of :data:`_PATH_KEYS` against the cwd;
    a relative path that does not exist there and starts with a run under the default storage
    (``demo``, ``ncnet-demo/best/model.safetensors``) is that run's (:func:`matchmill.config.default_run_path`)."""
    for section, key in _PATH_KEYS:
        sections = [conf.get(section)] if section != "*" else [v for v in conf.values() if isinstance(v, dict)]
        for sec in sections:
            if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key]:
                sec[key] = _absolute(sec[key])


def _check_types(conf: dict, defaults: dict, prefix: str) -> None:
    for key, default in defaults.items():
        value = conf.get(key)
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping, got {type(value).__name__}")
            _check_types(value, default, f"{prefix}{key}.")
        elif isinstance(default, (list, tuple)) and value is not None:
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ConfigError(f"{prefix}{key}: expected a list of {len(default)} values, got {value!r}")
        elif isinstance(default, float) and isinstance(value, str) and _is_float(value):
            conf[key] = float(value)  # YAML 1.1 reads 1e-4 as a string
        elif not type_ok(value, default):
            raise ConfigError(f"{prefix}{key}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_values(conf: dict) -> None:
    s, t, d = conf["scaling"], conf["train"], conf["data"]
    if s["workers"] < 1:
        raise ConfigError(f"scaling.workers: must be >= 1, got {s['workers']}")
    if s["gpus_per_worker"] < 0 or s["cpus_per_worker"] <= 0:
        raise ConfigError("scaling: gpus_per_worker must be >= 0 and cpus_per_worker > 0")
    if t["steps"] < 1 or t["batch_size"] < 1 or t["log_every"] < 1 or t["keep_last"] < 1:
        raise ConfigError("train.steps, train.batch_size, train.log_every and train.keep_last must be >= 1")
    if t["batch_size"] % s["workers"]:
        raise ConfigError(
            f"train.batch_size={t['batch_size']} must be a multiple of scaling.workers={s['workers']} "
            "(each worker takes the same share of the global batch)"
        )
    if t["epoch_steps"] is not None and t["epoch_steps"] < 1:
        raise ConfigError(f"train.epoch_steps: must be >= 1 or null, got {t['epoch_steps']}")
    if t["amp"] not in AMP_CHOICES:
        raise ConfigError(f"train.amp: {t['amp']!r} is not one of {'|'.join(AMP_CHOICES)}")
    if not 0.0 <= d["val_fraction"] < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {d['val_fraction']}")
    check_run_name(conf["run_name"])  # the same rules as a pipeline run (matchmill/config.py)
    check_storage_url(conf["storage"])
    if (conf["storage"] or "").startswith("memory://"):
        raise ConfigError("storage: memory:// is not shared with Ray workers; use file://, s3:// or gs://")
    task_class(conf["model"]).check_conf(conf)


def run_url(conf: dict) -> str:
    """``<storage>/<run_name>``: where the checkpoints, the log and the best weights live."""
    return storage_root_url(conf["storage"]) + "/" + conf["run_name"]


def config_hash(conf: dict) -> str:
    """Hash of what the run computes (scaling and step counts excluded: a resume may change them)."""
    payload = {k: v for k, v in conf.items() if k not in ("ray", "scaling", "storage", "run_name")}
    payload["train"] = {k: v for k, v in conf["train"].items() if k not in ("steps", "log_every", "keep_last", "max_failures")}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
