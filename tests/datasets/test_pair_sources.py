"""Pair sources: HPatches / Oxford listers and SuperGlue-format pairs files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from matchmill.datasets.hpatches import (
    D2NET_EXCLUDED_SEQUENCES,
    list_hpatches_pairs,
    list_oxford_pairs,
    read_homography_file,
)
from matchmill.datasets.pairs_file import PAIR_ROW_KEYS, join_path, read_pairs_file
from matchmill.manifests.schemas import PAIR_FIELDS, PAIRS

from tests.helpers.paths import SHARED_DATA, needs_shared


H_TEXT = "1.1 0.0 5.0\n0.0 0.9 -3.0\n0.0 0.0 1.0\n"
IDENTITY_K = "500 0 320 0 500 240 0 0 1"
IDENTITY_T = "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"


def assert_valid_pairs_table(rows: list[dict]) -> None:
    """Every row has exactly the PAIRS columns and converts to the PAIRS schema."""
    for row in rows:
        assert tuple(row) == PAIR_ROW_KEYS
    assert PAIR_ROW_KEYS[: len(PAIR_FIELDS)] == tuple(f.name for f in PAIR_FIELDS)
    table = pa.Table.from_pylist(rows, schema=PAIRS)
    assert table.num_rows == len(rows)


def assert_homography_rows(rows: list[dict]) -> None:
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        H = np.asarray(row["H_0to1"], dtype=float).reshape(3, 3)
        assert np.isfinite(H).all() and abs(np.linalg.det(H)) > 1e-9
        assert np.linalg.cond(H) < 1e8
        assert Path(row["path0"]).is_absolute() and Path(row["path0"]).is_file()
        assert Path(row["path1"]).is_file()
        assert row["K0"] is None and row["T_0to1"] is None and row["crop0"] is None


# ----------------------------------------------------------------------------- shared data


@needs_shared
@pytest.mark.shared_data
def test_hpatches_lister_on_reference_data():
    rows = list_hpatches_pairs(SHARED_DATA / "hpatches")
    assert len(rows) == 5
    assert_homography_rows(rows)
    assert_valid_pairs_table(rows)
    assert [r["image1"] for r in rows] == [f"v_wormhole/{k}.ppm" for k in range(2, 7)]
    assert all(r["image0"] == "v_wormhole/1.ppm" and r["scene"] == "v_wormhole" for r in rows)
    assert rows[0]["pair_id"] == "v_wormhole/1.ppm|v_wormhole/2.ppm"
    expected = np.loadtxt(SHARED_DATA / "hpatches" / "v_wormhole" / "H_1_4").ravel()
    np.testing.assert_array_equal(rows[2]["H_0to1"], expected)
    assert len(list_hpatches_pairs(SHARED_DATA / "hpatches", sequences=["v_wormhole"], d2net_subset=True)) == 5


@needs_shared
@pytest.mark.shared_data
def test_oxford_lister_on_reference_data():
    rows = list_oxford_pairs(SHARED_DATA / "oxford_graf")
    assert len(rows) == 5
    assert_homography_rows(rows)
    assert_valid_pairs_table(rows)
    assert rows[0]["image0"] == "oxford_graf/img1.png" and rows[-1]["image1"] == "oxford_graf/img6.png"
    np.testing.assert_array_equal(rows[-1]["H_0to1"], np.loadtxt(SHARED_DATA / "oxford_graf" / "H1to6p").ravel())


@needs_shared
@pytest.mark.shared_data
def test_scannet_pairs_file_on_reference_data():
    folder = SHARED_DATA / "scannet_sample"
    rows = read_pairs_file(folder / "pairs_with_gt.txt", folder / "images")
    assert len(rows) == 5
    assert_valid_pairs_table(rows)
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert len(row["K0"]) == 9 and len(row["K1"]) == 9 and len(row["T_0to1"]) == 16
        assert row["H_0to1"] is None
        T = np.reshape(row["T_0to1"], (4, 4))
        assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-3)
        assert Path(row["path0"]).is_file() and Path(row["path1"]).is_file()
    first = rows[0]
    assert first["image0"] == "scene0711_00_frame-001680.jpg"
    assert first["K0"][0] == pytest.approx(1163.45) and first["K0"][5] == pytest.approx(481.6)
    assert first["T_0to1"][3] == pytest.approx(-1.51061)  # row-major: t_x is element 3


@needs_shared
@pytest.mark.shared_data
def test_kitti_pairs_file_on_reference_data():
    folder = SHARED_DATA / "kitti_seq00"
    rows = read_pairs_file(folder / "pairs_with_gt.txt", folder)
    assert len(rows) > 0 and all(r["status"] == "ok" for r in rows)


# ----------------------------------------------------------------------------- synthetic layouts


def make_sequence(folder: Path, gt_name: str, image_name: str, ks=range(2, 5)) -> None:
    """An image-less HPatches/Oxford-like folder: empty image files plus GT text files."""
    folder.mkdir(parents=True)
    (folder / image_name.format(k=1)).write_bytes(b"")
    for k in ks:
        (folder / image_name.format(k=k)).write_bytes(b"")
        (folder / gt_name.format(k=k)).write_text(H_TEXT)


def test_hpatches_filters_and_exclusions(tmp_path):
    for seq in ("i_dc", "v_ok", "i_ok"):
        make_sequence(tmp_path / seq, "H_1_{k}", "{k}.ppm")
    make_sequence(tmp_path / "_cache", "H_1_{k}", "{k}.ppm")
    (tmp_path / "v_ok" / "9.png").write_bytes(b"")  # image without GT: not a pair
    assert "i_dc" in D2NET_EXCLUDED_SEQUENCES and len(D2NET_EXCLUDED_SEQUENCES) == 8
    rows = list_hpatches_pairs(tmp_path)
    assert [r["scene"] for r in rows] == ["i_dc"] * 3 + ["i_ok"] * 3 + ["v_ok"] * 3
    assert {r["scene"] for r in list_hpatches_pairs(tmp_path, d2net_subset=True)} == {"i_ok", "v_ok"}
    assert {r["scene"] for r in list_hpatches_pairs(tmp_path, sequences=["v_ok"])} == {"v_ok"}
    with pytest.raises(FileNotFoundError, match="nope"):
        list_hpatches_pairs(tmp_path, sequences=["nope"])
    with pytest.raises(FileNotFoundError):
        list_hpatches_pairs(tmp_path / "missing")


def test_hpatches_orders_k_numerically_and_accepts_png(tmp_path):
    make_sequence(tmp_path / "v_x", "H_1_{k}", "{k}.png", ks=[2, 10, 3])
    rows = list_hpatches_pairs(tmp_path)
    assert [r["image1"] for r in rows] == ["v_x/2.png", "v_x/3.png", "v_x/10.png"]


@pytest.mark.parametrize(
    "content, reason",
    [("1 0 0\n0 1 0\n", "expected 9 numbers"), ("1 0 0 0 1 0 0 0 x", "non-numeric"),
     ("0 0 0 0 0 0 0 0 0", "singular"), ("1 0 0 0 1 0 0 0 nan", "non-finite")],
)
def test_malformed_h_file_gives_failed_row(tmp_path, content, reason):
    make_sequence(tmp_path / "v_bad", "H_1_{k}", "{k}.ppm")
    bad = tmp_path / "v_bad" / "H_1_3"
    bad.write_text(content)
    rows = list_hpatches_pairs(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    failed = rows[1]
    assert str(bad.resolve()) in failed["error"] and reason in failed["error"]
    assert failed["pair_id"] == "v_bad/1.ppm|v_bad/3.ppm" and failed["H_0to1"] is None
    assert_valid_pairs_table(rows)
    with pytest.raises(ValueError, match="H_1_3"):
        read_homography_file(bad)


def test_missing_image_gives_failed_row(tmp_path):
    make_sequence(tmp_path / "v_gap", "H_1_{k}", "{k}.ppm")
    (tmp_path / "v_gap" / "4.ppm").unlink()
    rows = list_hpatches_pairs(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "4.ppm" in rows[2]["error"] and "H_1_4" in rows[2]["error"]


def test_oxford_layout(tmp_path):
    make_sequence(tmp_path / "boat", "H1to{k}p", "img{k}.pgm", ks=range(2, 7))
    (tmp_path / "boat" / "H1to5p").write_text("garbage")
    rows = list_oxford_pairs(tmp_path / "boat")
    assert [r["image1"] for r in rows] == [f"boat/img{k}.pgm" for k in range(2, 7)]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "ok"]
    assert "H1to5p" in rows[3]["error"]


# ----------------------------------------------------------------------------- pairs files


def test_pairs_file_good_and_malformed_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    lines = [
        "# comment",  # 1
        "",  # 2
        "a.jpg b.jpg",  # 3: no GT
        f"a.jpg c.jpg 0 0 {IDENTITY_K} {IDENTITY_K} {IDENTITY_T}",  # 4: full GT
        "a.jpg d.jpg 0",  # 5: wrong field count
        f"a.jpg e.jpg 0 0 nan 0 320 0 500 240 0 0 1 {IDENTITY_K} {IDENTITY_T}",  # 6: NaN in K0
        f"a.jpg f.jpg 0 0 {IDENTITY_K} {IDENTITY_K} 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x",  # 7: non-numeric
        f"a.jpg g.jpg 1 0 {IDENTITY_K} {IDENTITY_K} {IDENTITY_T}",  # 8: EXIF rotation
        "lonely.jpg",  # 9: one name
        f"a.jpg h.jpg 0 0 {IDENTITY_K} {IDENTITY_K} 2 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",  # 10: not rigid
        "a.jpg i.jpg 0 0",  # 11: rotations, no GT
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = read_pairs_file(path, tmp_path / "imgs")
    assert len(rows) == 9
    assert_valid_pairs_table(rows)
    status = {r["image1"] or r["pair_id"]: r["status"] for r in rows}
    assert status["b.jpg"] == "ok" and status["c.jpg"] == "ok" and status["i.jpg"] == "ok"
    no_gt, full = rows[0], rows[1]
    assert no_gt["K0"] is None and no_gt["T_0to1"] is None
    assert no_gt["path0"] == str((tmp_path / "imgs" / "a.jpg").resolve())
    assert full["K0"] == [500.0, 0, 320, 0, 500, 240, 0, 0, 1] and full["T_0to1"][15] == 1.0
    errors = {r["image1"] or r["pair_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert errors["d.jpg"].startswith(f"{path}:5:")
    assert f"{path}:6:" in errors["e.jpg"] and "K0" in errors["e.jpg"] and "non-finite" in errors["e.jpg"]
    assert f"{path}:7:" in errors["f.jpg"] and "non-numeric" in errors["f.jpg"]
    assert f"{path}:8:" in errors["g.jpg"] and "rotation" in errors["g.jpg"]
    assert f"{path}:10:" in errors["h.jpg"] and "rotation" in errors["h.jpg"]
    lonely = next(r for r in rows if r["image0"] == "lonely.jpg")
    assert lonely["status"] == "failed" and lonely["pair_id"] == f"{path}:9"
    assert all(r["K0"] is None for r in rows if r["status"] == "failed")


def test_pairs_file_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_pairs_file(tmp_path / "nope.txt", tmp_path)


def test_join_path_keeps_urls():
    assert join_path("s3://bucket/images", "a/b.jpg") == "s3://bucket/images/a/b.jpg"
    assert Path(join_path("relative/dir", "x.jpg")).is_absolute()
