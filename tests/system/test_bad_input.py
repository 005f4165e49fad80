"""Bad input, as one table: each kind of broken input, how it is made, the exact message, and
what happens to the run.

Outcomes:

- ``FAILS``: the row becomes ``status = "failed"`` with an error naming the item; the run goes on.
- ``READ``: not an error: the input is read (converted) and the pair matches like its original.
- ``DROPPED``: the line is dropped with a warning naming it (a duplicate pair); the run goes on.
- ``STOPS``: the run stops before any work: exit code 2, one line on stderr, nothing written.

All go-on rows share ONE pipeline run (one pairs file mixing every per-row fault with two good
pairs); "nothing lost" is checked on that run: every good pair verifies with matches and every
key is present exactly once in every stage. The stop rows run the CLI, which exits before Ray
starts (except the GPU request, which only a running cluster can answer: it stops once Ray is up,
before any stage); "nothing written" means no file under the storage folder (the writability probe
may leave the empty run folder) and none in the working directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from matchmill.datasets.colmap_scene import read_colmap_scene
from matchmill.datasets.image_io import ImageError, load_image
from matchmill.datasets.megadepth import select_megadepth_pairs
from matchmill.manifests.commit import read_stage
from matchmill.manifests.schemas import make_pair_id
from matchmill.cli import main as cli_main
from matchmill.pipeline.config import load_config
from matchmill.pipeline.runner import run_pipeline

from tests.helpers.paths import DEMO_CONFIG

FAILS = "row fails alone, the run goes on"
READ = "read and matched, the run goes on"
DROPPED = "dropped with a warning, the run goes on"
STOPS = "stops before work (exit 2)"


@dataclass
class Inputs:
    """Where a row makes its input, and the good pairs it may borrow images and ground truth from.

    Attributes:
        root: a folder of this row (stop rows) or of the shared run (go-on rows).
        images: the pairs file's image folder (go-on rows).
        demo_root: the generated demo scene (MegaDepth layout).
        g0, g1: image names of the first good pair; gt: its ``rot0 rot1 K0 K1 T_0to1`` tokens,
            k1, t: its K1 and T_0to1 tokens alone.
        h0, h1: image names of the second good pair; h_gt: its ground-truth tokens.
        marker: a file that a malicious payload would create; it must never exist.
    """

    root: Path
    images: Path
    demo_root: Path
    g0: str = ""
    g1: str = ""
    gt: str = ""
    h0: str = ""
    h1: str = ""
    h_gt: str = ""
    k1: str = ""
    t: str = ""

    @property
    def marker(self) -> Path:
        return self.root / "payload-ran"


@dataclass(frozen=True)
class Kind:
    """One row of the table.

    Attributes:
        name: the kind of bad input (the test id).
        make: builds the input. Go-on rows write their files under ``Inputs.images`` and return
            their pairs-file line; stop rows return the CLI overrides that carry the input.
        message: fragments that the error (go-on: the row's ``error``; stop: the stderr line)
            must all contain.
        outcome: FAILS | READ | DROPPED | STOPS.
        names_line: the message also names ``pairs.txt:<line>`` (pairs-file problems).
        bad_image: the image whose extract row fails (image problems), or None.
        like: READ rows: the good pair whose matches this pair must reproduce exactly.
        needs_ray: a stop row only a running Ray cluster can check (it starts before any stage).
    """

    name: str
    make: Callable[[Inputs], Any]
    message: tuple[str, ...]
    outcome: str
    names_line: bool = False
    bad_image: str | None = None
    like: str | None = None
    needs_ray: bool = False


# --------------------------------------------------------------------------- how inputs are made


def fmt(values) -> str:
    return " ".join(repr(float(v)) for v in np.asarray(values).ravel())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # a real bomb would inflate to width*height*3 bytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_missing(x: Inputs) -> str:
    return f"{x.g0} missing.jpg {x.gt}"


def make_corrupt(x: Inputs) -> str:
    _write(x.images / "corrupt.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return f"{x.g0} corrupt.jpg {x.gt}"


def make_empty(x: Inputs) -> str:
    _write(x.images / "empty.jpg", b"")
    return f"empty.jpg {x.g1} {x.gt}"


def make_bomb(x: Inputs) -> str:
    _write(x.images / "bomb.png", png_header_only(60_000, 60_000))
    return f"{x.g0} bomb.png {x.gt}"


def make_directory(x: Inputs) -> str:
    (x.images / "folder.jpg").mkdir(exist_ok=True)
    return f"{x.g0} folder.jpg {x.gt}"


def make_truncated(x: Inputs) -> str:
    data = (x.images / x.g0).read_bytes()
    _write(x.images / "truncated.jpg", data[: len(data) // 2])  # cut in the middle of the scan
    return f"truncated.jpg {x.g1} {x.gt}"


def make_16bit(x: Inputs) -> str:
    rgb = load_image(str(x.images / x.g1))
    cv2.imwrite(str(x.images / "sixteen.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    return f"{x.g0} sixteen.png {x.gt}"


def make_grey(x: Inputs) -> str:
    grey = cv2.cvtColor(load_image(str(x.images / x.g0)), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(x.images / "grey.png"), grey)  # one channel, lossless
    return f"grey.png {x.g1} {x.gt}"


def make_nan_intrinsics(x: Inputs) -> str:
    return f"{x.g1} {x.g0} 0 0 nan 0 160 0 500 120 0 0 1 {x.k1} {x.t}"


def make_malformed(x: Inputs) -> str:
    return f"{x.h1} {x.h0} 0 0 this line is broken"


def make_self_pair(x: Inputs) -> str:
    return f"{x.g0} {x.g0} {x.gt}"


def make_duplicate(x: Inputs) -> str:
    return f"{x.g0} {x.g1} {x.gt}"  # the first good pair's line, again


def overrides(*items: str) -> Callable[[Inputs], list[str]]:
    """A stop row's maker that needs no files: the config overrides it adds to the job."""
    return lambda x: list(items)


class _Payload:
    """Unpickling this object would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_pickled_code(x: Inputs) -> list[str]:
    import torch

    path = x.root / "evil.pt"
    torch.save({"conv.weight": torch.zeros(2, 2), "extra": _Payload(x.marker)}, path)
    return ["extract.method=pump", f"extract.weights={path}"]


def _scene_with_camera(x: Inputs, model: str, params: list[float]) -> list[str]:
    """A copy of the demo scene whose camera 3 is ``model`` with ``params`` (COLMAP order)."""
    import pycolmap

    scene = x.root / "scenes" / "demo"
    shutil.copytree(x.demo_root / "demo", scene)
    rec = pycolmap.Reconstruction(str(scene / "sparse"))
    cam = rec.camera(3)
    cam.model = getattr(pycolmap.CameraModelId, model)
    cam.params = params
    rec.write(str(scene / "sparse"))
    return ["data.source=megadepth", f"data.root={scene.parent}"]


def make_fisheye_scene(x: Inputs) -> list[str]:
    return _scene_with_camera(x, "OPENCV_FISHEYE", [300.0, 300.0, 160.0, 120.0, 0.1, 0.01, 0.0, 0.0])


def make_distorted_radial_scene(x: Inputs) -> list[str]:
    return _scene_with_camera(x, "RADIAL", [300.0, 160.0, 120.0, -0.12, 0.02])


# --------------------------------------------------------------------------- the table

TABLE: list[Kind] = [
    # images: the extract row fails, and every pair using the image fails with its reason
    Kind("missing image", make_missing, ("missing.jpg", "file not found"), FAILS, bad_image="missing.jpg"),
    Kind("corrupt image", make_corrupt, ("corrupt.jpg", "not a readable image"), FAILS, bad_image="corrupt.jpg"),
    Kind("empty image file", make_empty, ("empty.jpg", "empty file (0 bytes)"), FAILS, bad_image="empty.jpg"),
    Kind("decompression bomb", make_bomb, ("bomb.png", "60000x60000", "exceeds the limit"), FAILS,
         bad_image="bomb.png"),
    Kind("image path is a directory", make_directory, ("folder.jpg", "is a directory, not an image file"), FAILS,
         bad_image="folder.jpg"),
    Kind("truncated JPEG", make_truncated, ("truncated.jpg", "truncated JPEG", "no end-of-image marker"), FAILS,
         bad_image="truncated.jpg"),
    Kind("16-bit PNG", make_16bit, (), READ, like="first good pair"),
    Kind("greyscale image where RGB is expected", make_grey, (), READ, like="first good pair"),
    # pairs-file lines: the pair's row fails (or the line is dropped), naming file:line
    Kind("NaN intrinsics", make_nan_intrinsics, ("K0 has non-finite values (NaN/inf)",), FAILS, names_line=True),
    Kind("malformed pairs line", make_malformed, ("expected 2 or 4 or 38 fields, got 8",), FAILS, names_line=True),
    Kind("self-pair", make_self_pair, ("self-pair", "is paired with itself"), FAILS, names_line=True),
    Kind("duplicate pair", make_duplicate, ("duplicate pair", "(first on line 1); dropped"), DROPPED, names_line=True),
    # config, storage, weights, cluster, data source: stop before any work
    Kind("unknown config key", overrides("extract.max_keypoint=5"), ("extract.max_keypoint: unknown config key",), STOPS),
    Kind("unwritable storage", overrides("storage=file:///proc/matchmill-not-writable"), ("matchmill-not-writable", "not writable"), STOPS),
    Kind("memory:// storage", overrides("storage=memory://x"), ("memory://", "Ray workers cannot see it"), STOPS),
    Kind("storage URL without bucket", overrides("storage=s3://"), ("storage 's3://' has no bucket",), STOPS),
    Kind("storage URL with an empty bucket", overrides("storage=s3:///runs"), ("storage 's3:///runs' has no bucket",), STOPS),
    # issue 19: values that used to pass and then wrote in the wrong place or computed nonsense
    Kind("storage URL without //", overrides("storage=s3:/bucket"), ("storage 's3:/bucket'", "did you mean s3://bucket?"),
         STOPS),
    Kind("storage URL with an unknown protocol", overrides("storage=s4://bucket"), ("unknown protocol 's4'",), STOPS),
    Kind("run name leaving the storage folder", overrides("run_name=.."),
         ("run_name: '..' must not be '.' or '..'",), STOPS),
    Kind("number out of its bounds", overrides("verify.max_iters=-5"), ("verify.max_iters: must be >= 1, got -5",), STOPS),
    Kind("key given twice on the command line", overrides("verify.max_iters=5", "verify.max_iters=7"),
         ("verify.max_iters: given twice on the command line",), STOPS),
    Kind("weights with pickled code", make_pickled_code,
         ("extract.weights: refusing to load", "evil.pt", "holds pickled objects/code", "global posix.system"), STOPS),
    Kind("COLMAP fisheye camera", make_fisheye_scene,
         ("scene 'demo'", "camera 3 is OPENCV_FISHEYE, which is not supported",
          "supported: SIMPLE_PINHOLE, PINHOLE, and SIMPLE_RADIAL / RADIAL with zero distortion"), STOPS),
    Kind("COLMAP radial camera with distortion", make_distorted_radial_scene,
         ("scene 'demo'", "camera 3 is RADIAL with distortion [-0.12, 0.02], which is not supported",
          "pairs.exclude_scenes"), STOPS),
    Kind("GPU request on a CPU cluster", overrides("extract.num_gpus=1"),
         ("extract.num_gpus=1 but the Ray cluster has 0 GPU(s)", "set extract.num_gpus=0"), STOPS,
         needs_ray=True),
]

GOES_ON = [k for k in TABLE if k.outcome != STOPS]
STOPPING = [k for k in TABLE if k.outcome == STOPS]


def params(kinds: list[Kind]) -> list:
    return [pytest.param(k, id=k.name, marks=[pytest.mark.ray] if k.needs_ray else []) for k in kinds]


def test_the_table_covers_every_kind():
    assert len(TABLE) >= 15 and len({k.name for k in TABLE}) == len(TABLE)
    assert {k.outcome for k in TABLE} == {FAILS, READ, DROPPED, STOPS}


# --------------------------------------------------------------------------- go-on rows: one shared run


@dataclass
class SharedRun:
    """The one pipeline run over every go-on row, and what the checks read from it."""

    inputs: Inputs
    lines: list[str]  # the pairs file, line i + 1 = lines[i]
    line_of: dict[str, int]  # kind name -> its line number
    warnings: list[str]
    stages: dict[str, list[dict]]  # stage -> rows
    metrics: dict[str, float]

    def row(self, stage: str, key: str) -> dict:
        rows = [r for r in self.stages[stage] if r["pair_id"] == key]
        assert len(rows) == 1, (stage, key, len(rows))
        return rows[0]


GOOD_LINES = 2  # the first lines of the shared pairs file are two good pairs


def key_of(line: str) -> str:
    return make_pair_id(*line.split()[:2])


def good_inputs(root: Path, demo_root: Path) -> Inputs:
    """An image folder with two good demo pairs; their lines are :func:`good_lines`."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    good = select_megadepth_pairs(demo_root, {"max_pairs_per_scene": 2, "symmetric": False})[:2]
    for row in good:
        for side in ("0", "1"):
            shutil.copy(row["path" + side], images / Path(row["path" + side]).name)
    g, h = good
    return Inputs(root=root, images=images, demo_root=demo_root,
                  g0=Path(g["path0"]).name, g1=Path(g["path1"]).name,
                  gt=f"0 0 {fmt(g['K0'])} {fmt(g['K1'])} {fmt(g['T_0to1'])}",
                  h0=Path(h["path0"]).name, h1=Path(h["path1"]).name,
                  h_gt=f"0 0 {fmt(h['K0'])} {fmt(h['K1'])} {fmt(h['T_0to1'])}",
                  k1=fmt(g["K1"]), t=fmt(g["T_0to1"]))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, demo_root, ray_local) -> SharedRun:
    root = tmp_path_factory.mktemp("bad_inputs")
    x = good_inputs(root, demo_root)
    lines = [f"{x.g0} {x.g1} {x.gt}", f"{x.h0} {x.h1} {x.h_gt}"]
    assert len(lines) == GOOD_LINES
    line_of = {}
    for kind in GOES_ON:
        lines.append(kind.make(x))
        line_of[kind.name] = len(lines)
    pairs_file = root / "pairs.txt"
    pairs_file.write_text("\n".join(lines) + "\n")
    conf = load_config(DEMO_CONFIG, [f"storage=file://{root}/runs", "data.source=pairs_file",
                                     f"data.pairs_file={pairs_file}", f"data.images_dir={x.images}"])
    collect = _Collect()
    logger = logging.getLogger("matchmill")
    logger.addHandler(collect)
    try:
        result = run_pipeline(conf, echo=lambda _: None)
    finally:
        logger.removeHandler(collect)
    stages = {s: read_stage(result.run_url, s).to_pylist() for s in ("pairs", "extract", "verify")}
    return SharedRun(x, lines, line_of, collect.messages, stages, result.metrics)


