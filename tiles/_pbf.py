"""Protobuf primitives in Python for the few fixed fields of a vector tile.

The per-feature bytes are written by the compiled kernels of :mod:`tiles.vector`; these helpers
build the small per-snapshot parts (the layer's keys and band-name values) once.
"""

from __future__ import annotations


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
