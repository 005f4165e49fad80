"""What the hloc and COLMAP exports share: reading a run's verified matches and naming its images.

:func:`load_pairs` reads the needed columns of a committed stage (checked against its commit
marker), skips failed rows, keeps verify's inliers (``inliers_only``) above ``min_score`` and
returns the pairs in ``pair_id`` order as :class:`ExportPair` (unverified pairs -- fewer than
``verify.min_inliers`` inliers -- left out unless asked for); :func:`image_name_map` /
:func:`image_names` give each image its exported name (its id, or its path relative to an image
root) and :func:`check_export_names` refuses names an export cannot hold, before anything is
written. Image sizes come from :func:`matchmill.manifests.commit.image_sizes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from matchmill.manifests.columns import matches_rows
from matchmill.manifests.commit import COMMIT_MARKER, part_files, read_commit, read_stage, stage_url
from matchmill.manifests.schemas import MANIFESTS, SCHEMA_VERSION, STATUS_FAILED
from matchmill.manifests.storage import ManifestError

from ..graph import get_stage

__all__ = ["ExportError", "ExportPair", "names_to_pair", "load_pairs", "check_export_names", "image_name_map",
           "image_names", "KEYPOINTS_FILE", "MATCHES_FILE", "PAIRS_FILE"]

KEYPOINTS_FILE = "keypoints.h5"
MATCHES_FILE = "matches.h5"
PAIRS_FILE = "pairs.txt"


class ExportError(ManifestError):
    """The run or the arguments do not allow the export (missing or uncommitted stage, ...)."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's matches.h5 key of a pair: ``name0`` and ``name1`` with '/' -> '-', joined by '/'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


@dataclass
class ExportPair:
    """One exported pair: its key, images and filtered (N, 4) matches with (N,) scores; ``verified``
    is the verify row's flag (True for a stage without one)."""

    pair_id: str
    image0: str
    image1: str
    matches: np.ndarray
    scores: np.ndarray
    verified: bool = True


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def image_names(paths: dict[str, str], image_root: str | None) -> tuple[str, dict[str, str]]:
    """``(root, {image_id: name relative to root})``; ValueError when an image is outside ``root``."""
    local = {k: os.path.abspath(_local_path(v)) for k, v in paths.items()}
    root = os.path.abspath(image_root) if image_root else os.path.commonpath([os.path.dirname(p) for p in local.values()])
    names = {}
    for image_id, p in local.items():
        rel = os.path.relpath(p, root)
        if rel.startswith(".."):
            raise ExportError(f"image {image_id!r} ({p}) is not under the image root {root}")
        names[image_id] = rel.replace(os.sep, "/")
    return root, names


def check_export_names(pairs: list[ExportPair], names: dict[str, str], pairs_txt: bool) -> None:
    """ExportError, before anything is written, when an exported name cannot be one: it holds
    whitespace (``pairs.txt`` is whitespace separated; ``pairs_txt``), is empty, or two images get
    one name (``./a.jpg`` and ``a.jpg`` in a run made before ids were normalised; two files
    under ``--image-root`` resolving alike): hloc's groups and COLMAP's image names are unique."""
    for p in pairs if pairs_txt else ():
        for image in (p.image0, p.image1):
            name = names[image]
            if not name or any(c.isspace() for c in name):
                raise ExportError(f"pair {p.pair_id!r}: image name {name!r} contains whitespace (or is empty); "
                                  "pairs.txt cannot hold it")
    by_name: dict[str, str] = {}
    for image in sorted(names):
        key = "/".join(part for part in names[image].split("/") if part not in ("", "."))  # as h5py resolves it
        if key in by_name:
            raise ExportError(f"images {by_name[key]!r} and {image!r} would both be exported as {names[image]!r}; "
                              "an export holds each image once (rerun the pairs stage: ids are normalised now)")
        by_name[key] = image


def image_name_map(run_url: str, stage: str, pairs: list[ExportPair], image_root: str | None) -> dict[str, str]:
    """``{image id: exported name}`` of every image of ``pairs``: the id itself without
    ``image_root``, else the image's path relative to ``image_root``."""
    used = {p.image0 for p in pairs} | {p.image1 for p in pairs}
    if image_root is None:
        return {i: i for i in used}
    rows = read_stage(run_url, stage, columns=["image0", "image1", "path0", "path1"]).to_pylist()
    paths = {}
    for r in rows:
        paths.setdefault(r["image0"], r["path0"])
        paths.setdefault(r["image1"], r["path1"])
    _, names = image_names({k: paths[k] for k in used}, image_root)
    return names


