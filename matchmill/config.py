"""The one config module: errors, YAML and dotted overrides, merging, checks, and the job keys a
pipeline job and a training job share. It imports nothing of matchmill, so every module may import
it (it is the bottom of the import graph).

- :class:`ConfigError`: a configuration is invalid; the message is one line naming the key.
- Reading: :func:`load_yaml` (a key given twice is refused), :func:`parse_override`
  (``a.b=value``, the value read as YAML), :func:`set_dotted`, :func:`deep_merge`,
  :func:`read_user_config` (a job file plus overrides, no defaults), :func:`check_unique_overrides`.
- Merging: :func:`merge_conf`. As glue-factory's ``BaseModel`` does, a method or net merges its
  config once: its ``default_conf`` is the base, the given keys override it, and an unknown key is
  an error naming the owner and the keys it knows (a typo never silently falls back to a default).
- Checks: :func:`check_keys`, :func:`type_ok`, :func:`parse_bound` / :func:`check_bounds`,
  :func:`check_run_name`, :func:`check_storage_url`.
- Shared job keys: :data:`SHARED_JOB_DEFAULTS` (storage, run_name, seed, ray, data), which the
  pipeline's ``JOB_DEFAULTS`` (matchmill/pipeline/config.py) and the training job's ``TRAIN_DEFAULTS``
  (matchmill/training/config.py) build on.
- Where runs live, one rule (docs/storage.md): :func:`default_storage`, :func:`storage_root_url`
  (the ``storage`` key as an absolute URL), :func:`resolve_run_arg` (a run named on the command line).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration is invalid; the message names the key (one line)."""


