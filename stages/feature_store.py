"""Look-up of an image's features from the committed features manifest (used by pair stages)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from matchmill.manifests.artifacts import read_artifact
from matchmill.manifests.commit import read_stage
from matchmill.manifests.schemas import STATUS_OK


class FeatureStore:
    """Maps image_id -> feature tensors, with a small LRU cache (pairs share images)."""

    def __init__(self, run_url: str, cache_size: int = 64):
        table = read_stage(run_url, "extract", "features", columns=["image_id", "status", "error", "artifact_uri"])
        self.rows = {r["image_id"]: r for r in table.to_pylist()}
        self.cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size

    def get(self, image_id: str) -> dict[str, np.ndarray]:
        """Tensors of one image; raises a clear error when it was not extracted or failed."""
        if image_id in self.cache:
            self.cache.move_to_end(image_id)
            return self.cache[image_id]
        row = self.rows.get(image_id)
        if row is None:
            raise KeyError(f"image {image_id!r} has no features (not in the extract manifest)")
        if row["status"] != STATUS_OK:
            raise ValueError(f"image {image_id!r} failed extraction: {row['error']}")
        tensors = read_artifact(row["artifact_uri"])
        self.cache[image_id] = tensors
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return tensors
