"""``matchmill show RUN STAGE``: a stage's first rows as a table a person reads in a terminal.

- Default: per stage a short set of columns (:data:`DEFAULT_COLUMNS`: the key, counts, times,
  status; those null in every shown row left out), string cells shortened with ``...`` so that
  each line fits the width (the terminal's: ``COLUMNS``, else the tty, else :data:`DEFAULT_WIDTH`);
  last lines say how many columns there are and how to see the others, and point failed rows to
  ``--failed`` (errors in full).
- ``columns=[...]`` (``--columns a,b``): those columns, in that order, cells in full;
  ``columns=["all"]`` (``--columns all`` / ``--all``): every column of the manifest.
- List columns are summarised in every mode (the values are for the Python API:
  ``matchmill.open_run(url).read(stage)``, ``Run.matches(pair_id)``): ``matches`` as its shape
  ``(N, 4)``, a flag list (``inliers``) as ``k/N`` set, a matrix (``K0``, ``T_0to1``, ``F_est``...)
  as ``3x3`` / ``4x4``, a list of at most 4 values (``crop0``) inline, a longer one as ``(N,)``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from matchmill.manifests.columns import list_rows
from matchmill.manifests.commit import read_stage

from .graph import get_stage

#: Line width when neither ``COLUMNS`` nor a terminal tells it (output piped to a file or a pager).
DEFAULT_WIDTH = 100
#: A shortened string cell keeps at least this many characters (``...`` included).
MIN_CELL = 12
#: The key column (the first) keeps at least this many when the line is short of room.
MIN_KEY_CELL = 30
#: The column of the compact default dropped last when the line is short of room (the key never is).
_LAST_DROPPED = "status"
#: ``--columns`` value that selects every column.
ALL = "all"
#: Per stage, the columns of the compact default, in order (absent ones skipped: older runs).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "pairs": ("pair_id", "scene", "overlap", "similarity", "shared_points", "status"),
    "images": ("image_id", "scene", "crop", "status"),
    "extract": ("image_id", "method", "width", "height", "num_keypoints", "seconds", "status"),
    "propose": ("pair_id", "num_matches", "seconds", "status"),
    "refine": ("pair_id", "num_matches", "seconds", "status"),
    "verify": ("pair_id", "model", "num_matches", "num_inliers", "verified", "pose_error", "corner_error",
               "seconds", "status"),
    "metrics": ("metric", "value", "count"),
    "mine": ("pair_id", "num_matches", "num_inliers", "inlier_ratio", "spread", "model", "status"),
}
#: Flat ``list<float64>`` columns that hold a row-major square matrix (shown as ``3x3`` / ``4x4``).
MATRIX_COLUMNS = frozenset({"K0", "K1", "T_0to1", "H_0to1", "H_est", "F_est"})
#: String columns shortened at the start, keeping the file name (a pair id: each image id so); others at the end.
_TAIL_KEPT = frozenset({"pair_id", "image_id", "image0", "image1", "path", "path0", "path1", "artifact_uri"})


def show_stage(run_url: str, stage: str, rows: int = 10, failed_only: bool = False,
               columns: Sequence[str] | None = None, width: int | None = None) -> str:
    """What ``matchmill show`` prints: the first ``rows`` rows of a stage's manifest.

    Args:
        columns: None for the compact default; column names (in that order); or ``["all"]``.
        width: the line width the compact default fits (None: :func:`terminal_width`).
        failed_only: only failed rows, each one's key and full error text first (one ``key  error``
            line per row), then the table.

    Raises:
        KeyError: an unknown stage, or a column the stage's manifest does not have (the message
            lists the columns it has).
    """
    spec = get_stage(stage)
    table = read_stage(run_url, spec.name, spec.manifest)
    names = pick_columns(table.schema, stage, columns)  # before "no rows": a wrong name is told at once
    if table.num_rows == 0:
        return f"{stage}: no rows"
    head: list[str] = []
    total = table.num_rows
    if failed_only and "status" in table.column_names:
        table = table.filter(pc.equal(table.column("status"), "failed"))
        if table.num_rows == 0:
            return f"{stage}: no failed rows ({total} rows)"
        head = _error_lines(table.slice(0, rows), _key_column(spec, table))
        if table.num_rows > rows:
            head.append(f"... {table.num_rows - rows} more failed rows (-n {table.num_rows} shows all)")
        head.append("")
        title = f"{stage}: {table.num_rows} failed of {total} rows"
    else:
        title = f"{stage}: {table.num_rows} rows" + (f", the first {rows}" if rows < table.num_rows else "")
    body = format_rows(table.slice(0, rows), names, fit=None if columns else (width or terminal_width()),
                       failed_hint=not failed_only)
    return "\n".join([*head, title, *body])


def terminal_width() -> int:
    """``COLUMNS``, else the terminal's width, else :data:`DEFAULT_WIDTH`."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def pick_columns(schema: pa.Schema, stage: str, columns: Sequence[str] | None) -> list[str]:
    """The columns to show: the stage's compact default (``columns`` None), every column
    (``["all"]``), or ``columns`` as given (duplicates dropped).

    Raises:
        KeyError: a name ``schema`` does not have; one line listing the ones it has.
    """
    have = list(schema.names)
    if columns is None:
        default = DEFAULT_COLUMNS.get(stage)
        if default is None:  # a stage without a default: its scalar columns
            return [n for n in have if not _is_list(schema.field(n).type)][:8]
        return [n for n in default if n in have]
    wanted = [c.strip() for c in columns if c.strip()]
    if ALL in wanted:
        return have
    unknown = [c for c in wanted if c not in have]
    if unknown or not wanted:
        what = f"no column {', '.join(map(repr, unknown))} in" if unknown else "no column given for"
        raise KeyError(f"show: {what} stage {stage}; its columns: {', '.join(have)} (or: all)")
    return list(dict.fromkeys(wanted))


