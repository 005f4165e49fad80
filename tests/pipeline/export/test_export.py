"""hloc export of a committed verify stage: layout, quantisation, filters and errors (CPU, no Ray)."""

from __future__ import annotations

import uuid

import fsspec
import h5py
import numpy as np
import pyarrow as pa
import pytest

from matchmill.manifests import schemas
from matchmill.manifests.artifacts import artifact_url, write_artifact
from matchmill.manifests.commit import CommitInfo, write_commit
from matchmill.manifests.storage import join, write_manifest
from matchmill.pipeline.export import ExportError, export_hloc, names_to_pair
from matchmill.pipeline.export.native import _KeyIndex, recover_indices

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
    assert summary == {"pairs": 2, "skipped_failed": 1, "skipped_unverified": 0, "images": 3, "keypoints": 3 + 4 + 3, "matches": 6,
                       "keypoints_from": "quantized", "input_matches": 6, "kept": 1.0,
                       "note": "the run has no committed extract stage"}

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
    np.testing.assert_allclose(sorted(s_ab.tolist()), [0.7, 0.8, 0.9], atol=1e-7)
    assert s_ab.dtype == np.float32  # hloc writes float16; float32 keeps the run's scores exactly


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
        assert grp["matching_scores0"].dtype == np.float32
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
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out, detail=False)) == [
        "export.json", "keypoints.h5", "matches.h5", "pairs.txt"]  # the marker, put last


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


# --- native keypoints (sparse chains) ------------------------------------------------------------

def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def sparse_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """A SIFT-like artifact: (n, 2) keypoints whose first two share their (x, y) (two orientations
    of one detection), (n, 8) non-negative unit descriptors (so similarities are >= 0, as with
    RootSIFT, and pass ``min_score=0``), (n,) scores."""
    kp = rng.uniform(0, 300, size=(n, 2)).astype(np.float32)
    kp[1] = kp[0]
    return {"keypoints": kp, "descriptors": unit(np.abs(rng.normal(size=(n, 8)))),
            "scores": rng.uniform(0.01, 0.1, n).astype(np.float32), "scales": np.ones(n, np.float32),
            "image_size": np.array([320, 240], np.int64), "scale": np.array([1.0, 1.0])}


def make_sparse_run(base: str, move: float = 0.0, dense: bool = False) -> tuple[str, dict, dict]:
    """A run with a committed extract stage (real artifacts) and a verify stage whose matches are
    mutual-NN-like keypoint pairs (score = descriptor similarity), as ``sift`` + ``mnn`` +
    ``identity`` writes them. ``move`` shifts one end point of pair B-C (what a refiner does);
    ``dense`` stores no keypoints (what a dense extractor does). Returns the run, the features and
    the (M, 2) true index pairs of each pair with their inlier flags."""
    rng = np.random.default_rng(0)
    run = join(base, "run")
    feats = {A: sparse_features(rng, 12), B: sparse_features(rng, 10), C: sparse_features(rng, 9)}
    rows = []
    for image, f in feats.items():
        url = artifact_url(run, "e" * 12, image)
        write_artifact(url, {k: v for k, v in f.items() if not (dense and k in ("keypoints", "descriptors", "scores"))})
        rows.append({"image_id": image, "method": "pump" if dense else "sift", "width": 320, "height": 240,
                     "num_keypoints": 0 if dense else len(f["keypoints"]), "artifact_uri": url, "seconds": 0.0,
                     "status": "ok", "error": None})
    write_manifest(pa.Table.from_pylist(rows), join(run, "extract", "part-0.parquet"), "extract")
    write_commit(run, CommitInfo("extract", "extract", "e" * 12, rows=3, failed=0))
    # A-B uses both coincident keypoints of A (indices 0 and 1) and B's 0 / 1; B-C has one outlier
    truth = {(A, B): (np.array([[0, 1], [1, 0], [2, 5], [7, 3], [4, 4]]), np.array([1, 1, 1, 1, 0], bool)),
             (B, C): (np.array([[0, 2], [3, 3], [6, 8], [9, 1]]), np.array([1, 1, 1, 0], bool))}
    verified = []
    for (i0, i1), (ids, inl) in truth.items():
        f0, f1 = feats[i0], feats[i1]
        xy = np.concatenate([f0["keypoints"][ids[:, 0]], f1["keypoints"][ids[:, 1]]], axis=1).astype(np.float64)
        if move and i0 == B:
            xy[1, 2] += move
        sims = (f0["descriptors"][ids[:, 0]] * f1["descriptors"][ids[:, 1]]).sum(1)
        verified.append(verified_row(i0, i1, [((m[0], m[1]), (m[2], m[3]), float(s), bool(k))
                                              for m, s, k in zip(xy, sims, inl)]))
    write_manifest(pa.Table.from_pylist(verified), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=2, failed=0))
    return run, feats, truth


