"""Zero-copy views of per-pair list columns as NumPy arrays, and the way back.

A stage never turns a batch into Python dicts of Python floats: list columns are read as one
flat NumPy buffer plus Arrow's offsets (a row is a slice, no copy), and new columns are built
from concatenated NumPy arrays (one copy per batch, not one Python object per value).

Shapes: ``matches`` rows are (N, 4) float32 (x0, y0, x1, y1); ``scores`` (N,) float32;
``inliers`` (N,) bool; matrices (9,) / (16,) float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .schemas import MATCHES_TYPE


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def list_rows(column: pa.Array | pa.ChunkedArray, width: int | None = None) -> list[np.ndarray | None]:
    """Per row, a NumPy view of a ``list<T>`` / ``list<fixed_size_list<T, width>>`` column.

    Args:
        column: a list column of a batch (any chunking, possibly sliced).
        width: inner fixed size (4 for ``matches``): rows come back as (N, width); None for flat
            lists: rows are (N,).

    Returns:
        One array per row (a view into the batch's buffer for numeric types; bools are unpacked
        once per batch), or None for a null row.
    """
    arr = _combined(column)
    if len(arr) == 0:
        return []
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise TypeError(f"expected a list column, got {arr.type}")
    offsets = arr.offsets.to_numpy()
    child = arr.values
    if pa.types.is_fixed_size_list(child.type):
        size = child.type.list_size
        if width is not None and size != width:
            raise ValueError(f"expected rows of width {width}, column has {size}")
        flat = child.flatten()  # honours the child's own offset
        values = _to_numpy(flat).reshape(-1, size)
    else:
        values = _to_numpy(child)
        if width is not None:
            values = values.reshape(-1, width)
            offsets = offsets // width
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    return [
        None if nulls is not None and nulls[i] else values[offsets[i]: offsets[i + 1]]
        for i in range(len(arr))
    ]


def _to_numpy(values: pa.Array) -> np.ndarray:
    if values.null_count:
        raise ValueError("list values must not contain nulls")
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=True)


def rows_to_list_array(rows: Sequence[np.ndarray | None], type_: pa.DataType) -> pa.Array:
    """Build a ``list<...>`` column of ``type_`` from per-row arrays (None = null row).

    ``type_`` is ``list<T>`` (rows (N,) or any shape, flattened) or ``list<fixed_size_list<T, k>>``
    (rows (N, k)). One concatenation per batch.
    """
    child_type = type_.value_type
    inner = child_type.list_size if pa.types.is_fixed_size_list(child_type) else 1
    scalar_type = child_type.value_type if inner > 1 or pa.types.is_fixed_size_list(child_type) else child_type
    np_dtype = np.bool_ if pa.types.is_boolean(scalar_type) else scalar_type.to_pandas_dtype()
    lengths = np.zeros(len(rows), np.int64)
    parts = []
    for i, row in enumerate(rows):
        if row is None:
            continue
        flat = np.asarray(row, dtype=np_dtype).reshape(-1)
        if flat.size % inner:
            raise ValueError(f"row {i}: {flat.size} values do not fill rows of {inner}")
        lengths[i] = flat.size // inner
        parts.append(flat)
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, np_dtype)
    values = pa.array(flat, type=scalar_type)
    if pa.types.is_fixed_size_list(child_type):
        values = pa.FixedSizeListArray.from_arrays(values, inner)
    mask = np.array([row is None for row in rows], bool)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=type_,
                                    mask=pa.array(mask) if mask.any() else None)


def matches_array(rows: Sequence[np.ndarray | None]) -> pa.Array:
    """(N, 4) float32 rows -> a ``matches`` column."""
    return rows_to_list_array(rows, MATCHES_TYPE)


def matches_rows(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray | None]:
    """A ``matches`` column -> per row an (N, 4) float32 view (None for a null row)."""
    return list_rows(column, width=4)


def as_matches(value, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """One row's matches in any form they are read back in -> an (N, 4) array (x0, y0, x1, y1).

    Takes the cell of a ``matches`` column as pandas gives it (``pd.read_parquet`` /
    ``Table.to_pandas()``: an object array of N length-4 arrays), nested lists (``to_pylist()``),
    a flat N*4 list, an (N, 4) array, or None (a failed row: (0, 4)).

    Example:
        >>> df = pd.read_parquet("runs/demo/verify")
        >>> as_matches(df.matches[0]).shape          # (N, 4)

    Raises:
        ValueError: a 2-D value whose rows are not 4 wide, or a count of values not a multiple of 4.
    """
    if value is None:
        return np.zeros((0, 4), dtype)
    if isinstance(value, np.ndarray) and value.dtype == object:  # pandas' cell: one array per match
        value = list(value)
    arr = np.asarray(value, dtype)
    if (arr.ndim == 2 and arr.shape[1] != 4) or arr.ndim > 2 or arr.size % 4:
        raise ValueError(f"matches: expected (N, 4) values (x0, y0, x1, y1), got shape {arr.shape}")
    return arr.reshape(-1, 4)
