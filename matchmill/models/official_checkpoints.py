"""Official released checkpoints -> matchmill modules: recognise the layout, unwrap, map the keys.

The one place that knows how the authors' released weight files are laid out. Nothing here is
derived from the authors' code beyond module names and parameter shapes (read from their model
definitions); the maps are written against this package's own modules.

:func:`matchmill.models.weights.load_weights` calls this module when a state dict does not fit
the net in this package's own layout: if the keys are recognised as one of the layouts below,
they are mapped (and Conv4d weights permuted), and the mapped dict is checked as strictly as an
own-layout file. ``extract.weights``, ``propose.weights`` and ``refine.weights`` therefore accept
the official files directly.

===============  ===========================================  =============================================
layout           file(s) and wrapping                          top-level modules -> our module
===============  ===========================================  =============================================
``pump``         naver/pump ``checkpoints/PUMP.pt``,           ``core/conv_mixer.py`` ``ConvMixer`` (an
                 ``PUMP-stytrf.pt``: the raw state dict;       ``nn.Sequential``): ``0`` stem conv, ``2`` BN,
                 ``model.pt.last``: ``{"model": ...,           ``3`` patch conv, ``5`` BN, block ``b`` at
                 "optimizer", "loss", "epoch"}``               ``6+4b`` (``.fn.0`` dw conv, ``.fn.2`` BN),
                                                               ``7+4b`` pw conv, ``9+4b`` BN, head
                                                               ``6+4*depth`` -> :class:`PumpConvMixer`
``patch2pix``    GrumpyZhou/patch2pix                          ``networks/patch2pix.py`` ``Patch2Pix``:
                 ``patch2pix_pretrained.pth``: ``{"state_dict",  ``extract.*`` (ResNet34 incl. ``layer4``)
                 "backbone", "feat_idx", "change_stride",       -> :class:`ResNet34Pyramid` (``layer4``
                 "regressor_config" (argparse Namespace),       ignored); ``ncn.conv.{0,2}`` (Conv4d) ->
                 "optim", "lr_scheduler", "last_epoch",         :class:`NCNet` ``nc.net.{0,2}``;
                 "best_vals"}``; ``ncn_ivd_5ep.pth`` (adapted   ``regress_mid`` / ``regress_fine``
                 NCNet: backbone + ``ncn`` only, assumed a raw  (``FeatRegressNet``: ``conv.N``, ``fc.N``)
                 state dict or ``{"state_dict": ...}``)        -> :class:`Patch2Pix` ``mid_regressor`` /
                                                               ``fine_regressor`` (``convs.N``, ``fcs.N``)
``ncnet``        ignacio-rocco/ncnet ``ncnet_ivd.pth.tar``,    ``lib/model.py`` ``ImMatchNet``:
                 ``ncnet_pfpascal.pth.tar``: ``{"state_dict",   ``NeighConsensus.conv.N`` -> :class:`NCNet`
                 "args" (Namespace), "epoch", "optimizer",      ``nc.net.N`` (IVD: kernels [3, 3], channels
                 "best_test_loss", "train_loss",               [16, 1]; PF-Pascal: [5, 5, 5], [16, 16, 1]);
                 "test_loss"}``                                ``FeatureExtraction.model.*`` is a ResNet-101
                                                               (never loadable into our ResNet34)
``torchvision``  torchvision ``resnet34-*.pth``: the raw      ``conv1``, ``bn1``, ``layer1..4``, ``fc`` ->
                 state dict                                    :class:`ResNet34Pyramid` (``layer4``, ``fc``
                                                               ignored)
``r2d2``         naver/r2d2 ``models/r2d2_*.pt``:               ``nets/patchnet.py`` ``Quad_L2Net(_ConfCFS)``:
                 ``{"net": str, "state_dict": {"module.*"}}``   ``ops.N`` -> :class:`R2D2Net` ``layers.N``;
                                                               ``clf`` / ``sal`` (confidence heads) ignored
===============  ===========================================  =============================================

Conventions shared by every layout:

- A ``module.`` prefix on every key (``nn.DataParallel``) is stripped first.
- One file may hold several of our modules (a full Patch2Pix checkpoint holds backbone, NC layers
  and regressors). Each net takes its *part*; keys of the other parts are ignored, keys inside its
  part without a counterpart are "unexpected", counterparts absent from the file are "missing".
- Conv4d weights (NC layers) are stored by both NCNet codebases pre-permuted as
  ``(k, C_out, C_in, k, k, k)`` (the looped kernel dim first); ours are ``(C_out, C_in, k, k, k, k)``
  (:meth:`matchmill.models.ncnet.Conv4d.weight_from_sliced_layout`).
- BatchNorm ``num_batches_tracked`` counters stay optional, as for own-layout files.
- Error messages name the *official* keys (with our key after ``->``) and the layout.

Reading those files stays weights-only: their non-tensor metadata (an ``argparse.Namespace`` of
training options, NumPy losses) is allowed by :func:`matchmill.models.weights.read_state_dict`
through a short list of data-only classes, and nothing else (see there).

Settings carried next to the tensors (an argparse ``regressor_config``, NCNet's ``args``, R2D2's
``net`` string) are honoured or refused by :mod:`matchmill.models.official_settings`.

R2D2: naver/r2d2's ``Quad_L2Net`` in dilated mode runs its nine convs at dilations
1, 1, 1, 2, 2, 4, 4, 8, 16 (each stride-2 conv doubles the dilation of those after it). Keys and
shapes do not depend on dilations, so an R2D2 file is refused, with that reason, for an
:class:`~matchmill.models.pump.r2d2.R2D2Net` whose dilations differ (the descriptors would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import Tensor, nn

__all__ = [
    "LAYOUTS",
    "Conversion",
    "convert_state_dict",
    "describe_layout",
    "detect_layout",
    "layouts_for",
    "strip_dataparallel",
    "to_own_layout",
]

#: Layout name -> what it is (used in error messages).
LAYOUTS: dict[str, str] = {
    "pump": "PUMP ConvMixer checkpoint (naver/pump core/conv_mixer.py, checkpoints/PUMP*.pt)",
    "patch2pix": "Patch2Pix checkpoint (GrumpyZhou/patch2pix networks/patch2pix.py: extract / ncn / regress_mid / regress_fine)",
    "ncnet": "NCNet checkpoint (ignacio-rocco/ncnet lib/model.py ImMatchNet: FeatureExtraction / NeighConsensus)",
    "torchvision": "torchvision ResNet checkpoint (conv1 / bn1 / layer1..4 / fc)",
    "r2d2": "R2D2 checkpoint (naver/r2d2 nets/patchnet.py Quad_L2Net: ops / clf / sal)",
}

_OPTIONAL = (".num_batches_tracked",)
_P2P_PARTS = ("extract.", "ncn.", "regress_mid.", "regress_fine.")
_NCNET_PARTS = ("NeighConsensus.", "FeatureExtraction.")
# naver/r2d2 Quad_L2Net "dilated" mode: dilation of each of the 9 convs (every stride-2 conv doubles
# the dilation of the convs after it; the convs with stride 2 are #2, #4, #6, #7, #8)
_R2D2_OFFICIAL_DILATIONS = (1, 1, 1, 2, 2, 4, 4, 8, 16)


# ----------------------------------------------------------------------------- results


@dataclass
class Conversion:
    """An official state dict mapped onto one net.

    Attributes:
        layout: key of :data:`LAYOUTS`.
        part: which part of the file this net takes (e.g. ``"ncn."``), for messages.
        state: ``{our key: tensor}`` of every key that mapped with the right shape.
        sources: ``{our key: official key}``.
        missing: official keys the net needs that the file lacks (message strings).
        unexpected: official keys inside this net's part that have no counterpart.
        misshaped: ``"official key -> our key: expected (...), got (...)"`` (official layout shapes).
        ignored: official keys of other parts / modules we do not build (never an error).
        notes: problems that are not about single keys (always errors).
    """

    layout: str
    part: str
    state: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """``recognised as <layout description>, <part>`` for error messages."""
        return f"recognised as official layout {self.layout!r}: {LAYOUTS[self.layout]}; this net takes {self.part}"

    def problems(self, strict: bool = True) -> list[str]:
        """What keeps the mapped dict from loading: notes and mis-shaped keys always; missing and
        unexpected keys only when ``strict``. Empty = it loads."""
        out = list(self.notes)
        if strict and self.missing:
            out.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if strict and self.unexpected:
            out.append(f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.misshaped:
            out.append(f"mis-shaped keys ({len(self.misshaped)}): {'; '.join(self.misshaped)}")
        return out


# ----------------------------------------------------------------------------- helpers


def strip_dataparallel(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without a ``module.`` prefix when every key has one (``nn.DataParallel`` saves)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _net_kind(net: nn.Module) -> str | None:
    """Which of our modules ``net`` is: its class attribute ``checkpoint_kind`` (a key of
    :data:`_PLANS`; ``None`` for a module that declares none, which takes no official layout)."""
    return getattr(net, "checkpoint_kind", None)  # any nn.Module may be given; ours declare it


def layouts_for(net: nn.Module) -> tuple[str, ...]:
    """The official layouts (keys of :data:`LAYOUTS`) that ``net`` can take; empty for other modules."""
    kind = _net_kind(net)
    return tuple(layout for (k, layout) in _PLANS if k == kind)


def _matches(layout: str, keys: set[str]) -> bool:
    """Whether ``keys`` (``module.`` already stripped) carry the signature of ``layout``."""
    if layout == "pump":
        return "0.weight" in keys and all(re.match(r"\d+\.", k) for k in keys)
    if layout == "patch2pix":
        return any(k.startswith(_P2P_PARTS) for k in keys)
    if layout == "ncnet":
        return any(k.startswith(_NCNET_PARTS) for k in keys)
    if layout == "torchvision":
        return "conv1.weight" in keys and any(k.startswith(("layer4.", "fc.")) for k in keys)
    if layout == "r2d2":
        return any(k.startswith("ops.") for k in keys)
    raise ValueError(f"unknown official layout {layout!r}; known: {', '.join(LAYOUTS)}")


def describe_layout(state: Mapping[str, Tensor]) -> str | None:
    """The official layout ``state`` looks like, whatever net it is meant for (None: none)."""
    keys = set(strip_dataparallel(state))
    for layout in ("patch2pix", "ncnet", "pump", "r2d2", "torchvision"):
        if _matches(layout, keys):
            return layout
    return None


def detect_layout(net: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """The official layout of ``state`` that ``net`` can take (see :func:`layouts_for`), or None."""
    keys = set(strip_dataparallel(state))
    return next((layout for layout in layouts_for(net) if _matches(layout, keys)), None)


# ----------------------------------------------------------------------------- per-layout key maps
#
# Each map returns, for one of our keys, the official key (None: no counterpart). Tensors are
# copied as they are, except Conv4d weights (see _conv4d_to_ours).


def _pump_key(depth: int) -> Callable[[str], str | None]:
    """Our :class:`PumpConvMixer` key -> naver/pump ``ConvMixer`` (``nn.Sequential``, preconv=1) key.

    Sequential indices: 0 stem conv, 1 ReLU, 2 BN; 3 patch conv, 4 ReLU, 5 BN; block ``b``:
    ``6+4b`` Residual(dw conv ``fn.0``, ReLU, BN ``fn.2``), ``7+4b`` pw conv, ``8+4b`` ReLU,
    ``9+4b`` BN; head conv ``6+4*depth`` (then PixelShuffle, Upsample: no parameters).
    """

    def key(ours: str) -> str | None:
        m = re.fullmatch(r"(stem|patch_embed)\.(\d+)\.(.+)", ours)
        if m:
            return f"{(0 if m[1] == 'stem' else 3) + int(m[2])}.{m[3]}"
        m = re.fullmatch(r"blocks\.(\d+)\.dw\.(\d+)\.(.+)", ours)
        if m:
            return f"{6 + 4 * int(m[1])}.fn.{m[2]}.{m[3]}"
        m = re.fullmatch(r"blocks\.(\d+)\.pw\.(\d+)\.(.+)", ours)
        if m:
            return f"{7 + 4 * int(m[1]) + int(m[2])}.{m[3]}"
        m = re.fullmatch(r"head\.(.+)", ours)
        if m:
            return f"{6 + 4 * depth}.{m[1]}"
        return None

    return key


def _patch2pix_regressor_key(ours: str) -> str | None:
    """Our :class:`Patch2Pix` key -> GrumpyZhou/patch2pix key.

    ``{mid,fine}_regressor.convs.N`` -> ``regress_{mid,fine}.conv.N`` (``FeatRegressNet.conv``:
    conv, BN, conv, BN, ReLU, MaxPool) and ``{mid,fine}_regressor.fcs.N`` -> ``regress_{mid,fine}.fc.N``
    (Linear, BN1d, ReLU, Linear, BN1d, ReLU, Linear). Same indices, same shapes.
    """
    m = re.fullmatch(r"(mid|fine)_regressor\.(convs|fcs)\.(.+)", ours)
    if not m:
        return None
    return f"regress_{m[1]}.{'conv' if m[2] == 'convs' else 'fc'}.{m[3]}"


def _nc_key(prefix: str) -> Callable[[str], str | None]:
    """Our :class:`NCNet` ``nc.net.N.*`` -> ``<prefix>conv.N.*`` (``NeighConsensus.conv``: Conv4d, ReLU, ...)."""

    def key(ours: str) -> str | None:
        m = re.fullmatch(r"nc\.net\.(.+)", ours)
        return f"{prefix}conv.{m[1]}" if m else None

    return key


def _conv4d_to_ours(ours: str, tensor: Tensor) -> Tensor:
    """NCNet's pre-permuted ``(k, C_out, C_in, k, k, k)`` Conv4d weight -> ours ``(C_out, C_in, k, k, k, k)``."""
    if ours.endswith(".weight") and tensor.ndim == 6:
        return tensor.permute(1, 2, 0, 3, 4, 5).contiguous()
    return tensor


