"""Pipeline configs of a bench run's methods, and the hashes recorded in the history.

One bench method = one preset (:mod:`matchmill.methods.presets`) applied to a base config whose data source is
the bench's pairs manifest and whose storage is ``OUT/runs`` (run name = preset), so rerunning a
bench resumes its runs. ``config_hash`` names what a method computes independently of where it
ran; ``model_hashes`` names the weights each net used.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import fsspec

from matchmill.config import ConfigError, parse_override, read_user_config, set_dotted
from matchmill.methods.presets import PRESETS, check_registered
from matchmill.manifests.storage import join
from matchmill.pipeline.config import resolve
from matchmill.pipeline.graph import EXECUTION_KEYS
from matchmill.weights import is_shipped, shipped_path


def to_url(path_or_url: str) -> str:
    """A local path as an absolute ``file://`` URL; URLs unchanged."""
    text = str(path_or_url)
    if "://" in text:
        if text.startswith("file://") and not text.startswith("file:///"):
            return "file://" + str(Path(text[len("file://"):]).resolve())
        return text.rstrip("/")
    return "file://" + str(Path(text).resolve())


def default_history_url(out: str) -> str:
    """The default history table: ``history.parquet`` next to OUT (``OUT/../history.parquet``),
    so successive bench runs written to sibling OUT folders share one history."""
    url = to_url(out).rstrip("/")
    return url.rsplit("/", 1)[0] + "/history.parquet"


def _file_sha256(path: str) -> str:
    if is_shipped(path):  # shipped:NAME -> the file in the installed package
        path = str(shipped_path(path))
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_hashes(conf: dict) -> dict[str, str]:
    """``{"<stage>.<method>": sha256[:16] of its weights file | "init-seed-<n>"}`` for every stage
    method that has a ``weights`` key (classical methods have none)."""
    out: dict[str, str] = {}
    for section in ("extract", "propose", "refine"):
        sec = conf[section]
        if "weights" not in sec:
            continue
        name = f"{section}.{sec['method']}"
        out[name] = _file_sha256(sec["weights"])[:16] if sec["weights"] else f"init-seed-{sec.get('init_seed', 0)}"
    return out


def config_hash(conf: dict, pairs_digest: str) -> str:
    """Hash of what a method computes: the resolved config without storage, run name, Ray and
    execution keys, with the pairs file replaced by its content hash (same config in another OUT
    folder -> same hash)."""
    c = copy.deepcopy(conf)
    for key in ("storage", "run_name", "ray", "part_rows"):
        c.pop(key, None)
    for section in ("extract", "propose", "refine", "verify"):
        c[section] = {k: v for k, v in c[section].items() if k not in EXECUTION_KEYS}
    c["data"]["pairs_file"] = pairs_digest
    payload = json.dumps(c, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _split_override(text: str, presets: dict[str, dict]) -> tuple[str | None, str]:
    """``"patch2pix:refine.weights=x"`` -> ("patch2pix", "refine.weights=x"); plain -> (None, text)."""
    head = text.split("=", 1)[0]
    if ":" in head:
        name, rest = text.split(":", 1)
        if name not in presets:
            raise ConfigError(f"override {text!r}: {name!r} is not a method preset; known: {', '.join(sorted(presets))}")
        return name, rest
    return None, text


def method_config(
    method: str,
    pairs_url: str,
    out_url: str,
    *,
    presets: dict[str, dict[str, Any]] | None = None,
    base_config: str | None = None,
    resize: int | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """The resolved, validated pipeline config of one method of a bench run.

    Order: ``base_config`` (or the defaults) < the bench's data / storage keys (pairs manifest
    ``pairs_url``, storage ``OUT/runs``, run name = preset) < the preset < ``resize``
    (``extract.resize_max``) < ``overrides`` (``key=value`` for all, ``<preset>:key=value`` for one).

    Raises:
        ConfigError: bad base config or override (the message names the key).
        UnregisteredMethodError: the preset names a stage method that is not registered.
    """
    presets = presets or PRESETS
    check_registered(method, presets[method])
    user: dict = {}
    if base_config:
        try:
            user = read_user_config(base_config)
        except ConfigError as exc:
            raise ConfigError(f"--config: {exc}") from exc
    bench_keys: dict[str, Any] = {
        "storage": join(out_url, "runs"),
        "run_name": method,
        "data.source": "pairs_file",
        "data.pairs_file": pairs_url,
        "data.images_dir": None,
        "data.root": None,
    }
    if "progress_bars" not in (user.get("ray") or {}):
        bench_keys["ray.progress_bars"] = False
    bench_keys.update(presets[method])
    if resize is not None:
        bench_keys["extract.resize_max"] = int(resize)
    for key, value in bench_keys.items():
        set_dotted(user, key.split("."), value)
    for text in overrides:
        target, override = _split_override(text, presets)
        if target is None or target == method:
            keys, value = parse_override(override)
            set_dotted(user, keys, value)
    return resolve(user)
