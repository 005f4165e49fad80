"""The method contract: what every extractor, proposer and refiner is, and the one base class.

A stage calls its method through one of the three protocols below and reads only the class
attributes :class:`Method` declares; nothing else (no ``getattr`` with defaults). Shapes follow the
kornia convention in the docstrings: ``(H, W, 3)`` an RGB image, ``(N, 2)`` points ``x, y`` in
pixels, ``(N, 4)`` matches ``x0 y0 x1 y1``, ``(N,)`` one value per point or match.

Adding a method is one file: a class deriving from :class:`Method` that implements one protocol,
named in a job either by its registered name (:mod:`matchmill.methods.registry`) or, without
touching this package, as a plugin ``some.module:ClassName`` importable from ``sys.path``::

    class ToyProposer(Method):
        default_conf = {"max_matches": 100}  # keep at most this many matches

        def __call__(self, feats0, feats1):
            ...
            return matches, scores  # (N, 4) float32, (N,) float32
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import numpy as np

from matchmill.config import merge_conf

#: Features of one image as the extract stage stores them (an artifact): ``keypoints`` (N, 2)
#: original pixels, ``descriptors`` (N, D), ``scores`` (N,), dense maps (C, h, w), ``image_size``
#: (2,) [width, height], ``scale`` (2,) from the extractor's frame to original pixels.
Features = Mapping[str, np.ndarray]


def array_shape(feats: Features, key: str) -> tuple[int, ...]:
    """Shape of ``feats[key]``; a lazy mapping with a ``shape(key)`` method (the stages'
    ``LazyFeatures``) answers from the artifact header without reading the array."""
    shape = getattr(feats, "shape", None)  # duck typing: plain dicts have no shape method
    return tuple(shape(key)) if callable(shape) else tuple(np.shape(feats[key]))


class Method:
    """Base class of every method (as glue-factory's ``BaseModel``): its config merged once.

    Subclasses declare the class attributes below; the stages and the job config read them
    directly, so a plugin that derives from this class has all of them.
    """

    #: The method's own config keys with their defaults, one comment per key next to its code; they
    #: become keys of the stage's section (``extract.max_keypoints`` ...).
    default_conf: ClassVar[dict[str, Any]] = {}
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: ``>= 0``).
    conf_bounds: ClassVar[dict[str, str]] = {}
    #: True: the method chooses its device from the stage's ``num_gpus`` (an execution key outside
    #: the config hash), given to it in ``conf["num_gpus"]`` (see :mod:`matchmill.methods.devices`).
    uses_device: ClassVar[bool] = False
    #: Refiners: True when it reads both images' stored features (``feats0``, ``feats1``).
    needs_features: ClassVar[bool] = False
    #: Refiners: True when it returns its input unchanged (the stage then passes rows through
    #: without calling it, in zero-CPU tasks).
    identity: ClassVar[bool] = False

    def __init__(self, conf: Mapping[str, Any] | None = None):
        """Merge ``conf`` over ``default_conf`` once (strict: an unknown key raises ConfigError
        naming the class; ``num_gpus`` is always accepted)."""
        self.conf = merge_conf(self.default_conf, conf, type(self).__name__, allowed=("num_gpus",))


#: The class attributes every method class has (a plugin that does not derive from Method must
#: declare them; the registry checks).
CONTRACT_ATTRIBUTES = ("default_conf", "conf_bounds", "uses_device", "needs_features", "identity")


@runtime_checkable
class Extractor(Protocol):
    """Features of one image."""

    default_conf: ClassVar[dict[str, Any]]

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detect and/or describe.

        Args:
            image: (H, W, 3) uint8 RGB (already resized by the stage to ``extract.resize_max``).

        Returns:
            Any of: ``keypoints`` (N, 2) float32 in the pixels of ``image``, ``descriptors`` (N, D)
            float32, ``scores`` (N,), ``scales`` (N,); dense maps (C, h, w) with ``net_scale`` (2,)
            mapping their frame to ``image``'s. The stage maps keypoints to original pixels.
        """


@runtime_checkable
class Proposer(Protocol):
    """Candidate matches between two images' stored features."""

    default_conf: ClassVar[dict[str, Any]]

    def __call__(self, feats0: Features, feats1: Features) -> tuple[np.ndarray, np.ndarray]:
        """Propose.

        Args:
            feats0, feats1: the stored features of both images (see :data:`Features`).

        Returns:
            ``matches`` (N, 4) float32 x0 y0 x1 y1 in original pixels, ``scores`` (N,) float32.
        """


@runtime_checkable
class Refiner(Protocol):
    """Refined matches from proposals (and, when ``needs_features``, both images' features)."""

    default_conf: ClassVar[dict[str, Any]]
    needs_features: ClassVar[bool]
    identity: ClassVar[bool]

    def __call__(self, matches: np.ndarray, scores: np.ndarray, feats0: Features | None = None,
                 feats1: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Refine.

        Args:
            matches: (N, 4) float32 x0 y0 x1 y1 in original pixels.
            scores: (N,) float32.
            feats0, feats1: stored features of both images (given when ``needs_features``).

        Returns:
            ``matches`` (M, 4) float32 and ``scores`` (M,) float32, original pixels.
        """
