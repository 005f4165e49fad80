"""Extract stage: one call per unique image; tensors go to an artifact, a row to the manifest."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from matchmill.datasets.image_io import load_image
from matchmill.geometry.frames import resize_max, to_original
from matchmill.manifests.artifacts import artifact_path, write_artifact
from matchmill.manifests.schemas import FEATURES
from matchmill.manifests.storage import join

from .registry import build_method
from .rows import Row, process_rows
from .threads import limit_threads

#: Stage-level keys of the ``extract`` section (besides the execution keys and the method's own).
STAGE_DEFAULTS = {
    "method": "sift",  # registered extractor (see stages/registry.py)
    "resize_max": 640,  # longer image side fed to the extractor; None = original size
}
#: Bounds of its numbers (notation: pipeline/config.py ``parse_bound``; undeclared: >= 0).
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
        small, scale = resize_max(image, self.resize_max)
        start = time.perf_counter()
        tensors = self.extractor(small)
        seconds = time.perf_counter() - start
        if "keypoints" in tensors:
            tensors["keypoints"] = to_original(tensors["keypoints"], scale)
        if "net_scale" in tensors:  # dense maps live in the extractor's own (network) frame
            net_scale = tensors.pop("net_scale")
            scale = (scale[0] * float(net_scale[0]), scale[1] * float(net_scale[1]))
        tensors["image_size"] = np.array([width, height], np.int64)
        tensors["scale"] = np.array(scale, np.float64)
        return tensors, seconds
