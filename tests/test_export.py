"""hloc export of a committed verify stage: layout, quantisation, filters and errors (CPU, no Ray)."""

from __future__ import annotations

import uuid

import fsspec
import h5py
import numpy as np
import pyarrow as pa
import pytest

from matchmill.manifests import schemas
from matchmill.manifests.commit import CommitInfo, write_commit
from matchmill.manifests.storage import join, write_manifest
from matchmill.pipeline.export import ExportError, export_hloc, names_to_pair

A, B, C = "scene/A.jpg", "scene/B.jpg", "scene/C.jpg"

# pair A-B: three inliers and one outlier; B points at (100, 100) and (200, 150) are shared
P1 = [
    ((10.0, 10.0), (100.0, 100.0), 0.9, True),
    ((50.0, 60.0), (200.0, 150.0), 0.8, True),
    ((300.0, 200.0), (20.0, 220.0), 0.7, True),
    ((5.0, 5.0), (400.0, 300.0), 0.95, False),
]
# pair B-C: its B points lie < 4 px from P1's, plus one B point of its own
P2 = [
    ((101.5, 99.0), (30.0, 40.0), 0.6, True),
    ((201.0, 151.5), (130.0, 90.0), 0.5, True),
    ((250.0, 50.0), (310.0, 60.0), 0.4, True),
]


def verified_row(image0: str, image1: str, matches: list | None, status: str = "ok") -> dict:
    """One VERIFIED row; ``matches`` is a list of ((x0, y0), (x1, y1), score, inlier)."""
    row = {
        "pair_id": schemas.make_pair_id(image0, image1),
        "scene": "scene",
        "image0": image0,
        "image1": image1,
        "path0": f"/data/{image0}",
        "path1": f"/data/{image1}",
        "status": status,
        "error": None if status == "ok" else "boom",
    }
    if matches is not None:
        row.update(
            num_matches=len(matches),
            matches=[v for p0, p1, _, _ in matches for v in (*p0, *p1)],
            scores=[s for _, _, s, _ in matches],
            inliers=[i for _, _, _, i in matches],
            num_inliers=sum(i for _, _, _, i in matches),
            model="fundamental",
        )
    return row


def make_run(base: str, commit: bool = True) -> str:
    """A run with a verify stage in two parts: A-B, B-C ok and a failed A-C."""
    run = join(base, "run")
    rows = [verified_row(A, B, P1), verified_row(B, C, P2), verified_row(A, C, None, status="failed")]
    write_manifest(pa.Table.from_pylist(rows[:2]), join(run, "verify", "part-0.parquet"), "verify")
    write_manifest(pa.Table.from_pylist(rows[2:]), join(run, "verify", "part-1.parquet"), "verify")
    if commit:
        write_commit(run, CommitInfo("verify", "verify", "cafe", rows=3, failed=1))
    return run


# --- readers written the way hloc's utils/io.py reads its files ------------------------------


def get_keypoints(path, name: str) -> np.ndarray:
    with h5py.File(str(path), "r", libver="latest") as hfile:
        return hfile[name]["keypoints"].__array__()


