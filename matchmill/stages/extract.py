"""Extract stage: one call per unique image; tensors go to an artifact, a row to the manifest."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.datasets.image_io import load_image
from matchmill.geometry import frames
from matchmill.manifests.artifacts import artifact_path, write_artifact
from matchmill.manifests.schemas import FEATURES
from matchmill.manifests.storage import join

from matchmill.methods.base import Extractor
from matchmill.methods.registry import build_method

from .rows import Row, process_rows
from .threads import limit_threads

#: Stage-level keys of the ``extract`` section (besides the execution keys and the method's own).
STAGE_DEFAULTS = {
    "method": "sift",  # registered extractor or plugin module:Class (see matchmill/methods/registry.py)
    "resize_max": 640,  # longer image side fed to the extractor; None = original size
}
#: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
STAGE_BOUNDS = {
    "resize_max": ">= 0",  # 0 (like None) = original size; a negative side would shrink images to 1x1
}


class ExtractActor:
    """Ray Data callable class: loads the extractor once, then maps image rows to feature rows."""

    def __init__(self, conf: dict, run_url: str, config_hash: str):
        section = conf["extract"]
        limit_threads(section["num_cpus"])
        self.method_name = section["method"]
        self.extractor = build_method("extract", section)
        self.resize_max = section.get("resize_max")
        self.run_url = run_url
        self.config_hash = config_hash
        self.max_image_pixels = conf["data"]["max_image_pixels"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return process_rows(batch, self.extract_one, FEATURES, stage="extract", key="image_id")

    def extract_one(self, row: Row) -> dict:
        tensors, seconds = self.compute(row)
        width, height = (int(v) for v in tensors["image_size"])
        relative = artifact_path(self.config_hash, row["image_id"])  # the manifest's reference: the run may move
        # a storage error (disk full, read-only...) raises StorageUnavailable: the stage stops, no row fails
        write_artifact(join(self.run_url, relative), tensors, metadata={"image_id": row["image_id"], "method": self.method_name})
        return {
            "method": self.method_name,
            "width": width,
            "height": height,
            "num_keypoints": len(tensors.get("keypoints", ())),
            "artifact_uri": relative,
            "seconds": seconds,
        }

    def compute(self, row) -> tuple[dict[str, np.ndarray], float]:
        """The feature tensors of one image row, as stored in its artifact, and the extractor's seconds.

        Keypoints are in original pixels; ``image_size`` is (2,) [width, height]; ``scale`` (2,) maps
        the extractor's frame to the original image.
        """
        image = load_image(row["path"], max_pixels=self.max_image_pixels)
        height, width = image.shape[:2]
        crop = row.get("crop")
        if crop is not None and len(crop):
            image = image[: int(crop[1]), : int(crop[0])]
        start = time.perf_counter()
        tensors = extract_image(self.extractor, image, self.resize_max, original_size=(width, height))
        return tensors, time.perf_counter() - start


def extract_image(extractor: Extractor, image: np.ndarray, resize_max: int | None,
                  original_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The feature tensors of one decoded image, as the extract stage stores them.

    The same code path for the actors and :func:`matchmill.match`.

    Args:
        extractor: a built extractor (:func:`matchmill.methods.registry.build_method`).
        image: (H, W, 3) uint8 RGB, after any crop.
        resize_max: longer side fed to the extractor; None or 0 = as is.
        original_size: (width, height) recorded as ``image_size`` (the image file's size before a
            crop); default the size of ``image``.

    Returns:
        Tensors with ``keypoints`` (N, 2) in the pixels of ``image`` (= original pixels: a crop
        keeps the top-left origin), ``image_size`` (2,) [width, height], ``scale`` (2,) mapping the
        extractor's frame to ``image``.
    """
    if original_size is None:
        original_size = (image.shape[1], image.shape[0])
    small, scale = frames.resize_max(image, resize_max)
    tensors = extractor(small)
    if "keypoints" in tensors:
        tensors["keypoints"] = frames.to_original(tensors["keypoints"], scale)
    if "net_scale" in tensors:  # dense maps live in the extractor's own (network) frame
        net_scale = tensors.pop("net_scale")
        scale = (scale[0] * float(net_scale[0]), scale[1] * float(net_scale[1]))
    tensors["image_size"] = np.array([int(original_size[0]), int(original_size[1])], np.int64)
    tensors["scale"] = np.array(scale, np.float64)
    return tensors
