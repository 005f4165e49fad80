"""One weight loader for every net: read a state dict without running pickled code, check, then copy.

:func:`read_state_dict` reads ``.safetensors`` (``safetensors``) or anything else with
``torch.load(map_location="cpu", weights_only=True)``, from a local path or any fsspec URL
(``s3://``, ``gs://``, ``file://``, ``memory://``, ...). A checkpoint dict holding the weights under
``"state_dict"`` or ``"model"`` is unwrapped. A file that holds pickled objects or code (a crafted
``__reduce__``, a whole pickled ``nn.Module``) is refused with a ``ValueError``; nothing in it runs.
The authors' released checkpoints carry some plain metadata next to their tensors (an
``argparse.Namespace`` of training options, NumPy scalars / arrays of losses); when the
weights-only load stops at one of those, it is retried with exactly these data-only classes
allowed (:data:`METADATA_GLOBALS`), still weights-only; any other global is refused as before.

:func:`load_weights` checks every key (missing, unexpected, mis-shaped) *before* copying anything
and names the offending keys and the source; values are cast to the dtype and device of the
net's own tensors, so it works for a net already moved to ``cuda`` or ``half()``. BatchNorm
``num_batches_tracked`` counters are optional (old and converted files lack them).
A state dict that does not fit the net in its own layout but is recognised as an official released
checkpoint (PUMP, NCNet, Patch2Pix, torchvision ResNet34, R2D2) is mapped by
:mod:`matchmill.models.official_checkpoints` and then checked just as strictly; the settings such a
checkpoint carries next to its tensors (kept as :attr:`StateDict.metadata`) must describe the net
it loads into, or it is refused in one line naming the setting and its value.
"""

from __future__ import annotations

import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from matchmill.weights import is_shipped, shipped_path

from . import official_checkpoints as oc
from .official_settings import check_settings

__all__ = [
    "METADATA_GLOBALS",
    "OPTIONAL_SUFFIXES",
    "StateDict",
    "WeightsSource",
    "check_weights_file",
    "load_weights",
    "read_state_dict",
    "select_keys",
    "state_dict_problems",
]

#: A weights file (local path or fsspec URL) or an in-memory ``{name: tensor}`` mapping.
WeightsSource = str | Path | Mapping[str, Tensor]

#: State-dict keys that a weights file may omit (BatchNorm counters, absent from old checkpoints).
OPTIONAL_SUFFIXES = (".num_batches_tracked",)

_CHECKPOINT_KEYS = ("state_dict", "model")  # where training checkpoints keep the weights

#: Globals that official checkpoints' metadata needs and that hold data only (no code runs when
#: they are rebuilt): ``argparse.Namespace`` (rebuilt by updating its ``__dict__``) and NumPy's
#: scalar / array / dtype reconstruction (numbers and arrays; object arrays hold only what the
#: weights-only unpickler itself allowed). Names as they appear in pickles of NumPy 1 and 2.
METADATA_GLOBALS = (
    "argparse.Namespace",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtypes.*DType",
)


class StateDict(dict):
    """``{name: tensor}`` read from a file, with ``metadata``: the other entries of the checkpoint dict
    it was unwrapped from (e.g. Patch2Pix's ``regressor_config``, NCNet's ``args``, R2D2's ``net``;
    empty for a raw state dict). :func:`load_weights` hands the metadata to
    :func:`matchmill.models.official_settings.check_settings`. Pickles (``torch.save``) as an
    ``OrderedDict`` of its tensors, which a weights-only load reads back; the metadata is not saved.
    """

    def __init__(self, state: Mapping[str, Tensor], metadata: Mapping | None = None) -> None:
        super().__init__(state)
        self.metadata: dict = dict(metadata or {})

    def __reduce__(self):
        return (OrderedDict, (list(self.items()),))