def format_rows(table: pa.Table, names: list[str], fit: int | None = None, failed_hint: bool = True) -> list[str]:
    """Lines of an aligned text table of ``names`` (header first). With ``fit``: the compact form,
    columns null in every row left out, string cells shortened and, if it is still too wide,
    the last columns dropped so that each line is at most ``fit`` characters; last lines count
    the columns left out, and (``failed_hint``) point failed rows to ``--failed``. Numbers are right-aligned, strings left-aligned."""
    total_columns = table.num_columns
    if fit is not None:
        names = [n for i, n in enumerate(names) if i == 0 or table.column(n).null_count < table.num_rows]
    cells = {n: column_cells(table.column(n), n) for n in names}
    right = {n: not pa.types.is_string(table.schema.field(n).type) for n in names}
    widths = {n: max([len(n), *map(len, cells[n])]) for n in names}
    if fit is not None:
        names = _fit(names, widths, table.schema, fit)
        cells = {n: [_cut(c, widths[n], n) for c in cells[n]] for n in names}
    lines = ["  ".join(_pad(n, widths[n], right[n]) for n in names).rstrip()]
    for i in range(table.num_rows):
        lines.append("  ".join(_pad(cells[n][i], widths[n], right[n]) for n in names).rstrip())
    if fit is not None and len(names) < total_columns:
        note = f"{len(names)} of {total_columns} columns (--columns a,b picks, --all shows all)"
        lines.append(note if len(note) <= fit else f"{len(names)} of {total_columns} columns")
    failed = pc.sum(pc.equal(table.column("status"), "failed")).as_py() if "status" in table.column_names else 0
    if fit is not None and failed_hint and failed and "error" not in names:
        note = f"{failed} failed row{'s' if failed > 1 else ''} shown: --failed prints each error in full"
        lines.append(note if len(note) <= fit else "--failed: errors")
    return lines


