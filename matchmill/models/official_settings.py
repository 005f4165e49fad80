"""Settings that official checkpoints carry next to their tensors: honoured or refused, never ignored.

Settings carried next to the tensors (:func:`check_settings`, :func:`conf_from_checkpoint`): a
setting that changes what the net computes without changing a tensor's shape would otherwise load
silently into another function, so each one is either honoured (the net built with it loads, and
:func:`conf_from_checkpoint` gives the conf that builds it) or refused in one line
``<file>: <setting> = <value> is not supported ...``. A file without settings is not checked.

===============  ============================================================================================
net <- layout    settings read (-> our conf key); honoured unless marked
===============  ============================================================================================
Patch2Pix <-     ``regressor_config``: ``conv_dims``, ``conv_kers`` (-> ``conv_kernels``), ``conv_strs``
``patch2pix``    (-> ``conv_strides``), ``fc_dims``, ``psize`` (an int or an equal [mid, fine] pair; unequal:
                 refused), ``shared``, ``pshift`` / ``panc`` (training only: never compared, honoured when
                 building); ``feat_dim`` (= sum of ``feat_channels``, checked); ``feat_comb`` (only 'pre') and
                 ``ptype`` (only 'center'): other values refused; any other key: refused. Top-level
                 ``feat_idx`` (checked; the refine stage passes f0..f3). ``refine.weights`` builds the
                 regressors from these settings (methods/patch2pix.py).
ResNet34 <-      top-level ``change_stride`` (honoured), ``backbone`` (only 'ResNet34')
``patch2pix``
NCNet <-         ``args.ncons_kernel_sizes`` / ``args.ncons_channels`` (-> ``nc_kernels`` / ``nc_channels``),
``ncnet``        ``args.symmetric_mode`` (-> ``symmetric``) when present; other args are training options
R2D2Net <-       ``net`` string: class ``Quad_L2Net`` / ``Quad_L2Net_ConfCFS`` only (``Fast_Quad_L2Net*``
``r2d2``         refused), kwargs ``mchan``, ``dim`` (-> ``out_dim``), ``dilated=True``; others refused
others           PUMP files, torchvision files, the ``ncn.`` part of a Patch2Pix file: no settings (every
                 choice is in the tensor shapes)
===============  ============================================================================================

The layouts themselves (which keys, how they map) are in :mod:`matchmill.models.official_checkpoints`;
:func:`matchmill.models.weights.load_weights` calls :func:`check_settings` once a layout is detected.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

__all__ = ["check_settings", "conf_from_checkpoint"]


def _net_kind(net: nn.Module) -> str | None:
    """Our module's ``checkpoint_kind`` (None for a module that declares none)."""
    return getattr(net, "checkpoint_kind", None)

#
# Some official files carry, next to their tensors, the settings the net was built with. Those that
# change what the net computes without changing a tensor's shape (the regressors' conv strides, the
# window size) would otherwise load silently into a different function. Each is honoured (the net
# built with it loads; conf_from_checkpoint gives the conf that builds it) or refused in one line
# naming the setting and its value. A file without such settings (a raw state dict) is not checked.


