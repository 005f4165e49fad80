"""The pipeline's job schema: its keys, one section per stage, validation, run URL, stage hashes.

A job is one YAML file with a section per stage. Everything is validated before any work starts:
an unknown key, a wrong type or an unknown method stops the run with one line that names the
key. Method-specific keys (``extract.max_keypoints`` for SIFT, ...) come from the method's own
``default_conf`` next to its code. Reading YAML and overrides, the key/type/bound checks and the
keys a training job shares live in :mod:`matchmill.config`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from matchmill.config import (
    SHARED_JOB_BOUNDS,
    SHARED_JOB_DEFAULTS,
    ConfigError,
    check_bounds,
    check_keys,
    check_run_name,
    check_storage_url,
    deep_merge,
    read_user_config,
    storage_root_url,
    type_ok,
)
from matchmill.models.device import AMP_CHOICES

from .graph import ALL_STAGES, EXECUTION_DEFAULTS, EXECUTION_KEYS, RAY_STAGES, STAGES

#: The job's keys: the shared ones (storage, run_name, seed, ray, data.images_dir,
#: data.max_image_pixels: :data:`matchmill.config.SHARED_JOB_DEFAULTS`) and the pipeline's own;
#: each stage's section comes from its spec (matchmill/pipeline/graph.py).
JOB_DEFAULTS: dict[str, Any] = deep_merge(SHARED_JOB_DEFAULTS, {
    "preset": None,  # chain preset (matchmill.methods.presets, e.g. pump-ncnet-patch2pix): its method keys apply under this file's own
    "part_rows": 64,  # rows per Parquet part file written by Ray stages (resume granularity)
    "integrity": "full",  # rerun check of committed parts: full (sizes + every page's checksum, reads each part once) | sizes (one listing); artifact sizes are checked by either
    "max_failed_fraction": 0.0,  # exit code 1 when a stage's failed rows exceed this fraction (0 = any failure)
    "ray": {
        "progress_bars": True,  # Ray Data progress bars (when stdout is a terminal)
    },
    "data": {
        "source": "demo",  # demo | megadepth | hpatches | oxford | pairs_file | folder (every image under root)
        "root": None,  # dataset root (folder source: the image folder); for demo None = generate into the cache
        "pairs_file": None,  # pairs_file source: SuperGlue-style list
        "sequences": None,  # hpatches source: restrict to these sequence names
        "demo_num_cameras": 14,  # demo scene: number of rendered views
        "demo_width": 320,  # demo scene: image width
        "demo_height": 240,  # demo scene: image height
        "demo_sfm_groups": 1,  # demo scene: SfM model split into this many camera groups that share no 3D point (mining demo)
    },
})


#: Bounds of the job's numeric keys (dotted); every other numeric key must be >= 0 (see
#: :func:`matchmill.config.check_bounds` for the notation and the rule).
JOB_BOUNDS: dict[str, str] = {
    **SHARED_JOB_BOUNDS,
    "part_rows": ">= 1",
    "max_failed_fraction": "[0, 1]",
    "data.demo_num_cameras": ">= 2",  # a pair needs two views
    "data.demo_width": ">= 16",  # the renderer's smallest image
    "data.demo_height": ">= 16",
    "data.demo_sfm_groups": ">= 1",
}


def method_sections() -> tuple[str, ...]:
    """Stages whose section has a ``method`` key (extract, propose, refine)."""
    return tuple(s.name for s in STAGES if s.has_method)


def default_config() -> dict:
    """Job defaults plus one section per stage that has keys (from the stage specs)."""
    conf = copy.deepcopy(JOB_DEFAULTS)
    for spec in ALL_STAGES:
        section = spec.default_section()
        if section or spec.kind == "ray":
            conf[spec.name] = section
    return conf


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Read YAML, apply dotted overrides, fill defaults (incl. method defaults), validate."""
    return resolve(read_user_config(path, overrides))


def resolve(user: dict) -> dict:
    """Merge user values over defaults and validate the result."""
    defaults = default_config()
    if user.get("preset") is not None:  # a chain preset's dotted keys, under the job's own keys
        from matchmill.methods.presets import apply_preset  # lazy: imports the method family modules (cv2)

        user = apply_preset(user)
    check_keys(user, defaults, prefix="", open_sections=method_sections())  # method keys: once the method is known
    conf = deep_merge(defaults, user)
    from matchmill.methods.registry import load_method  # lazy: the method modules (numpy, cv2); the CLI imports this module

    for section in method_sections():
        method = conf[section]["method"]
        try:
            cls = load_method(section, method)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from exc
        method_conf = dict(cls.default_conf)
        stage_defaults = {**defaults[section], **method_conf}
        # keys of the stage's *other* methods are accepted and ignored, so that a job file written
        # for one method still runs with ``extract.method=...`` switched on the command line
        other = _other_method_keys(section, method) - set(stage_defaults)
        user_section = {k: v for k, v in user.get(section, {}).items() if k not in other}
        check_keys(user_section, stage_defaults, prefix=f"{section}.")
        conf[section] = deep_merge(stage_defaults, user_section)
    _check_types(conf, default_config(), prefix="")
    _check_values(conf)
    return conf


