"""Look-up of an image's features from the committed extract manifest (used by pair stages).

:meth:`FeatureStore.get` returns a :class:`LazyFeatures` mapping: an array is read from its
artifact (by byte range) the first time a method indexes it, so a method reads only the keys it
uses (NCNet reads ``f4`` of a ResNet pyramid; the PUMP proposer at ``base_scale=0.5`` reads one
dense scale of three). Loaded arrays are kept in an LRU bounded by bytes, not by image count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from matchmill.manifests.artifacts import ArtifactReader, resolve_artifact
from matchmill.manifests.commit import read_stage
from matchmill.manifests.schemas import STATUS_OK

#: Default bound of the arrays a pair stage keeps loaded (bytes).
DEFAULT_CACHE_BYTES = 512 * 2**20


class LazyFeatures(Mapping):
    """Read-only ``name -> array`` view of one image's artifact; arrays load on first access."""

    def __init__(self, image_id: str, url: str, store: FeatureStore):
        self.image_id, self.url, self._store = image_id, url, store
        self._reader: ArtifactReader | None = None
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def reader(self) -> ArtifactReader:
        if self._reader is None:
            self._reader = ArtifactReader(self.url)
        return self._reader

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            if key not in self.reader.header:
                raise KeyError(key)
            self._arrays[key] = self.reader.read(key)
            self._store._loaded(self, self._arrays[key].nbytes)
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader.keys())

    def __len__(self) -> int:
        return len(self.reader.header)

    def __contains__(self, key: object) -> bool:
        return key in self.reader.header

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of an array without reading it."""
        return self.reader.shape(key)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())


class FeatureStore:
    """Maps image_id -> features (:class:`LazyFeatures`), with an LRU cache bounded by bytes."""

    def __init__(self, run_url: str, cache_bytes: int = DEFAULT_CACHE_BYTES):
        table = read_stage(run_url, "extract",
                           columns=["image_id", "status", "error", "artifact_uri", "width", "height"])
        self.run_url = run_url
        self.rows = {r["image_id"]: r for r in table.to_pylist()}
        self.cache: OrderedDict[str, LazyFeatures] = OrderedDict()
        self.cache_bytes = int(cache_bytes)
        self.bytes = 0

    def get(self, image_id: str) -> LazyFeatures:
        """Features of one image; raises a clear error when it was not extracted or failed."""
        if image_id in self.cache:
            self.cache.move_to_end(image_id)
            return self.cache[image_id]
        feats = LazyFeatures(image_id, self.artifact(image_id), self)
        self.cache[image_id] = feats
        return feats

    def row(self, image_id: str) -> dict:
        """The image's extract manifest row (ok rows only)."""
        row = self.rows.get(image_id)
        if row is None:
            raise KeyError(f"image {image_id!r} has no features (not in the extract manifest)")
        if row["status"] != STATUS_OK:
            raise ValueError(f"image {image_id!r} failed extraction: {row['error']}")
        return row

    def artifact(self, image_id: str) -> str:
        """The URL of the image's artifact: its row's ``artifact_uri`` resolved against this run
        (:func:`~matchmill.manifests.artifacts.resolve_artifact`; a moved or copied run reads its own)."""
        return resolve_artifact(self.run_url, self.row(image_id)["artifact_uri"])

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) of the original image, from the extract manifest (no image read)."""
        row = self.row(image_id)
        return int(row["width"]), int(row["height"])

    def _loaded(self, feats: LazyFeatures, nbytes: int) -> None:
        self.bytes += nbytes
        # evict least recently used images (never the one just loaded) until within the bound
        while self.bytes > self.cache_bytes:
            victim = next((i for i in self.cache if i != feats.image_id), None)
            if victim is None:
                break
            old = self.cache.pop(victim)
            self.bytes -= old.nbytes
            old._arrays.clear()
