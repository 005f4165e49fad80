"""The stage graph: names, manifests, inputs and which config sections each stage's hash covers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    """One node of the data flow.

    Attributes:
        name: folder under the run URL, e.g. ``extract``.
        manifest: schema name in :data:`matchmill.manifests.schemas.MANIFESTS`.
        key: stable row key.
        input: stage whose manifest rows this stage maps over (None for sources).
        depends: stages whose results this stage reads (their hashes enter this stage's hash).
        sections: config sections (dotted) that define what this stage computes.
        kind: ``driver`` (in-process, cheap) or ``ray`` (Ray Data actor pool).
    """

    name: str
    manifest: str
    key: str
    input: str | None
    depends: tuple[str, ...]
    sections: tuple[str, ...]
    kind: str


STAGES: tuple[StageSpec, ...] = (
    StageSpec("pairs", "pairs", "pair_id", None, (), ("seed", "data", "pairs"), "driver"),
    StageSpec("images", "images", "image_id", "pairs", ("pairs",), (), "driver"),
    StageSpec("extract", "features", "image_id", "images", ("images",), ("extract", "data.max_image_pixels"), "ray"),
    StageSpec("propose", "proposals", "pair_id", "pairs", ("pairs", "extract"), ("propose",), "ray"),
    StageSpec("refine", "matches", "pair_id", "propose", ("propose", "extract"), ("refine",), "ray"),
    StageSpec("verify", "verified", "pair_id", "refine", ("refine",), ("verify",), "ray"),
    StageSpec("metrics", "metrics", "metric", "verify", ("verify",), ("metrics",), "driver"),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")


def section_value(conf: dict, dotted: str):
    node = conf
    for part in dotted.split("."):
        node = node[part]
    return node
