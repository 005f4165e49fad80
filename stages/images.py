"""Images stage (driver side): the unique images of the pairs manifest (extraction runs once per image)."""

from __future__ import annotations

import pyarrow as pa

from matchmill.manifests.schemas import IMAGES, STATUS_OK


def unique_images(pairs: pa.Table) -> pa.Table:
    """One row per distinct image id referenced by any pair (failed pairs included: their
    images may still serve other pairs). Returns an IMAGES table sorted by image id."""
    images: dict[str, dict] = {}
    for row in pairs.select(["scene", "image0", "image1", "path0", "path1", "crop0", "crop1"]).to_pylist():
        for side in ("0", "1"):
            image_id = row["image" + side]
            if image_id and image_id not in images:
                images[image_id] = {
                    "image_id": image_id,
                    "scene": row["scene"],
                    "path": row["path" + side],
                    "crop": row["crop" + side],
                    "status": STATUS_OK,
                    "error": None,
                }
    rows = [images[k] for k in sorted(images)]
    return pa.Table.from_pylist(rows, schema=IMAGES) if rows else IMAGES.empty_table()