def _other_method_keys(section: str, method: str) -> set[str]:
    from matchmill.methods.registry import REGISTRIES, load_method  # lazy: the method modules (numpy, cv2); the CLI imports this module

    keys: set[str] = set()
    for name in REGISTRIES[section]:
        if name != method:
            keys |= set(load_method(section, name).default_conf)
    return keys


def _check_types(conf: dict, defaults: dict, prefix: str) -> None:
    for key, value in conf.items():
        if key not in defaults:
            continue  # method keys: checked against the method defaults below
        default = defaults[key]
        if isinstance(default, dict):
            if isinstance(value, dict):
                _check_types(value, default, prefix=f"{prefix}{key}.")
            continue
        if not type_ok(value, default):
            raise ConfigError(
                f"{prefix}{key}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})"
            )
    for section in method_sections():
        if prefix == "" and section in conf:
            from matchmill.methods.registry import method_defaults  # lazy: the method modules (numpy, cv2); the CLI imports this module

            md = method_defaults(section, conf[section]["method"])
            for key, default in md.items():
                if not type_ok(conf[section][key], default):
                    raise ConfigError(
                        f"{section}.{key}: expected {type(default).__name__}, "
                        f"got {type(conf[section][key]).__name__} ({conf[section][key]!r})"
                    )


#: Numeric job keys that have no "off" value: null is refused (``extract.actors=`` on the command line).
REQUIRED_NUMBERS = ("seed", "part_rows", "max_failed_fraction")


def _check_required_numbers(conf: dict) -> None:
    """Null where a number is needed stops with one line (it used to crash later in a comparison)."""
    keys = [(k, conf[k]) for k in REQUIRED_NUMBERS]
    keys += [(f"{s}.{k}", conf[s][k]) for s in RAY_STAGES for k, v in EXECUTION_DEFAULTS.items()
             if isinstance(v, (int, float))]
    for key, value in keys:
        if value is None:
            raise ConfigError(f"{key}: expected a number, got null")