def read_state_dict(source: WeightsSource) -> StateDict:
    """Read ``{name: tensor}`` weights, never executing pickled code.

    Args:
        source: ``.safetensors`` or ``.pth`` / ``.pt`` / ``.ckpt`` (any other suffix) path, an fsspec
            URL of such a file (fetched to a temporary local copy), or a mapping (checked, unwrapped).

    Returns:
        ``{name: tensor}``, tensors on CPU for files (a mapping's tensors are returned as given), a
        :class:`StateDict` whose ``metadata`` holds the checkpoint dict's other entries.

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        ValueError: the file holds pickled objects / code (refused), cannot be read, or holds no
            dict of tensors; the message names the file.
    """
    if isinstance(source, Mapping):
        return _as_state_dict(source, "state dict")
    if is_shipped(source):  # shipped:NAME -> the file inside the installed package
        source = shipped_path(str(source))
    if "://" in str(source):
        return _read_url(str(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return _as_state_dict(_read_local(path), str(path))


def _read_local(path: Path, mmap: bool = False) -> object:
    """The deserialised content of a local weights file (weights-only); ``mmap``: map the tensor
    data of a zip-format torch file instead of reading it (for checks that need no values)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if not _is_metadata_global(str(exc)):
                raise
        with torch.serialization.safe_globals(_metadata_globals()):  # still weights_only=True
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused the content
        raise ValueError(_refusal(path, str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot load weights from {path} (weights-only loading): {exc}") from exc


def check_weights_file(path: str | Path) -> None:
    """Refuse a local torch weights file that is not a plain tensor file, without running it.

    The file is unpickled weights-only, as :func:`read_state_dict` does (a crafted ``__reduce__``
    or a pickled module is refused before anything in it runs), with the tensor data of a
    zip-format file memory-mapped rather than read, so that a run can check its weights up front
    at little cost. ``.safetensors`` files hold tensors only and are not opened.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file holds pickled objects/code, cannot be read, or holds no state dict of
            tensors; one line naming the file (the loader's own message).
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return
    _as_state_dict(_read_local(path, mmap=zipfile.is_zipfile(path)), str(path))


def _is_metadata_global(message: str) -> bool:
    """Whether the weights-only unpickler stopped at one of :data:`METADATA_GLOBALS`."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if not found:
        return False
    name = found.group(1)
    return name in METADATA_GLOBALS or bool(re.fullmatch(r"numpy\.dtypes\.\w+DType", name))


def _metadata_globals() -> list:
    """The objects of :data:`METADATA_GLOBALS`, as ``torch.serialization.safe_globals`` takes them."""
    import argparse

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    out: list = [argparse.Namespace, np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25: one class per dtype (pickled dtypes BUILD them)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


def _refusal(path: Path, message: str) -> str:
    """One-line reason why the weights-only unpickler refused ``path``."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (
            f"refusing to load {path}: it holds pickled objects/code (global {found.group(1)}), not just weights; "
            f"only weights are loaded (tensors, torch.load weights_only=True). Re-save it as a state dict, "
            f"e.g. torch.save(net.state_dict(), path) or safetensors"
        )
    detail = next((ln.strip() for ln in message.splitlines() if "Unsupported" in ln), "not a weights-only torch file")
    return (
        f"refusing to load {path}: not a weights-only torch file ({detail}); it may hold pickled objects/code, "
        f"and only weights are loaded (tensors, torch.load weights_only=True)"
    )


def _read_url(url: str) -> dict[str, Tensor]:
    """:func:`read_state_dict` for an fsspec URL, through a temporary local copy (errors name the URL)."""
    import fsspec

    fs, remote = fsspec.core.url_to_fs(url)
    if not fs.isfile(remote):
        raise FileNotFoundError(f"weights file not found: {url}")
    with tempfile.TemporaryDirectory(prefix="matchmill-weights-") as tmp:
        local = Path(tmp) / Path(remote).name
        fs.get_file(remote, str(local))
        try:
            return read_state_dict(local)
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(local), url)) from None


def _as_state_dict(obj: object, where: str) -> StateDict:
    """Unwrap a checkpoint dict and check that ``obj`` is a non-empty ``{str: Tensor}`` mapping; the
    checkpoint dict's other entries (or a given :class:`StateDict`'s metadata) become ``metadata``."""
    metadata = dict(obj.metadata) if isinstance(obj, StateDict) else {}  # a StateDict passed back in keeps it
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                metadata = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise ValueError(f"{where} does not hold a state dict of tensors (got {type(obj).__name__})")
    return StateDict(obj, metadata)


