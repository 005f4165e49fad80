"""``matchmill viz pyramid IMG1 IMG2 --x X --y Y --out PNG`` and ``matchmill viz matches RUN_URL PAIR_ID --out PNG``."""

from __future__ import annotations

import argparse
import sys

#: The shipped ConvMixer (matchmill/weights/MODEL_CARD.md), for the CPU-sized net.
SHIPPED_PUMP = "shipped:pump-convmixer-cpu"

#: The one stderr line of ``viz pyramid`` without ``--weights``.
RANDOM_WEIGHTS_WARNING = (f"matchmill viz: warning: no --weights: the ConvMixer has seeded random weights, so the maps "
                          f"show no learned matching; for the shipped ones add --weights {SHIPPED_PUMP}")


def register(sub) -> None:
    viz = sub.add_parser("viz", help="draw the PUMP pyramid for a pixel, or a pair's matches",
                         description="Draw pictures of what the pipeline does: the PUMP correlation pyramid for one "
                                     "pixel (pyramid), or one pair's matches of a run (matches). "
                                     "Example: matchmill viz matches demo 'img_a|img_b' --out pair.png")
    kinds = viz.add_subparsers(dest="viz_kind", required=True)

    pyr = kinds.add_parser("pyramid", help="consolidated correlation maps + top-3 per level for one pixel",
                           description="Draw PUMP's consolidated correlation map and top-3 matches at every pyramid "
                                       "level for one pixel of image 1. Without --weights the net has seeded random "
                                       "weights (a warning says so); the shipped ones: --weights "
                                       "shipped:pump-convmixer-cpu. Example: matchmill viz pyramid a.jpg b.jpg --x 160 "
                                       "--y 120 --out pyr.png --weights shipped:pump-convmixer-cpu")
    pyr.add_argument("image1")
    pyr.add_argument("image2")
    pyr.add_argument("--x", type=float, required=True, help="pixel of image 1 (original pixels)")
    pyr.add_argument("--y", type=float, required=True)
    pyr.add_argument("--out", required=True, help="output PNG")
    pyr.add_argument("--resize", type=int, default=320, help="long side the images are resized to (default 320)")
    pyr.add_argument("--weights", default=None,
                     help=f"ConvMixer weights, a file or {SHIPPED_PUMP} (default: seeded random init, with a warning)")
    pyr.add_argument("--full-size", action="store_true", help="the paper's width-512 net instead of the CPU-sized one")
    pyr.set_defaults(func=cmd_pyramid)

    mat = kinds.add_parser("matches", help="draw one pair's matches of a run",
                           description="Draw one pair's matches of a run side by side (RANSAC inliers and outliers "
                                       "in their own colours). Example: matchmill viz matches demo 'img_a|img_b' "
                                       "--out pair.png")
    mat.add_argument("run_url")
    mat.add_argument("pair_id", help='e.g. "img_a|img_b" (see `matchmill show RUN verify`)')
    mat.add_argument("--out", required=True, help="output PNG")
    mat.add_argument("--stage", default="verify", choices=("verify", "refine", "propose"))
    mat.add_argument("--max-lines", type=int, default=300, help="draw at most this many matches")
    mat.set_defaults(func=cmd_matches)


def _one_line_errors(fn):
    """Bad input (a pixel outside the image, an unreadable image, a pair not in the run) -> one line, exit 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ValueError as exc:
            print(f"matchmill viz: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


@_one_line_errors
def cmd_pyramid(args: argparse.Namespace) -> int:
    from matchmill.datasets.image_io import load_image  # lazy: start-up time (cv2)

    from .pyramid import draw_pyramid, prepare, pump_net, pyramid_levels  # lazy: start-up time (torch)

    image1, image2 = load_image(args.image1), load_image(args.image2)
    net = pump_net(args.weights, cpu_sized=not args.full_size)
    multiple = int(getattr(net, "multiple", 8))
    small1, small2 = prepare(image1, args.resize, multiple), prepare(image2, args.resize, multiple)
    sx, sy = small1.shape[1] / image1.shape[1], small1.shape[0] / image1.shape[0]
    x, y = (args.x + 0.5) * sx - 0.5, (args.y + 0.5) * sy - 0.5
    levels = pyramid_levels(net, small1, small2, x, y)
    if not args.weights:  # after the input checks: bad input stays one line
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
    draw_pyramid(small1, small2, x, y, levels, args.out)
    print(f"{args.out}: {len(levels)} levels for pixel ({args.x:g}, {args.y:g})")
    return 0


@_one_line_errors
def cmd_matches(args: argparse.Namespace) -> int:
    from .matches import draw_pair  # lazy: start-up time (cv2)

    counts = draw_pair(args.run_url, args.pair_id, args.out, stage=args.stage, max_lines=args.max_lines)
    inl = "" if counts["inliers"] is None else f", {counts['inliers']} inliers"
    flag = {True: ", verified", False: f", UNVERIFIED: {counts['reason']}", None: ""}[counts["verified"]]
    print(f"{args.out}: {counts['matches']} matches{inl}{flag}")
    return 0
