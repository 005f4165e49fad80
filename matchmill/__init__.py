"""matchmill: batch image matching on Ray over Parquet manifests.

Python API (:mod:`matchmill.api`)::

    import matchmill

    out = matchmill.match("a.jpg", "b.jpg", method="sift")   # keypoints, matches, scores, inliers (NumPy)
    run = matchmill.run("configs/demo.yaml", pairs__max_pairs_per_scene=10)
    run.read("verify"), run.metrics, run.status(), run.export("hloc", "out/")
    run = matchmill.open_run("demo")

Sub-packages (each a top-level folder of the repository): ``matchmill.config`` (config errors,
merging, checks), ``matchmill.manifests`` (schemas, storage, commit), ``matchmill.geometry``,
``matchmill.datasets`` (pair sources, demo scene, image IO), ``matchmill.models`` (PyTorch nets),
``matchmill.methods`` (extractors, proposers, refiners, their registry and presets),
``matchmill.stages`` (one Ray actor per stage), ``matchmill.pipeline`` (job config, stage graph,
runner, status, exports), ``matchmill.training``, ``matchmill.viz``, ``matchmill.evaluation``
(benchmarks, report, release).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matchmill.version import __version__

__all__ = ["match", "run", "open_run", "Run", "__version__"]

if TYPE_CHECKING:
    from matchmill.api import Run, match, open_run, run

#: Names served from :mod:`matchmill.api` on first use.
_API = ("match", "run", "open_run", "Run")


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attributes: matchmill.api imports the whole pipeline (Ray, pandas, OpenCV, the
    # stages), while every module imports this package first (``import matchmill.config`` runs this
    # file); importing the API here would make each of those imports, and the CLI's start-up, pay it.
    if name in _API:
        from matchmill import api  # lazy: keeps `import matchmill.<anything>` cheap (see above)

        value = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'matchmill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
