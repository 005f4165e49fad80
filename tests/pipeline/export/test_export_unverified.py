"""The exports honour verify's ``verified`` flag: an unverified pair's inliers are no two-view
geometry. hloc (inliers, the default) leaves the pair out of matches.h5 and pairs.txt;
``--all-matches`` keeps its raw matches; COLMAP keeps its row in ``matches`` (the raw-matches table)
and writes no two-view geometry. CPU, no Ray: runs built by hand as in test_export.py."""

from __future__ import annotations

import h5py
import numpy as np
import pyarrow as pa

from matchmill.manifests.commit import CommitInfo, read_stage, write_commit
from matchmill.manifests.storage import join, write_manifest
from matchmill.pipeline.export import export_colmap, export_hloc, names_to_pair

from tests.pipeline.export.test_export import A, B, C, make_sparse_run


def flag_rows(run: str, flags: dict[str, bool | None], extra: list[dict] | None = None) -> None:
    """Rewrite the run's verify stage with ``verified`` set per pair id (others: null), plus ``extra`` rows."""
    rows = read_stage(run, "verify").to_pylist()
    for r in rows:
        r["verified"] = flags.get(r["pair_id"])
    rows += extra or []
    write_manifest(pa.Table.from_pylist(rows), join(run, "verify", "part-0.parquet"), "verify")
    write_commit(run, CommitInfo("verify", "verify", "cafe", rows=len(rows), failed=0))


def test_hloc_leaves_an_unverified_pair_out_and_all_matches_keeps_it(tmp_path):
    run, _, truth = make_sparse_run(f"file://{tmp_path}/store")
    flag_rows(run, {f"{A}|{B}": True, f"{B}|{C}": False})
    out = tmp_path / "hloc"
    summary = export_hloc(run, str(out))
    assert summary["pairs"] == 1 and summary["skipped_unverified"] == 1 and summary["skipped_failed"] == 0
    assert summary["matches"] == int(truth[(A, B)][1].sum())  # A-B's inliers only
    with h5py.File(out / "matches.h5", "r") as f:
        assert names_to_pair(A, B) in f and names_to_pair(B, C) not in f
    assert (out / "pairs.txt").read_text() == f"{A} {B}\n"

    raw = export_hloc(run, str(tmp_path / "raw"), inliers_only=False)  # raw matches: hloc verifies them itself
    assert raw["pairs"] == 2 and raw["skipped_unverified"] == 0
    assert raw["input_matches"] == len(truth[(A, B)][0]) + len(truth[(B, C)][0])


def test_a_run_without_the_flag_exports_every_ok_pair(tmp_path):
    run, _, _ = make_sparse_run(f"file://{tmp_path}/store")
    flag_rows(run, {})  # null flags: a run made before verify wrote them
    summary = export_hloc(run, str(tmp_path / "hloc"))
    assert summary["pairs"] == 2 and summary["skipped_unverified"] == 0


def test_colmap_writes_no_two_view_geometry_for_an_unverified_pair(tmp_path):
    import pycolmap

    run, _, truth = make_sparse_run(f"file://{tmp_path}/store")
    flag_rows(run, {f"{A}|{B}": True, f"{B}|{C}": False})
    summary = export_colmap(run, str(tmp_path / "colmap"))
    assert summary["pairs"] == 1 and summary["unverified"] == 1
    assert summary["matches"] == int(truth[(A, B)][1].sum())
    db = pycolmap.Database.open(summary["database"])
    try:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        a, b, c = (ids[n.split("/", 1)[1]] for n in (A, B, C))
        assert db.exists_two_view_geometry(a, b) and not db.exists_two_view_geometry(b, c)
        assert db.num_verified_image_pairs() == 1
        assert db.exists_matches(b, c)  # the raw-matches table keeps it, as COLMAP's matcher does
        assert len(db.read_matches(b, c)) == int(truth[(B, C)][1].sum())
    finally:
        db.close()


def test_colmap_takes_the_verified_listing_of_a_pair_listed_both_ways(tmp_path):
    import pycolmap

    run, _, truth = make_sparse_run(f"file://{tmp_path}/store")
    ab = read_stage(run, "verify").to_pylist()[0]
    assert ab["pair_id"] == f"{A}|{B}"
    m = np.asarray(ab["matches"], np.float32).reshape(-1, 4)
    reverse = {**ab, "pair_id": f"{B}|{A}", "image0": B, "image1": A, "path0": ab["path1"], "path1": ab["path0"],
               "matches": np.c_[m[:, 2:], m[:, :2]].tolist(), "verified": True}
    flag_rows(run, {f"{A}|{B}": False, f"{B}|{C}": True}, extra=[reverse])  # A|B sorts first but is unverified
    summary = export_colmap(run, str(tmp_path / "colmap"))
    assert summary["pairs"] == 2 and summary["unverified"] == 0
    db = pycolmap.Database.open(summary["database"])
    try:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        a, b = ids[A.split("/", 1)[1]], ids[B.split("/", 1)[1]]
        assert len(db.read_two_view_geometry(a, b).inlier_matches) == int(truth[(A, B)][1].sum())
    finally:
        db.close()