def merge_conf(defaults: Mapping[str, Any], conf: Mapping[str, Any] | None, owner: str,
               allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep copy of ``defaults`` updated with ``conf``.

    Args:
        defaults: the owner's ``default_conf`` (one comment per key, next to its code).
        conf: the user's keys, or None for the defaults.
        owner: named in the error (a class or method name).
        allowed: keys accepted besides the defaults (e.g. a stage's ``num_gpus`` for a method that
            chooses its device).

    Raises:
        ConfigError: a key of ``conf`` is neither a default nor ``allowed``.
    """
    conf = dict(conf or {})
    unknown = sorted(k for k in conf if k not in defaults and k not in allowed)
    if unknown:
        raise ConfigError(f"unknown {owner} config keys {unknown}; known: {sorted(defaults)}")
    return {**copy.deepcopy(dict(defaults)), **copy.deepcopy(conf)}


# ----------------------------------------------------------------------------- shared job keys

#: Keys of a pipeline job and of a training job, each defined once here with its comment; the
#: pipeline's ``JOB_DEFAULTS`` (matchmill/pipeline/config.py) and the training job's ``TRAIN_DEFAULTS``
#: (matchmill/training/config.py) are built on these with :func:`deep_merge` (a job may change a default).
SHARED_JOB_DEFAULTS: dict[str, Any] = {
    "storage": None,  # where runs live: None = default_storage() ($MATCHMILL_RUNS, else ~/.local/share/matchmill/runs); a local folder or any fsspec URL (file://, s3://, gs://); relative: see storage_root_url
    "run_name": "demo",  # one folder under storage (check_run_name); the run URL is <storage>/<run_name>
    "seed": 0,  # seeds everything random: pair sampling and the demo scene; a net's init and every training sample (per step and sample index, not per worker)
    "ray": {
        "address": None,  # None = embedded local Ray; "auto" or ray://host:port joins a cluster
        "num_cpus": None,  # CPUs of the embedded Ray (None = all)
    },
    "data": {
        "images_dir": None,  # a SuperGlue-style .txt pairs list (pipeline: data.source=pairs_file): folder its image names are relative to
        "max_image_pixels": 100_000_000,  # refuse larger images (decompression-bomb guard)
    },
}

#: Bounds of the shared numeric keys (dotted; notation: :func:`parse_bound`).
SHARED_JOB_BOUNDS: dict[str, str] = {
    "ray.num_cpus": "> 0",
    "data.max_image_pixels": ">= 1",
}


# ----------------------------------------------------------------------------- YAML and overrides


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


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML and library errors span several)."""
    return " ".join(str(exc).split())


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
        raise ConfigError(f"override {text!r}: value is not valid YAML ({one_line(exc)})") from exc
    return key.split("."), value


def set_dotted(conf: dict, path: list[str], value: Any) -> None:
    """``conf[path[0]][path[1]]... = value``, creating (or replacing non-mapping) levels on the way."""
    node = conf
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def deep_merge(base: dict, update: dict) -> dict:
    """Deep copy of ``base`` with ``update`` merged in, mapping by mapping (no key check)."""
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
            raise ConfigError(f"config file {str(path)!r}: invalid YAML ({one_line(exc)})") from exc
        if user is None:  # nothing but blanks and comments: never run the defaults (the demo) instead
            raise ConfigError(f"config file {str(path)!r} is empty: write the job's keys (see configs/demo.yaml)")
        if not isinstance(user, dict):
            raise ConfigError(f"config file {str(path)!r}: top level must be a mapping")
        if _relative_local(user.get("storage")):  # written in the file: relative to the file's folder
            user["storage"] = storage_root_url(user["storage"], base=path.resolve().parent)
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


# ----------------------------------------------------------------------------- key and type checks


def check_keys(user: Any, defaults: dict, prefix: str = "", open_sections: tuple[str, ...] = ()) -> None:
    """Every key of ``user`` (recursively) is a key of ``defaults``; else one line naming it and the
    keys known at that level.

    Args:
        open_sections: dotted sections whose unknown keys are left for a later check (a stage
            section's method keys, known once its method is).
    """
    if not isinstance(user, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(user).__name__}")
    for key, value in user.items():
        if key not in defaults:
            if prefix.rstrip(".") in open_sections:
                continue
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{prefix}{key}: unknown config key (known here: {known})")
        if isinstance(defaults[key], dict):
            check_keys(value, defaults[key], prefix=f"{prefix}{key}.", open_sections=open_sections)


def type_ok(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of ``default`` (None either side passes; an int is a float;
    a bool is never a number)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


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
    Bounds are declared next to the defaults they belong to: :data:`SHARED_JOB_BOUNDS`, the
    pipeline's ``JOB_BOUNDS`` and ``EXECUTION_BOUNDS`` (matchmill/pipeline/), each stage module's
    ``STAGE_BOUNDS`` and each method class's ``conf_bounds`` beside its ``default_conf``."""
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


# ----------------------------------------------------------------------------- run name and storage


def check_run_name(name: Any, key: str = "run_name") -> None:
    """``run_name`` must be one plain folder name: the run is ``<storage>/<run_name>``, and a name
    that leaves that folder (``..``, ``.``, ``a/b``) would write and clear stage folders elsewhere.

    Refused, each with the rule in the message: not a string, empty or blank, ``.`` or ``..``, a
    path separator (``/`` or ``\\``), leading or trailing whitespace, a control character, and a
    leading ``.`` (hidden: listings skip such names, see ``matchmill/manifests/storage.py``, and ``matchmill
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
    from fsspec.registry import known_implementations, registry  # lazy: only a storage check needs fsspec

    return set(known_implementations) | set(registry)


def check_storage_url(storage: Any, key: str = "storage") -> None:
    """``storage`` must be a local folder or a URL fsspec can open, written so that it cannot turn
    into a local folder named after a typo (None: the default storage, :func:`default_storage`).

    - ``PROTOCOL://...`` with a protocol fsspec knows (``file``, ``s3``, ``gs``, ..., chained
      ``simplecache::s3://`` too); an unknown one (``s4://``) is refused;
    - an object-store URL names a bucket: ``s3://`` and ``s3:///runs`` have none;
    - a known protocol followed by ``:`` but not ``://`` (``s3:/bucket``, ``file:relative``) is
      refused with the URL it probably meant (it would otherwise be a local folder ``s3:``);
    - anything else is a local path, ``~`` the home folder (``~/runs`` and ``file://~/runs``); where a
      relative one lives (the job file's folder, or the working directory): :func:`storage_root_url`."""
    if storage is None:
        return
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


#: The environment variable naming the default storage folder (the test suite points it at a temp folder).
RUNS_ENV = "MATCHMILL_RUNS"


def default_storage() -> str:
    """Where runs live when a job gives no ``storage``: ``$MATCHMILL_RUNS`` if set, else
    ``${XDG_DATA_HOME:-~/.local/share}/matchmill/runs``, as an absolute URL (a local folder becomes
    ``file:///abs/path``; a relative ``$MATCHMILL_RUNS`` is taken from the working directory)."""
    given = os.environ.get(RUNS_ENV, "").strip()
    if given:
        return storage_root_url(given)
    data_home = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(data_home) if data_home and Path(data_home).is_absolute() else Path.home() / ".local" / "share"
    return storage_root_url(str(base / "matchmill" / "runs"))


def _relative_local(storage: Any) -> bool:
    """Whether ``storage`` is a valid local folder written relative (``runs``, ``./runs``,
    ``file://./runs``): not a URL of another protocol, not absolute, not under ``~``."""
    if not isinstance(storage, str):
        return False
    try:
        check_storage_url(storage)
    except ConfigError:
        return False  # the job's validation names it
    path = storage[len("file://"):] if storage.startswith("file://") else storage
    return "://" not in path and not path.startswith("~") and not Path(path).is_absolute()


def storage_root_url(storage: str | None, base: str | os.PathLike | None = None) -> str:
    """The ``storage`` key as an absolute URL without a trailing ``/``. The one rule (docs/storage.md):

    - None: :func:`default_storage`;
    - a relative local folder (``runs``, ``./runs``, ``file://./runs``): against ``base`` when given,
      else the working directory. A job file's own ``storage`` is resolved against the file's folder
      when the file is read (:func:`read_user_config`); one given on the command line (``storage=./x``,
      ``matchmill match --out ./x``) against the working directory;
    - ``~`` is the home folder (``~/runs``, ``file://~/runs``);
    - a local folder becomes ``file:///abs/path``; any other URL is kept."""
    if storage is None:
        return default_storage()
    root = Path(base) if base is not None else Path.cwd()
    if "://" not in storage:
        storage = "file://" + str((root / Path(storage).expanduser()).resolve())
    elif storage.startswith("file://") and not storage.startswith("file:///"):
        storage = "file://" + str((root / Path(storage[len("file://"):]).expanduser()).resolve())
    return storage.rstrip("/")


#: Files that mark a local folder as a run (config.py imports nothing of matchmill, so the names are
#: repeated here: a stage's commit / start marker and the lease of matchmill/manifests, a training
#: run's ``train.json``).
_RUN_MARKERS = ("_lease.json", "train.json", "*/_COMMITTED.json", "*/_STARTED.json")


def _looks_like_run(path: Path) -> bool:
    return path.is_dir() and any(next(path.glob(pattern), None) is not None for pattern in _RUN_MARKERS)


def default_run_path(text: str) -> str | None:
    """``<default storage>/<text>`` when ``text`` is a relative path whose first folder is a run under
    the default storage (a local one): a bare run name (``demo``) or a path inside a run
    (``demo/pairs``, ``ncnet-demo/best/model.safetensors``); else None."""
    if "://" in text or text.startswith(("~", "/", "\\")):
        return None
    first = text.replace("\\", "/").split("/", 1)[0]
    try:
        check_run_name(first)
    except ConfigError:
        return None
    root = default_storage()
    if not root.startswith("file://") or not (Path(root[len("file://"):]) / first).is_dir():
        return None
    return f"{root}/{text.rstrip('/')}"


def resolve_run_arg(text: str | os.PathLike) -> str:
    """A run named on the command line (``status``, ``show``, ``export``, ``compare``, ``gc``, ``viz``,
    ``matchmill.open_run``) as a URL:

    - a URL is kept (``file://./x`` made absolute against the working directory);
    - a bare run name (one folder name, :func:`check_run_name`) is the run of that name under the
      default storage (:func:`default_storage`), unless a local folder of that name in the working
      directory is itself a run, or the default storage has no such run and the local path exists
      (so ``matchmill match photos`` then ``matchmill status photos`` finds the run, not ``./photos``);
    - a relative path that does not exist here but starts with a run under the default storage
      (``demo/verify``) is that path inside the run (:func:`default_run_path`);
    - any other local path becomes its absolute ``file://`` URL (its reader says when it is missing)."""
    text = os.fspath(text)
    if "://" in text:
        return storage_root_url(text) if text.startswith("file://") else text.rstrip("/")
    local = Path(text).expanduser()
    try:
        check_run_name(text)
    except ConfigError:
        if not text.strip():
            return text
        return (not local.exists() and default_run_path(text)) or storage_root_url(text)
    if _looks_like_run(local):
        return storage_root_url(text)
    return default_run_path(text) or (storage_root_url(text) if local.exists() else f"{default_storage()}/{text}")
