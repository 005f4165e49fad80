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
import math
import re
from pathlib import Path
from typing import Any

import yaml

from matchmill.config import ConfigError

from .graph import ALL_STAGES, EXECUTION_DEFAULTS, EXECUTION_KEYS, RAY_STAGES, STAGES  # noqa: F401 - re-exported, used

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


#: Bounds of the job's own numeric keys (dotted); every other numeric key must be >= 0 (see
#: :func:`check_bounds` for the notation and the rule).
JOB_BOUNDS: dict[str, str] = {
    "part_rows": ">= 1",
    "max_failed_fraction": "[0, 1]",
    "ray.num_cpus": "> 0",
    "data.max_image_pixels": ">= 1",
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


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML document gives one key twice; the message names the key and both lines."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one
    without a word). Every job file and override value is read with it (:func:`load_yaml`); keys
    merged in with ``<<: *anchor`` may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(f"key {key!r} given twice (lines {seen[key]} and {line})")
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: SafeLoader refuses it itself
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :class:`StrictLoader`: a duplicate mapping key is a ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"refine.confidence=0.5"`` -> (["refine", "confidence"], 0.5), values parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw != "" else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_one_line(exc)})") from exc
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
            user = load_yaml(path.read_text())
        except DuplicateKeyError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r}: invalid YAML ({_one_line(exc)})") from exc
        if user is None:  # nothing but blanks and comments: never run the defaults (the demo) instead
            raise ConfigError(f"config file {str(path)!r} is empty: write the job's keys (see configs/demo.yaml)")
        if not isinstance(user, dict):
            raise ConfigError(f"config file {str(path)!r}: top level must be a mapping")
    for text in overrides:  # in order: a program may layer its own keys (the last one wins)
        keys, value = parse_override(text)
        set_dotted(user, keys, value)
    return user


def check_unique_overrides(overrides: list[str]) -> None:
    """Refuse a key given twice among the dotted overrides a person typed (``a.b=1 ... a.b=2``):
    one of them is a mistake, and which one wins is not obvious. The command line calls this; a
    program composing override lists (defaults, then its caller's) may repeat keys on purpose."""
    given: dict[str, str] = {}
    for text in overrides:
        if "=" not in text:
            continue  # parse_override names it
        key = text.split("=", 1)[0].strip()
        if key in given:
            raise ConfigError(f"{key}: given twice on the command line ({given[key]!r} and {text!r}); give it once")
        given[key] = text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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
    check_run_name(conf["run_name"])
    check_storage_url(conf["storage"])
    _check_bounds(conf)
    _check_weights(conf)


#: The bound of a numeric key that declares none: counts, sizes, thresholds and seeds are never negative.
DEFAULT_BOUND = ">= 0"
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])$")
_COMPARISON = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")


def parse_bound(text: str) -> tuple[float, float, bool, bool]:
    """``"(0, 1]"`` -> (0, 1, False, True): low, high, low included, high included.

    Notation: an interval ``[a, b]``, ``(a, b]``, ``[a, b)``, ``(a, b)`` (``inf`` allowed) or a
    comparison ``> a``, ``>= a``, ``< b``, ``<= b``."""
    text = text.strip()
    m = _INTERVAL.match(text)
    if m:
        return float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]"
    m = _COMPARISON.match(text)
    if not m:
        raise ValueError(f"bad bound {text!r}: expected e.g. '[0, 1]', '(0, inf)', '>= 1'")
    op, x = m.group(1), float(m.group(2))
    if op.startswith(">"):
        return x, math.inf, op == ">=", False
    return -math.inf, x, False, op == "<="


def _within(value: float, bound: str) -> bool:
    lo, hi, lo_in, hi_in = parse_bound(bound)
    return (lo < value or lo_in and value == lo) and (value < hi or hi_in and value == hi)


def check_bounds(values: dict, bounds: dict[str, str], prefix: str) -> None:
    """Every number of ``values`` (and every number in a list value) within its key's bound.

    A key without a declared bound takes :data:`DEFAULT_BOUND` (``>= 0``); ``None`` (a key's "off"
    or "auto") and non-numbers are left to the type and value checks. A number must be finite.
    Bounds are declared next to the defaults they belong to: :data:`JOB_BOUNDS`,
    ``EXECUTION_BOUNDS`` (pipeline/graph.py), each stage module's ``STAGE_BOUNDS`` and each method
    class's ``conf_bounds`` beside its ``default_conf``."""
    for key, value in values.items():
        bound = bounds.get(key, DEFAULT_BOUND)
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            where = f"{prefix}{key}" + (f"[{i}]" if i is not None else "")
            if not math.isfinite(item):
                raise ConfigError(f"{where}: must be a finite number, got {item!r}")
            if not _within(item, bound):
                shown = bound if bound[0] in "<>" else f"in {bound}"
                raise ConfigError(f"{where}: must be {shown}, got {item!r}")