def _good_pair_lines(run: SharedRun) -> dict[str, str]:
    return {"first good pair": run.lines[0], "second good pair": run.lines[1]}


@pytest.mark.ray
@pytest.mark.parametrize("kind", params(GOES_ON))
def test_a_bad_row_is_handled_alone(kind: Kind, shared_run: SharedRun):
    run = shared_run
    lineno = run.line_of[kind.name]
    line = run.lines[lineno - 1]
    where = f"pairs.txt:{lineno}"
    if kind.outcome == FAILS:
        row = run.row("verify", key_of(line))
        assert row["status"] == "failed"
        for fragment in kind.message + ((where,) if kind.names_line else ()):
            assert fragment in row["error"], (fragment, row["error"])
        assert "\n" not in row["error"]
    elif kind.outcome == READ:
        row, like = run.row("verify", key_of(line)), run.row("verify", key_of(_good_pair_lines(run)[kind.like]))
        assert row["status"] == "ok" == like["status"], row["error"]
        # the converted image gives exactly the original's features, hence the same matches
        assert row["num_matches"] == like["num_matches"] > 20
        np.testing.assert_array_equal(np.asarray(row["matches"]), np.asarray(like["matches"]))
        assert row["num_inliers"] >= 0.9 * like["num_inliers"]
    else:  # DROPPED: the first line with that key wins, the duplicate is named in a warning
        assert kind.outcome == DROPPED
        found = [w for w in run.warnings if where in w]
        assert len(found) == 1, run.warnings
        for fragment in kind.message + (key_of(line),):
            assert fragment in found[0], (fragment, found[0])
        assert run.row("verify", key_of(line))["status"] == "ok"


