"""Shared helpers of the training tests: manifests of the demo scene, tiny job configs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from matchmill.manifests.schemas import PAIRS
from matchmill.manifests.storage import write_manifest

from tests.helpers.paths import REPO


def demo_pairs_manifest(demo_root: Path, out: Path, max_pairs: int = 12) -> str:
    """The demo scene's pairs (with pose ground truth) as one PAIRS .parquet file; returns its URL."""
    from matchmill.pipeline.config import load_config
    from matchmill.stages.pairs import build_pairs

    conf = load_config(REPO / "configs" / "demo.yaml", [f"data.root={demo_root}", f"pairs.max_pairs_per_scene={max_pairs}"])
    table = build_pairs(conf)
    url = f"file://{out}"
    write_manifest(table, url, "pairs")
    return url


def rows_manifest(rows: list[dict], out: Path) -> str:
    url = f"file://{out}"
    write_manifest(pa.Table.from_pylist(rows, schema=PAIRS) if rows else PAIRS.empty_table(), url, "pairs")
    return url


def tiny_overrides(model: str, storage: Path, data_url: str, steps: int = 4, epoch_steps: int = 2) -> list[str]:
    """CPU-sized job: small images, few steps, 1 worker, everything stored under ``storage``."""
    common = [f"storage=file://{storage}", f"train.steps={steps}", f"train.epoch_steps={epoch_steps}",
              "train.log_every=1", f"train.batch_size={4 if model == 'pump' else 2}", "ray.num_cpus=2", "scaling.cpus_per_worker=1"]
    if model == "pump":
        return common + [f"data.images={data_url}", f"data.pairs={data_url}", "pump.synth.crop_size=48",
                         "pump.synth.window_size=64", "pump.val_pairs=2", "pump.u_fraction=0.5",
                         "pump.net={width: 32, depth: 2}", "pump.lr=0.001"]
    size = "[128,96]"
    if model == "ncnet":
        return common + [f"data.pairs={data_url}", f"ncnet.size={size}", "ncnet.val_pairs=2"]
    return common + [f"data.pairs={data_url}", f"patch2pix.size={size}", "patch2pix.val_pairs=2", "patch2pix.ptmax=8"]
