"""Protobuf primitives for vector tiles: Python ones for the few fixed fields, compiled ones
for the per-feature bytes.

The per-feature bytes are written by the compiled kernels of :mod:`tiles.vector` with the
``_put_*`` kernels below; :func:`field_bytes` builds the small per-snapshot parts (the layer's
keys and band-name values) once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tiles._jit import kernel

_U8 = npt.NDArray[np.uint8]
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


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


@kernel
def _put_h3_string(buf: _U8, pos: int, cell: int) -> int:
    """Write a string value of a cell's H3 index: lower-case hex without leading zeros."""
    nd = 1
    while nd < 16 and cell >> (4 * nd):
        nd += 1
    buf[pos] = 0x22  # Layer.values
    buf[pos + 1] = 2 + nd
    buf[pos + 2] = 0x0A  # Value.string_value
    buf[pos + 3] = nd
    for d in range(nd):
        buf[pos + 4 + d] = _HEX[(cell >> (4 * (nd - 1 - d))) & 0xF]
    return pos + 4 + nd


@kernel
def _put_number(buf: _U8, pos: int, v: int, whole: bool) -> int:
    """Write a value: ``uint_value`` (``v`` a whole count) or ``double_value`` (``v`` the
    IEEE 754 bits, written as 8 bytes little-endian)."""
    buf[pos] = 0x22  # Layer.values
    if whole:
        buf[pos + 1] = 1 + _varint_len(v)
        buf[pos + 2] = 0x28  # Value.uint_value
        return _put_varint(buf, pos + 3, v)
    buf[pos + 1] = 9
    buf[pos + 2] = 0x19  # Value.double_value
    for b in range(8):
        buf[pos + 3 + b] = (v >> (8 * b)) & 0xFF
    return pos + 11


@kernel
def _put_bytes(buf: _U8, pos: int, tag: int, data: _U8) -> int:
    """Write a length-delimited field: tag, length, bytes."""
    buf[pos] = tag
    return _put_raw(buf, _put_varint(buf, pos + 1, data.size), data)


@kernel
def _put_raw(buf: _U8, pos: int, data: _U8) -> int:
    """Copy bytes into ``buf`` at ``pos``; return the position after them."""
    for i in range(data.size):
        buf[pos + i] = data[i]
    return pos + data.size


@kernel
def _put_varint(buf: _U8, pos: int, v: int) -> int:
    """Write a non-negative integer as a base-128 varint; return the position after it."""
    while v >= 0x80:
        buf[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    buf[pos] = v
    return pos + 1


@kernel
def _varint_len(v: int) -> int:
    """Byte length of a non-negative integer's varint."""
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@kernel
def _zigzag(v: int) -> int:
    """Map a signed integer to unsigned: 0, -1, 1, -2 -> 0, 1, 2, 3."""
    return (v << 1) ^ (v >> 63)


@kernel
def _zz_len(v: int) -> int:
    return _varint_len(_zigzag(v))
