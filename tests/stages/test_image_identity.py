"""One file, one image id, one pair key; one pixel frame (issue 19, parts 2 and 3).

- a ``|`` (the pair-id separator) in an image name fails its row, naming the file (and line),
  instead of making two real pairs one key and dropping one as a "duplicate";
- ``./a.jpg`` and ``a.jpg`` are one image at every entry point (pairs file text and parquet,
  folder), and an older run holding both is refused by the exports before anything is written;
- a local file name with ``::`` (fsspec's chain syntax) is a file name;
- EXIF orientation is ignored as COLMAP ignores it: the stored pixels, everywhere.

CPU, no Ray (the pairs stage is called directly)."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from matchmill.datasets.image_io import image_size, load_image
from matchmill.datasets.image_sources import folder_images
from matchmill.datasets.pairs_file import read_pairs_file
from matchmill.manifests.artifacts import artifact_url, write_artifact
from matchmill.manifests.commit import CommitInfo, write_commit
from matchmill.manifests.schemas import PAIRS, normalize_image_id
from matchmill.manifests.storage import join, write_manifest
from matchmill.pipeline.config import load_config
from matchmill.pipeline.export import ExportError, export_colmap, export_hloc
from matchmill.stages.images import unique_images
from matchmill.stages.pairs import build_pairs

from tests.helpers.paths import DEMO_CONFIG
from tests.pipeline.export.test_export import P1, P2, verified_row


def write_images(folder, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(0).uniform(0, 255, (24, 32, 3))).astype(np.uint8)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", pixels)
        (folder / name).write_bytes(data.tobytes())


def pairs_conf(overrides: list[str]) -> dict:
    return load_config(DEMO_CONFIG, overrides)


def test_normalize_image_id():
    assert normalize_image_id("./a.jpg") == normalize_image_id("a.jpg") == normalize_image_id("b/../a.jpg") == "a.jpg"
    assert normalize_image_id("s//x/./b.jpg") == "s/x/b.jpg" and normalize_image_id("/abs/a.jpg") == "/abs/a.jpg"
    for bad, why in (("p.jpg|q.jpg", "pair-id separator"), ("../x.jpg", "leaves the images folder"), ("", "empty")):
        with pytest.raises(ValueError, match=why):
            normalize_image_id(bad)


def test_a_pipe_in_a_pairs_file_name_fails_its_line(tmp_path, caplog):
    write_images(tmp_path / "img", ["p.jpg", "q.jpg", "r.jpg"])
    (tmp_path / "pairs.txt").write_text("p.jpg|q.jpg r.jpg\np.jpg q.jpg|r.jpg\np.jpg r.jpg\n")
    with caplog.at_level(logging.WARNING):
        rows = read_pairs_file(tmp_path / "pairs.txt", tmp_path / "img")
    assert not [r for r in caplog.records if "duplicate" in r.getMessage()]  # nothing dropped
    assert [r["pair_id"] for r in rows] == [f"{tmp_path}/pairs.txt:1", f"{tmp_path}/pairs.txt:2", "p.jpg|r.jpg"]
    for line, name in ((1, "p.jpg|q.jpg"), (2, "q.jpg|r.jpg")):
        row = rows[line - 1]
        assert row["status"] == "failed" and row["error"].startswith(f"{tmp_path}/pairs.txt:{line}: ")
        assert f"image name {name!r} contains '|', the pair-id separator" in row["error"]
        assert "|" not in row["image0"] + row["image1"]  # the refused name is extracted nowhere
    assert rows[2]["status"] == "ok"


def test_a_pipe_in_a_folder_file_name_fails_that_image(tmp_path):
    write_images(tmp_path / "img", ["p.jpg", "q.jpg", "r.jpg", "p.jpg|q.jpg", "q.jpg|r.jpg"])
    conf = pairs_conf(["data.source=folder", f"data.root={tmp_path / 'img'}", "pairs.strategy=exhaustive"])
    rows = build_pairs(conf).to_pylist()
    keys = [r["pair_id"] for r in rows]
    assert len(keys) == len(set(keys))
    ok = sorted(r["pair_id"] for r in rows if r["status"] == "ok")
    assert ok == ["p.jpg|q.jpg", "p.jpg|r.jpg", "q.jpg|r.jpg"]  # the three good images, every pair
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(r["image0"] for r in failed) == ["p.jpg|q.jpg", "q.jpg|r.jpg"]  # one row per bad image
    for r in failed:
        assert r["error"] == (f"pairs: {tmp_path / 'img' / r['image0']}: image name {r['image0']!r} contains '|', "
                              "the pair-id separator; rename the file")


def test_one_file_is_one_image_at_every_entry_point(tmp_path, caplog):
    write_images(tmp_path / "img", ["a.jpg", "q.jpg", "r.jpg", "s/b.jpg"])
    text = tmp_path / "pairs.txt"
    text.write_text("./a.jpg q.jpg\na.jpg q.jpg\na.jpg ./r.jpg\n./s/b.jpg s/../a.jpg\n./a.jpg a.jpg\n../x.jpg a.jpg\n")
    with caplog.at_level(logging.WARNING):
        rows = read_pairs_file(text, tmp_path / "img")
    assert [r["pair_id"] for r in rows] == ["a.jpg|q.jpg", "a.jpg|r.jpg", "s/b.jpg|a.jpg", "a.jpg|a.jpg",
                                           f"{text}:6"]
    assert [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()] == [
        f"{text}:2: duplicate pair a.jpg|q.jpg (first on line 1); dropped"]
    assert rows[2]["scene"] == "s" and rows[2]["path1"] == str(tmp_path / "img" / "a.jpg")
    assert "self-pair" in rows[3]["error"] and "leaves the images folder" in rows[4]["error"]
    images = unique_images(pa.Table.from_pylist(rows, schema=PAIRS)).column("image_id").to_pylist()
    assert images == ["a.jpg", "q.jpg", "r.jpg", "s/b.jpg"]  # ./a.jpg and a.jpg: one image, one extraction

    # a ready parquet pairs manifest: normalised by the pairs stage too
    ready = [{**r, "pair_id": f"{r['image0']}|{r['image1']}"} for r in (
        {"image0": "./a.jpg", "image1": "q.jpg"}, {"image0": "a.jpg", "image1": "q.jpg"},
        {"image0": "a.jpg", "image1": "./s/b.jpg"})]
    table = pa.Table.from_pylist([{**r, "path0": str(tmp_path / "img" / r["image0"]), "status": "ok",
                                   "path1": str(tmp_path / "img" / r["image1"])} for r in ready], schema=PAIRS)
    write_manifest(table, f"file://{tmp_path}/ready.parquet", "pairs")
    conf = pairs_conf(["data.source=pairs_file", f"data.pairs_file={tmp_path}/ready.parquet"])
    built = build_pairs(conf).to_pylist()
    assert [(r["pair_id"], r["image0"], r["image1"]) for r in built] == [
        ("a.jpg|q.jpg", "a.jpg", "q.jpg"), ("a.jpg|s/b.jpg", "a.jpg", "s/b.jpg")]

    # the folder source: relative paths as found, never ./
    assert [im.image_id for im in folder_images(f"{tmp_path}/img/./")] == ["a.jpg", "q.jpg", "r.jpg", "s/b.jpg"]


def old_run_with_two_ids_for_one_file(base: str) -> str:
    """A run made before ids were normalised: ``./scene/A.jpg`` and ``scene/A.jpg`` are one file."""
    run = join(base, "run")
    ids = ["scene/A.jpg", "./scene/A.jpg", "scene/B.jpg", "scene/C.jpg"]
    rows = []
    for image in ids:  # dense artifacts: the exports quantise, sizes come from the manifest
        url = artifact_url(run, "e" * 12, image)
        write_artifact(url, {"image_size": np.array([320, 240], np.int64), "scale": np.array([1.0, 1.0])})
        rows.append({"image_id": image, "method": "pump", "width": 320, "height": 240, "num_keypoints": 0,
                     "artifact_uri": url, "seconds": 0.0, "status": "ok", "error": None})
    write_manifest(pa.Table.from_pylist(rows), join(run, "extract", "part-0.parquet"), "extract")
    write_commit(run, CommitInfo("extract", "extract", "e" * 12, rows=len(ids), failed=0))
    verified = [verified_row(ids[0], ids[2], P1), verified_row(ids[1], ids[3], P2)]
    write_manifest(pa.Table.from_pylist(verified), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=2, failed=0))
    return run


def test_exports_refuse_two_ids_of_one_file_before_writing(tmp_path):
    run = old_run_with_two_ids_for_one_file(f"file://{tmp_path}/store")
    message = r"images '\./scene/A.jpg' and 'scene/A.jpg' would both be exported as"
    with pytest.raises(ExportError, match=message):
        export_hloc(run, str(tmp_path / "hloc"))
    with pytest.raises(ExportError, match=r"would both be exported as 'scene/A.jpg'"):
        export_colmap(run, str(tmp_path / "colmap"), image_root="/data")
    assert not (tmp_path / "hloc").exists() and not (tmp_path / "colmap").exists()


def test_a_local_name_with_double_colon_is_a_file_not_a_url_chain(tmp_path):
    folder = tmp_path / "in::side"
    write_images(folder, ["col::on.jpg", "b.jpg"])
    path = str(folder / "col::on.jpg")
    for url in (path, "file://" + path):
        assert load_image(url).shape == (24, 32, 3)
    images = folder_images(str(folder))
    assert [im.image_id for im in images] == ["b.jpg", "col::on.jpg"] and images[1].path == path
    (folder / "pairs.txt").write_text("col::on.jpg b.jpg\n")
    rows = read_pairs_file(str(folder / "pairs.txt"), str(folder))
    assert rows[0]["status"] == "ok" and load_image(rows[0]["path0"]).shape == (24, 32, 3)
    from matchmill.stages.pairs import check_source

    check_source(pairs_conf(["data.source=pairs_file", f"data.pairs_file={folder / 'pairs.txt'}",
                             f"data.images_dir={folder}"]))


def exif_rotated_jpeg(path) -> np.ndarray:
    """A JPEG of 240 rows x 320 columns stored, tagged EXIF orientation 6 ("rotate 90 CW to
    display"); returns the stored pixels (a smooth pattern JPEG keeps within a few levels)."""
    yy, xx = np.mgrid[0:240, 0:320]
    blobs = ((xx // 20 + yy // 20) % 2) * 80 + ((xx // 53 * 7 + yy // 37 * 3) % 5) * 30  # corners for SIFT
    pixels = np.stack([xx * 255 // 319, yy * 255 // 239, blobs], -1).astype(np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), quality=95)
    return pixels


def test_exif_orientation_is_ignored_as_colmap_does(tmp_path):
    import pycolmap

    from matchmill.geometry.pair_metrics import image_size as header_size
    from matchmill.stages.extract import ExtractActor

    path = str(tmp_path / "rotated.jpg")
    stored = exif_rotated_jpeg(path)
    assert Image.open(path).getexif()[0x0112] == 6
    rgb = load_image(path)
    assert rgb.shape == (240, 320, 3) and load_image(path, grayscale=True).shape == (240, 320)
    assert np.abs(rgb.astype(int) - stored).mean() < 3  # the stored pixels, not turned
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))  # PIL, no exif_transpose
    np.testing.assert_array_equal(rgb, pycolmap.Bitmap.read(path, as_rgb=True).to_array())  # what COLMAP reads
    assert image_size(open(path, "rb").read(), path) == (320, 240) == header_size(path)
    # what the extract stage records: the stored width and height, keypoints inside them
    actor = ExtractActor(pairs_conf(["extract.method=sift"]), f"file://{tmp_path}/run", "e" * 12)
    tensors, _ = actor.compute({"path": path, "crop": None})
    assert tensors["image_size"].tolist() == [320, 240]
    kp = tensors["keypoints"]
    assert len(kp) and kp[:, 0].max() < 320 and kp[:, 1].max() < 240
    # a COLMAP database of a folder holding it says the same
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    db.close()
    pycolmap.import_images(str(tmp_path / "database.db"), str(tmp_path), image_names=["rotated.jpg"])
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    try:
        camera = db.read_all_cameras()[0]
        assert (camera.width, camera.height) == (320, 240)
    finally:
        db.close()
    assert os.path.exists(path)
