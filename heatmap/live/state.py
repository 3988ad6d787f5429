"""The state behind releases and open windows, in memory, rebuilt from the store's ping log.

Every committed unit appends the pings that open windows and coming releases need to the
store's *ping log* (one entry per unit and release slot, keyed hashes only); the log is the
durable state. :class:`LiveState` is what a process makes of the log, kept in memory:

- ``live``: per device its latest (ts, cell) among pings before the next release tick, with
  devices per cell counted as they change (pings before the next tick go in as they arrive);
- ``pending``: pings at or after the next tick, waiting for it to be released;
- one table per open window: per device its latest (ts, cell) in the window, counted per cell.

Making release ``t`` drops devices last seen before ``t - horizon`` (one pass over the table) and
reads the per-cell counts; then the pending pings before the following tick go in. The work of
counting a ping is done when it arrives, not at the tick. Closing a window reads
its table's counts. Each of these is a function of the *set* of logged pings alone (the larger
(ts, cell) per device wins, whatever the order), so a state rebuilt from the log after a
restart, or caught up with entries other processes appended, makes the same releases and
windows as one that saw every unit itself.

A process keeps one state per store (:func:`state_of`). It catches up inside each unit's write
transaction (:meth:`LiveState.sync`); a transaction that fails leaves the memory ahead of the
store, so the state is dropped (:meth:`LiveState.invalidate`) and rebuilt from the log on the
next unit.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.live.tables import CellDict, DeviceTable, bits_for
from heatmap.store.base import Store

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Clock:
    """The lengths the state needs (seconds)."""

    window_s: int
    release_s: int
    horizon_s: int


class LiveState:
    """Live devices, pending pings and open windows of one store, in memory (see module)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.cells = CellDict()
        self.live = DeviceTable(self.cells)
        self.windows: dict[int, DeviceTable] = {}
        self._pending: list[tuple[I64, I64, I32]] = []
        self.folded_t: int | None = None
        """The last release tick made (or seen): ``live`` holds that release's devices."""
        self.fold_until: int | None = None
        """Pings before this tick (the next one) go to ``live`` as they arrive; later ones wait
        as pending. The next release then has only expiry left to do."""
        self.applied_seq = 0
        """The last log entry applied."""
        self.synced = False

    def invalidate(self) -> None:
        """Forget everything: the next :meth:`sync` rebuilds from the log."""
        self._reset()

    # -- keeping up with the log -----------------------------------------------------------------
    def sync(self, store: Store) -> None:
        """Apply the log entries this state has not seen (all of them the first time), drop
        windows closed meanwhile, and align with the latest release. Inside a transaction."""
        open_ws = set(store.open_window_ids())
        for w in [w for w in self.windows if w not in open_ws]:
            del self.windows[w]
        last = store.get_meta("release_t")
        if last is not None and (self.folded_t is None or int(last) > self.folded_t):
            self._fold(int(last))
            self._advance()
        for seq, (dev, ts, cell) in store.read_log(self.applied_seq):
            self.apply(dev, ts, cell, open_ws)
            self.applied_seq = seq
        self.synced = True

    def apply(self, dev: I64, ts: I64, cell: U64, windows: set[int], *, live: bool = True) -> None:
        """Apply logged pings: to the tables of ``windows`` they fall in (created as needed),
        and (with ``live``) to ``live`` (before the last tick) or pending (from it on)."""
        if not len(dev):
            return
        cid = self.cells.ids(cell)
        self._apply_windows(dev, ts, cid, windows)
        if live:
            self._apply_live(dev, ts, cid)

    def apply_beside(
        self, pool: Executor, dev: I64, ts: I64, cell: U64, windows: set[int]
    ) -> Future[None]:
        """:meth:`apply`, with the tables of ``windows`` updated on ``pool`` while this thread
        updates ``live`` (or pending); the future is done when the tables are. Until then the
        caller may make a release (which reads ``live`` alone), but not read those windows."""
        cid = self.cells.ids(cell)  # here, before either side reads the cells
        tables = pool.submit(self._apply_windows, dev, ts, cid, windows)
        self._apply_live(dev, ts, cid)
        return tables

    def _apply_windows(self, dev: I64, ts: I64, cid: I32, windows: set[int]) -> None:
        w = ts // self.clock.window_s
        for x in np.unique(w).tolist():
            if x in windows:
                rows = w == x
                table = self.windows.get(x)
                if table is None:
                    table = self.windows[x] = DeviceTable(self.cells, self._bits())
                table.apply(dev[rows], ts[rows], cid[rows])

    def _apply_live(self, dev: I64, ts: I64, cid: I32) -> None:
        if self.folded_t is None or self.fold_until is None:
            self._pending.append((dev, ts, cid))
            return
        floor = self.folded_t - self.clock.horizon_s
        now = (ts >= floor) & (ts < self.fold_until)
        if now.all():
            self.live.apply(dev, ts, cid)
            return
        self.live.apply(dev[now], ts[now], cid[now])
        later = ts >= self.fold_until
        if later.any():
            self._pending.append((dev[later], ts[later], cid[later]))

    def _bits(self) -> int:
        """Size of a new window's table: room for as many devices as the largest table holds
        (windows of a steady feed hold about the live devices), so it rarely grows (each
        growth rehashes the whole table, in the middle of some batch)."""
        most = max([len(self.live), *(len(t) for t in self.windows.values())])
        return bits_for(most)

    def appended(self, seq: int) -> None:
        """Note that the entries up to ``seq`` (this unit's, applied already) are in the log."""
        self.applied_seq = max(self.applied_seq, seq)

    # -- releases and windows --------------------------------------------------------------------
    def _take_pending(self, t: int, floor: int) -> None:
        """Apply the pending pings in ``[floor, t)`` to ``live``; keep those from ``t`` on."""
        keep: list[tuple[I64, I64, I32]] = []
        for dev, ts, cid in self._pending:
            now = (ts < t) & (ts >= floor)
            if now.any():
                self.live.apply(dev[now], ts[now], cid[now])
            later = ts >= t
            if later.any():
                keep.append((dev[later], ts[later], cid[later]))
        self._pending = _compact(keep)

    def _fold(self, t: int) -> None:
        """Make ``live`` the state of release ``t``: the pending pings before ``t`` in (only
        those of a jump over several ticks: the rest went in as they arrived), devices before
        ``t - h`` out."""
        floor = t - self.clock.horizon_s
        self._take_pending(t, floor)
        self.live.expire(floor)
        self.folded_t = t

    def _advance(self) -> None:
        """After release ``folded_t``: pings before the next tick may go to ``live`` now."""
        assert self.folded_t is not None
        self.fold_until = self.folded_t + self.clock.release_s
        self._take_pending(self.fold_until, self.folded_t - self.clock.horizon_s)

    def release(self, t: int) -> tuple[U64, I64]:
        """Make the state of release ``t``; return its (cells ascending, devices per cell)."""
        self._fold(t)
        counts = self.live.counts()
        self._advance()
        return counts

    def window_counts(self, w: int) -> tuple[U64, I64]:
        """Return the (cells ascending, devices per cell) of open window ``w``."""
        table = self.windows.get(w)
        if table is None:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return table.counts()

    def window_devices(self, w: int) -> int:
        """Return how many devices open window ``w`` holds."""
        table = self.windows.get(w)
        return 0 if table is None else len(table)

    def has_window(self, w: int) -> bool:
        """Whether window ``w`` has devices in this state."""
        return w in self.windows

    def drop_window(self, w: int) -> None:
        """Forget a closed window's devices."""
        self.windows.pop(w, None)

    def nbytes(self) -> int:
        """Bytes held by the tables (the pending pings included)."""
        pending = sum(d.nbytes + t.nbytes + c.nbytes for d, t, c in self._pending)
        tables = sum(t.nbytes for t in self.windows.values())
        return self.live.nbytes + tables + pending + 3 * self.cells.values.nbytes


def _compact(parts: list[tuple[I64, I64, I32]]) -> list[tuple[I64, I64, I32]]:
    """Join many small pending parts into one (fewer arrays to walk at the next tick)."""
    if len(parts) <= 1:
        return parts
    return [
        (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
    ]


_STATES: weakref.WeakKeyDictionary[Store, LiveState] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def state_of(store: Store, clock: Clock) -> LiveState:
    """Return this process's state of ``store`` (made empty the first time: it syncs from the
    log on its first unit); a state of other lengths is replaced."""
    with _LOCK:
        have = _STATES.get(store)
        if have is None or have.clock != clock:
            have = _STATES[store] = LiveState(clock)
        return have


def log_rows(frame: pl.DataFrame) -> tuple[I64, I64, U64]:
    """Return the ``device, ts, cell`` columns of positions as the arrays the log takes."""
    return (
        frame["device"].to_numpy().astype(np.int64, copy=False),
        frame["ts"].to_numpy().astype(np.int64, copy=False),
        frame["cell"].to_numpy().astype(np.uint64, copy=False),
    )