def load_pairs(run_url: str, stage: str, inliers_only: bool, min_score: float,
               verified_only: bool | None = None) -> tuple[list[ExportPair], int, int]:
    """Read the needed columns of a committed stage; filter matches; skip failed rows.

    ``verified_only`` (default: ``inliers_only``) also skips the rows whose ``verified`` flag is
    false (a row without the flag, from a run made before it, counts as verified): their
    inliers are no two-view geometry. Returns ``(pairs, failed rows skipped, unverified rows
    skipped)``."""
    verified_only = inliers_only if verified_only is None else verified_only
    try:
        spec = get_stage(stage)
    except KeyError as exc:
        raise ExportError(str(exc.args[0])) from exc
    schema = MANIFESTS[spec.manifest][0]
    if "matches" not in schema.names:
        raise ExportError(f"stage {stage!r} ({spec.manifest} manifest) holds no per-pair matches; export 'verify'")
    if inliers_only and "inliers" not in schema.names:
        raise ExportError(
            f"stage {stage!r} has no inlier flags; export 'verify' or pass inliers_only=False (--all-matches)"
        )

    commit = read_commit(run_url, stage)
    if commit is None:
        parts = part_files(run_url, stage)
        state = f"{len(parts)} part file(s) of an unfinished attempt" if parts else "nothing written yet"
        raise ExportError(
            f"stage {stage!r} of run {run_url} is not committed "
            f"(no {COMMIT_MARKER} under {stage_url(run_url, stage)}; {state}); run the stage to completion first"
        )
    if commit.schema_version != SCHEMA_VERSION:
        raise ExportError(
            f"stage {stage!r} of run {run_url} was committed with schema version {commit.schema_version}, "
            f"this code reads version {SCHEMA_VERSION}; rerun the stage"
        )

    columns = ["pair_id", "image0", "image1", "status", "matches", "scores"] + (["inliers"] if inliers_only else [])
    columns += ["verified"] if "verified" in schema.names else []
    table = read_stage(run_url, stage, spec.manifest, columns=columns)
    if table.num_rows != commit.rows:
        raise ExportError(
            f"stage {stage!r} of run {run_url} has {table.num_rows} rows but its commit marker says {commit.rows}; "
            "it changed after the commit (a rerun in progress?)"
        )

    status = table.column("status").to_pylist()
    ok = [i for i, s in enumerate(status) if s != STATUS_FAILED]
    skipped_failed = len(status) - len(ok)
    table = table.take(ok)
    order = np.argsort(np.asarray(table.column("pair_id").to_pylist(), dtype=object), kind="stable")
    table = table.take(order)

    pairs: list[ExportPair] = []
    skipped_unverified = 0
    seen: dict[str, str] = {}
    cols = {name: table.column(name).to_pylist() for name in columns if name not in ("status", "matches")}
    matches_col = matches_rows(table.column("matches"))
    for r in range(table.num_rows):
        pair_id, image0, image1 = cols["pair_id"][r], cols["image0"][r], cols["image1"][r]
        key = names_to_pair(image0, image1)
        if key in seen:
            raise ExportError(
                f"stage {stage!r} of run {run_url}: pairs {seen[key]!r} and {pair_id!r} map to the same "
                f"hloc key {key!r} (duplicate pair, or image ids differing only in '/' vs '-')"
            )
        seen[key] = pair_id
        verified = cols["verified"][r] is not False if "verified" in cols else True  # null: a run before the flag
        if verified_only and not verified:
            skipped_unverified += 1
            continue
        matches = np.zeros((0, 4)) if matches_col[r] is None else np.asarray(matches_col[r], np.float64)
        n = len(matches)
        raw_scores = cols["scores"][r]
        scores = np.ones(n) if raw_scores is None else np.asarray(raw_scores, np.float64)
        if scores.shape != (n,):
            raise ExportError(f"pair {pair_id!r}: {len(scores)} scores for {n} matches")
        keep = np.ones(n, dtype=bool)
        if inliers_only:
            flags = cols["inliers"][r]
            if flags is None:
                keep[:] = False  # not verified: no inliers
            else:
                flags = np.asarray(flags, dtype=bool)
                if flags.shape != (n,):
                    raise ExportError(f"pair {pair_id!r}: {len(flags)} inlier flags for {n} matches")
                keep &= flags
        keep &= scores >= min_score
        matches, scores = matches[keep], scores[keep]
        if not (np.isfinite(matches).all() and np.isfinite(scores).all()):
            raise ExportError(f"pair {pair_id!r}: non-finite match coordinates or scores")
        pairs.append(ExportPair(pair_id, image0, image1, matches, scores, verified))
    return pairs, skipped_failed, skipped_unverified
