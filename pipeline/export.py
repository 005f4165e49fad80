"""Export a run's matches in hloc's HDF5 layout (``keypoints.h5`` + ``matches.h5``).

The two files can be passed straight to hloc's ``triangulation.main`` /
``reconstruction.main`` / ``localize_sfm`` as ``features=`` and ``matches=`` (hloc only needs
``keypoints`` from the features file), or read with hloc's ``utils.io.get_keypoints`` and
``get_matches``.

Layout (hloc's, see ``specs/anchors.md`` A1):

``keypoints.h5``
    one group per image id (an id containing ``/`` becomes nested groups, as in hloc), holding
    a ``keypoints`` dataset, float32 (K, 2), x then y. Every image of an exported pair has a
    group, possibly with K = 0.
``matches.h5``
    one group per exported pair at :func:`names_to_pair` ``(image0, image1)``, i.e.
    ``image0.replace('/', '-') + '/' + image1.replace('/', '-')``, holding ``matches0`` int32
    (K0,) -- for keypoint i of image0 the index of its match in image1's keypoints, -1 when
    unmatched -- and ``matching_scores0`` float16 (K0,), 0 where unmatched. Pairs are stored in
    the manifest's (image0, image1) order; hloc's ``find_pair`` also finds them reversed.

Pixel convention. Manifests hold original-image pixels with the top-left pixel centre at (0, 0)
(OpenCV). hloc's feature files use that same convention: hloc's own extractors rescale with
``(kp + 0.5) * scale - 0.5`` and hloc adds the +0.5 COLMAP origin shift *itself* when it hands
keypoints to COLMAP (``triangulation.import_features``: ``keypoints += 0.5  # COLMAP origin``;
``localize_sfm``: ``mkpq += 0.5``). Writing already-shifted keypoints into a file that hloc reads
would therefore shift them twice. So the default, ``coordinates="hloc"``, writes the manifest
coordinates unchanged; ``coordinates="colmap"`` adds 0.5 for consumers that copy keypoints into
a COLMAP database directly, without hloc. The choice is recorded as the attribute
``pixel_convention`` on the root of ``keypoints.h5`` and on every ``keypoints`` dataset
(``"opencv: pixel centre at integer coordinates (hloc)"`` or
``"colmap: pixel centre at integer + 0.5"``), together with ``pixel_offset`` (0.0 or 0.5).

Keypoints. With ``quantize=True`` the keypoints of one image coming from different pairs are
merged by :func:`matchmill.geometry.quantize.quantize_matches` (points closer than ``radius`` px
become one keypoint at their mean; per pair the id matches are made one-to-one), so pairs
share keypoint ids -- what COLMAP triangulation needs to build tracks longer than two views.
With ``quantize=False`` every match of every pair gets its own two keypoints, appended per image
in pair order; nothing is merged, so no track spans more than one pair.

Determinism: pairs are processed in ``pair_id`` order (quantisation depends on the order), so
the output does not depend on how the stage was split into part files.

Memory: everything (the needed columns of the stage, the keypoint tables) is held in memory,
i.e. proportional to the stage's matches plus the output keypoints. Each pair's ``matches0``
vector is built only while it is written. Note that with ``quantize=False`` the matches file
itself grows as the sum over pairs of K(image0), which is quadratic in the pairs per image;
large ``matches0`` vectors are gzip-compressed (hloc/h5py read them transparently).

Files are written as a whole (an existing file is replaced, never appended to), under a
temporary name and renamed, so a crash never leaves a truncated h5 at the final path. h5py
needs a local file: for a remote ``out`` (``s3://``, ``gs://``, ``memory://``, ...) the files are
written to a local temporary folder and uploaded with fsspec.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from matchmill.geometry.quantize import quantize_matches
from matchmill.manifests.commit import COMMIT_MARKER, part_files, read_commit, read_stage, stage_url
from matchmill.manifests.schemas import MANIFESTS, SCHEMA_VERSION, STATUS_FAILED
from matchmill.manifests.storage import ManifestError, is_local, url_to_fs

from .graph import get_stage

__all__ = ["ExportError", "export_hloc", "names_to_pair", "KEYPOINTS_FILE", "MATCHES_FILE"]

KEYPOINTS_FILE = "keypoints.h5"
MATCHES_FILE = "matches.h5"
PAIRS_FILE = "pairs.txt"

#: ``coordinates`` value -> (offset added to manifest pixels, attribute text).
PIXEL_CONVENTIONS: dict[str, tuple[float, str]] = {
    "hloc": (0.0, "opencv: pixel centre at integer coordinates (hloc)"),
    "colmap": (0.5, "colmap: pixel centre at integer + 0.5"),
}

#: matches0 / matching_scores0 vectors at least this long are gzip-compressed.
_COMPRESS_FROM = 4096


class ExportError(ManifestError):
    """The run or the arguments do not allow the export (missing or uncommitted stage, ...)."""


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's matches.h5 key of a pair: ``name0`` and ``name1`` with '/' -> '-', joined by '/'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


@dataclass
class _Pair:
    """One exported pair: its key, images and filtered (N, 4) matches with (N,) scores."""

    pair_id: str
    image0: str
    image1: str
    matches: np.ndarray
    scores: np.ndarray


def export_hloc(
    run_url: str,
    out: str,
    stage: str = "verify",
    inliers_only: bool = True,
    quantize: bool = True,
    radius: float = 4.0,
    cell: int = 48,
    min_score: float = 0.0,
    *,
    coordinates: str = "hloc",
    image_root: str | None = None,
) -> dict:
    """Write ``<out>/keypoints.h5``, ``<out>/matches.h5`` and ``<out>/pairs.txt`` from a committed
    stage of a run.

    See the module docstring for the layout, the pixel convention and the memory behaviour.

    Args:
        run_url: the run's storage URL (``<storage>/<run>``), any fsspec URL.
        out: output folder, any fsspec URL or local path (created if missing).
        stage: stage to export; must be committed and hold per-pair matches
            (``verify``, or ``refine`` / ``propose`` with ``inliers_only=False``).
        inliers_only: keep only the matches flagged as RANSAC inliers (needs the ``inliers``
            column, i.e. the verify stage).
        quantize: merge each image's keypoints across pairs (shared keypoint ids); if False,
            every match becomes two new keypoints.
        radius: quantisation merge distance in px (``quantize=True`` only).
        cell: quantisation hash-grid cell in px, a speed knob; raised to ``radius`` if smaller.
        min_score: drop matches whose score is below this (applied after ``inliers_only``).
        coordinates: ``"hloc"`` (default; manifest/OpenCV pixels, which hloc shifts by +0.5
            itself) or ``"colmap"`` (+0.5, for direct COLMAP import without hloc).
        image_root: name each image by its path relative to this folder (what hloc's
            ``reconstruction.main(image_dir=...)`` and a COLMAP model of that folder call it, e.g.
            ``<scene>/images`` for a MegaDepth scene); None keeps the run's image ids.

    Returns:
        ``{"pairs": exported pairs, "skipped_failed": failed rows skipped, "images": images in
        keypoints.h5, "keypoints": total keypoints, "matches": total exported matches}``.

    Raises:
        ExportError: the stage is unknown, has no matches, is not committed, changed after its
            commit, or holds inconsistent rows; or an argument is invalid.
    """
    if coordinates not in PIXEL_CONVENTIONS:
        raise ExportError(f"coordinates must be one of {sorted(PIXEL_CONVENTIONS)}, got {coordinates!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise ExportError(f"radius must be a positive number of pixels, got {radius}")
    cell = max(float(cell), float(radius))

    pairs, skipped_failed = load_pairs(run_url, stage, inliers_only, float(min_score))
    if image_root is not None:
        pairs = rename_images(run_url, stage, pairs, image_root)
    if quantize:
        keypoints, ids, scores = quantize_matches(
            [(p.image0, p.image1, p.matches, p.scores) for p in pairs],
            radius=float(radius),
            cell=cell,
            min_score=float(min_score),
        )
    else:
        keypoints, ids, scores = _append_keypoints(pairs)

    offset, convention = PIXEL_CONVENTIONS[coordinates]
    attrs = {
        "pixel_convention": convention,
        "pixel_offset": offset,
        "matchmill_run": run_url,
        "matchmill_stage": stage,
        "inliers_only": bool(inliers_only),
        "quantize": bool(quantize),
        "radius": float(radius) if quantize else 0.0,
        "min_score": float(min_score),
    }
    with _local_outputs(out) as (kp_path, m_path):
        _write_keypoints(kp_path, keypoints, offset, convention, attrs)
        _write_matches(m_path, pairs, keypoints, ids, scores, attrs)
    write_pairs_txt(out, pairs)

    return {
        "pairs": len(pairs),
        "skipped_failed": skipped_failed,
        "images": len(keypoints),
        "keypoints": int(sum(len(k) for k in keypoints.values())),
        "matches": int(sum(len(i) for i in ids)),
    }


def rename_images(run_url: str, stage: str, pairs: list[_Pair], image_root: str) -> list[_Pair]:
    """``pairs`` with each image named by its path relative to ``image_root``."""
    from .export_colmap import image_names

    rows = read_stage(run_url, stage, columns=["image0", "image1", "path0", "path1"]).to_pylist()
    paths = {}
    for r in rows:
        paths.setdefault(r["image0"], r["path0"])
        paths.setdefault(r["image1"], r["path1"])
    used = {p.image0 for p in pairs} | {p.image1 for p in pairs}
    _, names = image_names({k: paths[k] for k in used}, image_root)
    return [_Pair(p.pair_id, names[p.image0], names[p.image1], p.matches, p.scores) for p in pairs]


def write_pairs_txt(out: str, pairs: list[_Pair]) -> None:
    """``<out>/pairs.txt``: one ``name0 name1`` line per exported pair (hloc's pairs file)."""
    from matchmill.manifests.storage import write_bytes_atomic

    for p in pairs:
        if any(c.isspace() for c in p.image0 + p.image1):
            raise ExportError(f"pair {p.pair_id!r}: an image name contains whitespace; pairs.txt cannot hold it")
    text = "".join(f"{p.image0} {p.image1}\n" for p in pairs)
    target = out if "://" in out else "file://" + os.path.abspath(out)
    write_bytes_atomic(target.rstrip("/") + "/" + PAIRS_FILE, text.encode())


def load_pairs(run_url: str, stage: str, inliers_only: bool, min_score: float) -> tuple[list[_Pair], int]:
    """Read the needed columns of a committed stage; filter matches; skip failed rows."""
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

    pairs: list[_Pair] = []
    seen: dict[str, str] = {}
    cols = {name: table.column(name).to_pylist() for name in columns if name not in ("status", "matches")}
    from matchmill.manifests.columns import matches_rows

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
        pairs.append(_Pair(pair_id, image0, image1, matches, scores))
    return pairs, skipped_failed


def _append_keypoints(pairs: list[_Pair]) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """No quantisation: each match adds one keypoint to each of its images, in pair order."""
    chunks: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    ids: list[np.ndarray] = []
    for p in pairs:
        n = len(p.matches)
        side_ids = []
        for image, xy in ((p.image0, p.matches[:, :2]), (p.image1, p.matches[:, 2:])):
            start = counts.get(image, 0)
            chunks.setdefault(image, []).append(xy)
            counts[image] = start + n
            side_ids.append(np.arange(start, start + n, dtype=np.int64))
        ids.append(np.stack(side_ids, axis=1))
    keypoints = {
        image: np.concatenate(parts, axis=0).astype(np.float32).reshape(-1, 2) for image, parts in chunks.items()
    }
    return keypoints, ids, [p.scores.astype(np.float32) for p in pairs]


class _local_outputs:
    """Context manager yielding local paths for keypoints.h5 / matches.h5, published on success.

    Local targets: temporary names in the target folder, renamed over the final names.
    Remote targets: a local temporary folder, uploaded with fsspec (one PUT per file).
    Nothing is published when the body raises.
    """

    def __init__(self, out: str):
        self.fs, self.path = url_to_fs(out)
        self.local = is_local(self.fs)

    def __enter__(self) -> tuple[str, str]:
        tag = uuid.uuid4().hex
        if self.local:
            os.makedirs(self.path, exist_ok=True)
            folder = self.path
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="matchmill-export-")
            folder = self._tmp.name
        self.staged = [os.path.join(folder, f".tmp-{tag}-{name}") for name in (KEYPOINTS_FILE, MATCHES_FILE)]
        return self.staged[0], self.staged[1]

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for staged, name in zip(self.staged, (KEYPOINTS_FILE, MATCHES_FILE)):
                    if self.local:
                        os.replace(staged, os.path.join(self.path, name))
                    else:
                        self.fs.makedirs(self.path, exist_ok=True)
                        self.fs.put_file(staged, posixpath.join(self.path, name))
        finally:
            for staged in self.staged:
                Path(staged).unlink(missing_ok=True)
            if not self.local:
                self._tmp.cleanup()


