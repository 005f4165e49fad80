"""The PUMP family: dense ConvMixer descriptors (``pump``) -> pyramidal dense matching
(``pump-pyramid``), or MNN at SIFT keypoints; chain presets ``pump`` and ``pump-sift-mnn``.

Frames: the extract stage resizes an image (``extract.resize_max``); the PUMP extractor then resizes
it to a multiple of the net's stride (``net_scale`` maps that network frame back). Dense maps are
stored for the scales 2^(-k/2) between 1 and ``dense_min_scale`` (keys ``dense_0``, ``dense_1``, ...
with ``dense_scales``), so the propose stage can run the multi-scale wrapper without the net.
Keypoint descriptors (``extract.keypoints: sift``) are sampled from the maps at scales 2^(-k/4)
down to ``keypoint_min_scale`` (PUMP spec 3.1), the scale chosen per keypoint from its SIFT size.

Devices: :class:`PumpExtractor` runs its net on :func:`matchmill.methods.devices.method_device`
under ``amp`` autocast and stores CPU numpy maps. :class:`PumpPyramidProposer` has no net: it checks
``propose.num_gpus`` the same way (fails fast without a GPU) but matches on the CPU, because the
dense pyramid matcher (``matchmill/models/pump/pyramid_infer.py``, ``dense_match.py``) allocates CPU tensors.

Artifact size per image: 128 * H * W * 2 bytes (fp16) times sum(s^2) over the stored scales
(1.75 for scales 1, 0.707, 0.5): about 34 MB at 320x240.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a method runs, not at config time
    import torch

from matchmill.geometry.frames import resize_to_multiple, to_network, to_original
from matchmill.models.device import autocast, check_amp

from .base import Features, Method, array_shape
from .devices import load_state, method_device, no_grad, seeded, to_numpy
from .sift import SiftExtractor

#: The shipped ConvMixer (weights/, see matchmill/weights/MODEL_CARD.md).
PUMP_WEIGHTS = "shipped:pump-convmixer-cpu"


def stored_scales(min_scale: float) -> list[float]:
    """Scales 2^(-k/2), k = 0, 1, ..., not below ``min_scale`` (the multi-scale wrapper's steps)."""
    if not 0 < float(min_scale) <= 1:
        raise ValueError(f"dense_min_scale must be in (0, 1], got {min_scale}")
    scales, k = [], 0
    while 2 ** (-k / 2) >= float(min_scale) - 1e-9:
        scales.append(float(2 ** (-k / 2)))
        k += 1
    return scales


def dense_maps(feats: dict[str, np.ndarray], who: str, max_scale: float = 1.0) -> list[tuple[float, torch.Tensor]]:
    """The stored (scale, (C, h, w) float32) dense maps of one image with scale <= ``max_scale``, finest first."""
    import torch  # lazy: torch only where a method runs

    if "dense_scales" not in feats:
        raise ValueError(f"{who}: features have no dense PUMP maps; this method needs extract.method=pump")
    scales = [float(s) for s in np.asarray(feats["dense_scales"]).ravel()]
    return [(s, torch.from_numpy(feats[f"dense_{k}"].astype(np.float32)))
            for k, s in enumerate(scales) if s <= max_scale * (1 + 1e-6)]


class PumpExtractor(Method):
    """PUMP dense descriptors of one image (multi-scale, fp16) and optionally descriptors at SIFT keypoints."""

    default_conf = {
        "weights": None,  # ConvMixer state dict (.pth / .safetensors); None = seeded random init
        "init_seed": 0,  # seed of the random initialisation when no weights are given
        "cpu_sized": True,  # width-128 ConvMixer (CPU budget); False = the paper's width 512
        "dense_min_scale": 0.5,  # store dense maps at 2^(-k/2) down to this (pump-pyramid max_scale <= 1/this)
        "keypoints": "none",  # "sift": also detect SIFT keypoints and sample PUMP descriptors there (for mnn)
        "max_keypoints": 2048,  # keypoints kept (strongest SIFT responses)
        "keypoint_min_scale": 0.3,  # descriptor scales 2^(-k/4) down to this for keypoint sampling (spec 3.1)
        "fp16": True,  # store dense maps as float16 (halves artifact size)
        "dense": True,  # store the dense multi-scale maps (pump-pyramid matching); False with pyramid only
        "pyramid": False,  # also store the 5-level pyramid f0..f4 (matchmill/models/backbones.py) for ncnet + patch2pix
        "amp": "none",  # mixed precision on GPU: none | bf16 | fp16 (ignored on CPU)
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"dense_min_scale": "(0, 1]", "keypoint_min_scale": "(0, 1]"}
    uses_device = True

    def __init__(self, conf: dict | None = None):
        from matchmill.models.backbones import PumpPyramid  # lazy: imports torch
        from matchmill.models.pump.convmixer import DEFAULT_CONF, PumpConvMixer, cpu_sized  # lazy: imports torch

        super().__init__(conf)
        if self.conf["keypoints"] not in ("none", "sift"):
            raise ValueError(f"extract.keypoints must be 'none' or 'sift', got {self.conf['keypoints']!r}")
        if not (self.conf["dense"] or self.conf["pyramid"] or self.conf["keypoints"] == "sift"):
            raise ValueError("extract: pump with dense=false needs pyramid=true or keypoints=sift (nothing to store)")
        check_amp(self.conf["amp"])
        self.scales = stored_scales(self.conf["dense_min_scale"]) if self.conf["dense"] else []
        self.device = method_device(self.conf, "extract")
        seeded(self.conf["init_seed"])
        net_conf = cpu_sized(DEFAULT_CONF) if self.conf["cpu_sized"] else dict(DEFAULT_CONF)
        self.net = PumpConvMixer(net_conf).eval()
        load_state(self.net, self.conf["weights"])
        self.net.to(self.device)
        self.pyramid = PumpPyramid(self.net).eval() if self.conf["pyramid"] else None
        self.sift = None
        if self.conf["keypoints"] == "sift":
            self.sift = SiftExtractor({"max_keypoints": int(self.conf["max_keypoints"]), "rootsift": False})

    @no_grad
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """(H, W, 3) uint8 RGB -> ``dense_k`` (128, h_k, w_k), ``dense_scales`` (K,), ``net_scale`` (2,),
        and with keypoints: ``keypoints`` (N, 2), ``descriptors`` (N, 128), ``scores`` (N,), ``scales`` (N,)."""
        from matchmill.models.pump.extract import (  # lazy: torch; the SIFT baseline imports this module
            SIFT_REF_SIZE, dense_descriptors, descriptor_scales, sample_at_keypoints)

        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        multiple = self.pyramid.multiple if self.pyramid is not None else int(self.net.multiple)
        resized, net_scale = resize_to_multiple(image, multiple, min_cells=4, what="PUMP")
        kp_scales = []
        if self.sift is not None:
            kp_scales = descriptor_scales(min_scale=float(self.conf["keypoint_min_scale"]), max_scale=1.0)
        # One net pass per distinct scale: stored scales 2^(-k/2) are also keypoint scales 2^(-k/4).
        wanted = sorted({round(s, 9) for s in [*self.scales, *kp_scales]}, reverse=True)
        with autocast(self.device, self.conf["amp"]):
            maps = dict(dense_descriptors(self.net, resized, wanted)) if wanted else {}  # on self.device
        out: dict[str, np.ndarray] = {}
        dtype = np.float16 if self.conf["fp16"] else np.float32
        for k, scale in enumerate(self.scales):
            out[f"dense_{k}"] = to_numpy(maps[round(scale, 9)]).astype(dtype)
        if self.scales:
            out["dense_scales"] = np.array(self.scales, np.float64)
        out["net_scale"] = net_scale
        if self.pyramid is not None:
            from matchmill.models.resnet import normalize_image  # lazy: imports torch

            with autocast(self.device, self.conf["amp"]):
                levels = self.pyramid(normalize_image(resized).to(self.device))
            out.update({f"f{i}": to_numpy(f[0]).astype(dtype) for i, f in enumerate(levels)})
        if self.sift is not None:
            kp = self.sift(image)  # keypoints in the frame of the image given (the extract stage maps them)
            kp_maps = [(s, maps[round(s, 9)]) for s in kp_scales]
            pts_net = to_network(kp["keypoints"], net_scale)
            # OpenCV SIFT sizes, not R2D2's 32 / s
            desc = sample_at_keypoints(kp_maps, pts_net, kp["scales"] / net_scale.mean(), {"ref_size": SIFT_REF_SIZE})
            out.update(keypoints=kp["keypoints"], descriptors=np.asarray(desc, np.float32),
                       scores=kp["scores"], scales=kp["scales"])
        return out


class PumpPyramidProposer(Method):
    """Dense pyramidal PUMP matching between the stored multi-scale maps of both images."""

    default_conf = {
        "max_scale": 1.0,  # relative scales 2^(k/2) in [1/max_scale, max_scale]; 1 = single scale (CPU default)
        "base_scale": 0.5,  # match on the stored maps at this scale and below (0.5: ~1.3 s/pair at 320x240 on CPU; 1 = full)
        "memory_budget_mb": 512,  # bound of the level-0 correlation chunks (see matchmill/models/pump/pyramid_infer.py)
        "post_filter": True,  # keep matches in connected components of locally consistent matches
        "min_cc_size": 50,  # post-filter: drop components with at most this many matches
        "max_proposals": 0,  # keep the top-N by score; 0 = all
    }
    #: Bounds of its numbers (notation: matchmill/config.py ``parse_bound``; undeclared: >= 0).
    conf_bounds = {"max_scale": ">= 1", "base_scale": "(0, 1]", "memory_budget_mb": "> 0"}
    uses_device = True

    def __init__(self, conf: dict | None = None):
        import torch  # lazy: torch only where a method runs

        super().__init__(conf)
        if float(self.conf["max_scale"]) < 1:
            raise ValueError(f"propose.max_scale must be >= 1, got {self.conf['max_scale']}")
        method_device(self.conf, "propose")  # fail fast on num_gpus > 0 without a GPU; matching runs on CPU
        self.device = torch.device("cpu")

    @no_grad
    def __call__(self, feats0: Features, feats1: Features) -> tuple[np.ndarray, np.ndarray]:
        from matchmill.models.pump.multiscale_match import match_multiscale  # lazy: imports torch
        from matchmill.models.pump.post_filter import post_filter  # lazy: imports torch

        base = float(self.conf["base_scale"])
        maps0 = from_base_scale(dense_maps(feats0, "image0", base), base, "image0")
        maps1 = from_base_scale(dense_maps(feats1, "image1", base), base, "image1")
        size0 = (maps0[0][1].shape[-1], maps0[0][1].shape[-2])
        size1 = (maps1[0][1].shape[-1], maps1[0][1].shape[-2])
        budget = int(self.conf["memory_budget_mb"])
        corres = match_multiscale(maps0, maps1, size0, size1,
                                  {"max_scale": float(self.conf["max_scale"]), "memory_budget_mb": budget})
        if self.conf["post_filter"] and len(corres):
            corres = post_filter(corres, {"min_cc_size": int(self.conf["min_cc_size"])})
        corres = np.asarray(corres, np.float32).reshape(-1, 5)
        if self.conf["max_proposals"] and len(corres) > self.conf["max_proposals"]:
            corres = corres[np.argsort(-corres[:, 4], kind="stable")[: int(self.conf["max_proposals"])]]
        matches = np.concatenate(
            [to_original(corres[:, :2], base_to_original(feats0, size0)),
             to_original(corres[:, 2:4], base_to_original(feats1, size1))], axis=1
        )
        return matches.astype(np.float32).reshape(-1, 4), corres[:, 4].astype(np.float32)


def from_base_scale(maps: list[tuple[float, torch.Tensor]], base: float, who: str) -> list[tuple[float, torch.Tensor]]:
    """Maps at scale <= ``base`` (from :func:`dense_maps`), rescaled so the ``base`` map is the scale-1 frame."""
    kept = [(s / base, m) for s, m in maps]
    if not kept or abs(kept[0][0] - 1.0) > 1e-6:
        raise ValueError(f"{who}: no stored dense map at propose.base_scale={base:g}; "
                         f"lower extract.dense_min_scale or change base_scale")
    return kept


def base_to_original(feats: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """(2,) scale mapping the matching frame (the base map, ``size`` = (w, h)) to original pixels."""
    h1, w1 = array_shape(feats, "dense_0")[-2:]  # shape only: the full-scale map is not read
    return np.array([feats["scale"][0] * w1 / size[0], feats["scale"][1] * h1 / size[1]], np.float64)


#: Chain presets of this family (collected by :mod:`matchmill.methods.presets`).
PRESETS = {
    # PUMP: dense ConvMixer descriptors -> pyramidal dense matching
    "pump": {"extract.method": "pump", "extract.weights": PUMP_WEIGHTS, "propose.method": "pump-pyramid",
             "refine.method": "identity"},
    # PUMP descriptors sampled at SIFT keypoints -> mutual nearest neighbours
    "pump-sift-mnn": {
        "extract.method": "pump",
        "extract.weights": PUMP_WEIGHTS,
        "extract.keypoints": "sift",
        "extract.dense": False,
        "propose.method": "mnn",
        "refine.method": "identity",
    },
}