def test_sparse_chain_exports_native_keypoints_losslessly(tmp_path):
    run, feats, truth = make_sparse_run(f"file://{tmp_path}/store")
    out = tmp_path / "hloc"
    summary = export_hloc(run, str(out))
    assert summary["keypoints_from"] == "native" and summary["note"] == ""
    assert summary["matches"] == summary["input_matches"] == 4 + 3 and summary["kept"] == 1.0
    assert summary["keypoints"] == 12 + 10 + 9
    with h5py.File(out / "keypoints.h5", "r") as f:
        for image, ft in feats.items():
            grp = f[image]
            np.testing.assert_array_equal(grp["keypoints"][()], ft["keypoints"])  # stored order, bit for bit
            assert grp["keypoints"].dtype == np.float32
            np.testing.assert_array_equal(grp["scores"][()], ft["scores"])
            assert grp["descriptors"].shape == (8, len(ft["keypoints"]))  # hloc's (D, N)
            np.testing.assert_array_equal(grp["descriptors"][()], ft["descriptors"].T)
            assert grp["image_size"][()].tolist() == [320, 240]
        assert f.attrs["keypoints_from"] == "native"
    for (i0, i1), (ids, inl) in truth.items():
        m, s = get_matches(out / "matches.h5", i0, i1)
        # every inlier, with the matcher's own indices: the coincident keypoints A0 / A1 are told
        # apart by the descriptor similarity that is the match's score
        assert sorted(map(tuple, m.tolist())) == sorted(map(tuple, ids[inl].tolist()))
        sims = (feats[i0]["descriptors"][m[:, 0]] * feats[i1]["descriptors"][m[:, 1]]).sum(1)
        np.testing.assert_allclose(s, sims, atol=1e-6)


def test_moved_points_fall_back_to_quantisation(tmp_path):
    """A refiner that moves a point by a quarter pixel makes the chain not sparse-lossless: the
    export rebuilds keypoints from the matches and merges them at 4 px, and says why."""
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store", move=0.25)
    summary = export_hloc(run, str(tmp_path / "auto"))
    assert summary["keypoints_from"] == "quantized"
    assert "1 of 14 match end points (1 of 2 pairs) are not stored keypoints" in summary["note"]
    assert "refine" in summary["note"]
    with h5py.File(tmp_path / "auto" / "keypoints.h5", "r") as f:
        kp_a = f[A]["keypoints"][()]
        assert "descriptors" not in f[A] and f.attrs["keypoints_from"] == "quantized" and f.attrs["radius"] == 4.0
    # A's matched keypoints 0 and 1 coincide: quantisation merges them into one keypoint, so one of
    # the two A-B matches that use them is lost (and A has 3 keypoints, not its 12 native ones)
    assert len(kp_a) == 3 and summary["matches"] == 6 and summary["kept"] == round(6 / 7, 4)
    with pytest.raises(ExportError, match="no native keypoints: 1 of 14 match end points"):
        export_hloc(run, str(tmp_path / "native"), keypoints="native")


def test_export_command_says_which_keypoints_it_wrote(tmp_path, capsys):
    from matchmill.cli import main

    run, _, _ = make_sparse_run(f"file://{tmp_path}/store", move=0.25)
    assert main(["export", run, str(tmp_path / "q")]) == 0
    line, why = capsys.readouterr().out.splitlines()
    assert "keypoints_from=quantized" in line.split() and "kept=0.8571" in line.split() and "note" not in line
    assert why.startswith("keypoints: rebuilt from the matches (quantised at 4 px), 6 of 7 matches kept (1 of 14 ")
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store2")
    assert main(["export", run, str(tmp_path / "n"), "--keypoints", "native"]) == 0
    line, why = capsys.readouterr().out.splitlines()
    assert "keypoints_from=native" in line.split() and "kept=1.0" in line.split()
    assert why == "keypoints: native (the extract stage's), 7 of 7 matches kept"