def state_dict_problems(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], strict: bool) -> list[str]:
    """Human-readable list of what keeps ``given`` from loading into a module whose state dict is ``expected``.

    Mis-shaped keys are always problems; missing (non-optional, see :data:`OPTIONAL_SUFFIXES`) and
    unexpected keys only when ``strict``. An empty list means ``given`` loads.
    """
    missing = sorted(k for k in expected if k not in given and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in given if k not in expected)
    misshaped = sorted(
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(given[k].shape)}"
        for k in given
        if k in expected and tuple(given[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    return problems


def select_keys(
    state: Mapping[str, Tensor], prefix: str = "", key_map: Callable[[str], str | None] | None = None
) -> dict[str, Tensor]:
    """Keys under ``prefix`` (stripped; all keys when empty), renamed by ``key_map`` (``None`` drops a key)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        if key_map is not None:
            mapped = key_map(key)
            if mapped is None:
                continue
            key = mapped
        out[key] = value
    return out


def load_weights(
    net: nn.Module,
    source: WeightsSource,
    *,
    strict: bool = True,
    prefix: str = "",
    key_map: Callable[[str], str | None] | None = None,
    where: str | None = None,
) -> None:
    """Fill ``net`` in place from a weights file or a state dict; on any problem nothing is copied.

    The file is first read as ``net``'s own layout. When that does not fit and (without ``key_map``)
    the keys are recognised as an official released checkpoint ``net`` takes (see
    :mod:`matchmill.models.official_checkpoints`: PUMP ``PUMP.pt``, Patch2Pix / NCNet checkpoints,
    torchvision ``resnet34``), the net's part of it is mapped and loaded with the same checks.

    Args:
        net: the module to fill; its tensors keep their dtype and device (given values are cast).
        source: see :func:`read_state_dict`.
        strict: fail on missing or unexpected keys (mis-shaped keys always fail; BatchNorm
            ``num_batches_tracked`` is never required). Non-strict loads the keys that match.
        prefix: only keys starting with it are used, with it stripped (e.g. ``"backbone."``).
        key_map: applied to every (prefix-stripped) key; returns the net's key, or ``None`` to drop it.
        where: the source's name in error messages (default: the path, or ``"state dict"``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: refused / unreadable file, or a message naming every missing, unexpected and
            mis-shaped key (with both shapes) and the source (for an official checkpoint: its
            layout and the official key names, each with our key after ``->``).
    """
    if where is None:
        where = "state dict" if isinstance(source, Mapping) else str(source)
    state = read_state_dict(source)
    given = select_keys(state, prefix, key_map)
    expected = net.state_dict()
    problems = state_dict_problems(expected, given, strict)
    if prefix and not given:
        problems.insert(0, f"no keys under prefix {prefix!r}")
    loads_nothing = not any(k in expected for k in given)  # non-strict would silently load nothing
    if (problems or loads_nothing) and given and key_map is None:
        given, problems = _official(net, given, problems, strict, where, state.metadata)
    if problems:
        raise ValueError(f"cannot load {type(net).__name__} weights from {where}: " + " | ".join(problems))
    merged = dict(expected)
    for key, value in given.items():
        if key in expected:
            merged[key] = value.detach().to(dtype=expected[key].dtype, device=expected[key].device)
    net.load_state_dict(merged, strict=True)


def _official(
    net: nn.Module, given: dict[str, Tensor], problems: list[str], strict: bool, where: str, metadata: Mapping
) -> tuple[dict[str, Tensor], list[str]]:
    """``given`` did not fit ``net``'s own layout: map it when it is an official checkpoint ``net`` takes.

    Returns the state dict to load and the remaining problems (own-layout problems, plus a hint when
    the file is an official checkpoint of another net). Raises ValueError, naming the layout and the
    official keys, when the file is recognised but does not map completely, and, in one line naming
    the setting and its value, when the checkpoint's settings (``metadata``) describe another net
    than ``net`` (:func:`matchmill.models.official_settings.check_settings`).
    """
    layout = oc.detect_layout(net, given)
    if layout is not None:
        check_settings(net, layout, metadata, where)
        conv = oc.convert_state_dict(net, given, layout)
        official_problems = conv.problems(strict)
        if official_problems:
            raise ValueError(
                f"cannot load {type(net).__name__} weights from {where} ({conv.summary}): " + " | ".join(official_problems)
            )
        return conv.state, []
    looks = oc.describe_layout(given) if problems else None  # a hint on an error, never a new error
    if looks is not None:
        takes = ", ".join(oc.layouts_for(net)) or "none"
        problems = [*problems, f"the file looks like official layout {looks!r} ({oc.LAYOUTS[looks]}), which {type(net).__name__} "
                               f"does not take (official layouts it takes: {takes})"]
    return given, problems
