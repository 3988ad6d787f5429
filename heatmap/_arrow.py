"""Arrow arrays as numpy views, without pyarrow's first-use import of pandas.

``pyarrow.Array.to_numpy``, ``pyarrow.array`` and ``pyarrow.scalar`` import pandas the first
time they run (0.25 s, most of a small ingest). The ingest path reads the buffers directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa


def values(arr: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    """The values of a primitive (numeric) array with no null, as a read-only numpy view."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.null_count or not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise TypeError(f"values() takes numbers without nulls, not {arr.type}")
    dtype = np.dtype(arr.type.to_pandas_dtype())
    buf = arr.buffers()[1]
    if buf is None:
        return np.zeros(0, dtype)
    out = np.frombuffer(buf, dtype)[arr.offset : arr.offset + len(arr)]
    out.flags.writeable = False
    return out


def text(ids: list[bytes], large: bool = True) -> pa.Array:
    """A (large) string array of ``ids`` built from buffers."""
    width = np.int64 if large else np.int32
    off = np.zeros(len(ids) + 1, width)
    np.cumsum([len(i) for i in ids], out=off[1:])
    kind = pa.large_string() if large else pa.string()
    return pa.Array.from_buffers(
        kind, len(ids), [None, pa.py_buffer(off), pa.py_buffer(b"".join(ids))]
    )
