"""The blob codec of closed windows: aligned 8-byte arrays <-> one (zstd) blob; no I/O.

Every backend stores a closed window as two blobs (raw base counts, published values) made
here, and reads them back here, so the bytes on disk are the same whatever the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from heatmap.model import Published, Window

I64 = npt.NDArray[np.int64]

_ZSTD = b"HEATZSTD"  # as an int64 row count this would be ~4.9e18: never an old blob's start


def arrays_to_blob(*arrays: np.ndarray) -> bytes:
    """Pack aligned 8-byte arrays into one zstd-compressed little-endian blob.

    The payload is ``n`` then each array; stored as ``HEATZSTD``, the payload's length (int64)
    and its zstd frame. Sorted cells and small counts compress about 8-10x, which shrinks both
    the store and the commit's write. Blobs written uncompressed (the payload alone, by earlier
    versions) still read.
    """
    n = len(arrays[0]) if arrays else 0
    raw = np.int64(n).tobytes() + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    packed = pa.compress(raw, codec="zstd", asbytes=True)
    return _ZSTD + np.int64(len(raw)).tobytes() + packed


def blob_to_arrays(blob: bytes, dtypes: tuple[type, ...]) -> Iterator[np.ndarray]:
    """Unpack a blob made by ``arrays_to_blob`` (compressed or not)."""
    if blob[:8] == _ZSTD:
        size = int(np.frombuffer(blob[8:16], dtype=np.int64)[0])
        blob = pa.decompress(blob[16:], decompressed_size=size, codec="zstd", asbytes=True)
    n = int(np.frombuffer(blob[:8], dtype=np.int64)[0])
    off = 8
    for dt in dtypes:
        yield np.frombuffer(blob, dtype=dt, count=n, offset=off)
        off += 8 * n


def blob_to_published(blob: bytes, window: Window) -> Published:
    """Return the published values of a window from its stored blob (``res, cell, people``)."""
    res, cells, people = blob_to_arrays(blob, (np.int64, np.int64, np.float64))
    frame = pl.DataFrame(
        {"res": res.astype(np.int8), "cell": cells.view(np.uint64), "people": people}
    )
    return Published(window, frame)


@dataclass(frozen=True)
class ClosedWindow:
    """What a closed window keeps: raw base counts and published values, one blob each."""

    w: int
    base: bytes  # arrays_to_blob(cell, devices)
    published: bytes  # arrays_to_blob(res, cell, people)
    devices: int


def close_windows(
    ws: list[int], counts: pl.DataFrame, published: pl.DataFrame
) -> list[ClosedWindow]:
    """Pack the counts (``w, cell, devices``) and published values (``w, res, cell, people``)
    of windows ``ws`` into their blobs: one stable sort by window, then numpy slices."""
    base = _by_window(counts, ws, ("cell", "devices"))
    pub = _by_window(published, ws, ("res", "cell", "people"))
    return [
        ClosedWindow(w, arrays_to_blob(*b), arrays_to_blob(*p), int(b[1].sum()))
        for w, b, p in zip(ws, base, pub, strict=True)
    ]


def published_blob(published: pl.DataFrame) -> bytes:
    """Pack one snapshot's published values (``res, cell, people``), as ``close_windows`` packs a
    window's: a release keeps only these."""
    return arrays_to_blob(*(_words(published[c].to_numpy()) for c in ("res", "cell", "people")))


def _words(values: np.ndarray) -> I64:
    """A column as 8-byte words: integers widened, uint64 and float64 reinterpreted."""
    wide = values.astype(np.dtype(f"{values.dtype.kind}8"), copy=False)
    return np.ascontiguousarray(wide).view(np.int64)


def _by_window(
    frame: pl.DataFrame, ws: list[int], columns: tuple[str, ...]
) -> list[list[npt.NDArray[np.int64]]]:
    """Return, for each window of ``ws``, the columns' values in it (as 8-byte words)."""
    w = frame["w"].to_numpy()
    order = np.argsort(w, kind="stable")
    cols = [_words(frame[c].to_numpy())[order] for c in columns]
    w = w[order]
    lo, hi = np.searchsorted(w, ws), np.searchsorted(w, ws, side="right")
    return [[c[a:b] for c in cols] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]


def pings_to_blob(device: I64, ts: I64, cell: npt.NDArray[np.uint64]) -> bytes:
    """Pack a ping-log entry (keyed device hashes, times, base cells) into one blob."""
    return arrays_to_blob(device, ts, cell.view(np.int64))


def blob_to_pings(blob: bytes) -> tuple[I64, I64, npt.NDArray[np.uint64]]:
    """Unpack a ping-log entry made by :func:`pings_to_blob`."""
    device, ts, cell = blob_to_arrays(blob, (np.int64, np.int64, np.int64))
    return device, ts, cell.view(np.uint64)


def ping_entries(
    device: I64, ts: I64, cell: npt.NDArray[np.uint64], slot_s: int
) -> list[tuple[int, int, bytes]]:
    """Split pings into ping-log entries ``(lo_ts, hi_ts, blob)``, one per ``slot_s``-second
    slot, oldest first: an entry then leaves the log as soon as its slot is no longer needed."""
    if not len(ts):
        return []
    k = ts // slot_s
    slots = np.unique(k)
    out = []
    for x in slots.tolist():
        # A unit spans few slots: one mask each is cheaper than sorting the pings.
        rows = np.flatnonzero(k == x) if len(slots) > 1 else slice(None)
        t = ts[rows]
        out.append((int(t.min()), int(t.max()), pings_to_blob(device[rows], t, cell[rows])))
    return out