def test_dense_chain_is_quantised(tmp_path):
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store", dense=True)
    summary = export_hloc(run, str(tmp_path / "out"))
    assert summary["keypoints_from"] == "quantized"
    assert summary["note"] == "extract method 'pump' stores no keypoints (dense chain)"
    with h5py.File(tmp_path / "out" / "keypoints.h5", "r") as f:
        assert f[A]["image_size"][()].tolist() == [320, 240]  # from the extract manifest
    raw = export_hloc(run, str(tmp_path / "raw"), quantize=False)
    assert raw["keypoints_from"] == "per-pair" and raw["kept"] == 1.0


def test_native_and_matches_paths_can_be_forced(tmp_path):
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store")
    forced = export_hloc(run, str(tmp_path / "m"), keypoints="matches")
    assert forced["keypoints_from"] == "quantized" and forced["note"] == "keypoints=matches was asked for"
    assert export_hloc(run, str(tmp_path / "n"), keypoints="native")["keypoints_from"] == "native"
    with pytest.raises(ExportError, match="keypoints must be one of"):
        export_hloc(run, str(tmp_path / "x"), keypoints="dense")
    with pytest.raises(ExportError, match="no committed extract stage"):
        export_hloc(make_run(f"file://{tmp_path}/plain"), str(tmp_path / "y"), keypoints="native")


def test_native_colmap_coordinates_and_image_root(tmp_path):
    run, feats, _ = make_sparse_run(f"file://{tmp_path}/store")
    export_hloc(run, str(tmp_path / "c"), coordinates="colmap", image_root="/data/scene")
    with h5py.File(tmp_path / "c" / "keypoints.h5", "r") as f:
        assert sorted(f.keys()) == ["A.jpg", "B.jpg", "C.jpg"]
        np.testing.assert_allclose(f["A.jpg"]["keypoints"][()], feats[A]["keypoints"] + 0.5)
        assert f["A.jpg"]["keypoints"].attrs["pixel_offset"] == 0.5
    assert (tmp_path / "c" / "pairs.txt").read_text().split() == ["A.jpg", "B.jpg", "B.jpg", "C.jpg"]
    m, _ = get_matches(tmp_path / "c" / "matches.h5", "A.jpg", "B.jpg")
    assert len(m) == 4


def test_recover_indices_keeps_one_match_per_image0_keypoint():
    """matches0 holds one match per image-0 keypoint: a matcher that is not one-to-one loses its
    weaker duplicates, reported by ``kept``; coincident keypoints without descriptors are
    assigned in index order, each once."""
    kp0 = np.array([[1, 1], [1, 1], [5, 5]], np.float32)
    kp1 = np.array([[2, 2], [3, 3], [4, 4], [-0.0, 7]], np.float32)
    matches = np.array([[5, 5, 2, 2], [5, 5, 3, 3], [1, 1, 4, 4], [1, 1, 0, 7], [1, 1, 3, 3]], np.float64)
    scores = np.array([0.2, 0.9, 0.5, 0.5, 0.1])
    ids, kept = recover_indices(_KeyIndex.of(kp0), _KeyIndex.of(kp1), matches, scores, descriptors=(None, None))
    assert kept.tolist() == [False, True, True, True, False]  # 5,5 twice: the better score wins
    assert ids[kept].tolist() == [[2, 1], [0, 2], [1, 3]]  # -0.0 finds 0.0; (1, 1) -> 0, then 1
    with pytest.raises(ValueError, match="not a stored keypoint"):
        recover_indices(_KeyIndex.of(kp0), _KeyIndex.of(kp1), matches + 0.5, scores)


def test_hloc_reconstruction_reads_the_pixel_offset(tmp_path):
    """The pycolmap reconstruction of an export shifts hloc-convention keypoints by +0.5 (as hloc's
    import_features does) and leaves a coordinates="colmap" file (already +0.5) as it is."""
    from matchmill.pipeline.export.reconstruction import _walk_keypoints

    run = make_run(f"file://{tmp_path}/store")
    export_hloc(run, str(tmp_path / "h"), quantize=False)
    export_hloc(run, str(tmp_path / "c"), quantize=False, coordinates="colmap")
    with h5py.File(tmp_path / "h" / "keypoints.h5", "r") as fh, h5py.File(tmp_path / "c" / "keypoints.h5", "r") as fc:
        h, c = _walk_keypoints(fh), _walk_keypoints(fc)
        np.testing.assert_allclose(h[A], fh[A]["keypoints"][()] + 0.5)
    assert sorted(h) == sorted(c) == [A, B, C]
    for name in h:
        np.testing.assert_allclose(h[name], c[name])