@dataclass(frozen=True)
class _Setting:
    """One setting read from a checkpoint's metadata and the conf key of ours that builds it."""

    name: str  # where it sits in the file, e.g. "regressor_config.conv_strs"
    value: Any  # as the file holds it (plain Python), for messages
    conf_key: str  # the net's conf key that builds it, e.g. "conv_strides"
    conf_value: Any  # the value of conf_key that builds it (compared with the net's)
    compare: bool = True  # False: training only (the net computes the same function whatever it is)
    build: bool = True  # conf_from_checkpoint sets conf_key (False: checked only)
    built: Callable[[Mapping], Any] | None = None  # net conf -> value comparable with conf_value (default conf[conf_key])


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers, tuples as lists, a Namespace as a dict."""
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # NumPy / torch scalar
        return value.item()
    return value


def _int_list(value: Any) -> list[int] | None:
    """``value`` as a non-empty list of ints, or None when it is not one."""
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return list(value)


def _unsupported(name: str, value: Any, builds: str) -> str:
    return f"{name} = {value!r} is not supported (matchmill builds {builds})"


# regressor_config key -> our Patch2Pix conf key: the regressors' architecture (lists of ints)
_P2P_LISTS = {"conv_dims": "conv_dims", "conv_kers": "conv_kernels", "conv_strs": "conv_strides", "fc_dims": "fc_dims"}
# regressor_config keys of training-time patch expansion only (evaluation runs panc 1): same function
_P2P_TRAINING = {"pshift": "pshift", "panc": "panc"}


def _patch2pix_regressor_settings(metadata: Mapping) -> tuple[list[_Setting], list[str]]:
    """GrumpyZhou/patch2pix ``regressor_config`` (+ top-level ``feat_idx``) -> settings and refusals.

    Keys: ``conv_dims``, ``conv_kers``, ``conv_strs``, ``fc_dims`` (-> ``conv_dims``,
    ``conv_kernels``, ``conv_strides``, ``fc_dims``), ``psize`` (one window side, or a [mid, fine]
    pair that must be equal), ``shared``, ``feat_dim`` (per-image channels: the sum of
    ``feat_channels``), ``feat_comb`` (only 'pre'), ``ptype`` (only 'center'), ``pshift`` /
    ``panc`` (training only). Any other key is refused: it may change what the regressors compute.
    """
    cfg = _plain(metadata.get("regressor_config"))
    settings: list[_Setting] = []
    lines: list[str] = []
    if "feat_idx" in metadata:
        idx = _plain(metadata["feat_idx"])
        if _int_list(idx) is None:
            lines.append(_unsupported("feat_idx", idx, "a list of pyramid levels, e.g. [0, 1, 2, 3]"))
        else:
            settings.append(_Setting("feat_idx", idx, "feat_idx", idx, build=False))
    if cfg is None:
        return settings, lines
    if not isinstance(cfg, dict):
        return settings, lines + [_unsupported("regressor_config", cfg, "an argparse Namespace of regressor settings")]
    for key, value in cfg.items():
        name = f"regressor_config.{key}"
        if key in _P2P_LISTS:
            if _int_list(value) is None:
                lines.append(_unsupported(name, value, "a list of ints"))
            else:
                settings.append(_Setting(name, value, _P2P_LISTS[key], value))
        elif key == "psize":
            sizes = [value] if isinstance(value, int) else value
            if _int_list(sizes) is None or len(set(sizes)) != 1 or len(sizes) > 2 or sizes[0] <= 0 or sizes[0] % 2:
                lines.append(_unsupported(name, value, "one even window side for both stages, e.g. 16 or [16, 16]"))
            else:
                settings.append(_Setting(name, value, "psize", sizes[0]))
        elif key == "shared":
            if not isinstance(value, bool):
                lines.append(_unsupported(name, value, "True or False"))
            else:
                settings.append(_Setting(name, value, "shared", value))
        elif key == "feat_dim":
            if not isinstance(value, int) or isinstance(value, bool):
                lines.append(_unsupported(name, value, "the per-image channel count, e.g. 259"))
            else:
                settings.append(_Setting(name, value, "feat_channels", value, build=False,
                                         built=lambda conf: sum(int(c) for c in conf["feat_channels"])))
        elif key == "feat_comb":
            if value != "pre":
                lines.append(_unsupported(name, value, "'pre': the A and B windows stacked before the convs"))
        elif key == "ptype":
            if any(v != "center" for v in (value if isinstance(value, list) else [value])):
                lines.append(_unsupported(name, value, "'center': windows centred on the match"))
        elif key == "panc":
            if value not in (1, 8):
                lines.append(_unsupported(name, value, "1 or 8 anchors per proposal"))
            else:
                settings.append(_Setting(name, value, "panc", value, compare=False))
        elif key == "pshift":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                lines.append(_unsupported(name, value, "a pixel shift, e.g. 8"))
            else:
                settings.append(_Setting(name, value, "pshift", value, compare=False))
        else:
            lines.append(f"{name} = {value!r} is not a setting matchmill knows (it may change what the regressors compute)")
    return settings, lines


def _patch2pix_backbone_settings(metadata: Mapping) -> tuple[list[_Setting], list[str]]:
    """A Patch2Pix checkpoint's top-level ``backbone`` (only 'ResNet34') and ``change_stride``."""
    settings: list[_Setting] = []
    lines: list[str] = []
    if "backbone" in metadata and _plain(metadata["backbone"]) != "ResNet34":
        lines.append(_unsupported("backbone", _plain(metadata["backbone"]), "'ResNet34'"))
    if "change_stride" in metadata:
        value = _plain(metadata["change_stride"])
        if not isinstance(value, bool):
            lines.append(_unsupported("change_stride", value, "True or False"))
        else:
            settings.append(_Setting("change_stride", value, "change_stride", value))
    return settings, lines


def _ncnet_args_settings(metadata: Mapping) -> tuple[list[_Setting], list[str]]:
    """ignacio-rocco/ncnet ``args`` (the training command line): the NC layers' ``ncons_kernel_sizes``,
    ``ncons_channels`` (-> ``nc_kernels``, ``nc_channels``) and, when present, ``symmetric_mode``
    (-> ``symmetric``). The other arguments (paths, learning rate, epochs, ...) do not change the net."""
    args = _plain(metadata.get("args"))
    if not isinstance(args, dict):
        return [], []
    settings: list[_Setting] = []
    lines: list[str] = []
    for key, ours in (("ncons_kernel_sizes", "nc_kernels"), ("ncons_channels", "nc_channels")):
        if key in args:
            value = args[key]
            if _int_list(value) is None:
                lines.append(_unsupported(f"args.{key}", value, "a list of ints"))
            else:
                settings.append(_Setting(f"args.{key}", value, ours, value))
    if "symmetric_mode" in args:
        settings.append(_Setting("args.symmetric_mode", args["symmetric_mode"], "symmetric", bool(args["symmetric_mode"])))
    return settings, lines


