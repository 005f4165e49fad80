"""``matchmill match FOLDER``: match a folder of one's own photos in one command.

A shortcut for ``matchmill run configs/folder.yaml data.root=FOLDER run_name=NAME``: it builds the
folder recipe's job (:mod:`matchmill.pipeline.folder_job`), validates it like any job, checks the
folder holds images, prints one line of what it will do, and runs it with the same runner as
``matchmill run`` (:func:`matchmill.pipeline.commands.run_job`). The result is a normal run:
``status``, ``show``, ``export``, ``viz`` and ``compare`` read it by name, and the same command again
(from any working directory) resumes it. Exit codes as ``matchmill run``.
"""

from __future__ import annotations

import argparse

from matchmill.config import default_storage

from .commands import run_job
from .config import resolve, run_url
from .folder_job import describe_folder, folder_job
from .verbosity import add_verbose_argument

DESCRIPTION = """\
Match every image of FOLDER (subfolders included) with the folder recipe: SIFT at up to 1600 px,
every pair up to 60 images, else each image with its 20 most similar (retrieval); --sequential for
video frames. Writes a normal run named after the folder under the default storage
($MATCHMILL_RUNS, else ~/.local/share/matchmill/runs; --out to put it elsewhere); the same command
again resumes it. The same job as a file: configs/folder.yaml."""

EPILOG = """\
examples:
  matchmill match ~/photos/rome                         # run "rome": then matchmill status rome
  matchmill match frames/ --sequential --loop-every 50  # video frames: next 10 + loop closure
  matchmill match photos --out ./runs extract.resize_max=1024   # another storage, a dotted override
  matchmill export rome rome-colmap --format colmap     # a COLMAP database of the verified matches"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``matchmill match`` (``interruptible``: Ctrl-C / SIGTERM, one line, exit 130 / 143)."""
    match = sub.add_parser("match", help="match a folder of your own images in one command (the folder recipe)",
                           description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    match.add_argument("folder", help="image folder (local path or fsspec URL); every .jpg/.png/... under it")
    match.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, e.g. extract.resize_max=1024")
    match.add_argument("--out", default=None, metavar="URL_OR_DIR",
                       help="storage the run goes under (a relative folder: the working directory's); "
                            "default: $MATCHMILL_RUNS, else ~/.local/share/matchmill/runs")
    match.add_argument("--name", default=None, help="run name (default: the folder's name)")
    match.add_argument("--method", default=None, metavar="PRESET",
                       help="chain preset (default sift; e.g. pump-sift-mnn, pump-ncnet-patch2pix: at 640 px)")
    match.add_argument("--sequential", action="store_true",
                       help="video frames (names sorted): pair each frame with the next --window ones")
    match.add_argument("--window", type=int, default=None, help="--sequential: frames paired ahead (default 10)")
    match.add_argument("--loop-every", type=int, default=None, metavar="N",
                       help="--sequential: also pair every N-th frame with every other N-th one (loop closure)")
    match.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    match.add_argument("--until", default=None, help="stop after this stage commits (e.g. extract)")
    match.add_argument("--overwrite", action="store_true",
                       help="replace stages committed with another config (default: refuse and touch nothing)")
    add_verbose_argument(match)
    match.set_defaults(func=cmd_match, interruptible=True)


def cmd_match(args: argparse.Namespace) -> int:
    from matchmill.datasets.image_sources import check_folder_images  # lazy: start-up time (cv2, PIL)

    conf = resolve(folder_job(args.folder, out=args.out, method=args.method, sequential=args.sequential,
                              window=args.window, loop_every=args.loop_every, run_name=args.name,
                              overrides=list(args.overrides)))
    count = check_folder_images(conf["data"]["root"], int(conf["data"]["max_image_pixels"]))
    print(describe_folder(args.folder, conf, count))
    code = run_job(conf, args)
    if code == 0 and args.until is None:
        url = run_url(conf)
        ref = conf["run_name"] if url == f"{default_storage()}/{conf['run_name']}" else url
        print(f"next: matchmill show {ref} verify; matchmill export {ref} {conf['run_name']}-colmap --format colmap")
    return code
