"""The Patch2Pix family: ResNet34 pyramid extractor (``resnet34``), Patch2Pix refiner (``patch2pix``)
and the chain presets ``patch2pix`` and ``pump-ncnet-patch2pix`` (NCNet proposals: matchmill/methods/ncnet.py).

Frames: the extract stage resizes an image (``extract.resize_max``) and the ResNet34 extractor
floors both sides to a multiple of 16 (1/8 features, 4D pooling by 2). The artifact's ``scale``
(sx, sy) maps that network frame to the original image with the pixel-centre convention
``x_orig = (x_net + 0.5) * s - 0.5``; proposals and refined matches are stored in original pixels.

Weights: ``weights`` keys point to files or fsspec URLs (no downloads), loaded strictly through
:func:`matchmill.models.weights.load_weights` (a file of the wrong net fails naming the keys).
An official Patch2Pix checkpoint's ``regressor_config`` (conv strides, window size, widths, ...)
builds the regressors (:func:`matchmill.models.official_settings.conf_from_checkpoint`); a
setting matchmill cannot build is refused in one line. Without weights, nets start from a seeded
random initialisation, which runs the whole chain but does not give good matches.

Devices: each method puts its net on :func:`matchmill.methods.devices.method_device` (the GPU Ray
gave the actor, or the CPU; ``num_gpus > 0`` without a visible GPU fails in ``__init__``), runs it
under ``amp`` autocast, and returns CPU numpy arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a method runs, not at config time
    import torch

from matchmill.geometry.frames import resize_to_multiple, to_network, to_original
from matchmill.models.device import autocast, check_amp

from .base import Features, Method
from .devices import LEVELS, method_device, no_grad, seeded, stored_pyramid, to_numpy
from .ncnet import PUMP_NCNET, RESNET_NC_WEIGHTS

#: Shipped regressors (weights/, see matchmill/weights/MODEL_CARD.md): on the PUMP pyramid, on the seed-0 ResNet34.
PUMP_P2P_WEIGHTS = "shipped:patch2pix-pump-cpu"
RESNET_P2P_WEIGHTS = "shipped:patch2pix-resnet34-seed0"


class ResNet34Extractor(Method):
    """Truncated ResNet34 feature pyramid f0..f4 of one image, stored as fp16 artifacts."""

    default_conf = {
        "weights": None,  # torchvision-layout resnet34 state dict (.pth / .safetensors); None = seeded random init
        "init_seed": 0,  # seed of the random initialisation when no weights are given
        "multiple": 16,  # floor both image sides to a multiple of this (1/8 features, 4D pooling by 2)
        "fp16": True,  # store the pyramid as float16 (halves artifact size)
        "amp": "none",  # mixed precision on GPU: none | bf16 | fp16 (ignored on CPU)
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"multiple": ">= 1"}
    uses_device = True

    def __init__(self, conf: dict | None = None):
        from matchmill.models.backbones import build_backbone  # lazy: imports torch

        super().__init__(conf)
        check_amp(self.conf["amp"])
        self.device = method_device(self.conf, "extract")
        self.net = build_backbone("resnet34", self.conf["weights"], int(self.conf["init_seed"])).to(self.device)

    @no_grad
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """(H, W, 3) uint8 RGB -> ``f0``..``f4`` as (C, h, w) arrays and ``net_scale`` (2,)."""
        from matchmill.models.resnet import normalize_image  # lazy: imports torch

        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        resized, net_scale = resize_to_multiple(image, int(self.conf["multiple"]), what="the ResNet34 pyramid")
        with autocast(self.device, self.conf["amp"]):
            feats = self.net(normalize_image(resized).to(self.device))
        dtype = np.float16 if self.conf["fp16"] else np.float32
        out = {name: to_numpy(f[0]).astype(dtype) for name, f in zip(LEVELS, feats)}
        out["net_scale"] = net_scale
        return out


class Patch2PixRefiner(Method):
    """Patch2Pix mid + fine regressors on the f0..f3 pyramids; keeps matches above ``confidence``."""

    default_conf = {
        "weights": None,  # regressor weights (.pth / .safetensors of models.patch2pix.Patch2Pix); None = seeded init
        "init_seed": 0,  # seed of the random initialisation when no weights are given
        "confidence": 0.25,  # fine confidence a match must exceed (paper: 0.25 default; 0.5 and 0.9 as options)
        "cpu_sized": True,  # width-128 regressors (CPU budget); False = the paper's 512 (official files: their own)
        "feat_channels": None,  # channels of the stored f0..f3; None = read from the features (resnet34: [3, 64, 64, 128])
        "amp": "none",  # mixed precision on GPU: none | bf16 | fp16 (ignored on CPU)
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"confidence": "[0, 1)", "feat_channels": ">= 1"}  # fine confidences lie in (0, 1)
    needs_features = True
    uses_device = True

    def __init__(self, conf: dict | None = None):
        super().__init__(conf)
        check_amp(self.conf["amp"])
        self.device = method_device(self.conf, "refine")
        self._net: torch.nn.Module | None = None  # built for the first f0..f3 layout it meets
        self._channels: tuple[int, ...] | None = None
        self._weights = None
        if self.conf["weights"]:
            from matchmill.models.weights import read_state_dict  # lazy: imports torch

            self._weights = read_state_dict(self.conf["weights"])  # read once, whichever layout fits
        if self.conf["feat_channels"] is not None:  # known up front: build (and load) now, fail early
            self._net_for(tuple(int(c) for c in self.conf["feat_channels"]))
        elif self._weights is not None:  # the file fixes the layout: find which, fail early when none fits
            self._load_known_layout()

    def _load_known_layout(self) -> None:
        """Build the regressors for the first backbone layout (models.backbones.KNOWN_CHANNELS) the
        weights load into; the ResNet34 attempt's error (naming the keys) when none does."""
        from matchmill.models.backbones import KNOWN_CHANNELS  # lazy: imports torch

        first_error = None
        for channels in KNOWN_CHANNELS.values():
            try:
                self._net_for(tuple(channels[:4]))
                return
            except ValueError as exc:
                first_error = first_error or exc
        raise first_error

    def _net_for(self, channels: tuple[int, ...]) -> torch.nn.Module:
        """The regressors for f0..f3 of ``channels``: built and loaded on first use, then fixed."""
        from matchmill.models.patch2pix import DEFAULT_CONF, Patch2Pix, cpu_sized  # lazy: imports torch

        if self._net is not None:
            if channels != self._channels:
                raise ValueError(f"refine: the regressors read f0..f3 of {list(self._channels)} channels "
                                 f"(refine.feat_channels, or the layout of refine.weights) but the stored pyramid "
                                 f"has {list(channels)}: weights trained on another backbone than extract.method's")
            return self._net
        seeded(self.conf["init_seed"])
        net_conf = cpu_sized(DEFAULT_CONF) if self.conf["cpu_sized"] else dict(DEFAULT_CONF)
        if self._weights is not None:  # an official checkpoint's regressor_config builds its regressors
            from matchmill.models.official_settings import conf_from_checkpoint  # lazy: imports torch

            net_conf.update(conf_from_checkpoint("patch2pix", getattr(self._weights, "metadata", {}),
                                                 str(self.conf["weights"])))
        net = Patch2Pix({**net_conf, "feat_channels": list(channels), "confidence": float(self.conf["confidence"])}).eval()
        if self._weights is not None:
            from matchmill.models.weights import load_weights  # lazy: imports torch

            load_weights(net, self._weights, strict=True, where=str(self.conf["weights"]))
        self._net, self._channels = net.to(self.device), channels
        return self._net

    @property
    def net(self) -> torch.nn.Module:
        """The regressors (built for the ResNet34 layout when nothing fixed one yet)."""
        from matchmill.models.backbones import KNOWN_CHANNELS  # lazy: imports torch

        return self._net if self._net is not None else self._net_for(KNOWN_CHANNELS["resnet34"][:4])

    def __call__(self, matches: np.ndarray, scores: np.ndarray, feats0: Features | None = None,
                 feats1: Features | None = None, row=None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) original-pixel proposals -> (M, 4) refined matches and (M,) fine confidences
        (``row``: ignored, kept for callers that pass the pair row)."""
        import torch  # lazy: torch only where a method runs
        if len(matches) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        pa, pb = stored_pyramid(feats0, LEVELS[:4], self.device), stored_pyramid(feats1, LEVELS[:4], self.device)
        net = self._net_for(tuple(int(f.shape[1]) for f in pa))
        coords = np.concatenate([to_network(matches[:, :2], feats0["scale"]), to_network(matches[:, 2:], feats1["scale"])], 1)
        size_a = (pa[0].shape[-1], pa[0].shape[-2])
        size_b = (pb[0].shape[-1], pb[0].shape[-2])
        with torch.no_grad(), autocast(self.device, self.conf["amp"]):
            fine, conf = net.predict(pa, pb, torch.from_numpy(coords).to(self.device), size_a, size_b)
        fine = to_numpy(fine)
        out = np.concatenate([to_original(fine[:, :2], feats0["scale"]), to_original(fine[:, 2:], feats1["scale"])], 1)
        return out.astype(np.float32).reshape(-1, 4), to_numpy(conf).astype(np.float32)


#: Chain presets of this family (collected by :mod:`matchmill.methods.presets`).
PRESETS = {
    # the learned chain: PUMP ConvMixer pyramid -> NCNet 4D-consensus proposals -> Patch2Pix regressors
    "pump-ncnet-patch2pix": {
        **PUMP_NCNET,
        "refine.method": "patch2pix",
        "refine.weights": PUMP_P2P_WEIGHTS,
        "refine.feat_channels": [3, 128, 128, 128],
    },
    # Patch2Pix: ResNet34 pyramid (seed-0 init: no ImageNet weights here) -> NCNet -> regressors
    # trained on it; users with torchvision weights set extract.weights and train their own NC / regressors
    "patch2pix": {
        "extract.method": "resnet34",
        "propose.method": "ncnet",
        "propose.weights": RESNET_NC_WEIGHTS,
        "refine.method": "patch2pix",
        "refine.weights": RESNET_P2P_WEIGHTS,
    },
}
