"""The store interface and the backend-independent unit commit (watermark, late rows, close).

A *unit* (one file, one POSTed batch) is committed in one write transaction: its positions merge
with the durable state of open windows, the watermark advances only after the whole unit is in,
then every window it completes closes: counts and published values are written and the window's
device state (keyed hashes) is deleted.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl
import pyarrow as pa

from heatmap.aggregate import cells_to_counts, merge_positions, windows_of
from heatmap.config import Settings
from heatmap.model import Window
from heatmap.publish import Published, counts_to_published

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WindowInfo:
    """A window the store knows: open (live, partial) or closed (final)."""

    w: int
    window: Window
    closed: bool
    version: int
    devices: int


@dataclass
class CommitResult:
    """What one committed unit did."""

    accepted: int = 0
    late: int = 0
    windows_closed: list[int] = field(default_factory=list)
    watermark: int | None = None
    duplicate: bool = False


class Store(abc.ABC):
    """Durable counts and open-window state; one implementation per backend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- backend primitives (called inside ``transaction``) ------------------------------------
    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Return a context manager holding the write lock; commits on success."""

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""

    @abc.abstractmethod
    def open_window_ids(self) -> list[int]:
        """Return the window numbers that are open."""

    @abc.abstractmethod
    def load_state(self, ws: list[int]) -> pl.DataFrame:
        """Return the device state (w, device, ts, cell) of the given open windows."""

    @abc.abstractmethod
    def upsert_state(self, positions: pl.DataFrame) -> None:
        """Merge positions into device state (latest ts wins, ties to the larger cell)."""

    @abc.abstractmethod
    def delete_state(self, ws: list[int]) -> None:
        """Delete the device state of closed windows (keyed hashes leave the disk)."""

    @abc.abstractmethod
    def touch_windows(self, rows: list[tuple[int, int, int]], closed: bool) -> None:
        """Create or bump windows ``(w, start, end)``: version += 1, set closed if asked."""

    @abc.abstractmethod
    def write_closed(self, closed: list[ClosedWindow]) -> None:
        """Store the blobs and device totals of closing windows."""

    @abc.abstractmethod
    def batch_result(self, batch_id: str) -> str | None:
        """Return the stored result of an already committed batch id."""

    @abc.abstractmethod
    def record_batch(self, batch_id: str, result: str) -> None:
        """Remember a committed batch id (idempotent ingest)."""

    # -- reads ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def windows(self) -> list[WindowInfo]:
        """Return every window, oldest first."""

    @abc.abstractmethod
    def read_published(self, w: int) -> Published | None:
        """Return the stored published values of a closed window."""

    @abc.abstractmethod
    def read_open_counts(self, w: int) -> tuple[U64, I64]:
        """Return base-resolution (cells, devices) of an open window from its device state."""

    @abc.abstractmethod
    def read_base_counts(self, ws: list[int]) -> dict[int, tuple[U64, I64]]:
        """Return raw base-resolution counts of closed windows (internal; never published)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def change_token(self) -> int | None:
        """Return a value that changes whenever any process commits, or None if there is none.

        With a token, readers refresh incrementally when it changes; without one they reload
        the window list on a timer.
        """
        return None

    def window_rows_since(self, lo: int | None) -> tuple[I64, int | None]:
        """Return windows ``w >= lo`` (all if None) and the watermark, read consistently.

        Rows are int64 ``(w, start, end, closed, version, devices)``, oldest first.
        """
        rows = [
            (i.w, i.window.start, i.window.end, int(i.closed), i.version, i.devices)
            for i in self.windows()
            if lo is None or i.w >= lo
        ]
        return np.array(rows, dtype=np.int64).reshape(-1, 6), self.watermark()

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be read."""
        self.get_meta("schema_version")

    # -- the unit commit -----------------------------------------------------------------------
    def watermark(self) -> int | None:
        """Return the watermark (latest ping time seen minus allowed lateness), if any."""
        v = self.get_meta("watermark")
        return None if v is None else int(v)

    def commit_unit(
        self,
        positions: pl.DataFrame,
        max_ts: int | None,
        batch_id: str | None = None,
        accepted: int = 0,
        ahead: Precomputed | None = None,
    ) -> CommitResult:
        """Commit one unit's positions (w, device, ts, cell at base_res) atomically.

        ``accepted`` is the number of pings the positions stand for (reported back). ``ahead``
        holds values computed from these positions for some windows; a closing window without
        stored state uses them instead of computing them again.
        """
        s = self.settings
        with self.transaction():
            if batch_id is not None:
                prev = self.batch_result(batch_id)
                if prev is not None:
                    res = CommitResult(**orjson.loads(prev))
                    res.duplicate = True
                    return res
            wm = self.watermark()
            result = CommitResult(watermark=wm, accepted=accepted)
            if wm is not None and positions.height:
                # Rows of windows closed before the unit started were dropped and counted while
                # parsing; a window closed meanwhile (another process) costs its positions here.
                late = (pl.col("w") + 1) * s.window_s <= wm
                result.late = positions.filter(late).height
                positions = positions.filter(~late)
            if max_ts is not None and positions.height:
                cand = int(positions["ts"].max()) - s.allowed_lateness_s  # type: ignore[arg-type]
                wm = cand if wm is None else max(wm, cand)
            unit_ws = set(windows_of(positions))
            stored_open = set(self.open_window_ids())
            every = unit_ws | stored_open
            closing = sorted(w for w in every if wm is not None and (w + 1) * s.window_s <= wm)
            staying = sorted(unit_ws - set(closing))
            if closing:
                self._close(closing, positions, stored_open, ahead)
            if staying:
                self.upsert_state(positions.filter(pl.col("w").is_in(staying)))
                self.touch_windows(self._rows(staying), closed=False)
            if wm is not None:
                self.set_meta("watermark", str(wm))
            result.windows_closed = closing
            result.watermark = wm
            if batch_id is not None:
                self.record_batch(batch_id, orjson.dumps(result.__dict__).decode())
        return result

    def _rows(self, ws: list[int]) -> list[tuple[int, int, int]]:
        n = self.settings.window_s
        return [(w, w * n, (w + 1) * n) for w in ws]

    def _close(
        self,
        closing: list[int],
        positions: pl.DataFrame,
        stored_open: set[int],
        ahead: Precomputed | None,
    ) -> None:
        with_state = [w for w in closing if w in stored_open]
        ready = {} if ahead is None else ahead.windows
        done = [ready[w] for w in closing if w in ready and w not in stored_open]
        todo = [w for w in closing if w not in ready or w in stored_open]
        if todo:
            final = merge_positions(
                [self.load_state(with_state), positions.filter(pl.col("w").is_in(todo))]
            )
            counts = cells_to_counts(final)
            done += close_windows(todo, counts, counts_to_published(counts, self.settings))
        self.write_closed(sorted(done, key=lambda c: c.w))
        self.delete_state(with_state)
        self.touch_windows(self._rows(closing), closed=True)

    def check_compatible(self) -> None:
        """Refuse a store built with a different window length or base resolution."""
        for key, val in (
            ("window_s", self.settings.window_s),
            ("base_res", self.settings.base_res),
        ):
            have = self.get_meta(key)
            if have is not None and int(have) != val:
                from heatmap.errors import StoreUnavailable

                raise StoreUnavailable(
                    f"store was built with {key}={have}, settings say {val}: use another HEATMAP_DB"
                )


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


@dataclass(frozen=True)
class Precomputed:
    """Closed-window values computed before their unit commits.

    An ingest computes them for windows its input has moved past, on worker threads while it is
    still reading. The commit uses one for a window it closes only if the unit's positions are
    all that window has (no device state stored by earlier units); otherwise it recomputes.
    """

    windows: dict[int, ClosedWindow]

    @staticmethod
    def of(positions: pl.DataFrame, settings: Settings) -> Precomputed:
        """Compute the closed-window values of every window in ``positions``."""
        counts = cells_to_counts(positions)
        published = counts_to_published(counts, settings)
        ws = windows_of(counts)
        return Precomputed({c.w: c for c in close_windows(ws, counts, published)})

    @staticmethod
    def combine(parts: list[Precomputed], keep: set[int]) -> Precomputed:
        """Return the parts' values for the windows in ``keep``."""
        return Precomputed({w: c for p in parts for w, c in p.windows.items() if w in keep})
