"""``matchmill train pump|ncnet|patch2pix CONFIG [k=v ...] [--address A] [--from CKPT]`` and
``matchmill train-data OUT`` (the training set the shipped weights are trained on)."""

from __future__ import annotations

import argparse
import sys

from matchmill.config import ConfigError
from matchmill.manifests.storage import StorageError
from matchmill.pipeline.runtime import ResourceError
from matchmill.pipeline.verbosity import add_verbose_argument

from .config import MODELS, load_train_config


def register(sub) -> None:
    p = sub.add_parser("train", help="train PUMP, NCNet or Patch2Pix on Ray Train (resumes a run of the same name)",
                       description="Train one model (pump, ncnet or patch2pix) on Ray Train from a YAML job file; "
                                   "rerunning the same command resumes the run of that name from its last checkpoint. "
                                   "Example: matchmill train pump configs/train-pump.yaml train.steps=500")
    p.add_argument("model", choices=MODELS, metavar="MODEL", help="the model to train: %(choices)s (TASKS, matchmill/training/tasks.py)")
    p.add_argument("config", help="YAML job file (e.g. configs/train-pump.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 scaling.workers=2")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    p.add_argument("--from", dest="from_weights", default=None,
                   help="fine-tune: start the net from these weights (a file, a checkpoint folder or a run's best/)")
    add_verbose_argument(p)  # the same -v as ``matchmill -v train``; the two counts add up
    p.set_defaults(func=cmd_train)

    d = sub.add_parser("train-data", help="write the training set: demo scenes of seeds 1000.. + scikit-image photos, "
                                          "pairs.parquet and images.parquet (matchmill/training/training_set.py)",
                        description="Write the training set the shipped weights were trained on: demo scenes of seeds "
                                    "1000 and up, scikit-image photographs, pairs.parquet and images.parquet. "
                                    "Example: matchmill train-data runs/training-data")
    d.add_argument("out", help="output folder (e.g. runs/training-data)")
    d.add_argument("--scenes", type=int, default=32, help="demo scenes (seeds 1000 ..), 14 views each")
    d.add_argument("--cameras", type=int, default=14)
    d.add_argument("--width", type=int, default=320)
    d.add_argument("--height", type=int, default=240)
    d.add_argument("--pairs-per-scene", type=int, default=60)
    d.add_argument("--no-photos", action="store_true", help="leave out the scikit-image photographs")
    d.set_defaults(func=cmd_train_data)


def cmd_train_data(args: argparse.Namespace) -> int:
    from .training_set import write_training_set  # lazy: start-up time (demo renderer, scikit-image)

    try:
        info = write_training_set(args.out, num_scenes=args.scenes, num_cameras=args.cameras, width=args.width,
                                  height=args.height, photos=not args.no_photos,
                                  max_pairs_per_scene=args.pairs_per_scene)
    except (ImportError, ValueError) as exc:
        print(f"matchmill: error: {exc}", file=sys.stderr)
        return 2
    print(f"training set in {args.out}: {info['images']} images, {info['pairs']} pairs "
          f"(seeds {info['seeds'][0]}..{info['seeds'][-1]}); pairs.parquet, images.parquet")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import TrainingStopped, run_training  # lazy: start-up time (torch)

    overrides = list(args.overrides)
    if args.from_weights:
        overrides.append(f"train.from={args.from_weights}")
    conf = load_train_config(args.model, args.config, overrides)
    try:
        result = run_training(conf, address=args.address, verbose=bool(getattr(args, "verbose", False)))
    except (ConfigError, StorageError, ResourceError):
        raise  # one line and exit code 2 from the CLI's common handler
    except TrainingStopped as exc:
        print(f"matchmill: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a worker failed for good: its error, in one line
        print(f"matchmill: error: {exc}", file=sys.stderr)
        return 1
    print(f"run: {result.run_url}")
    print(f"step: {result.step}")
    val = {k[4:]: v for k, v in result.metrics.items() if k.startswith("val/")}
    if val:
        print("validation: " + "  ".join(f"{k} {v:.4g}" for k, v in val.items()))
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}/model.safetensors")
    if result.best:
        print(f"best: {result.run_url}/best/model.safetensors ({result.best.get('metric')} "
              f"{result.best.get('best')}, step {result.best.get('step')})")
    return 0
