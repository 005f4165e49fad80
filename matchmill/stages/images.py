"""Images stage (driver side): the unique images of the pairs manifest (extraction runs once per image)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from matchmill.manifests.commit import part_files
from matchmill.manifests.schemas import IMAGES, STATUS_OK
from matchmill.manifests.storage import read_manifest

#: PAIRS columns the images stage reads.
IMAGE_SOURCE_COLUMNS = ["scene", "image0", "image1", "path0", "path1", "crop0", "crop1"]


def unique_images(pairs: pa.Table | Iterable[pa.Table]) -> pa.Table:
    """One row per distinct image id referenced by any pair (failed pairs included: their
    images may still serve other pairs). Returns an IMAGES table sorted by image id.

    ``pairs`` is a PAIRS table, or an iterable of them (e.g. one per part file, with at least
    IMAGE_SOURCE_COLUMNS) so that memory grows with the number of images, not of pairs."""
    images: dict[str, dict] = {}
    tables = [pairs] if isinstance(pairs, pa.Table) else pairs
    batches = (b for table in tables for b in table.select(IMAGE_SOURCE_COLUMNS).to_batches(max_chunksize=1024))
    rows = (row for batch in batches for row in batch.to_pylist())
    for row in rows:
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


def build(conf: dict, run_url: str) -> pa.Table:
    """The images stage: unique images of the run's pairs, one pairs part at a time (the driver
    holds the unique images, never every pair)."""
    return unique_images(read_manifest(part, "pairs", IMAGE_SOURCE_COLUMNS) for part in part_files(run_url, "pairs"))