def _conv4d_official_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our Conv4d weight shape -> the shape the NCNet file stores (inverse of :func:`_conv4d_to_ours`)."""
    if ours.endswith(".weight") and len(shape) == 6:
        return (shape[2], shape[0], shape[1], *shape[3:])
    return shape


def _same(ours: str, tensor: Tensor) -> Tensor:
    return tensor


def _same_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape


@dataclass(frozen=True)
class _Plan:
    """How one net reads one layout: key map, its part of the file, what to ignore."""

    part: str  # human description of the part, e.g. "the 'ncn.' keys"
    official_key: Callable[[str], str | None]
    in_part: Callable[[str], bool]
    ignore: Callable[[str], bool]
    to_ours: Callable[[str, Tensor], Tensor] = _same
    official_shape: Callable[[str, tuple[int, ...]], tuple[int, ...]] = _same_shape
    notes: tuple[str, ...] = ()  # architecture problems: always errors
    refuse: bool = False  # the net cannot take this layout at all (the notes say why): no key checks


def _everything(key: str) -> bool:
    return True


def _nothing(key: str) -> bool:
    return False


def _convmixer_from_pump(net: nn.Module, layout: str) -> _Plan:
    return _Plan("all keys (the ConvMixer's nn.Sequential indices)", _pump_key(len(net.blocks)), _everything, _nothing)


def _patch2pix_from_patch2pix(net: nn.Module, layout: str) -> _Plan:
    return _Plan(
        "the 'regress_mid.' / 'regress_fine.' keys (extract / ncn are the other stages' parts)",
        _patch2pix_regressor_key,
        lambda k: k.startswith(("regress_mid.", "regress_fine.")),
        lambda k: k.startswith(("extract.", "ncn.")),
    )


def _ncnet_from_official(net: nn.Module, layout: str) -> _Plan:
    prefix = "ncn." if layout == "patch2pix" else "NeighConsensus."
    others = ("extract.", "regress_mid.", "regress_fine.") if layout == "patch2pix" else ("FeatureExtraction.",)
    return _Plan(
        f"the '{prefix}' keys (Conv4d weights permuted from (k, Cout, Cin, k, k, k))",
        _nc_key(prefix),
        lambda k: k.startswith(prefix),
        lambda k: k.startswith(others),
        _conv4d_to_ours,
        _conv4d_official_shape,
    )


def _resnet34_from_torchvision(net: nn.Module, layout: str) -> _Plan:
    return _Plan(
        "conv1 / bn1 / layer1..3 (layer4 and fc are never built)",
        lambda k: k,
        lambda k: not k.startswith(("layer4.", "fc.")),
        lambda k: k.startswith(("layer4.", "fc.")),
    )


def _resnet34_from_patch2pix(net: nn.Module, layout: str) -> _Plan:
    return _Plan(
        "the 'extract.' keys (torchvision names; extract.layer4 is never built)",
        lambda k: f"extract.{k}",
        lambda k: k.startswith("extract.") and not k.startswith("extract.layer4."),
        lambda k: k.startswith(("extract.layer4.", "ncn.", "regress_mid.", "regress_fine.")),
    )


def _resnet34_from_ncnet(net: nn.Module, layout: str) -> _Plan:
    return _Plan(
        "the 'FeatureExtraction.' keys",
        lambda k: None,
        lambda k: k.startswith("FeatureExtraction."),
        lambda k: k.startswith("NeighConsensus."),
        refuse=True,
        notes=(
            "an NCNet (ImMatchNet) checkpoint's FeatureExtraction is a ResNet-101 (or VGG / DenseNet), "
            "not the ResNet34 this net is; point the ResNet34 extractor at a torchvision resnet34 file "
            "or a Patch2Pix checkpoint, and propose.weights at the NCNet file",
        ),
    )


def _r2d2net_from_r2d2(net: nn.Module, layout: str) -> _Plan:
    dilations = tuple(int(m.dilation[0]) for m in net.modules() if isinstance(m, nn.Conv2d))
    notes: tuple[str, ...] = ()
    if dilations != _R2D2_OFFICIAL_DILATIONS:
        notes = (
            f"architecture mismatch: naver/r2d2 Quad_L2Net (dilated) runs its convs at dilations "
            f"{list(_R2D2_OFFICIAL_DILATIONS)}, this R2D2Net at {list(dilations)}; the keys would map "
            f"but the descriptors would differ",
        )
    return _Plan(
        "the 'ops.' keys (clf / sal confidence heads are not built)",
        lambda k: f"ops.{k[len('layers.'):]}" if k.startswith("layers.") else None,
        lambda k: not k.startswith(("clf.", "sal.")),
        lambda k: k.startswith(("clf.", "sal.")),
        notes=notes,
    )


#: (our net's ``checkpoint_kind``, official layout) -> how that net reads that layout. The layouts
#: of one kind are tried in this order (:func:`layouts_for`, :func:`detect_layout`).
_PLANS: dict[tuple[str, str], Callable[[nn.Module, str], _Plan]] = {
    ("convmixer", "pump"): _convmixer_from_pump,
    ("r2d2net", "r2d2"): _r2d2net_from_r2d2,
    ("ncnet", "patch2pix"): _ncnet_from_official,
    ("ncnet", "ncnet"): _ncnet_from_official,
    ("patch2pix", "patch2pix"): _patch2pix_from_patch2pix,
    ("resnet34", "torchvision"): _resnet34_from_torchvision,
    ("resnet34", "patch2pix"): _resnet34_from_patch2pix,
    ("resnet34", "ncnet"): _resnet34_from_ncnet,
}


def _plan(kind: str, layout: str, net: nn.Module) -> _Plan:
    """The :class:`_Plan` for our module ``kind`` reading official ``layout``."""
    if (kind, layout) not in _PLANS:
        raise ValueError(f"{type(net).__name__} does not take the official {layout!r} layout")
    return _PLANS[kind, layout](net, layout)


# ----------------------------------------------------------------------------- conversion


def convert_state_dict(net: nn.Module, state: Mapping[str, Tensor], layout: str | None = None) -> Conversion:
    """Map an official state dict onto ``net``'s own keys, recording every problem (raises nothing
    for key problems; see :meth:`Conversion.problems`).

    Args:
        net: one of our modules (:func:`layouts_for` lists what it takes).
        state: the official ``{key: tensor}`` (already unwrapped from its checkpoint dict; a
            ``module.`` prefix is stripped here).
        layout: force a layout; default :func:`detect_layout`.

    Raises:
        ValueError: ``state`` matches no official layout ``net`` takes, or ``layout`` is not one.
    """
    kind = _net_kind(net)
    state = strip_dataparallel(state)
    if layout is None:
        layout = detect_layout(net, state)
        if layout is None:
            known = ", ".join(layouts_for(net)) or "none"
            raise ValueError(
                f"the state dict matches no official layout {type(net).__name__} takes (known: {known}); "
                f"first keys: {', '.join(sorted(state)[:5])}"
            )
    if kind is None or layout not in layouts_for(net):
        raise ValueError(f"{type(net).__name__} does not take the official {layout!r} layout")
    plan = _plan(kind, layout, net)
    out = Conversion(layout=layout, part=plan.part, notes=list(plan.notes))
    if plan.refuse:
        return out
    expected = net.state_dict()
    used: set[str] = set()
    for ours, target in expected.items():
        official = plan.official_key(ours)
        if official is None:
            if not ours.endswith(_OPTIONAL):
                out.missing.append(f"(no official counterpart) -> {ours}")
            continue
        used.add(official)
        if official not in state:
            if not official.endswith(_OPTIONAL):
                out.missing.append(f"{official} -> {ours}")
            continue
        tensor = state[official]
        want = tuple(plan.official_shape(ours, tuple(target.shape)))
        if tuple(tensor.shape) != want:
            out.misshaped.append(f"{official} -> {ours}: expected {want}, got {tuple(tensor.shape)}")
            continue
        out.state[ours] = plan.to_ours(ours, tensor)
        out.sources[ours] = official
    for key in sorted(state):
        if key in used:
            continue
        if plan.in_part(key):
            out.unexpected.append(key)
        elif plan.ignore(key):
            out.ignored.append(key)
        else:
            out.unexpected.append(key)
    if not any(plan.in_part(k) for k in state):
        out.notes.append("the file holds none of the keys this net takes (a checkpoint of the other parts only)")
    return out


def to_own_layout(
    net: nn.Module, state: Mapping[str, Tensor], strict: bool = True, where: str = "state dict"
) -> dict[str, Tensor]:
    """``state`` (an official layout) mapped to ``net``'s own keys; ValueError naming every problem.

    Args:
        net: one of our modules.
        state: the official state dict (unwrapped).
        strict: missing / unexpected keys are errors (mis-shaped keys and notes always are).
        where: the source's name in the error message.

    Returns:
        ``{our key: tensor}`` ready for ``net.load_state_dict`` (BatchNorm counters may be absent).
    """
    conv = convert_state_dict(net, state)
    problems = conv.problems(strict)
    if problems:
        raise ValueError(f"cannot load {type(net).__name__} weights from {where} ({conv.summary}): " + " | ".join(problems))
    return conv.state
