"""Method registries: which class implements ``extract.method``, ``propose.method``, ``refine.method``.

Entries are ``"module:Class"`` strings, imported only when used, so that a CPU-only SIFT run never
imports a net. Each class has a ``default_conf`` dict (one comment per key, next to its code);
its keys become valid keys of the stage's config section. :func:`build_method` builds one the way
the stage actors do.
"""

from __future__ import annotations

import importlib

EXTRACTORS: dict[str, str] = {
    "sift": "matchmill.classical.sift:SiftExtractor",
    "resnet34": "matchmill.stages.patch2pix_methods:ResNet34Extractor",
    "pump": "matchmill.stages.pump_methods:PumpExtractor",
}

PROPOSERS: dict[str, str] = {
    "mnn": "matchmill.stages.proposers:MutualNNProposer",
    "ncnet": "matchmill.stages.patch2pix_methods:NCNetProposer",
    "pump-pyramid": "matchmill.stages.pump_methods:PumpPyramidProposer",
}

REFINERS: dict[str, str] = {
    "identity": "matchmill.stages.refiners:IdentityRefiner",
    "patch2pix": "matchmill.stages.patch2pix_methods:Patch2PixRefiner",
}

REGISTRIES: dict[str, dict[str, str]] = {
    "extract": EXTRACTORS,
    "propose": PROPOSERS,
    "refine": REFINERS,
}


def load_method(stage: str, name: str) -> type:
    """Import the class registered for ``<stage>.method = name``."""
    registry = REGISTRIES[stage]
    if name not in registry:
        raise KeyError(f"{stage}.method: unknown method {name!r}; known: {sorted(registry)}")
    module_name, class_name = registry[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(stage: str, conf: dict) -> object:
    """The method of ``conf["method"]`` built from its ``default_conf`` keys of the stage section ``conf``.

    A class with ``uses_device = True`` also gets the section's ``num_gpus`` (an execution key, not
    part of the config hash) to choose its device (see :mod:`matchmill.stages.devices`).
    """
    cls = load_method(stage, conf["method"])
    method_conf = {k: conf[k] for k in getattr(cls, "default_conf", {})}
    if getattr(cls, "uses_device", False):
        method_conf["num_gpus"] = conf.get("num_gpus", 0)
    return cls(method_conf)


def method_defaults(stage: str, name: str) -> dict:
    return dict(getattr(load_method(stage, name), "default_conf", {}))


def random_init_methods(conf: dict, stages=tuple(REGISTRIES)) -> list[str]:
    """``stage.method=name`` of every learned method of ``conf`` that runs from a random init.

    A method is learned when its ``default_conf`` has a ``weights`` key; it runs from a seeded
    random initialisation when that key is unset in its stage section.
    """
    out = []
    for stage in stages:
        section = conf.get(stage) or {}
        name = section.get("method")
        if name not in REGISTRIES[stage]:
            continue  # validation names unknown methods; nothing to warn about here
        cls = load_method(stage, name)
        if "weights" in getattr(cls, "default_conf", {}) and not section.get("weights"):
            out.append(f"{stage}.method={name}")
    return out


def random_init_warning(conf: dict, stages=tuple(REGISTRIES)) -> str | None:
    """One warning line naming the learned methods of ``conf`` without weights, or None."""
    methods = random_init_methods(conf, stages)
    if not methods:
        return None
    return (f"warning: {', '.join(methods)} run from a random initialisation (no weights given): their "
            "matches are close to random; set <stage>.weights (shipped:NAME, see weights/MODEL_CARD.md, "
            "or a `matchmill train` checkpoint), e.g. configs/demo-learned.yaml")