@pytest.mark.ray
def test_nothing_is_lost(shared_run: SharedRun):
    run = shared_run
    keys = list(dict.fromkeys(key_of(line) for line in run.lines))  # distinct, in file order
    for stage in ("pairs", "verify"):
        ids = [r["pair_id"] for r in run.stages[stage]]
        assert sorted(ids) == sorted(keys), stage  # every key, each exactly once
    failing = {key_of(run.lines[run.line_of[k.name] - 1]) for k in GOES_ON if k.outcome == FAILS}
    for row in run.stages["verify"]:
        if row["pair_id"] in failing:
            assert row["status"] == "failed"
        else:  # the good pairs, the converted images, the duplicate's first line
            assert row["status"] == "ok" and row["num_matches"] > 20 and row["num_inliers"] > 10, row["pair_id"]
    images = [r["image_id"] for r in run.stages["extract"]]
    assert len(images) == len(set(images))
    failed_images = {r["image_id"] for r in run.stages["extract"] if r["status"] == "failed"}
    assert failed_images == {k.bad_image for k in GOES_ON if k.bad_image}
    assert run.metrics["num_pairs"] == len(keys) and run.metrics["num_failed"] == len(failing)


def test_the_image_loader_names_the_file_and_reason(tmp_path, demo_root):
    """The image rows of the table, straight through :func:`load_image` (no Ray)."""
    x = good_inputs(tmp_path, demo_root)
    for kind in TABLE:
        if kind.bad_image is None and kind.outcome != READ:
            continue
        line = kind.make(x)
        names = line.split()[:2]
        if kind.bad_image:
            with pytest.raises(ImageError) as err:
                load_image(str(x.images / kind.bad_image), max_pixels=10_000_000)
            assert str(err.value).startswith(str(x.images / kind.bad_image))
            assert all(f in str(err.value) for f in kind.message), (kind.name, str(err.value))
        else:  # 16-bit or greyscale: 8-bit RGB equal to the original's
            converted = next(n for n in names if n not in (x.g0, x.g1))
            original = load_image(str(x.images / (x.g1 if converted == "sixteen.png" else x.g0)))
            image = load_image(str(x.images / converted))
            assert image.dtype == np.uint8 and image.shape == original.shape
            if converted == "sixteen.png":
                np.testing.assert_array_equal(image, original)  # 257 * v -> v: not wrapped, not clipped
            else:
                np.testing.assert_array_equal(image[..., 0], image[..., 2])
                np.testing.assert_array_equal(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
                                              cv2.cvtColor(original, cv2.COLOR_RGB2GRAY))


