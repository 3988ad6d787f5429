"""One unit's device ids as dense integer codes, shared by every chunk of a file.

Reading a file, each chunk's id column (Arrow text) becomes codes ``0, 1, 2, ...`` in order of
first appearance across the whole file, so chunks group, merge and concatenate on small
integers and each distinct id is hashed (rule 1) once per file, from the bytes kept here.

Ids are told apart by 96 bits of a mix of their bytes, seeded at random per table: 64 bits
place an id in an open-addressing table (linear probing, at most half full) and, with 32 more,
are kept in its slot, so a lookup touches one slot and never the id's bytes again. Two distinct
ids would share a code with probability about ``n**2 / 2**97`` (1e-15 for 20 M ids; the keyed
64-bit device hash of rule 1 already merges two ids with odds ``n**2 / 2**65``), and the random
seed keeps anyone from crafting such a pair. One compiled pass reads the Arrow buffers directly,
each id hashed a few rows ahead of its probe while its slot is prefetched: ~15-18 ns a row for
160,000 distinct 16-byte ids (an 8 MB table), where ``pyarrow.compute.dictionary_encode``
alone takes ~55 ns and turning its result into a polars Categorical ~25 ns more. The ids already
in the table are looked up without a lock, so the workers encode their chunks side by side; only
new ids are added under it.

Small inputs while numba is not loaded take a Python dictionary instead (a one-row ingest never
loads numba); the table is built from the codes so far when the kernels first run.
"""

from __future__ import annotations

import secrets
import threading

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from heatmap._arrow import text, values
from heatmap._jit import inline, kernel, prefetch, readonly, warms, worth

U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

MAX_ID_BYTES = 256
"""Longest id accepted (longer ones are rejected with their row)."""

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)
_TAG = np.uint64(0xFFFFFFFF00000000)
_CODE = np.uint64(0xFFFFFFFF)
_ONE = np.uint64(1)
_AHEAD = 16
"""Rows an id lookup hashes ahead of its probe (see :func:`_lookup`)."""


@inline
def _final(h: np.uint64) -> np.uint64:
    h ^= h >> np.uint64(30)
    h *= _K2
    h ^= h >> np.uint64(27)
    h *= _K3
    h ^= h >> np.uint64(31)
    return h


@inline
def _mix(data: U8, lo: int, hi: int, seed: np.uint64) -> tuple[np.uint64, np.uint64]:
    """Two 64-bit mixes of ``data[lo:hi]``, eight bytes at a time (unsigned indices: no
    wraparound test, so the byte loads combine)."""
    a = seed ^ (np.uint64(hi - lo) * _K1)
    b = ~seed ^ (np.uint64(hi - lo) * _K2)
    i = np.uint64(lo)
    end = np.uint64(hi)
    while i + np.uint64(8) <= end:
        w = np.uint64(0)
        for k in range(8):
            w |= np.uint64(data[i + np.uint64(k)]) << np.uint64(8 * k)
        a = (a ^ w) * _K2
        a ^= a >> np.uint64(29)
        b = (b + w) * _K3
        b ^= b >> np.uint64(32)
        i += np.uint64(8)
    w = np.uint64(0)
    j = np.uint64(0)
    while i + j < end:
        w |= np.uint64(data[i + j]) << (np.uint64(8) * j)
        j += _ONE
    a = (a ^ w) * _K2
    b = (b + w) * _K3
    return _final(a), _final(b)  # two chains the CPU runs side by side


