"""Method presets of the benchmarks: a preset name -> the dotted config overrides it stands for.

A preset is applied on top of the benchmark's base config, before the user's own overrides, so
``matchmill bench hpatches ROOT --methods patch2pix refine.weights=/w/p2p.pth`` runs the Patch2Pix
chain with those weights. The SIFT baseline is the preset ``sift``; its name contains ``sift`` as
every report expects.
"""

from __future__ import annotations

from typing import Any

#: The shipped weights of each learned net (``weights/``, see weights/MODEL_CARD.md).
PUMP_WEIGHTS = "shipped:pump-convmixer-cpu"
PUMP_NC_WEIGHTS = "shipped:ncnet-pump-cpu"
PUMP_P2P_WEIGHTS = "shipped:patch2pix-pump-cpu"
RESNET_NC_WEIGHTS = "shipped:ncnet-resnet34-seed0"
RESNET_P2P_WEIGHTS = "shipped:patch2pix-resnet34-seed0"

#: PUMP pyramid -> NCNet with the shipped weights: the first two stages of the learned chain.
_PUMP_NCNET: dict[str, Any] = {
    "extract.method": "pump",
    "extract.weights": PUMP_WEIGHTS,
    "extract.pyramid": True,  # f0..f4 for NCNet and Patch2Pix
    "extract.dense": False,  # no dense multi-scale maps (those are for pump-pyramid)
    "propose.method": "ncnet",
    "propose.weights": PUMP_NC_WEIGHTS,
    "propose.relocalize": 2,  # the weakly supervised NC shifts its peaks: re-place them on raw f4 (model card)
}

#: Preset name -> dotted config overrides (values as Python objects). Learned presets use the
#: shipped weights; ``<preset>:<stage>.weights=PATH`` (or ``=null``, a random init) replaces them.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # classical baseline: OpenCV SIFT -> mutual nearest neighbours -> no refinement
    "sift": {"extract.method": "sift", "propose.method": "mnn", "refine.method": "identity"},
    # the learned chain: PUMP ConvMixer pyramid -> NCNet 4D-consensus proposals -> Patch2Pix regressors
    "pump-ncnet-patch2pix": {
        **_PUMP_NCNET,
        "refine.method": "patch2pix",
        "refine.weights": PUMP_P2P_WEIGHTS,
        "refine.feat_channels": [3, 128, 128, 128],
    },
    # the learned chain without its last stage: what Patch2Pix's regressors add (or cost) on top of NCNet
    "pump-ncnet": {**_PUMP_NCNET, "refine.method": "identity"},
    # Patch2Pix: ResNet34 pyramid (seed-0 init: no ImageNet weights here) -> NCNet -> regressors
    # trained on it; users with torchvision weights set extract.weights and train their own NC / regressors
    "patch2pix": {
        "extract.method": "resnet34",
        "propose.method": "ncnet",
        "propose.weights": RESNET_NC_WEIGHTS,
        "refine.method": "patch2pix",
        "refine.weights": RESNET_P2P_WEIGHTS,
    },
    # PUMP: dense ConvMixer descriptors -> pyramidal dense matching
    "pump": {"extract.method": "pump", "extract.weights": PUMP_WEIGHTS, "propose.method": "pump-pyramid",
             "refine.method": "identity"},
    # PUMP descriptors sampled at SIFT keypoints -> mutual nearest neighbours
    "pump-sift-mnn": {
        "extract.method": "pump",
        "extract.weights": PUMP_WEIGHTS,
        "extract.keypoints": "sift",
        "extract.dense": False,
        "propose.method": "mnn",
        "refine.method": "identity",
    },
}

#: The preset run as the baseline unless ``--no-sift`` is given.
BASELINE = "sift"

_METHOD_KEYS = ("extract.method", "propose.method", "refine.method")


class UnknownPresetError(KeyError):
    """A preset name that is not in METHOD_PRESETS."""


class UnregisteredMethodError(ValueError):
    """A preset names a stage method that the registry does not know or cannot import."""


def preset_overrides(name: str) -> dict[str, Any]:
    """The dotted overrides of preset ``name`` (a copy).

    Raises:
        UnknownPresetError: ``name`` is not a preset; the message lists the known ones.
    """
    if name not in METHOD_PRESETS:
        raise UnknownPresetError(f"--methods: unknown method preset {name!r}; known: {', '.join(sorted(METHOD_PRESETS))}")
    return dict(METHOD_PRESETS[name])


def check_registered(name: str, overrides: dict[str, Any] | None = None) -> None:
    """Make sure every stage method of preset ``name`` is registered and importable.

    Args:
        name: preset name (used in messages; looked up in METHOD_PRESETS when ``overrides`` is None).
        overrides: the preset's dotted overrides, for presets from another table.

    Raises:
        UnknownPresetError: ``name`` is not a preset (and no ``overrides`` were given).
        UnregisteredMethodError: a stage method is unknown to the registry or its module does not
            import; the message names the preset, the stage and the method.
    """
    from matchmill.stages.registry import REGISTRIES, load_method

    overrides = preset_overrides(name) if overrides is None else overrides
    for key in _METHOD_KEYS:
        if key not in overrides:
            continue
        stage, method = key.split(".")[0], overrides[key]
        if method not in REGISTRIES[stage]:
            raise UnregisteredMethodError(
                f"method preset {name!r}: {stage}.method={method!r} is not registered "
                f"(known {stage} methods: {', '.join(sorted(REGISTRIES[stage]))})"
            )
        try:
            load_method(stage, method)
        except (ImportError, AttributeError) as exc:
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