def _check_values(conf: dict) -> None:
    _check_required_numbers(conf)
    sources = ("demo", "megadepth", "hpatches", "oxford", "pairs_file", "folder")
    if conf["data"]["source"] not in sources:
        raise ConfigError(f"data.source: {conf['data']['source']!r} is not one of {sources}")
    if conf["data"]["source"] != "demo" and not conf["data"]["root"] and conf["data"]["source"] != "pairs_file":
        raise ConfigError(f"data.root: required for data.source={conf['data']['source']}")
    if conf["data"]["source"] == "pairs_file" and not conf["data"]["pairs_file"]:
        raise ConfigError("data.pairs_file: required for data.source=pairs_file")
    _check_pairs(conf)
    from matchmill.stages.mine import check_conf as check_mine  # lazy: pyarrow/numpy; the CLI imports this module

    try:
        check_mine(conf["mine"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if conf["verify"]["geometry"] not in ("auto", "homography", "fundamental"):
        raise ConfigError(f"verify.geometry: {conf['verify']['geometry']!r} is not auto|homography|fundamental")
    for section in method_sections():
        if "amp" in conf[section]:
            if conf[section]["amp"] not in AMP_CHOICES:
                raise ConfigError(f"{section}.amp: {conf[section]['amp']!r} is not one of {'|'.join(AMP_CHOICES)}")
    if not 0.0 <= float(conf["max_failed_fraction"]) <= 1.0:
        raise ConfigError(f"max_failed_fraction: must be in [0, 1], got {conf['max_failed_fraction']}")
    for section in RAY_STAGES:
        sec = conf[section]
        if sec["actors"] < 1:
            raise ConfigError(f"{section}.actors: must be >= 1, got {sec['actors']}")
        if sec["batch_size"] < 1:
            raise ConfigError(f"{section}.batch_size: must be >= 1, got {sec['batch_size']}")
        if sec["num_gpus"] < 0 or sec["num_cpus"] < 0:
            raise ConfigError(f"{section}: num_cpus and num_gpus must be >= 0")
        _check_resources(section, sec["resources"])
    if not 1 <= conf["data"]["demo_sfm_groups"] <= conf["data"]["demo_num_cameras"]:
        raise ConfigError(f"data.demo_sfm_groups: must be in [1, demo_num_cameras], got {conf['data']['demo_sfm_groups']}")
    if conf["integrity"] not in ("full", "sizes"):
        raise ConfigError(f"integrity: must be full or sizes, got {conf['integrity']!r}")
    if conf["part_rows"] < 1:
        raise ConfigError(f"part_rows: must be >= 1, got {conf['part_rows']}")
    check_run_name(conf["run_name"])
    check_storage_url(conf["storage"])
    _check_bounds(conf)
    _check_weights(conf)


def _check_bounds(conf: dict) -> None:
    """:func:`check_bounds` over the job's keys, each stage section and its method's keys."""
    from matchmill.methods.registry import load_method  # lazy: the method modules (numpy, cv2); the CLI imports this module

    top = {k: v for k, v in conf.items() if k in JOB_DEFAULTS and not isinstance(JOB_DEFAULTS[k], dict)}
    check_bounds(top, JOB_BOUNDS, prefix="")
    for name, default in JOB_DEFAULTS.items():
        if isinstance(default, dict) and isinstance(conf.get(name), dict):
            own = {k[len(name) + 1:]: b for k, b in JOB_BOUNDS.items() if k.startswith(name + ".")}
            check_bounds({k: v for k, v in conf[name].items() if k in default}, own, prefix=f"{name}.")
    for spec in ALL_STAGES:
        section = conf.get(spec.name)
        if not isinstance(section, dict):
            continue
        bounds = spec.default_bounds()
        if spec.has_method:
            bounds = {**bounds, **load_method(spec.name, section["method"]).conf_bounds}
        check_bounds({k: v for k, v in section.items() if not isinstance(v, dict)}, bounds, prefix=f"{spec.name}.")


def _check_weights(conf: dict) -> None:
    """Refuse, before anything runs, a local ``<stage>.weights`` file that is not a plain tensor
    file: one holding pickled objects or code (a crafted ``__reduce__``, a pickled module), or
    no state dict at all.

    Each method section's ``weights`` (a path or ``file://`` URL) that names an existing local file
    other than ``.safetensors`` (tensors only, by format; shipped weights are such files) is read
    weights-only by :func:`matchmill.models.weights.check_weights_file`: the tensor data
    memory-mapped, not copied, and nothing in the file runs. The message is the loader's, naming
    the file, after ``<stage>.weights:``. Remote URLs are fetched only by the stage that loads them,
    which refuses such a file the same way; a missing file is named by that loader too."""
    for section in method_sections():
        value = conf[section].get("weights")
        if not isinstance(value, str) or value.startswith("shipped:"):
            continue  # unset, or a shipped (safetensors) file
        local = value[len("file://"):] if value.startswith("file://") else value
        if "://" in local or Path(local).suffix == ".safetensors" or not Path(local).is_file():
            continue  # remote, tensors only by format, or missing: left to the loader
        from matchmill.models.weights import check_weights_file  # lazy: torch, only for a local weights file

        try:
            check_weights_file(local)
        except ValueError as exc:
            raise ConfigError(f"{section}.weights: {exc}") from None


def _check_pairs(conf: dict) -> None:
    """``pairs.strategy`` and its keys, and whether the data source can use the strategy."""
    from matchmill.datasets.pair_strategies import check_strategy_conf  # lazy: numpy/pyarrow; the CLI imports this module

    try:
        check_strategy_conf(conf["pairs"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    strategy, source = conf["pairs"]["strategy"], conf["data"]["source"]
    if source == "folder" and strategy == "covisibility":
        raise ConfigError("pairs.strategy: covisibility needs an SfM model; data.source=folder takes "
                          "retrieval | exhaustive | sequential")
    if strategy != "covisibility" and source not in ("demo", "megadepth", "folder"):
        raise ConfigError(f"pairs.strategy: {strategy} pairs the images of data.source demo|megadepth|folder; "
                          f"data.source={source} lists its own pairs")
    if conf["pairs"]["max_shared_points"] is not None and strategy != "retrieval":
        raise ConfigError("pairs.max_shared_points: only used by pairs.strategy=retrieval")


def _check_resources(section: str, resources: Any) -> None:
    """``<section>.resources``: None or a mapping of custom Ray resource name -> amount >= 0."""
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ConfigError(f"{section}.resources: expected a mapping like {{cpu_worker: 1}}, got {resources!r}")
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory"):
            raise ConfigError(f"{section}.resources.{name}: use {section}.num_cpus / num_gpus for built-in resources")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{section}.resources.{name}: expected a number >= 0, got {amount!r}")


def run_url(conf: dict) -> str:
    """``<storage>/<run_name>`` as an absolute URL (no ``storage``: the default storage; the rule:
    :func:`matchmill.config.storage_root_url`)."""
    return storage_root_url(conf["storage"]) + "/" + conf["run_name"]


def stage_hash(conf_parts: list[Any], upstream_hash: str | None) -> str:
    """Hash of what a stage computes: its own settings (execution keys removed) + upstream's hash."""
    cleaned = []
    for part in conf_parts:
        if isinstance(part, dict):
            part = {k: v for k, v in part.items() if k not in EXECUTION_KEYS}
        cleaned.append(part)
    payload = json.dumps([cleaned, upstream_hash], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()
