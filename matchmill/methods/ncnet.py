"""The NCNet family: 4D neighbourhood-consensus proposals (``ncnet``) on stored f4 pyramid maps
(from ``extract.method=resnet34`` or ``pump`` with ``pyramid: true``), and the chain preset
``pump-ncnet`` (the learned chain without its Patch2Pix refinement).

Frames: proposals are found on the f4 grid of the extractor's network frame and stored in original
pixels through each image's ``scale``. Devices: the NC layers run on
:func:`matchmill.methods.devices.method_device` under ``amp`` autocast; numpy out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matchmill.geometry.frames import to_original
from matchmill.models.device import autocast, check_amp

from .base import Features, Method
from .devices import load_state, method_device, no_grad, seeded, stored_pyramid, to_numpy
from .pump import PUMP_WEIGHTS

#: Shipped NC layers (weights/, see matchmill/weights/MODEL_CARD.md): on the PUMP pyramid, on the seed-0 ResNet34.
PUMP_NC_WEIGHTS = "shipped:ncnet-pump-cpu"
RESNET_NC_WEIGHTS = "shipped:ncnet-resnet34-seed0"


class NCNetProposer(Method):
    """NCNet 4D neighbourhood-consensus proposals on the f4 maps of both images."""

    default_conf = {
        "weights": None,  # NC-layer weights (.pth / .safetensors with keys of models.ncnet.NCNet); None = seeded init
        "init_seed": 0,  # seed of the random initialisation when no weights are given
        "nc_threshold": 0.0,  # keep proposals with NC score above this (Patch2Pix 0.0, NCNet baseline 0.9)
        "max_proposals": 0,  # keep the top-N by score; 0 = all
        "relocalize": 0,  # move each proposal to the best raw f4 correlation within this many cells (0 = NCNet as is)
        "amp": "none",  # mixed precision on GPU: none | bf16 | fp16 (ignored on CPU)
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"nc_threshold": "[0, 1)"}  # NC scores lie in [0, 1]; kept when above the threshold
    uses_device = True

    def __init__(self, conf: dict | None = None):
        from matchmill.models.ncnet import DEFAULT_CONF, NCNet  # lazy: imports torch

        super().__init__(conf)
        check_amp(self.conf["amp"])
        self.device = method_device(self.conf, "propose")
        seeded(self.conf["init_seed"])
        self.net = NCNet({**DEFAULT_CONF, "nc_threshold": float(self.conf["nc_threshold"])}).eval()
        load_state(self.net, self.conf["weights"])
        self.net.to(self.device)

    @no_grad
    def __call__(self, feats0: Features, feats1: Features) -> tuple[np.ndarray, np.ndarray]:
        """f4 (256, h, w) maps of both images -> (N, 4) original-pixel proposals and (N,) NC scores."""
        (f4a,), (f4b,) = stored_pyramid(feats0, ("f4",), self.device), stored_pyramid(feats1, ("f4",), self.device)
        with autocast(self.device, self.conf["amp"]):
            out = self.net(f4a, f4b)
            matches, scores = self.net.extract_matches(out)
            if int(self.conf["relocalize"]) > 0:
                from matchmill.models.ncnet import relocalize_matches  # lazy: imports torch

                matches = relocalize_matches(f4a, f4b, matches, int(self.conf["relocalize"]),
                                             int(self.net.conf["upsample"]), bool(self.net.conf["center"]))
        matches, scores = to_numpy(matches), to_numpy(scores)
        if self.conf["max_proposals"] and len(scores) > self.conf["max_proposals"]:
            keep = np.argsort(-scores, kind="stable")[: self.conf["max_proposals"]]
            matches, scores = matches[keep], scores[keep]
        m = np.concatenate(
            [to_original(matches[:, :2], feats0["scale"]), to_original(matches[:, 2:], feats1["scale"])], axis=1
        )
        return m.astype(np.float32).reshape(-1, 4), scores.astype(np.float32)


#: PUMP pyramid -> NCNet with the shipped weights: the first two stages of the learned chain.
PUMP_NCNET: dict[str, Any] = {
    "extract.method": "pump",
    "extract.weights": PUMP_WEIGHTS,
    "extract.pyramid": True,  # f0..f4 for NCNet and Patch2Pix
    "extract.dense": False,  # no dense multi-scale maps (those are for pump-pyramid)
    "propose.method": "ncnet",
    "propose.weights": PUMP_NC_WEIGHTS,
    "propose.relocalize": 2,  # the weakly supervised NC shifts its peaks: re-place them on raw f4 (model card)
}

#: Chain presets of this family (collected by :mod:`matchmill.methods.presets`).
PRESETS = {
    # the learned chain without its last stage: what Patch2Pix's regressors add (or cost) on top of NCNet
    "pump-ncnet": {**PUMP_NCNET, "refine.method": "identity"},
}