def _write_keypoints(
    path: str, keypoints: dict[str, np.ndarray], offset: float, convention: str, attrs: dict
) -> None:
    """hloc features layout: ``f[image]["keypoints"]`` float32 (K, 2)."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(attrs)
        for image in sorted(keypoints):
            dset = f.create_group(image).create_dataset(
                "keypoints", data=(keypoints[image].astype(np.float64) + offset).astype(np.float32).reshape(-1, 2)
            )
            dset.attrs["pixel_convention"] = convention
            dset.attrs["pixel_offset"] = offset


def _matches0(ids: np.ndarray, scores: np.ndarray, k0: int) -> tuple[np.ndarray, np.ndarray]:
    """hloc's per-keypoint vectors from (M, 2) one-to-one id pairs."""
    matches0 = np.full(k0, -1, dtype=np.int32)
    scores0 = np.zeros(k0, dtype=np.float16)
    matches0[ids[:, 0]] = ids[:, 1]
    f16 = np.finfo(np.float16)
    scores0[ids[:, 0]] = np.clip(scores, f16.min, f16.max).astype(np.float16)
    return matches0, scores0


def _pair_datasets(
    pairs: list[_Pair], keypoints: dict[str, np.ndarray], ids: list[np.ndarray], scores: list[np.ndarray]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for p, pid, psc in zip(pairs, ids, scores):
        yield (names_to_pair(p.image0, p.image1), *_matches0(pid, psc, len(keypoints[p.image0])))


def _write_matches(
    path: str,
    pairs: list[_Pair],
    keypoints: dict[str, np.ndarray],
    ids: list[np.ndarray],
    scores: list[np.ndarray],
    attrs: dict,
) -> None:
    """hloc matches layout: ``f[names_to_pair(n0, n1)]`` with ``matches0`` / ``matching_scores0``."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(attrs)
        for key, matches0, scores0 in _pair_datasets(pairs, keypoints, ids, scores):
            grp = f.create_group(key)
            opts = {"compression": "gzip", "compression_opts": 4} if len(matches0) >= _COMPRESS_FROM else {}
            grp.create_dataset("matches0", data=matches0, **opts)
            grp.create_dataset("matching_scores0", data=scores0, **opts)
