"""In-memory hash tables of the live state: device -> latest (ts, cell), cell -> dense id.

A :class:`DeviceTable` keeps, per device (a keyed 64-bit hash), its latest position as the
larger ``(ts, cell)`` of every position applied to it, and a counter of devices per cell that
moves with every change, so counting the people per cell never groups the devices. A
:class:`CellDict` gives each base cell a dense id shared by the tables of one state (the
counters are arrays indexed by it).

Both are open-addressing tables with linear probing over power-of-two arrays, the slot being
the top bits of ``key * 0x9E3779B97F4A7C15`` (Fibonacci hashing: keyed hashes are random
already, but tests and other callers may use small consecutive keys). Deleting (expiry) shifts
the following entries of the cluster back (no tombstones), so a table never degrades. Tables
grow x2 past 75 % load; the kernels stop where a table would pass that load and return how far
they got, the wrapper grows the table and calls again.

The kernels are numba loops (work per applied row is a probe or two); everything else is numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from heatmap._jit import kernel, loaded, readonly, warms

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

EMPTY = np.int64(-(2**63))
"""Key of a free slot. A device hash equal to it is stored as ``EMPTY + 1`` (odds 2**-64)."""
_MULT = np.uint64(0x9E3779B97F4A7C15)
_MAX_LOAD = 0.75
_MIN_BITS = 10
_PY_ROWS = 4096
"""Below this many rows (or table slots) a table runs its kernels' Python originals while
numba is not loaded."""


def _limit(cap: int) -> int:
    return int(cap * _MAX_LOAD)


def _run(fn: Callable[..., Any], rows: int, *args: Any) -> Any:
    """Call a kernel, or for a small input while numba is not loaded its Python original
    (same code, numpy scalars wrap alike; ~1 us a row): a one-row ingest never pays numba's
    start-up (~0.5 s)."""
    if rows >= _PY_ROWS or loaded():
        return fn(*args)
    with np.errstate(over="ignore"):
        return fn.py_func(*args)  # type: ignore[attr-defined]


def bits_for(n: int) -> int:
    """Return the table size (log2 of slots) that holds ``n`` entries without growing."""
    bits = _MIN_BITS
    while _limit(1 << bits) < n:
        bits += 1
    return bits


@kernel
def _cell_ids(
    keys: I64, ids: I32, values: I64, n: int, limit: int, cells: I64, out: I32, start: int
) -> tuple[int, int]:
    """Give ``cells[start:]`` their ids (new cells get ``n, n + 1, ...``) into ``out``; stop
    before the table passes ``limit`` entries. Returns (entries, rows done)."""
    mask = len(keys) - 1
    shift = np.uint64(64 - int(np.log2(len(keys))))
    for i in range(start, len(cells)):
        c = cells[i]
        h = np.int64((np.uint64(c) * _MULT) >> shift)
        while True:
            k = keys[h]
            if k == EMPTY:
                if n >= limit:
                    return n, i
                keys[h] = c
                ids[h] = n
                values[n] = c
                out[i] = n
                n += 1
                break
            if k == c:
                out[i] = ids[h]
                break
            h = (h + 1) & mask
    return n, len(cells)


@kernel
def _apply(
    keys: I64,
    ts: I64,
    cid: I32,
    counts: I64,
    values: I64,
    size: int,
    limit: int,
    dev: I64,
    pts: I64,
    pcid: I32,
    start: int,
) -> tuple[int, int]:
    """Apply positions ``start:`` (device, ts, cell id): per device the larger (ts, cell) stays,
    ``counts`` moves with every device that arrives or changes cell. Stops before passing
    ``limit`` devices. Returns (devices, rows done)."""
    mask = len(keys) - 1
    shift = np.uint64(64 - int(np.log2(len(keys))))
    for i in range(start, len(dev)):
        d = dev[i]
        if d == EMPTY:
            d = EMPTY + 1
        t = pts[i]
        c = pcid[i]
        h = np.int64((np.uint64(d) * _MULT) >> shift)
        while True:
            k = keys[h]
            if k == EMPTY:
                if size >= limit:
                    return size, i
                keys[h] = d
                ts[h] = t
                cid[h] = c
                counts[c] += 1
                size += 1
                break
            if k == d:
                old = cid[h]
                if t > ts[h] or (t == ts[h] and values[c] > values[old]):
                    if old != c:
                        counts[old] -= 1
                        counts[c] += 1
                    ts[h] = t
                    cid[h] = c
                break
            h = (h + 1) & mask
    return size, len(dev)


@kernel
def _expire(keys: I64, ts: I64, cid: I32, counts: I64, min_ts: int) -> int:
    """Delete every device with ``ts < min_ts`` (backward-shift deletion); return how many."""
    cap = len(keys)
    mask = cap - 1
    shift = np.uint64(64 - int(np.log2(cap)))
    removed = 0
    i = 0
    while i < cap:
        if keys[i] == EMPTY or ts[i] >= min_ts:
            i += 1
            continue
        counts[cid[i]] -= 1
        removed += 1
        hole = i
        j = (i + 1) & mask
        while keys[j] != EMPTY:
            home = np.int64((np.uint64(keys[j]) * _MULT) >> shift)
            # Entry j may fill the hole unless its home lies cyclically in (hole, j].
            if ((j - home) & mask) >= ((j - hole) & mask):
                keys[hole] = keys[j]
                ts[hole] = ts[j]
                cid[hole] = cid[j]
                hole = j
            j = (j + 1) & mask
        keys[hole] = EMPTY
        # Slot i may hold a moved entry now: look at it again (entries only move backwards,
        # and those moved across the array's end were looked at already).
    return removed


@kernel
def _rehash(keys: I64, nkeys: I64) -> npt.NDArray[np.intp]:
    """Insert every key of ``keys`` into the (empty, larger) ``nkeys``; return each old slot's
    new slot (-1 for a free one), by which the caller moves the values that go with the keys."""
    mask = len(nkeys) - 1
    shift = np.uint64(64 - int(np.log2(len(nkeys))))
    moved = np.full(len(keys), -1, dtype=np.intp)
    for i in range(len(keys)):
        k = keys[i]
        if k == EMPTY:
            continue
        h = np.int64((np.uint64(k) * _MULT) >> shift)
        while nkeys[h] != EMPTY:
            h = (h + 1) & mask
        nkeys[h] = k
        moved[i] = h
    return moved


def _rehashed(keys: I64, cap: int, *values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], ...]:
    """Return ``keys`` and their ``values`` rehashed into tables of ``cap`` slots."""
    nkeys = np.full(cap, EMPTY, dtype=np.int64)
    moved = _run(_rehash, len(keys), keys, nkeys)
    used = moved >= 0
    out = [nkeys]
    for v in values:
        nv = np.zeros(cap, dtype=v.dtype)
        nv[moved[used]] = v[used]
        out.append(nv)
    return tuple(out)


class CellDict:
    """Base cells -> dense ids ``0, 1, ...`` (never reused); ``values[id]`` is the cell."""

    def __init__(self, bits: int = _MIN_BITS) -> None:
        self._keys = np.full(1 << bits, EMPTY, dtype=np.int64)
        self._ids = np.zeros(1 << bits, dtype=np.int32)
        self.values = np.zeros(1 << bits, dtype=np.int64)
        self.n = 0

    def ids(self, cells: npt.NDArray[np.uint64]) -> I32:
        """Return the ids of ``cells`` (uint64 H3 cells), adding the new ones."""
        (c,) = readonly(np.ascontiguousarray(cells, dtype=np.uint64).view(np.int64))
        out = np.empty(len(c), dtype=np.int32)
        done = 0
        while True:
            self.n, done = _run(
                _cell_ids,
                len(c),
                self._keys,
                self._ids,
                self.values,
                self.n,
                _limit(len(self._keys)),
                c,
                out,
                done,
            )
            if done == len(c):
                return out
            self._grow()

    def _grow(self) -> None:
        cap = 2 * len(self._keys)
        self._keys, self._ids = _rehashed(self._keys, cap, self._ids)
        values = np.zeros(cap, dtype=np.int64)
        values[: self.n] = self.values[: self.n]
        self.values = values

    def cells(self, ids: npt.NDArray[np.integer]) -> U64:
        """Return the cells of ``ids``."""
        return self.values[ids].view(np.uint64)


class DeviceTable:
    """Devices -> latest (ts, cell), with a live count of devices per cell (ids of ``cells``)."""

    def __init__(self, cells: CellDict, bits: int = _MIN_BITS) -> None:
        self.cells = cells
        self._keys = np.full(1 << bits, EMPTY, dtype=np.int64)
        self._ts = np.zeros(1 << bits, dtype=np.int64)
        self._cid = np.zeros(1 << bits, dtype=np.int32)
        self._counts = np.zeros(len(cells.values), dtype=np.int64)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        return self._keys.nbytes + self._ts.nbytes + self._cid.nbytes + self._counts.nbytes

    def apply(self, dev: I64, ts: I64, cid: I32) -> None:
        """Apply positions: per device the larger (ts, cell) of the table's and these stays."""
        if not len(dev):
            return
        if len(self._counts) < len(self.cells.values):
            counts = np.zeros(len(self.cells.values), dtype=np.int64)
            counts[: len(self._counts)] = self._counts
            self._counts = counts
        d, t, c = readonly(
            np.ascontiguousarray(dev, dtype=np.int64),
            np.ascontiguousarray(ts, dtype=np.int64),
            np.ascontiguousarray(cid, dtype=np.int32),
        )
        done = 0
        while True:
            self.size, done = _run(
                _apply,
                len(d),
                self._keys,
                self._ts,
                self._cid,
                self._counts,
                self.cells.values,
                self.size,
                _limit(len(self._keys)),
                d,
                t,
                c,
                done,
            )
            if done == len(d):
                return
            self._grow()

    def expire(self, min_ts: int) -> int:
        """Delete devices whose latest ts is before ``min_ts``; return how many."""
        if not self.size:
            return 0
        n = int(
            _run(_expire, len(self._keys), self._keys, self._ts, self._cid, self._counts, min_ts)
        )
        self.size -= n
        return n

    def counts(self) -> tuple[U64, I64]:
        """Return (cells ascending, devices per cell) of the cells with devices."""
        ids = np.flatnonzero(self._counts > 0)
        cells = self.cells.cells(ids)
        order = np.argsort(cells)
        return cells[order], self._counts[ids][order]

    def rows(self) -> tuple[I64, I64, U64]:
        """Return every (device, ts, cell) held, device ascending (for checks and tools)."""
        used = self._keys != EMPTY
        dev, ts, cid = self._keys[used], self._ts[used], self._cid[used]
        order = np.argsort(dev)
        return dev[order], ts[order], self.cells.cells(cid[order])

    def _grow(self, bits: int | None = None) -> None:
        cap = 2 * len(self._keys) if bits is None else max(1 << bits, len(self._keys))
        self._keys, self._ts, self._cid = _rehashed(self._keys, cap, self._ts, self._cid)


@warms
def _warm() -> None:
    cells = CellDict()
    table = DeviceTable(cells)
    one = np.ones(1, dtype=np.int64)
    table.apply(one, one, cells.ids(one.view(np.uint64)))
    table.expire(2)
    table._grow()
    cells._grow()
