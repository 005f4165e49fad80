"""Pixel targets for Patch2Pix's mid and fine regressors, from a correspondence oracle.

The paper's loss (:func:`matchmill.models.patch2pix.patch2pix_loss`) only knows the epipolar line:
a match may slide along it and still be "right". With an oracle (:mod:`.pair_truth`,
network frames) each anchor ``(xa, ya, xb, yb)`` has a true match ``t = T(xa, ya)`` of its point in
A, so (per anchor, targets without gradient):

- regression: the mid output moves towards ``(xa, ya, t)`` (the A point stays, the B point goes to
  the truth): Huber (``pixel_huber`` px) on the 4 coordinates, on anchors whose true match lies
  within the mid window (``|t - (xb, yb)|_inf <= psize / 2``); the fine output towards the same
  target, on anchors whose true match lies within the fine window around the (detached) mid output;
- confidence: balanced BCE of ``mid_conf`` with target ``error(input) < pixel_thresholds[0]`` and of
  ``fine_conf`` with ``error(mid) < pixel_thresholds[1]``, ``error(m) = |m_B - T(m_A)|`` (true
  pixel error, :meth:`PairOracle.match_errors`); anchors without truth (not visible) are left out.

``loss = weight_cls * cls + reg`` (``weight_cls`` as the paper's loss). :func:`pixel_examples_loss`
forwards a batch of examples once and returns the pixel loss, the epipolar one or their sum
(``patch2pix.loss: epipolar | pixel | both``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matchmill.datasets.demo.oracle import PairOracle
from matchmill.models.patch2pix import balanced_bce, batch_loss, expand_anchors, merge_conf, patch2pix_loss

__all__ = ["PATCH2PIX_LOSSES", "PIXEL_DEFAULTS", "pixel_loss", "pixel_examples_loss"]

#: Values of ``patch2pix.loss``.
PATCH2PIX_LOSSES = ("epipolar", "pixel", "both")

PIXEL_DEFAULTS: dict[str, Any] = {
    "pixel_thresholds": [7.0, 2.0],  # (mid, fine) true error (px) below which an input is labelled correct (~ sqrt of cls_thresholds)
    "pixel_huber": 1.0,  # Huber transition (px) of the offset regression
}


def _conf(base: Mapping[str, Any] | None, conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """Patch2Pix conf (``base`` updated with ``conf``'s model keys, validated by ``merge_conf``) plus
    :data:`PIXEL_DEFAULTS` updated with ``conf``'s pixel keys."""
    model_keys = {k: v for k, v in {**dict(base or {}), **dict(conf or {})}.items() if k not in PIXEL_DEFAULTS}
    pixel_keys = {k: v for k, v in dict(conf or {}).items() if k in PIXEL_DEFAULTS}
    return {**merge_conf(model_keys), **PIXEL_DEFAULTS, **pixel_keys}


def _true_errors(oracle: PairOracle, m: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 2) true match in B of each (N, 4) match's A point and (N,) true error; NaN where not visible."""
    pts = m.detach().cpu().double().numpy()
    xy1, visible = oracle.true_match(pts[:, :2])
    xy1[~visible] = np.nan
    err = np.linalg.norm(xy1 - pts[:, 2:], axis=1)
    return torch.from_numpy(xy1).to(m.device, m.dtype), torch.from_numpy(err).to(m.device, m.dtype)


def pixel_loss(pred: Mapping[str, Tensor], inputs: Tensor, oracle: PairOracle,
               conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pixel-supervised loss of one pair (module docstring).

    Args:
        pred: :meth:`Patch2Pix.forward` output: ``mid`` (N, 4), ``mid_conf`` (N,), ``fine`` (N, 4),
            ``fine_conf`` (N,).
        inputs: (N, 4) anchors fed to the mid stage (network frame, as the oracle's).
        oracle: the pair's oracle in the network frames.
        conf: Patch2Pix conf plus :data:`PIXEL_DEFAULTS` keys.

    Returns:
        dict with scalar tensors ``loss``, ``cls``, ``reg``, ``reg_mid``, ``reg_fine``, and floats
        ``n_reg_mid``, ``n_reg_fine``, ``n_truth`` (anchors with truth), ``err_in``, ``err_mid``,
        ``err_fine`` (median true error, px, over anchors with truth; NaN when none), and
        ``valid`` (some term exists).
    """
    c = _conf(None, conf)
    if inputs.ndim != 2 or inputs.shape[1] != 4:
        raise ValueError(f"inputs must have shape (N, 4), got {tuple(inputs.shape)}")
    n = inputs.shape[0]
    for key, shape in (("mid", (n, 4)), ("fine", (n, 4)), ("mid_conf", (n,)), ("fine_conf", (n,))):
        if key not in pred or tuple(pred[key].shape) != shape:
            raise ValueError(f"pred[{key!r}] must have shape {shape}, got {tuple(pred[key].shape) if key in pred else 'missing'}")
    zero = sum(pred[k].sum() for k in ("mid", "fine", "mid_conf", "fine_conf")) * 0.0
    mid, fine = pred["mid"], pred["fine"]
    with torch.no_grad():
        t_in, err_in = _true_errors(oracle, inputs)
        _, err_mid = _true_errors(oracle, mid)
        _, err_fine = _true_errors(oracle, fine)
        target = torch.cat([inputs[:, :2], t_in], 1)
        half = float(c["psize"]) / 2.0
        truth = torch.isfinite(err_in)
        sel_mid = truth & ((t_in - inputs[:, 2:]).abs().amax(1) <= half)
        sel_fine = truth & ((t_in - mid[:, 2:]).abs().amax(1) <= half)
    huber = float(c["pixel_huber"])
    target = torch.nan_to_num(target)
    reg_mid = F.huber_loss(mid[sel_mid], target[sel_mid], delta=huber) if bool(sel_mid.any()) else zero
    reg_fine = F.huber_loss(fine[sel_fine], target[sel_fine], delta=huber) if bool(sel_fine.any()) else zero
    cls, has_cls = zero, False
    for conf_key, err, thr in (("mid_conf", err_in, c["pixel_thresholds"][0]), ("fine_conf", err_mid, c["pixel_thresholds"][1])):
        known = torch.isfinite(err)
        label = err[known] < float(thr)
        if bool(label.any()) and not bool(label.all()):
            cls, has_cls = cls + balanced_bce(pred[conf_key][known], label), True
    reg = reg_mid + reg_fine
    valid = bool(sel_mid.any()) or bool(sel_fine.any()) or has_cls

    def med(e: Tensor) -> float:
        e = e[torch.isfinite(e)]
        return float(e.median()) if e.numel() else float("nan")

    return {
        "loss": c["weight_cls"] * cls + reg, "cls": cls, "reg": reg, "reg_mid": reg_mid, "reg_fine": reg_fine,
        "n_reg_mid": float(sel_mid.sum()), "n_reg_fine": float(sel_fine.sum()), "n_truth": float(truth.sum()),
        "err_in": med(err_in), "err_mid": med(err_mid), "err_fine": med(err_fine), "valid": valid,
    }


def pixel_examples_loss(model: nn.Module, examples: Sequence[Mapping[str, Any]], mode: str = "pixel",
                        conf: Mapping[str, Any] | None = None) -> tuple[Tensor, dict[str, float]]:
    """Forward each valid example once; ``mode`` ``pixel`` (mean over pairs of :func:`pixel_loss`) or
    ``both`` (plus the paper's :func:`batch_loss` of :func:`patch2pix_loss`).

    Args:
        model: :class:`~matchmill.models.patch2pix.Patch2Pix` (or a wrapper with ``module``).
        examples: :func:`~matchmill.models.patch2pix_training.make_training_example` outputs, each with
            ``oracle`` (its :class:`PairOracle` in the network frames, or None: the pair is skipped).
        conf: overrides of the model's conf and :data:`PIXEL_DEFAULTS` keys.

    Returns:
        The scalar loss (``0 * sum(parameters)`` when nothing contributes, so a backward reaches every
        parameter) and floats: ``pix``, ``reg``, ``pix_cls``, ``err_in``, ``err_mid``, ``err_fine``
        (medians over pairs), ``n_reg_mid``, ``n_reg_fine``; with ``both`` also ``cls``, ``geo``.
    """
    if mode not in ("pixel", "both"):
        raise ValueError(f"mode must be 'pixel' or 'both', got {mode!r}")
    if not examples:
        raise ValueError("pixel_examples_loss needs at least one example")
    inner = getattr(model, "module", model)
    c = _conf(inner.conf, conf)
    model_conf = {k: v for k, v in c.items() if k not in PIXEL_DEFAULTS}  # what patch2pix_loss accepts
    device = next(inner.parameters()).device
    pix, epi = [], []
    for i, ex in enumerate(examples):
        if "oracle" not in ex:
            raise ValueError(f"example {i} has no 'oracle' (the pixel loss needs ground-truth correspondences)")
        if not ex["valid"] or ex["proposals"].shape[0] == 0 or ex["oracle"] is None:
            continue
        props = ex["proposals"].to(device)
        anchors = expand_anchors(props, c["pshift"]) if c["panc"] == 8 else props
        if anchors.shape[0] < 2:
            continue
        pred = model([f.to(device) for f in ex["feats0"]], [f.to(device) for f in ex["feats1"]], anchors, ex["size0"], ex["size1"])
        pix.append(pixel_loss(pred, anchors, ex["oracle"], c))
        if mode == "both":
            epi.append(patch2pix_loss(pred, anchors, ex["F"].to(device), model_conf))
    zero = sum(p.sum() for p in inner.parameters()) * 0.0
    used = [r for r in pix if r["valid"]]
    loss = torch.stack([r["loss"] for r in used]).mean() + zero if used else zero

    def med(key: str) -> float:
        vals = [r[key] for r in pix if np.isfinite(r[key])]
        return float(np.median(vals)) if vals else float("nan")

    stats = {"pix": float(loss.detach()), "reg": float(sum(float(r["reg"].detach()) for r in used) / max(len(used), 1)),
             "pix_cls": float(sum(float(r["cls"].detach()) for r in used) / max(len(used), 1)),
             "err_in": med("err_in"), "err_mid": med("err_mid"), "err_fine": med("err_fine"),
             "n_reg_mid": float(sum(r["n_reg_mid"] for r in pix)), "n_reg_fine": float(sum(r["n_reg_fine"] for r in pix))}
    if mode == "both" and epi:
        b = batch_loss(epi, model_conf)
        if isinstance(b["loss"], Tensor) and b["loss"].requires_grad:
            loss = loss + b["loss"]
        stats.update(cls=float(b["cls"].detach()), geo=float(b["geo"].detach()))
    return loss, stats
