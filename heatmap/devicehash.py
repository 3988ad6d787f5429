"""Keyed BLAKE2b of many device ids at once, bit for bit what ``hashlib.blake2b`` gives.

The device hash of rule 1 is ``blake2b(id, key=key, digest_size=8)`` read as a little-endian
signed int64. Hashing one id at a time through ``hashlib`` costs ~1.7 us of Python per id (most
of a 20,000-row batch's parse); here a numba loop hashes the ids straight from an Arrow string
array's buffers, ~0.1-0.2 us each.

BLAKE2b (RFC 7693): eight 64-bit words of state start as the IV xor the parameter block (digest
length 8, key length 32); a keyed hash first compresses the key, zero-padded to one 128-byte
block, then the message's blocks, the last one zero-padded and flagged final; the byte counter
counts the key block too. The state after the key block is the same for every id, so it is
computed once per key and each id of up to 128 bytes costs one compression.
``tests/core/test_privacy.py`` checks every length from 0 to 300 bytes against ``hashlib``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from heatmap._arrow import text
from heatmap._jit import kernel, readonly, warms

U64 = npt.NDArray[np.uint64]

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
_SIGMA = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ],
    dtype=np.intp,
)
_DIGEST = 8
_BLOCK = 128


@kernel
def _rotr(x: np.uint64, n: int) -> np.uint64:
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@kernel
def _compress(
    h: U64, m: U64, t: int, last: bool, iv: U64, sigma: npt.NDArray[np.intp], v: U64
) -> None:
    """Compress one block ``m`` (16 words) into state ``h`` (8 words); ``v`` is scratch."""
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = iv[i]
    v[12] ^= np.uint64(t)
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = sigma[r % 10]
        for j in range(8):
            # Columns then diagonals: (a, b, c, d) index quadruples of the 4x4 state.
            if j < 4:
                a, b, c, d = j, j + 4, j + 8, j + 12
            else:
                a = j - 4
                b = 4 + (j - 3) % 4
                c = 8 + (j - 2) % 4
                d = 12 + (j - 1) % 4
            x = m[s[2 * j]]
            y = m[s[2 * j + 1]]
            v[a] = v[a] + v[b] + x
            v[d] = _rotr(v[d] ^ v[a], 32)
            v[c] = v[c] + v[d]
            v[b] = _rotr(v[b] ^ v[c], 24)
            v[a] = v[a] + v[b] + y
            v[d] = _rotr(v[d] ^ v[a], 16)
            v[c] = v[c] + v[d]
            v[b] = _rotr(v[b] ^ v[c], 63)
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


@kernel
def _hash_ids(
    keyed: U64,
    empty: np.int64,
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    iv: U64,
    sigma: npt.NDArray[np.intp],
) -> npt.NDArray[np.int64]:
    """Hash every string ``data[offsets[i]:offsets[i + 1]]`` from the keyed state ``keyed``."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.int64)
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    block = np.empty(_BLOCK, dtype=np.uint8)
    v = np.empty(16, dtype=np.uint64)
    for i in range(n):
        lo, hi = offsets[i], offsets[i + 1]
        size = hi - lo
        if size == 0:  # the key block was the last one
            out[i] = empty
            continue
        for k in range(8):
            h[k] = keyed[k]
        done = 0
        while True:
            take = min(_BLOCK, size - done)
            block[:] = 0
            block[:take] = data[lo + done : lo + done + take]
            for k in range(16):
                w = np.uint64(0)
                for b in range(8):
                    w |= np.uint64(block[8 * k + b]) << np.uint64(8 * b)
                m[k] = w
            done += take
            final = done == size
            _compress(h, m, _BLOCK + done, final, iv, sigma, v)
            if final:
                break
        out[i] = np.int64(h[0])
    return out


def _keyed_state(key: bytes, last: bool) -> U64:
    """The state after the (zero-padded) key block: the start of every id's hash (``last``:
    the whole hash of the empty id)."""
    h = _IV.copy()
    h[0] ^= np.uint64(0x01010000 ^ (len(key) << 8) ^ _DIGEST)
    block = np.frombuffer(key.ljust(_BLOCK, b"\0"), dtype="<u8").astype(np.uint64)
    _compress(h, block, _BLOCK, last, _IV, _SIGMA, np.empty(16, dtype=np.uint64))
    return h


class KeyedHasher:
    """``blake2b(id, key=key, digest_size=8)`` as int64 for whole arrays of string ids."""

    def __init__(self, key: bytes) -> None:
        if not 0 < len(key) <= 64:
            raise ValueError("a BLAKE2b key has 1 to 64 bytes")
        self._state = _keyed_state(key, last=False)
        self._empty = _keyed_state(key, last=True)[:1].view(np.int64)[0]

    def hash_strings(self, ids: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int64]:
        """Return the hashes of non-null UTF-8 string ids, in order."""
        arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if not pa.types.is_large_string(arr.type):
            import pyarrow.compute as pc  # only here: its import costs ~25 ms

            arr = pc.cast(arr, pa.large_string())
        if arr.null_count:
            raise ValueError("device ids may not be null")
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else _NO_BYTES
        if not len(arr):
            return np.zeros(0, dtype=np.int64)
        data, offsets = readonly(data, offsets)
        return _hash_ids(self._state, self._empty, data, offsets, _IV, _SIGMA)  # type: ignore[no-any-return]


_NO_BYTES = np.zeros(1, dtype=np.uint8)


@warms
def _warm() -> None:
    KeyedHasher(b"k").hash_strings(text([b"a", b""]))