@inline
def _place(slots: U64, a: np.uint64, tag: np.uint64, code: int) -> None:
    """Put a new code in the first free slot of its probe run (slots hold ``code + 1``)."""
    mask = np.uint64(len(slots) // 2 - 1)
    s = a >> np.uint64(64 - int(np.log2(len(slots) // 2)))
    while slots[2 * s + 1] != 0:
        s = (s + _ONE) & mask
    slots[2 * s] = a
    slots[2 * s + 1] = tag | np.uint64(code + 1)


@inline
def _probe(
    slots: U64, a: np.uint64, tag: np.uint64, s: np.uint64, mask: np.uint64
) -> tuple[np.uint64, np.int64]:
    """Follow an id's probe run from slot ``s``: (its slot and its code), or (the first free
    slot of the run and -1) if it is not in the table."""
    while True:
        v = slots[2 * s + 1]
        if v == 0:
            return s, np.int64(-1)
        if slots[2 * s] == a and (v & _TAG) == tag:
            return s, np.int64((v & _CODE) - _ONE)
        s = (s + _ONE) & mask


@kernel
def _lookup(
    data: U8, offsets: npt.NDArray[np.integer], slots: U64, seed: np.uint64, out: U32, missing: I64
) -> int:
    """Give the ids already in the table their codes in ``out``, without changing the table
    (so without the lock, while another thread may be adding to it); every other row (a new
    id, an empty or too long one, or one being added just now) goes to ``missing``. Returns
    how many went there.

    A slot is written once (its hash, then its tag and code); a read that races the write
    sees a zero in one of them, which never matches, so it can only send a row to
    ``missing``, never give it a wrong code."""
    half = len(slots) // 2
    mask = np.uint64(half - 1)
    shift = np.uint64(64 - int(np.log2(half)))
    n = len(offsets) - 1
    # Ids are hashed _AHEAD rows before their probe, and their slots prefetched meanwhile:
    # the table is larger than the caches, and its reads would otherwise wait on memory.
    ahead_a = np.empty(_AHEAD, np.uint64)
    ahead_b = np.empty(_AHEAD, np.uint64)
    m = 0
    for i in range(-_AHEAD, n):
        k = i % _AHEAD  # row i's hashes, and then row j's, in this place of the ring
        a, b = ahead_a[k], ahead_b[k]
        j = i + _AHEAD
        if j < n:
            aj, bj = _mix(data, np.int64(offsets[j]), np.int64(offsets[j + 1]), seed)
            ahead_a[k] = aj
            ahead_b[k] = bj
            prefetch(slots, (aj >> shift) << _ONE)
        if i < 0:
            continue
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        if hi - lo < 1 or hi - lo > MAX_ID_BYTES:
            missing[m] = i
            m += 1
            continue
        _, code = _probe(slots, a, b & _TAG, a >> shift, mask)
        if code < 0:
            missing[m] = i
            m += 1
        else:
            out[i] = code
    return m


@kernel
def _encode(
    data: U8,
    offsets: npt.NDArray[np.integer],
    rows: I64,
    slots: U64,
    toff: I64,
    tdata: U8,
    n: int,
    start: int,
    seed: np.uint64,
    out: U32,
) -> tuple[int, int, bool]:
    """Give the ids of rows ``rows[start:]`` their codes into ``out``; new ids get codes
    ``n, n + 1, ...`` and their bytes are appended to ``tdata`` (ends in ``toff``).

    Stops at the first id that is empty or longer than ``MAX_ID_BYTES`` (returns it with
    ``True``), or that would pass the table's half load or fill its arrays (``False``: grow
    and call again from there). Returns (codes, rows done, bad id found).
    """
    half = len(slots) // 2
    mask = np.uint64(half - 1)
    shift = np.uint64(64 - int(np.log2(half)))
    limit = min(half // 2, len(toff) - 1)
    for j in range(start, len(rows)):
        i = rows[j]
        lo, hi = np.int64(offsets[i]), np.int64(offsets[i + 1])
        size = hi - lo
        if size < 1 or size > MAX_ID_BYTES:
            return n, j, True
        a, b = _mix(data, lo, hi, seed)
        tag = b & _TAG
        s, code = _probe(slots, a, tag, a >> shift, mask)
        if code >= 0:
            out[i] = code
            continue
        end = toff[n] + size
        if n >= limit or end > len(tdata):
            return n, j, False
        slots[2 * s] = a
        slots[2 * s + 1] = tag | np.uint64(n + 1)
        tdata[toff[n] : end] = data[lo:hi]
        toff[n + 1] = end
        out[i] = n
        n += 1
    return n, len(rows), False


@kernel
def _insert_all(slots: U64, tdata: U8, toff: I64, n: int, seed: np.uint64) -> None:
    """Insert codes ``0:n`` (kept by the Python path) into an empty table."""
    for c in range(n):
        a, b = _mix(tdata, toff[c], toff[c + 1], seed)
        _place(slots, a, b & _TAG, c)


@kernel
def _reinsert(old: U64, slots: U64) -> None:
    """Move every entry of table ``old`` into the empty, larger table ``slots``."""
    for s in range(len(old) // 2):
        v = old[2 * s + 1]
        if v != 0:
            _place(slots, old[2 * s], v & _TAG, np.int64((v & _CODE) - _ONE))


class DeviceCodes:
    """Device ids -> dense codes for one unit (see the module doc). Thread-safe."""

    def __init__(self, bits: int = 16) -> None:
        self._lock = threading.Lock()
        self._bits = bits  # log2 of the table's slots
        self._seed = np.uint64(secrets.randbits(64))
        self._slots: U64 | None = None  # built when the kernels first run
        self._toff = np.zeros((1 << (bits - 1)) + 1, np.int64)
        self._tdata = np.zeros(16 << (bits - 1), np.uint8)
        self._py: dict[str, int] = {}
        self._last: tuple[pa.Array | None, U32] = (None, np.zeros(0, np.uint32))
        self.size = 0

    def encode(self, ids: pa.Array | pa.ChunkedArray) -> U32 | None:
        """Return the codes of an id column (text, dictionary-encoded text or integers), or
        ``None`` if some id is null, empty or longer than ``MAX_ID_BYTES`` bytes (the caller's
        general path then names each such row)."""
        if isinstance(ids, pa.ChunkedArray):
            if ids.num_chunks == 1:
                ids = ids.chunk(0)
            elif ids.num_chunks > 1:  # chunk by chunk: no copy of the text
                parts = []
                for chunk in ids.chunks:
                    part = self.encode(chunk)
                    if part is None:
                        return None
                    parts.append(part)
                return np.concatenate(parts)
            else:
                ids = ids.combine_chunks()
        if ids.null_count:
            return None
        if pa.types.is_integer(ids.type):
            import pyarrow.compute as pc  # only here: its import costs ~25 ms

            ids = pc.dictionary_encode(ids)
        if pa.types.is_dictionary(ids.type):
            # Parquet row groups of one file often repeat the same dictionary: map it once.
            last_dict, table = self._last
            if last_dict is None or not ids.dictionary.equals(last_dict):
                fresh = self._encode_text(ids.dictionary)
                if fresh is None:
                    return None
                table = fresh
                self._last = (ids.dictionary, table)
            return table[values(ids.indices)]
        return self._encode_text(ids)

    def _encode_text(self, arr: pa.Array) -> U32 | None:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            import pyarrow.compute as pc  # only here: its import costs ~25 ms

            arr = pc.cast(arr, pa.large_string())
        with self._lock:
            if self._slots is None and not worth(len(arr)):
                return self._encode_py(arr)
        return self._encode_kernel(arr)

    def _encode_py(self, arr: pa.Array) -> U32 | None:
        import pyarrow.compute as pc  # on first use: its import costs ~25 ms

        enc = pc.dictionary_encode(arr)
        lengths = values(pc.binary_length(enc.dictionary))
        if len(lengths) and (lengths.min() < 1 or lengths.max() > MAX_ID_BYTES):
            return None
        table = np.empty(len(lengths), np.uint32)
        for j, v in enumerate(enc.dictionary.to_pylist()):
            code = self._py.get(v)
            if code is None:
                code = self._py[v] = self._append(v.encode())
            table[j] = code
        return table[values(enc.indices)]

    def _append(self, raw: bytes) -> int:
        n = self.size
        end = int(self._toff[n]) + len(raw)
        self._room(n + 1, end)
        self._tdata[self._toff[n] : end] = np.frombuffer(raw, np.uint8)
        self._toff[n + 1] = end
        self.size = n + 1
        return n

    def _encode_kernel(self, arr: pa.Array) -> U32 | None:
        """Codes by the kernels: the ids already known looked up without the lock (workers
        encode their chunks side by side), the others added under it."""
        with self._lock:
            if self._slots is None:  # the codes so far came from the Python path
                while (1 << self._bits) // 4 < self.size + 1:
                    self._bits += 1
                self._slots = np.zeros(2 << self._bits, np.uint64)
                _insert_all(self._slots, self._tdata, self._toff, self.size, self._seed)
                self._py = {}
            slots = self._slots
        _, off_buf, data_buf = arr.buffers()
        wide = pa.types.is_large_string(arr.type)
        offsets = np.frombuffer(off_buf, np.int64 if wide else np.int32)
        offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
        data, offsets = readonly(data, offsets)
        out = np.empty(len(arr), np.uint32)
        missing = np.empty(len(arr), np.int64)
        m = _lookup(data, offsets, slots, self._seed, out, missing)
        if m == 0:
            return out
        rows = readonly(missing[:m])[0]
        with self._lock:
            j = 0
            while True:
                n, j, bad = _encode(
                    data,
                    offsets,
                    rows,
                    self._slots,
                    self._toff,
                    self._tdata,
                    self.size,
                    j,
                    self._seed,
                    out,
                )
                self.size = n
                if bad:
                    return None
                if j >= m:
                    return out
                i = rows[j]
                self._room(n + 1, int(self._toff[n] + offsets[i + 1] - offsets[i]))
                if (1 << self._bits) // 2 < n + 1:
                    self._bits += 1
                    old, self._slots = self._slots, np.zeros(2 << self._bits, np.uint64)
                    _reinsert(old, self._slots)

    def _room(self, codes: int, nbytes: int) -> None:
        """Grow the per-code arrays to hold ``codes`` codes and ``nbytes`` bytes."""
        if codes + 1 > len(self._toff):
            self._toff = np.resize(self._toff, max(codes + 1, 2 * len(self._toff)))
        if nbytes > len(self._tdata):
            self._tdata = np.resize(self._tdata, max(nbytes, 2 * len(self._tdata)))

    def ids(self, start: int = 0, stop: int | None = None) -> pa.Array:
        """The ids of codes ``start:stop`` (a large_string array over a copy of their bytes)."""
        with self._lock:
            n = self.size if stop is None else min(stop, self.size)
            start = min(start, n)
            off = self._toff[start : n + 1].copy()
            data = self._tdata[off[0] : off[-1]].copy()
        off -= off[0]
        return pa.Array.from_buffers(
            pa.large_string(), n - start, [None, pa.py_buffer(off), pa.py_buffer(data)]
        )


@warms
def _warm() -> None:
    codes = DeviceCodes(bits=2)
    codes._py["a"] = codes._append(b"a")  # as the Python path would (without its import of
    # pyarrow.compute, ~30 ms holding the GIL on the thread that warms the kernels)
    codes._encode_kernel(text([b"a", b"b"], large=False))  # builds the table: _insert_all
    codes._encode_kernel(text([bytes([65 + i]) for i in range(8)]))  # grows it: _reinsert
