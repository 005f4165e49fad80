"""Pack a trained net as shipped weights: ``python -m matchmill.evaluation.release.pack SOURCE NAME``.

SOURCE is a weights file, a checkpoint folder or a training run (its ``best/``; a bare run name is
the run under the default storage, :func:`matchmill.config.resolve_run_arg`); NAME one of
:data:`matchmill.weights.SHIPPED`. Floating-point tensors are stored as fp16 (loading casts them
back to the module's dtype), integers unchanged; the safetensors metadata records the source, its
step and validation metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

import matchmill.weights as shipped_weights
from matchmill.config import resolve_run_arg
from matchmill.manifests.storage import exists, read_bytes
from matchmill.models.weights import read_state_dict
from matchmill.training.checkpoints import weights_file
from matchmill.weights import SHIPPED


def pack(source: str, name: str, out_dir: str | Path | None = None) -> Path:
    """Write ``<out_dir>/<file of NAME>`` from ``source``; returns the path."""
    if name not in SHIPPED:
        raise ValueError(f"unknown name {name!r}; known: {', '.join(sorted(SHIPPED))}")
    path = weights_file(source)
    state = read_state_dict(path)
    packed = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    meta = {"source": str(source), "name": name}
    state_json = path.rsplit("/", 1)[0] + "/state.json"
    if exists(state_json):
        info = json.loads(read_bytes(state_json))
        meta.update({k: json.dumps(info[k]) for k in ("step", "best", "metric") if k in info})
    out = Path(out_dir or Path(shipped_weights.__file__).resolve().parent) / SHIPPED[name][0]
    save_file(packed, str(out), metadata=meta)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matchmill.evaluation.release.pack", description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    out = pack(resolve_run_arg(args.source), args.name, args.out_dir)
    print(f"{out} ({out.stat().st_size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