def get_matches(path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair = names_to_pair(name0, name1)
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    return np.stack([idx, matches[idx]], -1), scores[idx]


# --- tests -------------------------------------------------------------------------------------


def test_names_to_pair_is_hlocs():
    assert names_to_pair("db/1.jpg", "query/day/2.jpg") == "db-1.jpg/query-day-2.jpg"


def test_quantized_export_shares_keypoints_across_pairs(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    out = tmp_path / "hloc"
    summary = export_hloc(run, str(out))
    assert summary == {"pairs": 2, "skipped_failed": 1, "images": 3, "keypoints": 3 + 4 + 3, "matches": 6}

    kp_b = get_keypoints(out / "keypoints.h5", B)
    assert kp_b.dtype == np.float32 and kp_b.shape == (4, 2)  # 2 merged + 1 from A-B + 1 from B-C
    m_ab, s_ab = get_matches(out / "matches.h5", A, B)
    m_bc, s_bc = get_matches(out / "matches.h5", B, C)
    assert len(m_ab) == 3 and len(m_bc) == 3  # the outlier is gone
    kp_a = get_keypoints(out / "keypoints.h5", A)
    # the B keypoints of A-B's first two matches are the B keypoints of B-C's first two
    b_of_ab = {tuple(kp_a[i]): j for i, j in m_ab}
    shared = [b_of_ab[(10.0, 10.0)], b_of_ab[(50.0, 60.0)]]
    assert set(shared) <= set(m_bc[:, 0].tolist())
    # merged keypoint = mean of its members, in the manifest's (OpenCV) convention
    np.testing.assert_allclose(kp_b[shared[0]], [(100 + 101.5) / 2, (100 + 99) / 2], atol=1e-5)
    np.testing.assert_allclose(kp_b[shared[1]], [(200 + 201) / 2, (150 + 151.5) / 2], atol=1e-5)
    np.testing.assert_allclose(sorted(s_ab.tolist()), [0.7, 0.8, 0.9], atol=1e-3)
    assert s_ab.dtype == np.float16


def test_h5_layout_is_hlocs(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    out = tmp_path / "hloc"
    export_hloc(run, str(out))
    with h5py.File(out / "keypoints.h5", "r") as f:
        assert sorted(f["scene"].keys()) == ["A.jpg", "B.jpg", "C.jpg"]  # '/' in names nests groups
        assert f.attrs["pixel_convention"].startswith("opencv")
        assert f[B]["keypoints"].attrs["pixel_offset"] == 0.0
        k_a = len(f[A]["keypoints"])
    with h5py.File(out / "matches.h5", "r") as f:
        assert sorted(f.keys()) == ["scene-A.jpg", "scene-B.jpg"]  # failed A-C is absent
        assert list(f["scene-A.jpg"].keys()) == ["scene-B.jpg"]
        grp = f[names_to_pair(A, B)]
        assert set(grp.keys()) == {"matches0", "matching_scores0"}
        m0 = grp["matches0"][()]
        assert m0.dtype == np.int32 and m0.shape == (k_a,)
        assert grp["matching_scores0"].dtype == np.float16
        assert set(np.unique(m0[m0 < 0])) <= {-1}
        assert names_to_pair(A, C) not in f


def test_unquantized_export_has_distinct_keypoints_per_pair(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    out = tmp_path / "raw"
    summary = export_hloc(run, str(out), quantize=False)
    assert summary["keypoints"] == 2 * 6 and summary["matches"] == 6
    kp_b = get_keypoints(out / "keypoints.h5", B)
    assert kp_b.shape == (6, 2)  # 3 from A-B then 3 from B-C, appended
    np.testing.assert_array_equal(kp_b[:3], [[100, 100], [200, 150], [20, 220]])
    m_ab, _ = get_matches(out / "matches.h5", A, B)
    m_bc, _ = get_matches(out / "matches.h5", B, C)
    assert m_ab.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert m_bc.tolist() == [[3, 0], [4, 1], [5, 2]]
    assert not set(m_ab[:, 1].tolist()) & set(m_bc[:, 0].tolist())


def test_inliers_only_and_min_score(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    everything = export_hloc(run, str(tmp_path / "all"), inliers_only=False)
    assert everything["matches"] == 7
    m_ab, s_ab = get_matches(tmp_path / "all" / "matches.h5", A, B)
    kp_b = get_keypoints(tmp_path / "all" / "keypoints.h5", B)
    assert [400.0, 300.0] in kp_b[m_ab[:, 1]].tolist()  # the outlier is exported
    strict = export_hloc(run, str(tmp_path / "strict"), min_score=0.75)
    assert strict["matches"] == 2 and strict["pairs"] == 2  # B-C keeps its group, with no match
    m_bc, _ = get_matches(tmp_path / "strict" / "matches.h5", B, C)
    assert len(m_bc) == 0


def test_colmap_coordinates_add_half_a_pixel(tmp_path):
    run = make_run(f"file://{tmp_path}/store")
    export_hloc(run, str(tmp_path / "h"), quantize=False)
    export_hloc(run, str(tmp_path / "c"), quantize=False, coordinates="colmap")
    kp_h = get_keypoints(tmp_path / "h" / "keypoints.h5", A)
    kp_c = get_keypoints(tmp_path / "c" / "keypoints.h5", A)
    np.testing.assert_allclose(kp_c, kp_h + 0.5)
    with h5py.File(tmp_path / "c" / "keypoints.h5", "r") as f:
        assert f.attrs["pixel_convention"].startswith("colmap") and f.attrs["pixel_offset"] == 0.5


def test_remote_run_and_output(tmp_path):
    base = f"memory://mm-export-{uuid.uuid4().hex}"
    run = make_run(base)
    out = join(base, "export")
    summary = export_hloc(run, out)
    assert summary["pairs"] == 2
    fs = fsspec.filesystem("memory")
    for name in ("keypoints.h5", "matches.h5"):
        fs.get(f"{out}/{name}", str(tmp_path / name))
    assert get_keypoints(tmp_path / "keypoints.h5", B).shape == (4, 2)
    assert len(get_matches(tmp_path / "matches.h5", B, C)[0]) == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out, detail=False)) == ["keypoints.h5", "matches.h5", "pairs.txt"]


def test_uncommitted_stage_is_a_clear_error(tmp_path):
    run = make_run(f"file://{tmp_path}/store", commit=False)
    with pytest.raises(ExportError) as err:
        export_hloc(run, str(tmp_path / "out"))
    message = str(err.value)
    assert "'verify'" in message and run in message and "not committed" in message
    assert not (tmp_path / "out" / "matches.h5").exists()

    empty = f"file://{tmp_path}/empty-run"
    with pytest.raises(ExportError, match="'verify'.*empty-run"):
        export_hloc(empty, str(tmp_path / "out"))


def test_stage_without_inlier_flags_needs_all_matches(tmp_path):
    with pytest.raises(ExportError, match="inliers_only=False"):
        export_hloc(f"file://{tmp_path}/run", str(tmp_path / "out"), stage="refine")
    with pytest.raises(ExportError, match="no per-pair matches"):
        export_hloc(f"file://{tmp_path}/run", str(tmp_path / "out"), stage="images")
