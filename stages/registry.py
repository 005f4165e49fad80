"""Method registries: which class implements ``extract.method``, ``propose.method``, ``refine.method``.

Entries are ``"module:Class"`` strings, imported only when used, so that a CPU-only SIFT run never
imports a net. Each class has a ``default_conf`` dict (one comment per key, next to its code);
its keys become valid keys of the stage's config section.
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


def method_defaults(stage: str, name: str) -> dict:
    return dict(getattr(load_method(stage, name), "default_conf", {}))
