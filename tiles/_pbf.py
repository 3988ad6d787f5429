"""Vectorised protobuf primitives: base-128 varints over whole numpy arrays.

A vector tile is mostly a long run of small varints (geometry commands and deltas, tag indexes,
lengths). Encoding all of them with a handful of array operations instead of one call per number
is what makes the MVT encoder fast.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_U64 = npt.NDArray[np.uint64]
_U8 = npt.NDArray[np.uint8]

_B7 = np.uint64(1 << 7)
_B14 = np.uint64(1 << 14)
_THRESHOLDS = [np.uint64(1 << (7 * k)) for k in range(1, 10)]


def varint_len(v: _U64) -> npt.NDArray[np.intp]:
    """Return the byte length of each value's varint (1-10).

    Values below 2**14 (the bulk of a tile) cost two comparisons; the rest are counted
    exactly on the (small) subset.
    """
    v = v.astype(np.uint64, copy=False)
    lens = 1 + (v >= _B7).astype(np.intp)
    big = np.flatnonzero(v >= _B14)
    if big.size:
        vb = v[big]
        lb = np.full(big.size, 3, dtype=np.intp)
        for t in _THRESHOLDS[2:]:
            lb += vb >= t
        lens[big] = lb
    return lens


def encode_varints(v: _U64) -> _U8:
    """Encode unsigned integers as concatenated base-128 varints.

    Parameters
    ----------
    v : ndarray of uint64
        Values, in stream order.

    Returns
    -------
    ndarray of uint8
        ``b"".join(varint(x) for x in v)`` as an array.

    Notes
    -----
    Every value's first (and, below 2**21, second) byte is written with whole-array
    operations; only values of three or more bytes (H3 ids, long lengths) loop over their
    remaining byte positions, on their own subset.
    """
    v = np.ascontiguousarray(v, dtype=np.uint64)
    if v.size == 0:
        return np.zeros(0, dtype=np.uint8)
    lens = varint_len(v)
    pos = np.empty(v.size, dtype=np.intp)
    pos[0] = 0
    np.cumsum(lens[:-1], out=pos[1:])
    total = int(pos[-1] + lens[-1])
    out = np.empty(total, dtype=np.uint8)
    cont = lens > 1
    out[pos] = (v & np.uint64(0x7F)).astype(np.uint8) | (cont.astype(np.uint8) << np.uint8(7))
    sel = np.flatnonzero(cont)
    shift = 7
    while sel.size:
        vs = v[sel] >> np.uint64(shift)
        more = lens[sel] > (shift // 7 + 1)
        out[pos[sel] + shift // 7] = (vs & np.uint64(0x7F)).astype(np.uint8) | (
            more.astype(np.uint8) << np.uint8(7)
        )
        sel = sel[more]
        shift += 7
    return out


def varint(n: int) -> bytes:
    """Encode one non-negative integer as a varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(field: int, payload: bytes) -> bytes:
    """Encode a length-delimited field (wire type 2): tag, length, payload."""
    return varint((field << 3) | 2) + varint(len(payload)) + payload