def test_a_16bit_image_is_scaled_by_its_high_byte(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 3, dtype=np.float64).round().astype(np.uint16).reshape(16, 16, 3)
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    image = load_image(str(tmp_path / "ramp.png"))
    np.testing.assert_array_equal(image, (ramp >> 8)[..., ::-1])  # RGB; 65535 -> 255, never wrapped
    assert image.max() == 255 and image.min() == 0


# --------------------------------------------------------------------------- stop rows: the CLI


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.mark.parametrize("kind", params(STOPPING))
def test_a_bad_job_stops_before_any_work(kind: Kind, tmp_path, demo_root, capsys, monkeypatch, request):
    if kind.needs_ray:
        request.getfixturevalue("ray_local")
    cwd = tmp_path / "cwd"  # relative storage (or a URL mistaken for a path) would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    x = Inputs(root=tmp_path, images=tmp_path / "images", demo_root=demo_root)
    storage = tmp_path / "runs"
    overrides = kind.make(x)
    # a row's own storage replaces the test's: a key given twice on the command line is itself a stop row
    given = {o.split("=", 1)[0] for o in overrides}
    base = [o for o in (f"storage=file://{storage}", f"data.root={demo_root}") if o.split("=", 1)[0] not in given]
    capsys.readouterr()
    code = cli_main(["run", str(DEMO_CONFIG), *base, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    for fragment in kind.message:
        assert fragment in err[0], (fragment, err[0])
    assert not x.marker.exists()  # nothing in the input ran
    assert not any(cwd.iterdir())  # no ./runs, no local folder "s3:"
    assert _files_under(storage) == []  # no stage, marker or artifact written (at most the empty run folder)


def test_the_scene_reader_refuses_the_same_cameras(tmp_path, demo_root):
    """Code that reads a COLMAP model directly (benchmarks, depth overlap) refuses it too."""
    for i, make in enumerate((make_fisheye_scene, make_distorted_radial_scene)):
        x = Inputs(root=tmp_path / str(i), images=tmp_path, demo_root=demo_root)
        make(x)
        with pytest.raises(ValueError, match=r"camera 3 of image '.*' is (OPENCV_FISHEYE|RADIAL).*not supported"):
            read_colmap_scene(x.root / "scenes" / "demo" / "sparse")
