"""The Python API: match one pair, run a job, open a run, from a script or a notebook.

The top layer (beside the CLI): it calls the same functions the stages and ``matchmill run`` /
``status`` / ``show`` / ``export`` call, in-process, and returns NumPy arrays, pandas DataFrames and
dicts instead of printing::

    import matchmill

    out = matchmill.match("a.jpg", "b.jpg", method="sift", extract__resize_max=640)
    out["matches"][out["inliers"]]          # (K, 4) x0 y0 x1 y1, RANSAC inliers

    run = matchmill.run("configs/demo.yaml", pairs__max_pairs_per_scene=10)
    run.read("verify")                      # pandas.DataFrame of the verify manifest
    run.metrics["auc@10"]

Dotted config keys are given as keyword arguments with ``__`` for ``.`` (``extract__resize_max=320``
is ``extract.resize_max=320`` on the command line), or as ``overrides`` (a dict of dotted keys, or
a list of ``key=value`` strings as the command line takes them).
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from matchmill.config import ConfigError, parse_override, read_user_config, resolve_run_arg, set_dotted
from matchmill.datasets.image_io import load_image
from matchmill.manifests.columns import as_matches, matches_rows
from matchmill.manifests.schemas import MANIFESTS
from matchmill.manifests.commit import read_commit, read_stage, read_started
from matchmill.manifests.storage import StorageError, exists
from matchmill.methods.presets import PRESETS
from matchmill.methods.registry import build_method
from matchmill.pipeline.config import resolve
from matchmill.pipeline.export import export_colmap, export_hloc
from matchmill.pipeline.graph import ALL_STAGES
from matchmill.pipeline.runner import RunResult, run_pipeline
from matchmill.stages.extract import extract_image
from matchmill.stages.metrics import read_summary
from matchmill.stages.propose import propose_pair
from matchmill.stages.refine import refine_pair
from matchmill.stages.verify import verify_pair
from matchmill.status import status_data

__all__ = ["match", "run", "open_run", "Run"]

# ----------------------------------------------------------------------------- overrides


def _dotted(overrides: Mapping[str, Any] | list[str] | tuple[str, ...] | None, kwargs: Mapping[str, Any],
            where: str) -> dict[str, Any]:
    """``overrides`` (dict of dotted keys, or ``key=value`` strings) then ``kwargs`` (``a__b=v``) as
    one dict of dotted keys -> Python values, in order (a key given twice is refused)."""
    items: list[tuple[str, Any]] = []
    if overrides is None:
        pass
    elif isinstance(overrides, Mapping):
        items += [(str(k), v) for k, v in overrides.items()]
    elif isinstance(overrides, (list, tuple)):
        for text in overrides:
            if not isinstance(text, str):
                raise ConfigError(f"{where}: overrides: expected 'key=value' strings, got {text!r}")
            keys, value = parse_override(text)
            items.append((".".join(keys), value))
    else:
        raise ConfigError(f"{where}: overrides: expected a dict of dotted keys or a list of 'key=value' "
                          f"strings, got {type(overrides).__name__}")
    items += [(k.replace("__", "."), v) for k, v in kwargs.items()]
    out: dict[str, Any] = {}
    for key, value in items:
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: override {key!r}: empty key")
        if key in out:
            raise ConfigError(f"{where}: {key} given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- match

#: The config sections :func:`match` reads; any other key is refused (it would do nothing).
MATCH_SECTIONS = ("extract", "propose", "refine", "verify")
#: Outside those sections, the one job key :func:`match` reads (the image-size guard for paths).
MATCH_JOB_KEYS = ("data.max_image_pixels",)
#: Chains built and kept for the next call (a notebook matches many pairs with one method); the
#: least recently used is dropped past this many (learned chains hold nets).
CHAIN_CACHE_SIZE = 4


@dataclass
class _Chain:
    """One built chain: the resolved job config and its three methods."""

    conf: dict
    extractor: Any
    proposer: Any
    refiner: Any


_CHAINS: OrderedDict[str, _Chain] = OrderedDict()


def _chain(method: str, dotted: dict[str, Any]) -> _Chain:
    """The chain of preset ``method`` with ``dotted`` on top: built once, then taken from the cache."""
    if not isinstance(method, str) or method not in PRESETS:
        raise ConfigError(f"match: unknown method {method!r}; presets: {', '.join(sorted(PRESETS))}")
    for key in dotted:
        if key.split(".")[0] not in MATCH_SECTIONS and key not in MATCH_JOB_KEYS:
            raise ConfigError(f"match: {key}: not a key match uses (sections {', '.join(MATCH_SECTIONS)}, "
                              f"or {', '.join(MATCH_JOB_KEYS)})")
    cache_key = repr((method, sorted((k, repr(v)) for k, v in dotted.items())))
    if cache_key in _CHAINS:
        _CHAINS.move_to_end(cache_key)
        return _CHAINS[cache_key]
    # the job config of a run with ``preset: method`` and these keys (the defaults, the preset's keys,
    # then the caller's), resolved and validated as ``matchmill run`` resolves a job file
    user: dict = {"preset": method}
    for key, value in dotted.items():
        set_dotted(user, key.split("."), copy.deepcopy(value))
    conf = resolve(user)
    chain = _Chain(conf, build_method("extract", conf["extract"]), build_method("propose", conf["propose"]),
                   build_method("refine", conf["refine"]))
    _CHAINS[cache_key] = chain
    while len(_CHAINS) > CHAIN_CACHE_SIZE:
        _CHAINS.popitem(last=False)
    return chain


def _image(image: Any, name: str, max_pixels: int) -> np.ndarray:
    """A path (str or PathLike) read as the extract stage reads it, or an array checked and made
    (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if "://" not in path and not Path(path).is_file():
            raise FileNotFoundError(f"{name}: no such image file {path!r}")
        return load_image(path, max_pixels=max_pixels)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected an image path or an (H, W, 3) uint8 RGB NumPy array, "
                        f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 array (0..255), got dtype {image.dtype} with shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:  # grey: replicated to three channels, as load_image does for a grey file
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{name}: expected an (H, W, 3) RGB or (H, W) grey array, got shape {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ValueError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels exceeds data.max_image_pixels={max_pixels}")
    return np.ascontiguousarray(image)


def match(image0: str | os.PathLike | np.ndarray, image1: str | os.PathLike | np.ndarray, method: str = "sift",
          overrides: Mapping[str, Any] | list[str] | None = None, **dotted: Any) -> dict[str, Any]:
    """Match one pair of images with a method preset, the way a run's stages match a pair.

    The chain is the one ``matchmill run`` builds for a job file with ``preset: METHOD`` and the same
    keys (job defaults, then the preset's keys, then ``overrides`` / ``dotted``), and each image and the pair go
    through the stages' own per-row functions (``extract_image``, ``propose_pair``,
    ``refine_pair``, ``verify_pair``), with matches and scores kept as float32 between them as the
    manifests store them: a pair of a run gives the matches and inliers of its verify row. The
    chain is built on the first call and reused by the next calls with the same arguments.

    Args:
        image0, image1: an image path (any fsspec URL), or an (H, W, 3) uint8 RGB / (H, W) uint8 grey
            array.
        method: a preset of :data:`matchmill.methods.presets.PRESETS` (``"sift"``, ``"pump"``,
            ``"pump-ncnet-patch2pix"``...).
        overrides: dotted keys of the ``extract``, ``propose``, ``refine`` and ``verify`` sections,
            as a dict (``{"extract.resize_max": 320}``) or ``key=value`` strings.
        **dotted: the same keys with ``__`` for ``.`` (``extract__resize_max=320``,
            ``verify__geometry="homography"``, ``extract__num_gpus=1`` to run on a GPU).

    Returns:
        A dict of NumPy arrays and numbers:

        - ``keypoints0`` (N, 2), ``keypoints1`` (M, 2) float32: the extractor's keypoints in original
          pixels (only when the extractor has keypoints; dense methods have none);
        - ``matches`` (K, 4) float32: x0 y0 x1 y1 in original pixels, exact duplicates dropped
          (``num_duplicates`` int of them, as the verify stage drops them);
        - ``scores`` (K,) float32;
        - ``inliers`` (K,) bool: RANSAC inliers of the verify model; ``num_inliers`` int;
        - ``verified`` bool: a model with at least ``verify.min_inliers`` inliers (default 15);
        - ``model``: ``"fundamental"`` or ``"homography"`` (``verify.geometry``; ``auto`` fits F,
          a lone pair having no homography ground truth); ``F`` or ``H`` (3, 3) float64, the
          estimated model (absent when too few matches);
        - ``image_size0``, ``image_size1`` (2,) int64: [width, height].

    Raises:
        ConfigError: unknown preset (the message lists the presets), unknown or ill-typed key.
        ValueError, TypeError: an image that is not a (H, W, 3) / (H, W) uint8 array (the message
            names the shape or dtype).
        FileNotFoundError: an image path that does not exist.

    Example:
        >>> out = matchmill.match("view0.jpg", "view1.jpg", extract__max_keypoints=2048)
        >>> good = out["matches"][out["inliers"]]   # (num_inliers, 4)
    """
    chain = _chain(method, _dotted(overrides, dotted, "match"))
    conf = chain.conf
    max_pixels = int(conf["data"]["max_image_pixels"])
    images = (_image(image0, "image0", max_pixels), _image(image1, "image1", max_pixels))
    feats0, feats1 = (extract_image(chain.extractor, im, conf["extract"]["resize_max"]) for im in images)
    matches, scores = propose_pair(chain.proposer, feats0, feats1)
    matches, scores = _as_stored(matches, scores)
    matches, scores = refine_pair(chain.refiner, matches, scores, feats0, feats1)
    matches, scores = _as_stored(matches, scores)
    size0, size1 = (tuple(int(v) for v in f["image_size"]) for f in (feats0, feats1))
    row = verify_pair(conf["verify"], matches.astype(np.float64), scores, size0, size1)
    out: dict[str, Any] = {}
    for side, feats in (("0", feats0), ("1", feats1)):
        if "keypoints" in feats:
            out["keypoints" + side] = np.asarray(feats["keypoints"])
    out.update(matches=row["matches"], scores=row["scores"], inliers=row["inliers"], num_inliers=row["num_inliers"],
               num_duplicates=row["num_duplicates"], verified=row["verified"], model=row["model"])
    if row["F_est"] is not None:
        out["F"] = np.asarray(row["F_est"], np.float64).reshape(3, 3)
    if row["H_est"] is not None:
        out["H"] = np.asarray(row["H_est"], np.float64).reshape(3, 3)
    out["image_size0"] = np.asarray(feats0["image_size"])
    out["image_size1"] = np.asarray(feats1["image_size"])
    return out


def _as_stored(matches: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) and (N,) float32, as the propose and refine manifests store them."""
    return (np.asarray(matches, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1))


# ----------------------------------------------------------------------------- runs


def _run_url(url: str | os.PathLike) -> str:
    """A run URL as the pipeline writes it: a local path becomes an absolute ``file://`` URL, a bare
    run name the run under the default storage (:func:`matchmill.config.resolve_run_arg`)."""
    return resolve_run_arg(url)


class Run:
    """A run folder (``<storage>/<run_name>``): its stages' state, manifests, metrics and exports.

    Made by :func:`run` (which runs the job first) or :func:`open_run` (an existing run). Reads the
    run's commit markers and manifests; never starts Ray.

    Attributes:
        url: the run's URL (``file:///abs/path/demo``, ``s3://bucket/runs/demo``...).
        result: for a run made by :func:`run`, the runner's report (stages run, rows, seconds), else None.
        last_export: the summary of the last :meth:`export` (``images``, ``pairs``, ``matches``...).

    Example:
        >>> run = matchmill.open_run("demo")
        >>> run.status()["stages"]["verify"]["state"]
        'committed'
    """

    def __init__(self, url: str, result: RunResult | None = None):
        self.url = url
        self.result = result
        self.last_export: dict | None = None

    def __repr__(self) -> str:
        return f"Run({self.url!r})"

    def status(self) -> dict[str, Any]:
        """What ``matchmill status`` shows, as data.

        Returns:
            ``{"url", "kind": "run" | "training", "lock": str | None, "stages": {name: {"state":
            "committed" | "partial" | "missing", "rows", "failed", "seconds", "config_hash",
            "part_files", "stray"}}, "metrics": dict, "text": the ``matchmill status`` text}``; stages of
            another graph (``mine``) that this run never had are left out. A training run has
            ``kind``, ``url`` and ``text`` only.

        Example:
            >>> {k: s["state"] for k, s in run.status()["stages"].items()}
        """
        return status_data(self.url)

    def read(self, stage: str) -> pd.DataFrame:
        """The committed manifest of ``stage`` (``pairs``, ``images``, ``extract``, ``propose``,
        ``refine``, ``verify``, ``metrics``, ``mine``) as a DataFrame, one row per key.

        List columns hold NumPy arrays: ``matches`` one (K, 4) float32 array per pair (x0 y0 x1 y1;
        None on a failed row), ``inliers`` (K,) bool, ``K0`` (9,)... (one pair's matches alone:
        :meth:`matches`; a frame read by plain pandas: ``matchmill.manifests.as_matches(cell)``).

        Raises:
            KeyError: an unknown stage (the message lists the stages).
            ValueError: the stage is not committed (missing, or partial: interrupted or running).

        Example:
            >>> verify = run.read("verify")
            >>> verify[["pair_id", "num_matches", "num_inliers"]].head()
            >>> verify.matches[0].shape                    # (num_matches, 4)
        """
        table = self._table(stage)
        frame = table.to_pandas()
        if "matches" in table.column_names:  # pandas' own form is an object array of 4-vectors per cell
            cells = np.empty(table.num_rows, dtype=object)
            for i, rows in enumerate(matches_rows(table.column("matches"))):
                cells[i] = None if rows is None else rows.copy()  # writable, independent of the Arrow buffer
            frame["matches"] = cells
        return frame

    def matches(self, pair_id: str, stage: str = "verify", inliers_only: bool = False) -> np.ndarray:
        """One pair's matches from a stage's manifest.

        Args:
            pair_id: the pair's key (``"a.jpg|b.jpg"``, as ``matchmill show RUN verify`` lists them).
            stage: a stage with a ``matches`` column: ``propose``, ``refine`` or ``verify`` (default).
            inliers_only: only the RANSAC inliers (``verify``'s ``inliers`` flags).

        Returns:
            (N, 4) float32, x0 y0 x1 y1 in original pixels; (0, 4) for a failed row.

        Raises:
            KeyError: an unknown stage, or a pair the stage does not have. ValueError: the stage is
            not committed, or has no ``matches`` (``inliers`` with ``inliers_only``) column.

        Example:
            >>> run.matches("a.jpg|b.jpg", inliers_only=True).shape   # (num_inliers, 4)
        """
        columns = ["pair_id", "matches"] + (["inliers"] if inliers_only else [])
        table = self._table(stage, columns)
        hit = table.filter(pc.equal(table.column("pair_id"), pair_id))
        if hit.num_rows == 0:
            raise KeyError(f"pair {pair_id!r} is not in stage {stage} of {self.url} ({table.num_rows} pairs)")
        matches = as_matches(matches_rows(hit.column("matches"))[0], np.float32)
        if inliers_only:
            flags = hit.column("inliers")[0].as_py() or []
            matches = matches[np.asarray(flags, bool)] if len(flags) == len(matches) else matches[:0]
        return matches

    def _table(self, stage: str, columns: list[str] | None = None) -> pa.Table:
        """A committed stage's manifest (only ``columns`` when given).

        Raises:
            KeyError: an unknown stage (the message lists the stages).
            ValueError: the stage is not committed, or lacks one of ``columns``.
        """
        names = [s.name for s in ALL_STAGES]
        if stage not in names:
            raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(names)}")
        spec = ALL_STAGES[names.index(stage)]
        if read_commit(self.url, stage) is None:
            state = "partial" if read_started(self.url, stage) is not None else "missing"
            raise ValueError(f"{self.url}: stage {stage} is not committed ({state}); run it (matchmill.run) "
                             "or see run.status()")
        schema = MANIFESTS[spec.manifest][0]
        lacking = [c for c in columns or [] if c not in schema.names]
        if lacking:
            raise ValueError(f"stage {stage} has no {', '.join(lacking)} column (matches are in propose, refine, "
                             "verify)")
        return read_stage(self.url, spec.name, spec.manifest, columns=columns)

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics stage's summary (``auc@5/10/20``, ``mma@3``, ``num_inliers``...); empty
        when the metrics stage has not run.

        Example:
            >>> run.metrics.get("auc@10")
        """
        return read_summary(self.url)

    def export(self, format: str, out: str | os.PathLike, **kw: Any) -> str:
        """Write the run's matches for another tool, as ``matchmill export --format FORMAT`` does.

        Args:
            format: ``"hloc"`` (``keypoints.h5``, ``matches.h5``, ``pairs.txt``) or ``"colmap"``
                (``database.db``).
            out: output folder (any fsspec URL or local path; created if missing).
            **kw: the export function's keywords
                (:func:`matchmill.pipeline.export.hloc.export_hloc`: ``stage``, ``inliers_only``,
                ``quantize``, ``radius``, ``cell``, ``min_score``, ``coordinates``, ``image_root``,
                ``keypoints``, ``overwrite``; :func:`~matchmill.pipeline.export.colmap.export_colmap`:
                ``image_root``, ``stage``, ``radius``, ``cell``, ``min_score``, ``overwrite``).

        Returns:
            ``out`` as a string (the folder now holding the export); the export's summary is in
            :attr:`last_export`.

        Example:
            >>> folder = run.export("hloc", "exports/demo")   # then hloc: folder + "/matches.h5"
        """
        exporters = {"hloc": export_hloc, "colmap": export_colmap}
        if format not in exporters:
            raise ValueError(f"export: unknown format {format!r}; formats: {', '.join(exporters)}")
        func = exporters[format]
        params = [p for p in inspect.signature(func).parameters if p not in ("run_url", "out")]
        unknown = sorted(set(kw) - set(params))
        if unknown:
            raise TypeError(f"export {format}: unknown keyword {', '.join(unknown)}; known: {', '.join(params)}")
        out = os.fspath(out)
        self.last_export = func(self.url, out, **kw)
        return out


def open_run(url: str | os.PathLike) -> Run:
    """An existing run (what ``matchmill status URL`` reads).

    Args:
        url: the run's URL, local folder or bare name (``demo``: the run under the default storage;
            ``file:///abs/runs/demo``, ``s3://b/runs/demo``).

    Raises:
        StorageError: nothing exists at ``url``.

    Example:
        >>> run = matchmill.open_run("demo")
        >>> run.read("verify").num_inliers.mean()
    """
    url = _run_url(url)
    if not exists(url):
        raise StorageError(f"run {url!r} does not exist")
    return Run(url)


def run(config: str | os.PathLike | Mapping[str, Any], overrides: Mapping[str, Any] | list[str] | None = None, *,
        until: str | None = None, overwrite: bool = False, address: str | None = None, echo: Any = print,
        verbose: bool = False, **dotted: Any) -> Run:
    """Run (or resume) a job in this process, as ``matchmill run CONFIG KEY=VALUE...`` does.

    Args:
        config: a YAML job file (``configs/demo.yaml``) or the same keys as a dict.
        overrides: dotted keys as a dict (``{"extract.resize_max": 320}``) or ``key=value`` strings
            (``["extract.resize_max=320"]``, values read as YAML, as on the command line).
        until: stop after this stage commits (``--until``).
        overwrite: replace stages committed with another config (``--overwrite``).
        address: Ray cluster address (``--address``; default the config's ``ray.address`` /
            ``RAY_ADDRESS``, else an embedded Ray).
        echo: called with each progress line (default ``print``; ``None`` is silent).
        verbose: Ray's own INFO logs too.
        **dotted: dotted keys with ``__`` for ``.`` (``pairs__max_pairs_per_scene=10``).

    Returns:
        The :class:`Run`, with the runner's report in ``Run.result``. When a stage's failed rows
        exceed ``max_failed_fraction`` (``matchmill run``'s exit code 1), a ``RuntimeWarning``
        says so.

    Raises:
        ConfigError: a bad config or key (before any work); StorageError and the runner's other
        errors as ``matchmill run`` reports them.

    Example:
        >>> run = matchmill.run("configs/demo.yaml", storage="file:///tmp/runs", pairs__max_pairs_per_scene=8)
        >>> run.metrics["auc@10"]
    """
    keys = _dotted(overrides, dotted, "run")
    if isinstance(config, Mapping):
        user = copy.deepcopy(dict(config))
    elif isinstance(config, (str, os.PathLike)):
        user = read_user_config(config)
    else:
        raise ConfigError(f"run: config: expected a YAML path or a dict, got {type(config).__name__}")
    for key, value in keys.items():
        set_dotted(user, key.split("."), copy.deepcopy(value))
    conf = resolve(user)
    result = run_pipeline(conf, until=until, address=address, echo=echo or (lambda _: None),
                          overwrite=overwrite, verbose=verbose)
    fraction, allowed = result.failed_fraction(), float(conf["max_failed_fraction"])
    if fraction > allowed:
        warnings.warn(f"{100 * fraction:.1f}% of a stage's rows failed (max_failed_fraction={allowed:g}); "
                      f"see run.read(stage) rows with status 'failed'", RuntimeWarning, stacklevel=2)
    return Run(result.run_url, result)
