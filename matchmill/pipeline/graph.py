"""The stage specs: the one place that defines each stage of the data flow.

Everything that iterates stages reads :data:`STAGES`: the runner and the streaming executor, the
in-process runner, config defaults and validation, status, export and the benchmarks. A stage's
name is its folder under the run URL, its manifest (schema) name and its config section.

Implementations are ``"module:attr"`` strings imported when used, so reading the specs (e.g. to
validate a config) imports no net and no Ray:

- a ``driver`` stage's implementation is a function ``build(conf, run_url) -> pa.Table | Iterable[pa.Table]``;
- a ``ray`` stage's implementation is a Ray Data callable class ``Actor(conf, run_url, config_hash)``
  whose ``__call__(batch: pa.Table) -> pa.Table`` maps input rows to rows of the stage's schema.

Defaults: ``defaults`` names the stage module's ``STAGE_DEFAULTS`` (the stage's own keys, one
comment per key, next to its code); a stage with ``method`` in its defaults also takes the chosen
method's ``default_conf``. Ray stages take the execution keys too (:data:`EXECUTION_DEFAULTS`,
overridden per stage by ``execution``); they change how a stage runs, never what it computes, so
they stay out of the config hash. Bounds of numeric keys sit beside their defaults too (the module's
``STAGE_BOUNDS``, :data:`EXECUTION_BOUNDS`, a method's ``conf_bounds``); undeclared ones are ``>= 0``.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any

#: Keys every Ray stage section accepts (how it runs, not what it computes).
EXECUTION_DEFAULTS: dict[str, Any] = {
    "actors": 1,  # actor-pool size (each actor loads its model once)
    "num_cpus": 1.0,  # CPUs reserved per actor (and its thread count); streamed stages share the cluster's CPUs
    "num_gpus": 0.0,  # GPUs per actor; > 0 fails fast when the cluster has none
    "batch_size": 4,  # rows per actor call
    "resources": None,  # custom Ray resources per actor, e.g. {cpu_worker: 1} pins a stage to a worker group
}


#: Bounds of the execution keys (notation: matchmill/config.py ``parse_bound``; an undeclared numeric
#: key must be >= 0). Whether a pool fits the cluster is checked once Ray is up (runtime.check_resources).
EXECUTION_BOUNDS: dict[str, str] = {
    "actors": "[1, 4096]",  # a generous cap: each actor is a worker process
    "batch_size": ">= 1",
}


#: Execution keys of the stages that read stored features.
PAIR_STAGE_EXECUTION: dict[str, Any] = {
    "feature_cache_mb": 512,  # feature arrays an actor keeps loaded (LRU by bytes; pairs share images)
}


@dataclass(frozen=True)
class StageSpec:
    """One node of the data flow.

    Attributes:
        name: folder under the run URL, manifest name and config section, e.g. ``extract``.
        key: stable row key.
        input: stage whose manifest rows this stage maps over (None for sources).
        depends: stages whose results this stage reads (their hashes enter this stage's hash).
        sections: config sections (dotted) that define what this stage computes.
        kind: ``driver`` (in-process, cheap) or ``ray`` (Ray Data actor pool).
        implementation: ``"module:attr"`` of the driver function or the Ray actor class.
        defaults: ``"module:NAME"`` of the stage's own config defaults (None: no section of its own).
        execution: execution defaults of a Ray stage over :data:`EXECUTION_DEFAULTS`.
        streamed: part of the streaming segment (propose -> refine -> verify run as one Ray Data
            execution); extract stays a barrier because a pair needs both of its images.
    """

    name: str
    key: str
    input: str | None
    depends: tuple[str, ...]
    sections: tuple[str, ...]
    kind: str
    implementation: str
    defaults: str | None = None
    execution: dict = field(default_factory=dict)
    streamed: bool = False

    @property
    def manifest(self) -> str:
        return self.name

    @property
    def schema(self):
        from matchmill.manifests.schemas import MANIFESTS  # lazy: pyarrow; the CLI imports this module (via pipeline.config)

        return MANIFESTS[self.name][0]

    def load(self) -> Any:
        """The implementation (function or actor class)."""
        return _import(self.implementation)

    def default_section(self) -> dict:
        """The stage's config section defaults: execution keys (Ray stages) + the stage's own keys."""
        own = copy.deepcopy(_import(self.defaults)) if self.defaults else {}
        if self.kind != "ray":
            return own
        return {**EXECUTION_DEFAULTS, **self.execution, **own}

    def default_bounds(self) -> dict[str, str]:
        """Bounds of the section's numeric keys: :data:`EXECUTION_BOUNDS` (Ray stages) + the
        ``STAGE_BOUNDS`` dict beside the stage's ``defaults`` in its module, if any (the method's
        ``conf_bounds`` come with the method: matchmill/pipeline/config.py)."""
        own = {}
        if isinstance(self.defaults, str):
            own = dict(getattr(importlib.import_module(self.defaults.split(":")[0]), "STAGE_BOUNDS", {}))
        return {**EXECUTION_BOUNDS, **own} if self.kind == "ray" else own

    @property
    def has_method(self) -> bool:
        return self.kind == "ray" and "method" in (_import(self.defaults) if self.defaults else {})


def _import(ref: str | Any) -> Any:
    if not isinstance(ref, str):  # an object given directly (tests' probe stages)
        return ref
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


STAGES: tuple[StageSpec, ...] = (
    StageSpec("pairs", "pair_id", None, (), ("seed", "data", "pairs"), "driver",
              "matchmill.stages.pairs:build", "matchmill.stages.pairs:STAGE_DEFAULTS"),
    StageSpec("images", "image_id", "pairs", ("pairs",), (), "driver",
              "matchmill.stages.images:build"),
    StageSpec("extract", "image_id", "images", ("images",), ("extract", "data.max_image_pixels"), "ray",
              "matchmill.stages.extract:ExtractActor", "matchmill.stages.extract:STAGE_DEFAULTS"),
    StageSpec("propose", "pair_id", "pairs", ("pairs", "extract"), ("propose",), "ray",
              "matchmill.stages.propose:ProposeActor", "matchmill.stages.propose:STAGE_DEFAULTS",
              {"batch_size": 8, **PAIR_STAGE_EXECUTION}, streamed=True),
    StageSpec("refine", "pair_id", "propose", ("propose", "extract"), ("refine",), "ray",
              "matchmill.stages.refine:RefineActor", "matchmill.stages.refine:STAGE_DEFAULTS",
              {"batch_size": 8, **PAIR_STAGE_EXECUTION}, streamed=True),
    StageSpec("verify", "pair_id", "refine", ("refine",), ("verify",), "ray",
              "matchmill.stages.verify:VerifyActor", "matchmill.stages.verify:STAGE_DEFAULTS",
              {"batch_size": 8}, streamed=True),
    StageSpec("metrics", "metric", "verify", ("verify",), ("metrics",), "driver",
              "matchmill.stages.metrics:build", "matchmill.stages.metrics:STAGE_DEFAULTS"),
)

#: ``matchmill mine``'s last stage: accepts verified candidates and writes the mined-pairs manifest.
MINE_STAGE = StageSpec("mine", "pair_id", "verify", ("verify",), ("mine",), "driver",
                       "matchmill.stages.mine:build", "matchmill.stages.mine:STAGE_DEFAULTS")
#: The graph ``matchmill mine`` runs: the run graph, then the mine stage.
MINE_GRAPH: tuple[StageSpec, ...] = STAGES + (MINE_STAGE,)
#: Every stage a run folder may hold (config sections, status, gc, lookups by name).
ALL_STAGES: tuple[StageSpec, ...] = MINE_GRAPH

STAGE_NAMES = tuple(s.name for s in STAGES)
#: Keys that change how a stage runs, never what it computes (left out of the config hash).
EXECUTION_KEYS = frozenset(EXECUTION_DEFAULTS).union(*(s.execution for s in STAGES))
RAY_STAGES = tuple(s.name for s in STAGES if s.kind == "ray")


def get_stage(name: str) -> StageSpec:
    for spec in ALL_STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in ALL_STAGES)}")


def section_value(conf: dict, dotted: str):
    node = conf
    for part in dotted.split("."):
        node = node[part]
    return node
