"""matchmill: batch image matching on Ray over Parquet manifests.

Sub-packages (each a top-level folder of the repository):
``matchmill.pipeline`` (config, stage graph, Ray runtime, CLI), ``matchmill.stages`` (one Ray
actor per stage), ``matchmill.manifests`` (schemas, storage, commit), ``matchmill.models``
(PyTorch nets), ``matchmill.classical`` (SIFT, mutual NN), ``matchmill.geometry`` (metrics,
robust estimation), ``matchmill.datasets`` (pair sources, demo scene, image IO), ``matchmill.evaluation``
(accuracy benchmarks, history, report), ``matchmill.viz`` (pictures), ``matchmill.training``.
"""

__version__ = "0.1.0"
