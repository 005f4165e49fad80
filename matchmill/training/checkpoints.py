"""Training checkpoints: what one holds, how it is written, found and read back.

A checkpoint is a folder (Ray Train uploads it to ``<storage>/<run_name>/checkpoint_<time>/``)::

    model.safetensors   the trained net's state dict (CPU, contiguous): loads as the stage's
                        ``*.weights`` (``extract.weights``, ``propose.weights``, ``refine.weights``)
    optimizer.pt        {"optimizer": state dict, "scaler": AMP grad-scaler state}; torch.save of
                        tensors and plain values only, read back with weights_only=True
    rng.safetensors     torch CPU (and CUDA) generator states
    state.json          step, epoch, model, config hash, validation metrics, best value so far
    config.json         the whole resolved job config

Beside the checkpoints, ``<run>/best/`` holds ``model.safetensors`` and ``state.json`` of the best
validation so far (kept whatever ``train.keep_last`` prunes), and ``<run>/train.json`` says the run
is a training run (model, config hash).
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from matchmill.manifests.storage import exists, read_bytes, url_to_fs, write_bytes_atomic
from matchmill.models.weights import read_state_dict
from matchmill.weights import is_shipped, shipped_path

__all__ = [
    "MODEL_FILE",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "weights_file",
    "write_best",
    "read_best",
    "read_train_marker",
    "write_train_marker",
]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
MARKER_FILE = "train.json"


def _state_dict_cpu(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}


def save_checkpoint(
    folder: str | Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler_state: dict[str, Any] | None,
    state: dict[str, Any],
    conf: dict[str, Any],
) -> Path:
    """Write the checkpoint files into a local ``folder`` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict_cpu(net), str(folder / MODEL_FILE), metadata={"model": str(state.get("model")), "step": str(state.get("step"))})
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler_state or {}}, str(folder / OPTIMIZER_FILE))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(folder / RNG_FILE))
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True, default=float))
    (folder / CONFIG_FILE).write_text(json.dumps(conf, indent=1, sort_keys=True, default=str))
    return folder


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a local checkpoint folder: ``model`` (state dict), ``optimizer``, ``scaler``, ``rng``, ``state``.

    Everything is read weights-only: a file holding pickled code is refused.
    """
    folder = Path(folder)
    model = read_state_dict(folder / MODEL_FILE)
    try:
        opt = torch.load(str(folder / OPTIMIZER_FILE), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read {folder / OPTIMIZER_FILE} weights-only: {exc}") from exc
    return {
        "model": model,
        "optimizer": opt["optimizer"],
        "scaler": opt.get("scaler") or {},
        "rng": load_file(str(folder / RNG_FILE)),
        "state": json.loads((folder / STATE_FILE).read_text()),
    }


def weights_file(source: str) -> str:
    """A weights file from ``--from``: the file itself, or ``model.safetensors`` of a checkpoint folder
    (local or any fsspec URL), or of a run folder's ``best/``; ``shipped:NAME`` is a shipped file."""
    if is_shipped(source):
        return str(shipped_path(source))
    fs, path = url_to_fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"train.from: {source} does not exist")
    if fs.isfile(path):
        return source
    for candidate in (MODEL_FILE, posixpath.join("best", MODEL_FILE)):
        if fs.exists(posixpath.join(path, candidate)):
            return source.rstrip("/") + "/" + candidate
    raise FileNotFoundError(f"train.from: {source} is a folder without {MODEL_FILE} (nor best/{MODEL_FILE})")


def list_checkpoints(run_url: str) -> list[dict[str, Any]]:
    """The run's checkpoints, oldest step first: ``{"url", "step", "epoch", "val", ...}`` from each state.json."""
    fs, path = url_to_fs(run_url)
    fs.invalidate_cache(path)  # the workers wrote the checkpoints: a cached listing would miss them
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        base = posixpath.basename(entry["name"].rstrip("/"))
        if not base.startswith("checkpoint_") or entry.get("type") != "directory":
            continue
        url = run_url.rstrip("/") + "/" + base
        try:
            state = json.loads(read_bytes(url + "/" + STATE_FILE))
        except (OSError, ValueError):
            continue  # an upload that never finished
        out.append({"url": url, **state})
    return sorted(out, key=lambda s: (s.get("step", -1), s["url"]))


def write_best(run_url: str, local_checkpoint: str | Path) -> None:
    """Copy the model and state of a local checkpoint folder to ``<run>/best/`` (each file atomically)."""
    local_checkpoint = Path(local_checkpoint)
    for name in (MODEL_FILE, STATE_FILE):
        write_bytes_atomic(f"{run_url.rstrip('/')}/best/{name}", (local_checkpoint / name).read_bytes())


def read_best(run_url: str) -> dict[str, Any] | None:
    url = f"{run_url.rstrip('/')}/best/{STATE_FILE}"
    return json.loads(read_bytes(url)) if exists(url) else None


def write_train_marker(run_url: str, info: dict[str, Any]) -> None:
    write_bytes_atomic(f"{run_url.rstrip('/')}/{MARKER_FILE}", json.dumps(info, indent=1, sort_keys=True, default=str).encode())


def read_train_marker(run_url: str) -> dict[str, Any] | None:
    url = f"{run_url.rstrip('/')}/{MARKER_FILE}"
    return json.loads(read_bytes(url)) if exists(url) else None