def _fit(names: list[str], widths: dict[str, int], schema: pa.Schema, fit: int) -> list[str]:
    """The columns kept so that a line is at most ``fit`` wide, ``widths`` updated in place: string
    columns other than the key (the first) shortened to :data:`MIN_CELL`, then the key to
    :data:`MIN_KEY_CELL`, then columns dropped from the end (``status`` last, the key never), then
    the key to :data:`MIN_CELL`. No column is shortened below its header."""
    def excess() -> int:
        return sum(widths[c] for c in names) + 2 * (len(names) - 1) - fit

    def shrink(columns: list[str], floor: int) -> None:
        for n in sorted(columns, key=lambda c: -widths[c]):
            if excess() > 0:
                widths[n] = min(widths[n], max(widths[n] - excess(), floor, len(n)))

    names = list(names)
    key, rest = names[0], names[1:]
    shrink([n for n in rest if pa.types.is_string(schema.field(n).type)], MIN_CELL)
    shrink([key], MIN_KEY_CELL)
    drop = [n for n in reversed(rest) if n != _LAST_DROPPED] + [n for n in rest if n == _LAST_DROPPED]
    while excess() > 0 and drop:
        names.remove(drop.pop(0))
    shrink([key], MIN_CELL)
    return names


def column_cells(column: pa.ChunkedArray | pa.Array, name: str) -> list[str]:
    """One short string per row: numbers with 4 significant digits, ``-`` for null, bools as
    ``yes`` / ``no``, a string's first line, list columns summarised (module docstring)."""
    type_ = column.type
    if _is_list(type_):
        child = type_.value_type
        inner = child.list_size if pa.types.is_fixed_size_list(child) else None
        return [_list_cell(v, name, inner) for v in list_rows(column, width=inner)]
    return [_scalar_cell(v) for v in column.to_pylist()]


def _list_cell(value, name: str, inner: int | None) -> str:
    if value is None:
        return "-"
    n = len(value)
    if inner is not None:
        return f"({n}, {inner})"
    if value.dtype == bool:
        return f"{int(value.sum())}/{n}"
    side = math.isqrt(n)
    if name in MATRIX_COLUMNS and side * side == n and n:
        return f"{side}x{side}"
    if n <= 4:
        return "[" + ", ".join(_scalar_cell(v.item()) for v in value) + "]"
    return f"({n},)"


def _scalar_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    if isinstance(value, str):
        first, _, rest = value.strip().partition("\n")
        return first + (" ..." if rest.strip() else "")
    return str(value)


def _cut(text: str, width: int, name: str) -> str:
    """``text`` in at most ``width`` characters: ids and paths keep their end (the file name), a
    pair id each image id's end (``...0001.jpg|...0002.jpg``), other strings their start."""
    if len(text) <= width:
        return text
    if name == "pair_id" and text.count("|") == 1 and width >= 9:
        first, second = text.split("|")
        half = (width - 1) // 2
        return _cut(first, half, "image_id") + "|" + _cut(second, width - 1 - half, "image_id")
    if name in _TAIL_KEPT:
        return "..." + text[len(text) - (width - 3):] if width > 3 else text[-width:]
    return text[: width - 3] + "..." if width > 3 else text[:width]


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


def _key_column(spec, table) -> str | None:
    for name in (getattr(spec, "key", None), "pair_id", "image_id"):
        if name and name in table.column_names:
            return name
    return None


def _error_lines(table, key: str | None) -> list[str]:
    """``key  error`` per row, the error in full (continuation lines indented under it)."""
    keys = table.column(key).to_pylist() if key else [str(i) for i in range(table.num_rows)]
    errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * table.num_rows
    width = max((len(str(k)) for k in keys), default=0)
    lines = []
    for k, error in zip(keys, errors):
        text = (error or "(no error text)").rstrip("\n").replace("\n", "\n" + " " * (width + 2))
        lines.append(f"{str(k):<{width}}  {text}")
    return lines