_R2D2_NETS = ("Quad_L2Net", "Quad_L2Net_ConfCFS")  # naver/r2d2 nets built as R2D2Net (dilated mode)


def _r2d2_net_settings(metadata: Mapping) -> tuple[list[_Setting], list[str]]:
    """naver/r2d2's ``net`` string, e.g. ``"Quad_L2Net_ConfCFS()"``: the class (only Quad_L2Net /
    Quad_L2Net_ConfCFS; Fast_Quad_L2Net downsamples and is not this net) and its keyword arguments
    ``mchan``, ``dim`` (-> ``mchan``, ``out_dim``) and ``dilated`` (only True). Read with
    :func:`ast.parse` and literal values only; nothing in it runs."""
    net = metadata.get("net")
    if not isinstance(net, str):
        return [], []
    builds = "Quad_L2Net_ConfCFS() in dilated mode"
    try:
        call = ast.parse(net.strip(), mode="eval").body
        ok = isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} if ok else {}
    except (SyntaxError, TypeError, ValueError):
        ok, kwargs = False, {}
    if not ok or call.func.id not in _R2D2_NETS or None in kwargs:
        return [], [_unsupported("net", net, builds)]
    settings: list[_Setting] = []
    lines: list[str] = []
    for key, value in kwargs.items():
        if key in ("mchan", "dim") and isinstance(value, int):
            settings.append(_Setting(f"net {key}", value, "mchan" if key == "mchan" else "out_dim", value))
        elif not (key == "dilated" and value is True):
            lines.append(_unsupported(f"net {key}", value, builds))
    return settings, lines


#: (our net's ``checkpoint_kind``, official layout) -> reader of the file's settings for that net.
_SETTINGS: dict[tuple[str, str], Callable[[Mapping], tuple[list[_Setting], list[str]]]] = {
    ("patch2pix", "patch2pix"): _patch2pix_regressor_settings,
    ("resnet34", "patch2pix"): _patch2pix_backbone_settings,
    ("ncnet", "ncnet"): _ncnet_args_settings,
    ("r2d2net", "r2d2"): _r2d2_net_settings,
}
_BUILD_HINTS = {"patch2pix": " (refine.weights builds the regressors from the file's settings itself)"}


def check_settings(net: nn.Module, layout: str, metadata: Mapping, where: str = "checkpoint") -> None:
    """Refuse an official checkpoint whose settings describe another net than ``net``.

    Args:
        net: one of our modules (its ``conf`` is compared).
        layout: the official layout of the file (:func:`detect_layout`).
        metadata: the checkpoint dict's entries other than the state dict
            (:attr:`matchmill.models.weights.StateDict.metadata`); empty: nothing to check.
        where: the file's name in the message.

    Raises:
        ValueError: one line, ``<where>: <setting> = <value> is not supported ...`` for each setting
            matchmill cannot build or ``net`` is not built with (with the conf that builds it).
    """
    reader = _SETTINGS.get((_net_kind(net) or "", layout))
    if reader is None or not metadata:
        return
    settings, lines = reader(metadata)
    conf = getattr(net, "conf", {})  # our nets keep their merged conf
    fix = {}
    for s in settings:
        if not s.compare or s.conf_key not in conf:
            continue
        ours = s.built(conf) if s.built is not None else _plain(conf[s.conf_key])
        if ours != s.conf_value:
            lines.append(f"{s.name} = {s.value!r} is not supported by this {type(net).__name__} "
                         f"(it builds {s.conf_key} = {_plain(conf[s.conf_key])!r})")
            if s.build:
                fix[s.conf_key] = s.conf_value
    if lines:
        hint = ""
        if fix:
            hint = f"; build it with {', '.join(f'{k} = {v!r}' for k, v in fix.items())}"
            hint += _BUILD_HINTS.get(_net_kind(net) or "", "")
        raise ValueError(f"{where}: " + "; ".join(lines) + hint)


def conf_from_checkpoint(kind: str, metadata: Mapping, where: str = "checkpoint") -> dict[str, Any]:
    """Conf overrides that build our ``kind`` net (a ``checkpoint_kind``) as an official checkpoint's
    settings describe it (empty for a file without settings, e.g. a raw state dict).

    Example: a Patch2Pix file with ``regressor_config.conv_strs = [2, 2]`` and ``psize = [12, 12]``
    gives ``{"conv_strides": [2, 2], "psize": 12, ...}`` for ``Patch2Pix(conf)``.

    Raises:
        ValueError: one line naming each setting matchmill cannot build and its value.
    """
    out: dict[str, Any] = {}
    lines: list[str] = []
    for (k, _layout), reader in _SETTINGS.items():
        if k != kind or not metadata:
            continue
        settings, problems = reader(metadata)
        lines += problems
        out.update({s.conf_key: s.conf_value for s in settings if s.build})
    if lines:
        raise ValueError(f"{where}: " + "; ".join(lines))
    return out
