"""The one method registry: which class implements ``extract.method``, ``propose.method``,
``refine.method``.

Built-in names map to ``"module:Class"`` strings, imported only when used, so that a CPU-only SIFT
run never imports a net. Any other name of the form ``some.module:ClassName`` is a plugin: the
class is imported from ``sys.path`` (``PYTHONPATH``) as it is, so a method can live in one file
outside matchmill. Every class follows :mod:`matchmill.methods.base`: its ``default_conf`` keys
become valid keys of the stage's config section; :func:`build_method` builds one the way the stage
actors do.
"""

from __future__ import annotations

import importlib

from matchmill.config import ConfigError

from .base import CONTRACT_ATTRIBUTES

#: The stages that have a ``method`` key.
STAGES = ("extract", "propose", "refine")

#: Built-in methods of each stage: name -> "module:Class".
REGISTRIES: dict[str, dict[str, str]] = {
    "extract": {
        "sift": "matchmill.methods.sift:SiftExtractor",
        "resnet34": "matchmill.methods.patch2pix:ResNet34Extractor",
        "pump": "matchmill.methods.pump:PumpExtractor",
    },
    "propose": {
        "mnn": "matchmill.methods.mutual_nn:MutualNNProposer",
        "ncnet": "matchmill.methods.ncnet:NCNetProposer",
        "pump-pyramid": "matchmill.methods.pump:PumpPyramidProposer",
    },
    "refine": {
        "identity": "matchmill.methods.identity:IdentityRefiner",
        "patch2pix": "matchmill.methods.patch2pix:Patch2PixRefiner",
    },
}


def is_plugin(name: object) -> bool:
    """True for a plugin method name ``some.module:ClassName`` (a built-in name has no colon)."""
    return isinstance(name, str) and ":" in name


def is_known(stage: str, name: object) -> bool:
    """A built-in name of ``stage`` or a plugin name (whether it imports is :func:`load_method`'s job)."""
    return is_plugin(name) or name in REGISTRIES[stage]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _load_plugin(stage: str, name: str) -> type:
    module_name, _, class_name = name.rpartition(":")
    where = f"{stage}.method={name!r}"
    if not module_name or not class_name.isidentifier():
        raise ConfigError(f"{where}: a plugin method is named 'some.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is one config line
        raise ConfigError(f"{where}: cannot import plugin module {module_name!r} (is it on PYTHONPATH?): "
                          f"{_one_line(exc)}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}: module {module_name!r} has no class {class_name!r}")
    missing = [a for a in CONTRACT_ATTRIBUTES if not hasattr(cls, a)]
    if missing or not isinstance(cls.default_conf, dict):
        raise ConfigError(f"{where}: {class_name} lacks the method contract {missing or ['default_conf (a dict)']}; "
                          "derive it from matchmill.methods.base.Method")
    return cls


def load_method(stage: str, name: str) -> type:
    """Import the class of ``<stage>.method = name`` (a built-in name or a plugin ``module:Class``).

    Raises:
        KeyError: an unknown built-in name; the message lists the known ones.
        ConfigError: a plugin that does not import, has no such class or lacks the contract.
    """
    registry = REGISTRIES[stage]
    if is_plugin(name):
        return _load_plugin(stage, name)
    if not isinstance(name, str) or name not in registry:
        raise KeyError(f"{stage}.method: unknown method {name!r}; known: {sorted(registry)} "
                       "or a plugin 'some.module:ClassName'")
    module_name, class_name = registry[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(stage: str, conf: dict) -> object:
    """The method of ``conf["method"]`` built from its ``default_conf`` keys of the stage section ``conf``.

    A class with ``uses_device = True`` also gets the section's ``num_gpus`` (an execution key, not
    part of the config hash) to choose its device (see :mod:`matchmill.methods.devices`).
    """
    cls = load_method(stage, conf["method"])
    method_conf = {k: conf[k] for k in cls.default_conf if k in conf}
    if cls.uses_device:
        method_conf["num_gpus"] = conf.get("num_gpus", 0)
    return cls(method_conf)


def method_defaults(stage: str, name: str) -> dict:
    """A copy of the ``default_conf`` of ``<stage>.method = name``."""
    return dict(load_method(stage, name).default_conf)


def random_init_methods(conf: dict, stages=STAGES) -> list[str]:
    """``stage.method=name`` of every learned method of ``conf`` that runs from a random init.

    A method is learned when its ``default_conf`` has a ``weights`` key; it runs from a seeded
    random initialisation when that key is unset in its stage section.
    """
    out = []
    for stage in stages:
        section = conf.get(stage) or {}
        name = section.get("method")
        if not is_known(stage, name):
            continue  # validation names unknown methods; nothing to warn about here
        cls = load_method(stage, name)
        if "weights" in cls.default_conf and not section.get("weights"):
            out.append(f"{stage}.method={name}")
    return out


def random_init_warning(conf: dict, stages=STAGES) -> str | None:
    """One warning line naming the learned methods of ``conf`` without weights, or None."""
    methods = random_init_methods(conf, stages)
    if not methods:
        return None
    return (f"warning: {', '.join(methods)} run from a random initialisation (no weights given): their "
            "matches are close to random; set <stage>.weights (shipped:NAME, see matchmill/weights/MODEL_CARD.md, "
            "or a `matchmill train` checkpoint), e.g. configs/demo-learned.yaml")
