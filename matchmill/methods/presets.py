"""Chain presets, defined once: a preset name -> the dotted config overrides it stands for.

Each family module holds its own presets (``PRESETS`` in matchmill/methods/sift.py, pump.py, ncnet.py,
patch2pix.py); this module collects them. They are read by ``matchmill run`` (the job key
``preset: NAME``, applied under the job's own keys), by ``matchmill bench --methods`` (applied on
top of the benchmark's base config, before the user's own overrides, so ``matchmill bench hpatches
ROOT --methods patch2pix refine.weights=/w/p2p.pth`` runs the Patch2Pix chain with those weights),
by the demo (configs/demo-learned.yaml) and by :func:`matchmill.match`. The SIFT baseline is the
preset ``sift``; its name contains ``sift`` as every report expects. Importing this module imports
no torch (the family modules import their nets where a method is built).
"""

from __future__ import annotations

from typing import Any

from matchmill.config import ConfigError, deep_merge

from . import ncnet, patch2pix, pump, sift
from .ncnet import PUMP_NC_WEIGHTS, RESNET_NC_WEIGHTS
from .patch2pix import PUMP_P2P_WEIGHTS, RESNET_P2P_WEIGHTS
from .pump import PUMP_WEIGHTS
from .registry import REGISTRIES, is_known, load_method

__all__ = [
    "BASELINE", "PRESETS", "PUMP_NC_WEIGHTS", "PUMP_P2P_WEIGHTS", "PUMP_WEIGHTS",
    "RESNET_NC_WEIGHTS", "RESNET_P2P_WEIGHTS", "UnknownPresetError", "UnregisteredMethodError",
    "apply_preset", "check_registered", "preset_overrides", "preset_user_config", "select_methods",
]

#: Preset name -> dotted config overrides (values as Python objects). Learned presets use the
#: shipped weights; ``<preset>:<stage>.weights=PATH`` (or ``=null``, a random init) replaces them.
PRESETS: dict[str, dict[str, Any]] = {**sift.PRESETS, **patch2pix.PRESETS, **ncnet.PRESETS, **pump.PRESETS}

#: The preset run as the baseline unless ``--no-sift`` is given.
BASELINE = "sift"

_METHOD_KEYS = ("extract.method", "propose.method", "refine.method")


class UnknownPresetError(KeyError):
    """A preset name that is not in PRESETS."""


class UnregisteredMethodError(ValueError):
    """A preset names a stage method that the registry does not know or cannot import."""


def preset_overrides(name: str) -> dict[str, Any]:
    """The dotted overrides of preset ``name`` (a copy).

    Raises:
        UnknownPresetError: ``name`` is not a preset; the message lists the known ones.
    """
    if name not in PRESETS:
        raise UnknownPresetError(f"--methods: unknown method preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def preset_user_config(name: str) -> dict[str, Any]:
    """Preset ``name`` as a nested user config (``{"extract": {"method": "pump", ...}, ...}``).

    Raises:
        UnknownPresetError: ``name`` is not a preset.
    """
    nested: dict[str, Any] = {}
    for dotted, value in preset_overrides(name).items():
        node = nested
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def apply_preset(user: dict[str, Any]) -> dict[str, Any]:
    """The user config ``user`` with its ``preset: NAME``'s keys filled in under the user's own
    (a key the user gives wins over the preset's); ``user`` itself is not changed.

    Raises:
        ConfigError: ``preset`` is not the name of a preset (one line listing the known ones).
    """
    name = user.get("preset")
    if name is None:
        return user
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"preset: unknown chain preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return deep_merge(preset_user_config(name), user)


def check_registered(name: str, overrides: dict[str, Any] | None = None) -> None:
    """Make sure every stage method of preset ``name`` is registered and importable.

    Args:
        name: preset name (used in messages; looked up in PRESETS when ``overrides`` is None).
        overrides: the preset's dotted overrides, for presets from another table.

    Raises:
        UnknownPresetError: ``name`` is not a preset (and no ``overrides`` were given).
        UnregisteredMethodError: a stage method is unknown to the registry or its module does not
            import; the message names the preset, the stage and the method.
    """
    overrides = preset_overrides(name) if overrides is None else overrides
    for key in _METHOD_KEYS:
        if key not in overrides:
            continue
        stage, method = key.split(".")[0], overrides[key]
        if not is_known(stage, method):
            raise UnregisteredMethodError(
                f"method preset {name!r}: {stage}.method={method!r} is not registered "
                f"(known {stage} methods: {', '.join(sorted(REGISTRIES[stage]))})"
            )
        try:
            load_method(stage, method)
        except (ImportError, AttributeError, ValueError) as exc:  # ValueError: a plugin's ConfigError
            raise UnregisteredMethodError(
                f"method preset {name!r}: {stage}.method={method!r} is registered but cannot be loaded "
                f"({type(exc).__name__}: {exc})"
            ) from exc


def select_methods(methods: list[str], include_baseline: bool = True) -> list[str]:
    """The presets to run, baseline first (unless excluded), duplicates removed, order kept.

    Raises:
        UnknownPresetError: a name is not a preset.
        ValueError: nothing left to run.
    """
    names = ([BASELINE] if include_baseline else []) + [m.strip() for m in methods if m.strip()]
    out: list[str] = []
    for name in names:
        preset_overrides(name)  # validates the name
        if name not in out and (include_baseline or name != BASELINE):
            out.append(name)
    if not out:
        raise ValueError("no method to run: --no-sift was given and --methods names no other preset")
    return out