def _check_bounds(conf: dict) -> None:
    """:func:`check_bounds` over the job's keys, each stage section and its method's keys."""
    from matchmill.stages.registry import load_method

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
            bounds = {**bounds, **getattr(load_method(spec.name, section["method"]), "conf_bounds", {})}
        check_bounds({k: v for k, v in section.items() if not isinstance(v, dict)}, bounds, prefix=f"{spec.name}.")


def check_run_name(name: Any, key: str = "run_name") -> None:
    """``run_name`` must be one plain folder name: the run is ``<storage>/<run_name>``, and a name
    that leaves that folder (``..``, ``.``, ``a/b``) would write and clear stage folders elsewhere.

    Refused, each with the rule in the message: not a string, empty or blank, ``.`` or ``..``, a
    path separator (``/`` or ``\\``), leading or trailing whitespace, a control character, and a
    leading ``.`` (hidden: listings skip such names, see ``manifests/storage.py``, and ``matchmill
    gc`` removes ``.tmp-*``)."""
    if not isinstance(name, str):
        raise ConfigError(f"{key}: expected a folder name (a string), got {name!r}")
    rule = None
    if not name.strip():
        rule = "must not be empty or blank"
    elif name in (".", ".."):
        rule = "must not be '.' or '..' (the run would be the storage folder or its parent)"
    elif "/" in name or "\\" in name:
        rule = "must not hold a path separator ('/' or '\\'): it is one folder under storage"
    elif name != name.strip():
        rule = "must not start or end with whitespace"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        rule = "must not hold control characters"
    elif name.startswith("."):
        rule = "must not start with '.' (hidden names are skipped by listings and gc)"
    if rule:
        raise ConfigError(f"{key}: {name!r} {rule}")


#: fsspec protocols of object stores, whose URLs start with a bucket (container) name.
OBJECT_STORE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci", "r2")


#: ``scheme:`` at the start of a string (two letters or more: ``C:\\runs`` stays a Windows path).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def _fsspec_protocols() -> set[str]:
    from fsspec.registry import known_implementations, registry

    return set(known_implementations) | set(registry)


def check_storage_url(storage: Any, key: str = "storage") -> None:
    """``storage`` must be a local folder or a URL fsspec can open, written so that it cannot turn
    into a local folder named after a typo.

    - ``PROTOCOL://...`` with a protocol fsspec knows (``file``, ``s3``, ``gs``, ..., chained
      ``simplecache::s3://`` too); an unknown one (``s4://``) is refused;
    - an object-store URL names a bucket: ``s3://`` and ``s3:///runs`` have none;
    - a known protocol followed by ``:`` but not ``://`` (``s3:/bucket``, ``file:relative``) is
      refused with the URL it probably meant (it would otherwise be a local folder ``s3:``);
    - anything else is a local path: relative to the working directory, ``~`` is the home folder
      (``~/runs`` and ``file://~/runs``; :func:`run_url` expands it)."""
    if not isinstance(storage, str) or not storage.strip():
        raise ConfigError(f"{key}: expected a folder or URL (e.g. file://./runs, s3://BUCKET/runs), got {storage!r}")
    if storage != storage.strip() or any(ord(c) < 32 for c in storage):
        raise ConfigError(f"{key} {storage!r}: must not hold leading/trailing whitespace or control characters")
    protocol, sep, rest = storage.partition("://")
    if sep:
        known = _fsspec_protocols()
        unknown = [p for p in protocol.lower().split("::") if p not in known]
        if unknown or not protocol:
            raise ConfigError(f"{key} {storage!r}: unknown protocol {(unknown or [''])[0]!r}; fsspec knows e.g. "
                              "file://, s3://, gs://, az://, hdfs:// (an installed fsspec plugin adds more)")
        protocol = protocol.split("::")[-1]
        if protocol.lower() in OBJECT_STORE_PROTOCOLS and not rest.split("/", 1)[0]:
            raise ConfigError(f"{key} {storage!r} has no bucket: expected {protocol}://BUCKET[/PREFIX]")
        return
    match = _SCHEME.match(storage)
    if match and match.group(1).lower() in _fsspec_protocols():
        scheme, tail = match.group(1), storage[match.end():]
        meant = (f"file://{tail}" if tail.startswith("/") else f"file://./{tail}") if scheme.lower() in ("file", "local") \
            else f"{scheme}://{tail.lstrip('/')}"
        raise ConfigError(f"{key} {storage!r}: '{scheme}:' without '//' would be a local folder named "
                          f"'{scheme}:'; did you mean {meant}?")


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
    """``<storage>/<run_name>``; a local storage becomes an absolute ``file://`` URL (relative to
    the working directory, ``~`` expanded to the home folder)."""
    storage = conf["storage"]
    if "://" not in storage:
        storage = "file://" + str(Path(storage).expanduser().resolve())
    elif storage.startswith("file://./") or storage.startswith("file://") and not storage.startswith("file:///"):
        storage = "file://" + str(Path(storage[len("file://") :]).expanduser().resolve())
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
