"""hloc and COLMAP exports of one run, and what a reconstruction from each gives (issue 13).

    python benchmarks/export_figures.py [--run RUN_URL --images DIR] [--work DIR] [--pairs 200]

Without ``--run`` it generates the demo scene and runs ``configs/demo.yaml`` (SIFT + mutual NN +
identity refine, ``pairs.max_pairs_per_scene=--pairs``) under ``--work``. Then, for

- the hloc export with native keypoints (``--keypoints native``),
- the hloc export rebuilt from the matches, quantised at 4 px (``--keypoints matches``),
- the COLMAP database export (``--format colmap``, native keypoints for a sparse chain, verify's geometry),

it prints the inlier matches kept (exported matches / verify's inliers; for the database, whose
every unordered pair is written once, over the inliers of the pairs it writes) and the
reconstruction:
registered images, mean reprojection error (px) and 3D points. The hloc exports are
reconstructed by :func:`matchmill.pipeline.export.reconstruct_hloc_export` (hloc's
``reconstruction.main`` steps through pycolmap, including its own geometric verification), the
COLMAP database by ``pycolmap.incremental_mapping`` as it is. pycolmap's mapper is seeded but
multi-threaded, so the reconstruction figures can move slightly between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def demo_run(work: Path, pairs: int) -> tuple[str, Path]:
    """Run the demo config under ``work``; returns (run URL, image folder)."""
    import ray

    from matchmill.datasets.demo import ensure_demo_scene
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.runner import run_pipeline

    root = work / "scene"
    ensure_demo_scene(root, seed=0)
    repo = Path(__file__).resolve().parents[1]
    conf = load_config(repo / "configs" / "demo.yaml", [f"storage=file://{work / 'runs'}", f"data.root={root}",
                                                        f"pairs.max_pairs_per_scene={pairs}"])
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return run_pipeline(conf, echo=lambda _: None).run_url, root / "demo" / "images"


def figures(run_url: str, images: Path, work: Path) -> list[dict]:
    import pycolmap

    from matchmill.pipeline.export import export_colmap, export_hloc, reconstruct_hloc_export

    def rec_figures(rec) -> dict:
        if rec is None:
            return {"registered": 0, "reproj_px": None, "points3D": 0}
        return {"registered": rec.num_reg_images(), "reproj_px": round(rec.compute_mean_reprojection_error(), 3),
                "points3D": rec.num_points3D()}

    rows = []
    for source in ("native", "matches"):
        out = work / f"hloc-{source}"
        s = export_hloc(run_url, str(out), image_root=str(images), keypoints=source)
        rec = reconstruct_hloc_export(out, images, work / f"rec-{source}")
        rows.append({"export": f"hloc --keypoints {source}", "keypoints_from": s["keypoints_from"],
                     "keypoints": s["keypoints"], "matches": s["matches"], "inliers": s["input_matches"],
                     "kept": s["kept"], **rec_figures(rec)})
    s = export_colmap(run_url, str(work / "colmap"), image_root=str(images))
    sparse = work / "colmap-sparse"
    sparse.mkdir(exist_ok=True)
    database = s["database"][len("file://"):] if s["database"].startswith("file://") else s["database"]
    recs = pycolmap.incremental_mapping(database, str(images), str(sparse))
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    inliers = _inliers_of_unordered_pairs(run_url)  # the database holds a pair listed both ways once
    rows.append({"export": "colmap", "keypoints_from": s["keypoints_from"], "keypoints": s["keypoints"],
                 "matches": s["matches"], "inliers": inliers,
                 "kept": round(s["matches"] / inliers, 4) if inliers else 1.0,
                 **rec_figures(best)})
    return rows


def _inliers_of_unordered_pairs(run_url: str) -> int:
    """verify's inliers of each unordered pair's first verified row in pair_id order (what
    export_colmap writes as two-view geometry; a null flag, from a run before it, counts as verified)."""
    from matchmill.manifests.commit import read_stage

    rows = read_stage(run_url, "verify", columns=["pair_id", "image0", "image1", "num_inliers", "status",
                                                  "verified"]).to_pylist()
    seen: set[frozenset] = set()
    total = 0
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        key = frozenset((r["image0"], r["image1"]))
        if r["status"] == "failed" or r["verified"] is False or key in seen:
            continue
        seen.add(key)
        total += int(r["num_inliers"] or 0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run URL (default: run the demo)")
    parser.add_argument("--images", default=None, help="the run's image folder (with --run)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--pairs", type=int, default=200, help="demo pairs per scene (without --run)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory(prefix="matchmill-export-figures-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.run:
            if not args.images:
                parser.error("--run needs --images")
            run_url, images = args.run, Path(args.images)
        else:
            run_url, images = demo_run(work, args.pairs)
        rows = figures(run_url, images, work)
    cols = ["export", "keypoints_from", "keypoints", "matches", "inliers", "kept",
            "registered", "reproj_px", "points3D"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
