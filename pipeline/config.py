"""Job configuration: defaults, YAML loading, dotted overrides, validation, per-stage hashes.

A job is one YAML file with a section per stage. Everything is validated before any work starts:
an unknown key, a wrong type or an unknown method stops the run with one line that names the
key. Method-specific keys (``extract.max_keypoints`` for SIFT, ...) come from the method's own
``default_conf`` next to its code.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from .graph import ALL_STAGES, EXECUTION_DEFAULTS, EXECUTION_KEYS, RAY_STAGES, STAGES  # noqa: F401 - re-exported

#: The job's own keys; each stage's section comes from its spec (pipeline/graph.py).
JOB_DEFAULTS: dict[str, Any] = {
    "storage": "file://./runs",  # where runs live: any fsspec URL (file://, s3://, gs://)
    "run_name": "demo",  # run folder under storage; the run URL is <storage>/<run_name>
    "seed": 0,  # seed for pair sampling and the demo scene
    "part_rows": 64,  # rows per Parquet part file written by Ray stages (resume granularity)
    "integrity": "full",  # rerun check of committed parts: full (sizes + every page's checksum, reads each part once) | sizes (one listing); artifact sizes are checked by either
    "max_failed_fraction": 0.0,  # exit code 1 when a stage's failed rows exceed this fraction (0 = any failure)
    "ray": {
        "address": None,  # None = embedded local Ray; "auto" or ray://host:port joins a cluster
        "num_cpus": None,  # CPUs of the embedded Ray (None = all)
        "progress_bars": True,  # Ray Data progress bars (when stdout is a terminal)
    },
    "data": {
        "source": "demo",  # demo | megadepth | hpatches | oxford | pairs_file | folder (every image under root)
        "root": None,  # dataset root (folder source: the image folder); for demo None = generate into the cache
        "pairs_file": None,  # pairs_file source: SuperGlue-style list
        "images_dir": None,  # pairs_file source: folder the names are relative to
        "sequences": None,  # hpatches source: restrict to these sequence names
        "max_image_pixels": 100_000_000,  # refuse larger images (decompression-bomb guard)
        "demo_num_cameras": 14,  # demo scene: number of rendered views
        "demo_width": 320,  # demo scene: image width
        "demo_height": 240,  # demo scene: image height
        "demo_sfm_groups": 1,  # demo scene: SfM model split into this many camera groups that share no 3D point (mining demo)
    },
}


def method_sections() -> tuple[str, ...]:
    """Stages whose section has a ``method`` key (extract, propose, refine)."""
    return tuple(s.name for s in STAGES if s.has_method)


class ConfigError(ValueError):
    """The job configuration is invalid; the message names the key."""


def default_config() -> dict:
    """Job defaults plus one section per stage that has keys (from the stage specs)."""
    conf = copy.deepcopy(JOB_DEFAULTS)
    for spec in ALL_STAGES:
        section = spec.default_section()
        if section or spec.kind == "ray":
            conf[spec.name] = section
    return conf


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"refine.confidence=0.5"`` -> (["refine", "confidence"], 0.5), values parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def set_dotted(conf: dict, path: list[str], value: Any) -> None:
    node = conf
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_user_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """The user's values: the YAML file (if any) with the dotted overrides applied; no defaults."""
    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r}: invalid YAML ({exc})") from exc
        if not isinstance(user, dict):
            raise ConfigError(f"config file {str(path)!r}: top level must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(user, keys, value)
    return user


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Read YAML, apply dotted overrides, fill defaults (incl. method defaults), validate."""
    return resolve(read_user_config(path, overrides))


def resolve(user: dict) -> dict:
    """Merge user values over defaults and validate the result."""
    defaults = default_config()
    _check_keys(user, defaults, prefix="")
    conf = deep_merge(defaults, user)
    from matchmill.stages.registry import load_method

    for section in method_sections():
        method = conf[section]["method"]
        try:
            cls = load_method(section, method)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from exc
        method_conf = dict(getattr(cls, "default_conf", {}))
        stage_defaults = {**defaults[section], **method_conf}
        # keys of the stage's *other* methods are accepted and ignored, so that a job file written
        # for one method still runs with ``extract.method=...`` switched on the command line
        other = _other_method_keys(section, method) - set(stage_defaults)
        user_section = {k: v for k, v in user.get(section, {}).items() if k not in other}
        _check_keys(user_section, stage_defaults, prefix=f"{section}.", method_known=True)
        conf[section] = deep_merge(stage_defaults, user_section)
    _check_types(conf, default_config(), prefix="")
    _check_values(conf)
    return conf


def _other_method_keys(section: str, method: str) -> set[str]:
    from matchmill.stages.registry import REGISTRIES, load_method

    keys: set[str] = set()
    for name in REGISTRIES[section]:
        if name != method:
            keys |= set(getattr(load_method(section, name), "default_conf", {}))
    return keys


def _check_keys(user: dict, defaults: dict, prefix: str, method_known: bool = False) -> None:
    if not isinstance(user, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(user).__name__}")
    for key, value in user.items():
        if key not in defaults:
            if prefix.rstrip(".") in method_sections() and not method_known:
                continue  # method keys are checked once the method is known
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{prefix}{key}: unknown config key (known here: {known})")
        if isinstance(defaults[key], dict):
            _check_keys(value, defaults[key], prefix=f"{prefix}{key}.")


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _check_types(conf: dict, defaults: dict, prefix: str) -> None:
    for key, value in conf.items():
        if key not in defaults:
            continue  # method keys: checked against the method defaults below
        default = defaults[key]
        if isinstance(default, dict):
            if isinstance(value, dict):
                _check_types(value, default, prefix=f"{prefix}{key}.")
            continue
        if not _type_ok(value, default):
            raise ConfigError(
                f"{prefix}{key}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})"
            )
    for section in method_sections():
        if prefix == "" and section in conf:
            from matchmill.stages.registry import method_defaults

            md = method_defaults(section, conf[section]["method"])
            for key, default in md.items():
                if not _type_ok(conf[section][key], default):
                    raise ConfigError(
                        f"{section}.{key}: expected {type(default).__name__}, "
                        f"got {type(conf[section][key]).__name__} ({conf[section][key]!r})"
                    )


def _check_values(conf: dict) -> None:
    sources = ("demo", "megadepth", "hpatches", "oxford", "pairs_file", "folder")
    if conf["data"]["source"] not in sources:
        raise ConfigError(f"data.source: {conf['data']['source']!r} is not one of {sources}")
    if conf["data"]["source"] != "demo" and not conf["data"]["root"] and conf["data"]["source"] != "pairs_file":
        raise ConfigError(f"data.root: required for data.source={conf['data']['source']}")
    if conf["data"]["source"] == "pairs_file" and not conf["data"]["pairs_file"]:
        raise ConfigError("data.pairs_file: required for data.source=pairs_file")
    _check_pairs(conf)
    from matchmill.stages.mine import check_conf as check_mine

    try:
        check_mine(conf["mine"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if conf["verify"]["geometry"] not in ("auto", "homography", "fundamental"):
        raise ConfigError(f"verify.geometry: {conf['verify']['geometry']!r} is not auto|homography|fundamental")
    for section in method_sections():
        if "amp" in conf[section]:
            from matchmill.models.device import AMP_CHOICES

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
    if "/" in conf["run_name"].strip("/") or not conf["run_name"].strip():
        raise ConfigError(f"run_name: {conf['run_name']!r} must be a single non-empty folder name")
    _check_storage_url(str(conf["storage"]))
    _check_weights(conf)


#: fsspec protocols of object stores, whose URLs start with a bucket (container) name.
OBJECT_STORE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci", "r2")


def _check_storage_url(storage: str) -> None:
    """An object-store ``storage`` URL must name a bucket: ``s3://`` or ``s3:///runs`` has none
    (and would otherwise turn into a local folder called ``s3:`` when the run name is joined)."""
    protocol, sep, rest = storage.partition("://")
    if sep and protocol.lower() in OBJECT_STORE_PROTOCOLS and not rest.split("/", 1)[0]:
        raise ConfigError(f"storage {storage!r} has no bucket: expected {protocol}://BUCKET[/PREFIX]")


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
        from matchmill.models.weights import check_weights_file

        try:
            check_weights_file(local)
        except ValueError as exc:
            raise ConfigError(f"{section}.weights: {exc}") from None


def _check_pairs(conf: dict) -> None:
    """``pairs.strategy`` and its keys, and whether the data source can use the strategy."""
    from matchmill.datasets.pair_strategies import check_strategy_conf

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
    storage = conf["storage"]
    if "://" not in storage:
        storage = "file://" + str(Path(storage).resolve())
    elif storage.startswith("file://./") or storage.startswith("file://") and not storage.startswith("file:///"):
        storage = "file://" + str(Path(storage[len("file://") :]).resolve())
    return storage.rstrip("/") + "/" + conf["run_name"]


def stage_hash(conf_parts: list[Any], upstream_hash: str | None) -> str:
    """Hash of what a stage computes: its own settings (execution keys removed) + upstream's hash."""
    cleaned = []
    for part in conf_parts:
        if isinstance(part, dict):
            part = {k: v for k, v in part.items() if k not in EXECUTION_KEYS}
        cleaned.append(part)
    payload = json.dumps([cleaned, upstream_hash], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()
