"""Binary ``COPY`` for the PostgreSQL store: int64 columns in and out, built and parsed by numpy.

Bulk data (device state, pending pings, counts read back) moves as binary COPY streams, made from
and read into numpy arrays at once: no Python loop per row. Only non-NULL ``int8`` (bigint)
fields are handled, which is every column the store copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from heatmap.errors import StoreUnavailable

# Binary COPY framing (PostgreSQL docs, "COPY", binary format): signature, flags, header
# extension length; each tuple is int16 field count then (int32 length, bytes) per field.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = _COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"


def _row_dtype(ncols: int) -> np.dtype[Any]:
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i in range(ncols):
        fields += [(f"l{i}", ">i4"), (f"v{i}", ">i8")]
    return np.dtype(fields)  # packed: numpy adds no padding unless align=True


def int64_columns_to_copy(columns: Sequence[np.ndarray]) -> bytes:
    """Encode aligned int64 columns (no NULLs) as a binary COPY stream."""
    dtype = _row_dtype(len(columns))
    rows = np.empty(len(columns[0]) if columns else 0, dtype=dtype)
    rows["n"] = len(columns)
    for i, col in enumerate(columns):
        rows[f"l{i}"] = 8
        rows[f"v{i}"] = np.asarray(col).view(np.int64)
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def copy_to_int64_columns(data: bytes, ncols: int) -> list[np.ndarray]:
    """Decode a binary COPY stream of ``ncols`` non-NULL int8 columns into int64 arrays."""
    if not data:
        return [np.zeros(0, np.int64) for _ in range(ncols)]
    if not data.startswith(_COPY_SIGNATURE):
        raise StoreUnavailable("unexpected COPY data from the server (not binary format)")
    ext = int.from_bytes(data[15:19], "big")
    start = 19 + ext
    dtype = _row_dtype(ncols)
    n, rest = divmod(len(data) - start - len(_COPY_TRAILER), dtype.itemsize)
    if rest:
        raise StoreUnavailable("unexpected COPY data from the server (NULL or non-int8 field)")
    rows = np.frombuffer(data, dtype=dtype, count=n, offset=start)
    return [rows[f"v{i}"].astype(np.int64) for i in range(ncols)]
