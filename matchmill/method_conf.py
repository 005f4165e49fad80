"""The one way a method (extractor, proposer, refiner, matcher) merges its config.

As glue-factory's ``BaseModel`` does: the method's ``default_conf`` is the base, the given keys
override it, and an unknown key is an error naming the method and the keys it knows (a typo never
silently falls back to a default). Keys in ``allowed`` (e.g. the stage's ``num_gpus``, passed to
methods that choose a device) are accepted besides the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_conf(defaults: Mapping[str, Any], conf: Mapping[str, Any] | None, owner: str,
               allowed: tuple[str, ...] = ("num_gpus",)) -> dict[str, Any]:
    """``{**defaults, **conf}`` after checking that every key of ``conf`` is known."""
    conf = dict(conf or {})
    unknown = sorted(k for k in conf if k not in defaults and k not in allowed)
    if unknown:
        raise ValueError(f"{owner}: unknown config key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **conf}
