"""Weights that ship with matchmill (trained here, on data the project may use: ``MODEL_CARD.md``).

A config names one as ``shipped:NAME`` in any ``*.weights`` key (``extract.weights``,
``propose.weights``, ``refine.weights``) or training key (``backbone_weights``, ``ncnet_weights``,
``train.from``); :func:`shipped_path` resolves it to the file inside the installed package. Files
are fp16 safetensors state dicts of matchmill's own modules (loaded strictly, cast to the module's
dtype).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED", "SCHEME", "shipped_path", "is_shipped"]

SCHEME = "shipped:"

#: NAME -> (file, what it is). The model card says how each was trained and how well it does.
SHIPPED: dict[str, tuple[str, str]] = {
    "pump-convmixer-cpu": ("pump-convmixer-cpu.safetensors",
                           "PUMP ConvMixer, width 128 (extract.method=pump, cpu_sized=true)"),
    "ncnet-pump-cpu": ("ncnet-pump-cpu.safetensors",
                       "NC layers on the PUMP pyramid's f4 (propose.method=ncnet after extract.method=pump pyramid=true)"),
    "patch2pix-pump-cpu": ("patch2pix-pump-cpu.safetensors",
                           "Patch2Pix regressors, width 128, on the PUMP pyramid f0..f3 (refine.method=patch2pix)"),
    "ncnet-resnet34-seed0": ("ncnet-resnet34-seed0.safetensors",
                             "NC layers on the seed-0 random ResNet34 pyramid (extract.method=resnet34, no ImageNet weights)"),
    "patch2pix-resnet34-seed0": ("patch2pix-resnet34-seed0.safetensors",
                                 "Patch2Pix regressors, width 128, on the seed-0 random ResNet34 pyramid"),
}

_HERE = Path(__file__).resolve().parent


def is_shipped(ref: object) -> bool:
    """True for a ``shipped:NAME`` reference."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


def shipped_path(ref: str) -> Path:
    """The file of ``shipped:NAME`` (or of ``NAME``).

    Raises:
        FileNotFoundError: an unknown name (the message lists the known ones), or a known one
            whose file is not in this installation.
    """
    name = ref[len(SCHEME):] if ref.startswith(SCHEME) else ref
    if name not in SHIPPED:
        raise FileNotFoundError(f"{SCHEME}{name}: no such shipped weights; known: {', '.join(sorted(SHIPPED))}")
    path = _HERE / SHIPPED[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"{SCHEME}{name}: {path} is missing from this installation")
    return path
