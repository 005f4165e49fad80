"""Merging a user's model config over a model's ``DEFAULT_CONF`` (shared by every net)."""

from __future__ import annotations

import copy
from typing import Any, Mapping


def merge_model_conf(defaults: Mapping[str, Any], conf: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """Deep copy of ``defaults`` updated with ``conf``; unknown keys raise a ValueError naming ``owner``."""
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {owner} config keys {unknown}; known: {sorted(defaults)}")
    return {**copy.deepcopy(dict(defaults)), **copy.deepcopy(conf)}
