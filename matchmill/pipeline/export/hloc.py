"""Export a run's matches in hloc's HDF5 layout (``keypoints.h5`` + ``matches.h5``).

The two files can be passed straight to hloc's ``triangulation.main`` /
``reconstruction.main`` / ``localize_sfm`` as ``features=`` and ``matches=`` (hloc only needs
``keypoints`` from the features file), or read with hloc's ``utils.io.get_keypoints`` and
``get_matches``.

Layout (hloc's, see ``docs/specs/anchors.md`` A1):

``keypoints.h5``
    one group per image id (an id containing ``/`` becomes nested groups, as in hloc), holding
    a ``keypoints`` dataset, float32 (K, 2), x then y, and ``image_size`` int64 (2,) (width,
    height of the original image, what hloc's matchers read) when the run's extract manifest
    knows it. Native keypoints (below) add ``scores`` float32 (K,) and ``descriptors`` (D, K)
    (hloc's transposed layout, the stored dtype) when the extract method stores them, and the
    keypoints' ``uncertainty`` attribute (1 px of the extractor's frame in original pixels, as
    hloc writes it). Every image of an exported pair has a group, possibly with K = 0 (an empty
    (0, 2) ``keypoints`` dataset, as hloc writes for an image without features).
``matches.h5``
    one group per exported pair at :func:`names_to_pair` ``(image0, image1)``, i.e.
    ``image0.replace('/', '-') + '/' + image1.replace('/', '-')`` (hloc's current convention;
    older hloc joined with ``_``, which hloc's ``find_pair`` still tries as
    ``names_to_pair_old``), holding ``matches0`` int32 (K0,) -- for keypoint i of image0 the
    index of its match in image1's keypoints, -1 when unmatched -- and ``matching_scores0``
    float32 (K0,), 0 where unmatched (hloc writes float16; float32 keeps the run's scores
    exactly, and hloc's readers take either). Pairs are stored in the manifest's (image0, image1)
    order; hloc's ``find_pair`` also finds them reversed.

Which matches: by default verify's RANSAC inliers (``inliers_only=True``; what triangulation and
localisation want, and what the COLMAP export writes) of the *verified* pairs only (a model with
at least ``verify.min_inliers`` inliers; an unverified pair's inliers are no two-view geometry, so
the pair is left out of ``matches.h5`` and ``pairs.txt`` and counted in ``skipped_unverified``),
then ``min_score``; ``--all-matches`` exports every ok pair's raw matches, outliers and
unverified pairs included (hloc verifies them itself).

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

Keypoints (``keypoints=``):

- ``"auto"`` (default): native keypoints when the chain is sparse-lossless, else rebuilt from
  the match coordinates (below). The summary says which (``keypoints_from``) and why.
- ``"native"``: the image's keypoints exactly as its extract artifact stores them (all K of
  them, in stored order, with their scores and descriptors); each match is the pair of indices
  of its end points, recovered by exact coordinate lookup (:mod:`.native`). Nothing is
  merged, so every inlier is kept and pairs share keypoint ids wherever the matcher reused a
  keypoint -- the tracks a detector-based hloc pipeline has. Possible only when every exported
  end point is a stored keypoint (a detector + descriptor matcher with the identity refiner);
  otherwise an :class:`ExportError` says why.
- ``"matches"``: keypoints rebuilt from the match coordinates, the only way for dense chains
  (PUMP, NCNet + Patch2Pix) and for any chain whose refiner moved points. With ``quantize=True``
  the keypoints of one image coming from different pairs are merged by
  :func:`matchmill.geometry.quantize.quantize_matches` (points closer than ``radius`` px become
  one keypoint at their mean; per pair the id matches are made one-to-one), so pairs share
  keypoint ids -- what COLMAP triangulation needs to build tracks longer than two views; merges
  that collide inside a pair drop matches (the demo's SIFT chain keeps ~89 % of its inliers).
  With ``quantize=False`` every match of every pair gets its own two keypoints, appended per
  image in pair order; nothing is merged, so no track spans more than one pair.
  ``quantize``, ``radius`` and ``cell`` apply to this path only.

Determinism: pairs are processed in ``pair_id`` order (quantisation depends on the order), so
the output does not depend on how the stage was split into part files.

Memory: everything (the needed columns of the stage, the keypoint tables) is held in memory,
i.e. proportional to the stage's matches plus the output keypoints; on the native path the
scores and descriptors are read from the artifacts one image at a time while it is written.
Each pair's ``matches0`` vector is built only while it is written. Note that the matches file
grows as the sum over pairs of K(image0): with ``quantize=False`` that is quadratic in the
pairs per image, on the native path it is the pairs times the stored keypoints; large
``matches0`` vectors are gzip-compressed (hloc/h5py read them transparently).

Where the files go (:mod:`.output`): names are checked first (whitespace, two images
under one name), then ``out`` (another run's or format's export is refused without
``overwrite``; files that are not an export's always), then the three files are written into a
staging folder beside them and published only when all are written, with ``export.json`` (run,
stage, format, files, time) last. A failure leaves ``out`` as it was. h5py needs a local file:
for a remote ``out`` (``s3://``, ``gs://``, ``memory://``, ...) the staging folder is local and
the files are uploaded with fsspec.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from matchmill.geometry.quantize import quantize_matches
from matchmill.manifests.artifacts import ArtifactReader
from matchmill.manifests.commit import image_sizes
from matchmill.manifests.storage import write_bytes_atomic

from .common import (
    KEYPOINTS_FILE,
    MATCHES_FILE,
    PAIRS_FILE,
    ExportError,
    ExportPair,
    check_export_names,
    image_name_map,
    load_pairs,
    names_to_pair,
)
from .native import NativeUnavailable, match_native_keypoints
from .output import ExportOutput

__all__ = ["export_hloc", "KEYPOINT_SOURCES", "PIXEL_CONVENTIONS", "write_pairs_txt"]

#: ``coordinates`` value -> (offset added to manifest pixels, attribute text).
PIXEL_CONVENTIONS: dict[str, tuple[float, str]] = {
    "hloc": (0.0, "opencv: pixel centre at integer coordinates (hloc)"),
    "colmap": (0.5, "colmap: pixel centre at integer + 0.5"),
}

#: matches0 / matching_scores0 vectors at least this long are gzip-compressed.
_COMPRESS_FROM = 4096


#: ``keypoints=`` values of :func:`export_hloc`.
KEYPOINT_SOURCES = ("auto", "native", "matches")


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
    keypoints: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Write ``<out>/keypoints.h5``, ``<out>/matches.h5`` and ``<out>/pairs.txt`` from a committed
    stage of a run.

    See the module docstring for the layout, the keypoint sources, the pixel convention and the
    memory behaviour.

    Args:
        run_url: the run's storage URL (``<storage>/<run>``), any fsspec URL.
        out: output folder, any fsspec URL or local path (created if missing).
        stage: stage to export; must be committed and hold per-pair matches
            (``verify``, or ``refine`` / ``propose`` with ``inliers_only=False``).
        inliers_only: keep only the matches flagged as RANSAC inliers (needs the ``inliers``
            column, i.e. the verify stage).
        quantize: keypoints from matches only: merge each image's keypoints across pairs (shared
            keypoint ids); if False, every match becomes two new keypoints.
        radius: quantisation merge distance in px (``quantize=True`` only).
        cell: quantisation hash-grid cell in px, a speed knob; raised to ``radius`` if smaller.
        min_score: drop matches whose score is below this (applied after ``inliers_only``).
        coordinates: ``"hloc"`` (default; manifest/OpenCV pixels, which hloc shifts by +0.5
            itself) or ``"colmap"`` (+0.5, for direct COLMAP import without hloc).
        image_root: name each image by its path relative to this folder (what hloc's
            ``reconstruction.main(image_dir=...)`` and a COLMAP model of that folder call it, e.g.
            ``<scene>/images`` for a MegaDepth scene); None keeps the run's image ids.
        keypoints: ``"auto"``, ``"native"`` or ``"matches"`` (module docstring).
        overwrite: replace an export of another run or format that ``out`` holds (never files
            that are not an export's; see :mod:`.output`).

    Returns:
        ``{"pairs": exported pairs, "skipped_failed": failed rows skipped, "skipped_unverified":
        unverified rows skipped (``inliers_only`` only), "images": images in
        keypoints.h5, "keypoints": total keypoints, "matches": total exported matches,
        "keypoints_from": "native" | "quantized" | "per-pair", "input_matches": matches selected
        for export (inliers, after ``min_score``), "kept": matches / input_matches (1.0 when
        there are none), "note": why keypoints were not native ("" when they are)}``.

    Raises:
        ExportError: the stage is unknown, has no matches, is not committed, changed after its
            commit, or holds inconsistent rows; ``keypoints="native"`` on a chain that is not
            sparse-lossless; an image name cannot be exported (whitespace, two images under one
            name); ``out`` holds another export (without ``overwrite``) or files that are not an
            export's; or an argument is invalid. Raised before anything is written.
        StorageError: ``out`` cannot be created or written.
    """
    if coordinates not in PIXEL_CONVENTIONS:
        raise ExportError(f"coordinates must be one of {sorted(PIXEL_CONVENTIONS)}, got {coordinates!r}")
    if keypoints not in KEYPOINT_SOURCES:
        raise ExportError(f"keypoints must be one of {list(KEYPOINT_SOURCES)}, got {keypoints!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise ExportError(f"radius must be a positive number of pixels, got {radius}")
    cell = max(float(cell), float(radius))

    pairs, skipped_failed, skipped_unverified = load_pairs(run_url, stage, inliers_only, float(min_score))
    names = image_name_map(run_url, stage, pairs, image_root)
    check_export_names(pairs, names, pairs_txt=True)
    with ExportOutput(out, "hloc", run_url, stage, overwrite=overwrite) as folder:
        summary = _export_hloc(run_url, folder, stage, pairs, names, inliers_only=inliers_only, quantize=quantize,
                               radius=radius, cell=cell, min_score=min_score, coordinates=coordinates,
                               keypoints=keypoints)
    summary["skipped_failed"] = skipped_failed
    summary["skipped_unverified"] = skipped_unverified
    return {k: summary[k] for k in ("pairs", "skipped_failed", "skipped_unverified", "images", "keypoints", "matches", "keypoints_from",
                                    "input_matches", "kept", "note")}


def _export_hloc(run_url: str, folder: str, stage: str, pairs: list[ExportPair], names: dict[str, str], *,
                 inliers_only: bool, quantize: bool, radius: float, cell: float, min_score: float,
                 coordinates: str, keypoints: str) -> dict:
    """:func:`export_hloc`'s work once the names and ``out`` are checked: the three files into the
    local staging ``folder``."""
    input_matches = int(sum(len(p.matches) for p in pairs))
    native, note = None, "keypoints=matches was asked for"
    if keypoints != "matches":
        try:
            native = match_native_keypoints(run_url, pairs)
            note = ""
        except NativeUnavailable as exc:
            if keypoints == "native":
                raise ExportError(f"stage {stage!r} of run {run_url}: no native keypoints: {exc}") from exc
            note = str(exc)
    offset, convention = PIXEL_CONVENTIONS[coordinates]
    source = "native" if native is not None else ("quantized" if quantize else "per-pair")
    attrs = {
        "pixel_convention": convention,
        "pixel_offset": offset,
        "matchmill_run": run_url,
        "matchmill_stage": stage,
        "inliers_only": bool(inliers_only),
        "keypoints_from": source,
        "quantize": bool(quantize) and native is None,
        "radius": float(radius) if quantize and native is None else 0.0,
        "min_score": float(min_score),
    }
    if native is not None:
        ids = native.ids
        scores = [p.scores[k].astype(np.float32) for p, k in zip(pairs, native.kept)]
        counts = native.counts
        sizes = native.sizes
    else:
        if quantize:
            kp_table, ids, scores = quantize_matches(
                [(p.image0, p.image1, p.matches, p.scores) for p in pairs],
                radius=float(radius),
                cell=cell,
                min_score=float(min_score),
            )
        else:
            kp_table, ids, scores = _append_keypoints(pairs)
        counts = {image: len(k) for image, k in kp_table.items()}
        sizes = image_sizes(run_url)
    kp_path, m_path = os.path.join(folder, KEYPOINTS_FILE), os.path.join(folder, MATCHES_FILE)
    if native is not None:
        _write_native_keypoints(kp_path, native, names, offset, convention, attrs)
    else:
        _write_keypoints(kp_path, {names[i]: k for i, k in kp_table.items()}, offset, convention, attrs,
                         sizes={names[i]: sizes[i] for i in kp_table if i in sizes})
    _write_matches(m_path, pairs, names, counts, ids, scores, attrs)
    write_pairs_txt(folder, [ExportPair(p.pair_id, names[p.image0], names[p.image1], p.matches, p.scores)
                             for p in pairs])

    n_matches = int(sum(len(i) for i in ids))
    return {
        "pairs": len(pairs),
        "images": len(counts),
        "keypoints": int(sum(counts.values())),
        "matches": n_matches,
        "keypoints_from": source,
        "input_matches": input_matches,
        "kept": round(n_matches / input_matches, 4) if input_matches else 1.0,
        "note": note,
    }


def write_pairs_txt(out: str, pairs: list[ExportPair]) -> None:
    """``<out>/pairs.txt``: one ``name0 name1`` line per exported pair (hloc's pairs file)."""
    for p in pairs:
        if any(c.isspace() for c in p.image0 + p.image1):
            raise ExportError(f"pair {p.pair_id!r}: an image name contains whitespace; pairs.txt cannot hold it")
    text = "".join(f"{p.image0} {p.image1}\n" for p in pairs)
    target = out if "://" in out else "file://" + os.path.abspath(out)
    write_bytes_atomic(target.rstrip("/") + "/" + PAIRS_FILE, text.encode())


def _append_keypoints(pairs: list[ExportPair]) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
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


def _write_keypoints(
    path: str, keypoints: dict[str, np.ndarray], offset: float, convention: str, attrs: dict,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> None:
    """hloc features layout: ``f[name]["keypoints"]`` float32 (K, 2) (+ ``image_size`` (2,) if known)."""
    sizes = sizes or {}
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(attrs)
        for image in sorted(keypoints):
            grp = f.create_group(image)
            dset = grp.create_dataset(
                "keypoints", data=(keypoints[image].astype(np.float64) + offset).astype(np.float32).reshape(-1, 2)
            )
            dset.attrs["pixel_convention"] = convention
            dset.attrs["pixel_offset"] = offset
            if image in sizes:
                grp.create_dataset("image_size", data=np.asarray(sizes[image], np.int64))


def _write_native_keypoints(path: str, native, names: dict[str, str], offset: float, convention: str,
                            attrs: dict) -> None:
    """hloc features layout from the extract artifacts, one image at a time: ``keypoints`` float32
    (K, 2), ``scores`` float32 (K,) and ``descriptors`` (D, K) when stored, ``image_size`` (2,)."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(attrs)
        for image in sorted(native.artifacts, key=lambda i: names[i]):
            reader = ArtifactReader(native.artifacts[image])  # scores, descriptors, scale
            kp = native.keypoints[image]
            grp = f.create_group(names[image])
            data = kp.astype(np.float32) if offset == 0 else (kp.astype(np.float64) + offset).astype(np.float32)
            dset = grp.create_dataset("keypoints", data=data)
            dset.attrs["pixel_convention"] = convention
            dset.attrs["pixel_offset"] = offset
            if "scale" in reader.header:  # extractor frame -> original pixels: 1 px of detection noise
                dset.attrs["uncertainty"] = float(np.mean(reader.read("scale")))
            if "scores" in reader.header:
                grp.create_dataset("scores", data=reader.read("scores").reshape(-1).astype(np.float32))
            if "descriptors" in reader.header:  # an image with 0 keypoints gets a (D, 0) dataset
                desc = reader.read("descriptors")
                desc = desc.reshape(len(kp), -1) if len(kp) else desc.reshape(0, desc.shape[-1] if desc.ndim > 1 else 0)
                opts = {"compression": "gzip", "compression_opts": 4} if desc.size >= _COMPRESS_FROM else {}
                grp.create_dataset("descriptors", data=np.ascontiguousarray(desc.T), **opts)
            grp.create_dataset("image_size", data=np.asarray(native.sizes[image], np.int64))


def _matches0(ids: np.ndarray, scores: np.ndarray, k0: int) -> tuple[np.ndarray, np.ndarray]:
    """hloc's per-keypoint vectors ``matches0`` int32 (K0,) and ``matching_scores0`` float32 (K0,)
    from (M, 2) id pairs, one-to-one in image 0, and their (M,) scores."""
    matches0 = np.full(k0, -1, dtype=np.int32)
    scores0 = np.zeros(k0, dtype=np.float32)
    ids = np.asarray(ids, np.int64).reshape(-1, 2)
    matches0[ids[:, 0]] = ids[:, 1]
    scores0[ids[:, 0]] = np.asarray(scores, np.float32)
    return matches0, scores0


def _write_matches(
    path: str,
    pairs: list[ExportPair],
    names: dict[str, str],
    counts: dict[str, int],
    ids: list[np.ndarray],
    scores: list[np.ndarray],
    attrs: dict,
) -> None:
    """hloc matches layout: ``f[names_to_pair(n0, n1)]`` with ``matches0`` / ``matching_scores0``."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs.update(attrs)
        for p, pid, psc in zip(pairs, ids, scores):
            matches0, scores0 = _matches0(pid, psc, counts[p.image0])
            grp = f.create_group(names_to_pair(names[p.image0], names[p.image1]))
            opts = {"compression": "gzip", "compression_opts": 4} if len(matches0) >= _COMPRESS_FROM else {}
            grp.create_dataset("matches0", data=matches0, **opts)
            grp.create_dataset("matching_scores0", data=scores0, **opts)
