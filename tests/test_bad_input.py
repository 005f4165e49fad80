"""Bad input: per-row problems become failed rows naming the item; config/storage problems stop early."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from matchmill.datasets.image_io import ImageError, load_image
from matchmill.datasets.megadepth import select_megadepth_pairs
from matchmill.manifests.commit import read_stage
from matchmill.pipeline.cli import main as cli_main
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import run_pipeline
from matchmill.pipeline.runtime import ResourceError

from .conftest import DEMO_CONFIG


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # a real bomb would inflate to width*height*3 bytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def fmt(values) -> str:
    return " ".join(repr(float(v)) for v in np.asarray(values).ravel())


@pytest.fixture()
def bad_inputs(tmp_path, demo_root):
    """A SuperGlue-style pairs file mixing good pairs with every kind of broken item."""
    images = tmp_path / "images"
    images.mkdir()
    good = select_megadepth_pairs(demo_root, {"max_pairs_per_scene": 2, "symmetric": False})[:2]
    lines = []
    for row in good:
        for side in ("0", "1"):
            shutil.copy(row["path" + side], images / Path(row["path" + side]).name)
        lines.append(f"{Path(row['path0']).name} {Path(row['path1']).name} 0 0 {fmt(row['K0'])} {fmt(row['K1'])} "
                     f"{fmt(row['T_0to1'])}")
    g0, g1 = Path(good[0]["path0"]).name, Path(good[0]["path1"]).name
    gt = f"0 0 {fmt(good[0]['K0'])} {fmt(good[0]['K1'])} {fmt(good[0]['T_0to1'])}"
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "bomb.png").write_bytes(png_header_only(60_000, 60_000))
    lines += [
        f"{g0} missing.jpg {gt}",
        f"{g0} corrupt.jpg {gt}",
        f"empty.jpg {g1} {gt}",
        f"{g0} bomb.png {gt}",
        f"{g1} {g0} 0 0 nan 0 160 0 500 120 0 0 1 {fmt(good[0]['K1'])} {fmt(good[0]['T_0to1'])}",
        f"{Path(good[1]['path1']).name} {Path(good[1]['path0']).name} 0 0 this line is broken",
    ]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    return pairs_file, images


def test_image_loader_names_the_file_and_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "bomb.png").write_bytes(png_header_only(50_000, 50_000))
    cases = {"empty.jpg": "empty file", "bad.jpg": "not a readable image", "bomb.png": "exceeds the limit",
             "missing.jpg": "file not found"}
    for name, reason in cases.items():
        with pytest.raises(ImageError) as err:
            load_image(str(tmp_path / name), max_pixels=10_000_000)
        assert name in str(err.value) and reason in str(err.value)


@pytest.mark.ray
def test_bad_rows_fail_alone_and_the_run_goes_on(bad_inputs, tmp_path, ray_local):
    pairs_file, images = bad_inputs
    conf = load_config(DEMO_CONFIG, [f"storage=file://{tmp_path}/runs", "data.source=pairs_file",
                                     f"data.pairs_file={pairs_file}", f"data.images_dir={images}"])
    result = run_pipeline(conf, echo=lambda _: None)
    verified = {r["pair_id"]: r for r in read_stage(result.run_url, "verify").to_pylist()}
    assert len(verified) == 8  # every pair keeps its key to the end
    ok = [r for r in verified.values() if r["status"] == "ok"]
    assert len(ok) == 2 and all(r["num_matches"] > 20 for r in ok)
    errors = {pid: r["error"] for pid, r in verified.items() if r["status"] == "failed"}
    expected = {
        "missing.jpg": "file not found",
        "corrupt.jpg": "not a readable image",
        "empty.jpg": "empty file",
        "bomb.png": "exceeds the limit",
    }
    for name, reason in expected.items():
        match = [e for pid, e in errors.items() if name in pid]
        assert len(match) == 1 and name in match[0] and reason in match[0], (name, match)
    assert any("K0" in e and "NaN" in e for e in errors.values())
    assert any("pairs.txt:8" in e for e in errors.values())  # the malformed line, by file and line
    features = read_stage(result.run_url, "extract")
    failed_images = features.filter(pc.equal(features.column("status"), "failed")).column("image_id").to_pylist()
    assert sorted(failed_images) == sorted(["bomb.png", "corrupt.jpg", "empty.jpg", "missing.jpg"])
    assert result.metrics["num_failed"] == 6 and result.metrics["num_pairs"] == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract.max_keypoint=5"], "extract.max_keypoint: unknown config key"),
        (["storage=file:///proc/matchmill-not-writable"], "not writable"),
        (["storage=memory://x"], "memory://"),
    ],
)
def test_config_and_storage_errors_stop_before_any_work(args, message, tmp_path, capsys):
    code = cli_main(["run", str(DEMO_CONFIG), f"data.root={tmp_path}/nothing-here", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.ray
def test_gpu_request_on_a_cpu_cluster_fails_fast(tmp_path, demo_root, ray_local):
    conf = load_config(DEMO_CONFIG, [f"storage=file://{tmp_path}", f"data.root={demo_root}", "extract.num_gpus=1"])
    with pytest.raises(ResourceError, match="extract.num_gpus=1 but the Ray cluster has 0 GPU"):
        run_pipeline(conf, echo=lambda _: None)
