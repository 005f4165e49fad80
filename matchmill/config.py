"""The one config module: errors, merging and checks shared by the pipeline, the methods, the nets
and training. It imports nothing of matchmill, so every other module may import it.

As glue-factory's ``BaseModel`` does, a method or net merges its config once with
:func:`merge_conf`: its ``default_conf`` is the base, the given keys override it, and an unknown key
is an error naming the owner and the keys it knows (a typo never silently falls back to a default).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


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
