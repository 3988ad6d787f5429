"""The store's windows, roll-ups and kept releases in memory: columnar lists with O(log n)
lookups, refreshed incrementally when the store changes (cheap change token), so a request costs
no scan of 100k windows and still sees a committed batch at once.

The *history* (:meth:`WindowList.closed`) is the daily and hourly roll-ups of what is past the
full-detail retention (:mod:`heatmap.maintenance`), oldest first, then every closed window; a
time names the one entry that contains it (:meth:`WindowList.find`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from heatmap.model import Window
from heatmap.store import Store, WindowInfo
from heatmap.store.base import LEVEL_NAMES

_KIND_WINDOW = 0


class Releases:
    """The kept releases: ticks ``t`` and device totals, oldest first, with O(log n) lookups.

    >>> r = Releases(np.array([[600, 7], [660, 8]]), horizon_s=300)
    >>> r.latest().window, r.get(630)
    (Window(start=360, end=660), None)
    """

    def __init__(self, rows: npt.NDArray[np.int64], horizon_s: int) -> None:
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.ticks = self.rows[:, 0]
        self.horizon_s = horizon_s

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def info(self, i: int) -> WindowInfo:
        """Return the ``i``-th release as a :class:`WindowInfo` (``kind="release"``)."""
        t, devices = self.rows[i].tolist()
        return WindowInfo(t, Window(t - self.horizon_s, t), False, 0, devices, "release")

    def latest(self) -> WindowInfo | None:
        """Return the newest release, or None before the first."""
        return self.info(-1) if len(self) else None

    def at_or_before(self, t: int) -> WindowInfo | None:
        """Return the newest kept release with a tick at or before ``t``."""
        i = int(np.searchsorted(self.ticks, t, side="right"))
        return self.info(i - 1) if i else None

    def get(self, t: int) -> WindowInfo | None:
        """Return the release at tick ``t`` if it is kept."""
        i = int(np.searchsorted(self.ticks, t))
        return self.info(i) if i < len(self) and int(self.ticks[i]) == t else None


NO_RELEASES = Releases(np.zeros((0, 2), np.int64), 0)


class Rollups:
    """The stored roll-ups: rows ``(level, start, end, windows, devices)`` by start.

    >>> r = Rollups(np.array([[1, 3600, 7200, 12, 40]]))
    >>> r.at("hour", 5000).window, r.at("day", 5000)
    (Window(start=3600, end=7200), None)
    """

    def __init__(self, rows: npt.NDArray[np.int64]) -> None:
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def info(self, i: int) -> WindowInfo:
        """Return the ``i``-th roll-up as a :class:`WindowInfo` (kind ``hour`` or ``day``)."""
        level, start, end, _, devices = self.rows[i].tolist()
        return WindowInfo(start, Window(start, end), True, 0, devices, LEVEL_NAMES[level])

    def at(self, kind: str, t: int) -> WindowInfo | None:
        """Return the roll-up of a kind whose span contains ``t``, if stored."""
        code = {v: k for k, v in LEVEL_NAMES.items()}[kind]
        hit = np.flatnonzero(
            (self.rows[:, 0] == code) & (self.rows[:, 1] <= t) & (self.rows[:, 2] > t)
        )
        return self.info(int(hit[0])) if hit.size else None


NO_ROLLUPS = Rollups(np.zeros((0, 5), np.int64))


class WindowList:
    """An immutable, sorted, columnar view of the store's windows with O(log n) lookups.

    Rows are ``(w, start, end, closed, version, devices)`` in an int64 matrix, so 100k windows
    cost a few MB and no Python object each; :class:`WindowInfo` is made on access.

    >>> from heatmap.model import Window
    >>> wl = WindowList.of([WindowInfo(1, Window(300, 600), True, 1, 5)])
    >>> wl.get(1).window.start, wl.get(2)
    (300, None)
    """

    def __init__(
        self,
        rows: npt.NDArray[np.int64],
        releases: Releases = NO_RELEASES,
        rollups: Rollups = NO_ROLLUPS,
        kinds: npt.NDArray[np.int8] | None = None,
    ) -> None:
        self.releases = releases
        self.rollups = rollups
        self._closed: WindowList | None = None
        self.rows = rows.reshape(-1, 6)
        self.kinds = kinds  # per row: 0 a window, else a roll-up level (history lists only)
        self.ws = self.rows[:, 0]
        self.starts = self.rows[:, 1]
        self._latest = self.info(-1) if len(self.rows) else None

    @classmethod
    def of(cls, infos: Sequence[WindowInfo]) -> WindowList:
        """Return the list of some :class:`WindowInfo`."""
        return cls(
            np.array(
                [(i.w, *i.window, int(i.closed), i.version, i.devices) for i in infos],
                dtype=np.int64,
            )
        )

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def info(self, i: int) -> WindowInfo:
        """Return the ``i``-th window (oldest first; negative counts from the newest)."""
        w, a, b, c, v, d = self.rows[i].tolist()
        if self.kinds is not None and self.kinds[i] != _KIND_WINDOW:
            return WindowInfo(a, Window(a, b), True, 0, d, LEVEL_NAMES[int(self.kinds[i])])
        return WindowInfo(w, Window(a, b), bool(c), v, d)

    def infos(self, lo: int = 0, hi: int | None = None) -> list[WindowInfo]:
        """Return the windows ``lo:hi`` as :class:`WindowInfo`, oldest first."""
        return [self.info(i) for i in range(*slice(lo, hi).indices(len(self)))]

    def first(self) -> WindowInfo | None:
        """Return the oldest window, or None without data."""
        return self.info(0) if len(self) else None

    def latest(self) -> WindowInfo | None:
        """Return the newest window, or None without data."""
        return self._latest

    def latest_closed(self) -> WindowInfo | None:
        """Return the newest closed window, or None."""
        idx = np.flatnonzero(self.rows[:, 3])
        return self.info(int(idx[-1])) if idx.size else None

    def closed(self) -> WindowList:
        """Return the history: the roll-ups, then every window of the clock from the first
        closed window to the last.

        Windows still filling are left out (they change with every batch), and windows in which
        nobody pinged are filled in (version 0, nothing published), so the list tells nothing of
        where or whether anyone pinged, only when the store began. Roll-ups come first, oldest
        first (they hold what is past the full-detail retention); in the list their row's ``w``
        is the number of their first window, so the rows stay sorted.
        """
        if self._closed is None:
            done = self.rows[self.rows[:, 3] != 0]
            if len(done):
                w0, w1 = int(done[0, 0]), int(done[-1, 0])
                span = int(done[0, 2] - done[0, 1])
                ws = np.arange(w0, w1 + 1, dtype=np.int64)
                full = np.zeros((len(ws), 6), dtype=np.int64)
                full[:, 0], full[:, 1], full[:, 2], full[:, 3] = ws, ws * span, ws * span + span, 1
                at = np.searchsorted(ws, done[:, 0])
                full[at] = done
                done = full
            kinds = None
            if len(self.rollups):
                ru = self.rollups.rows
                if len(done):  # a roll-up never overlaps a window kept at full detail
                    ru = ru[ru[:, 2] <= done[0, 1]]
                span = max(int(done[0, 2] - done[0, 1]) if len(done) else 1, 1)
                head = np.zeros((len(ru), 6), dtype=np.int64)
                head[:, 0], head[:, 1], head[:, 2] = ru[:, 1] // span, ru[:, 1], ru[:, 2]
                head[:, 3], head[:, 5] = 1, ru[:, 4]
                kinds = np.concatenate([ru[:, 0], np.zeros(len(done), np.int64)]).astype(np.int8)
                done = np.concatenate([head, done])
            self._closed = WindowList(done, self.releases, self.rollups, kinds)
        return self._closed

    def find(self, t: int) -> WindowInfo | None:
        """Return the entry whose span ``[start, end)`` contains epoch second ``t``."""
        i = int(np.searchsorted(self.starts, t, side="right")) - 1
        if i >= 0 and int(self.rows[i, 2]) > t:
            return self.info(i)
        return None

    def get(self, w: int) -> WindowInfo | None:
        """Return window number ``w`` if the store has it."""
        i = int(np.searchsorted(self.ws, w))
        if i < len(self) and int(self.ws[i]) == w:
            return self.info(i)
        return None

    def between(self, start_ts: int, end_ts: int) -> list[WindowInfo]:
        """Return the windows whose start lies in ``[start_ts, end_ts)``, oldest first."""
        lo = int(np.searchsorted(self.starts, start_ts, side="left"))
        hi = int(np.searchsorted(self.starts, end_ts, side="left"))
        return self.infos(lo, hi)

    def page(self, limit: int, before_ts: int | None = None) -> list[WindowInfo]:
        """Return up to ``limit`` windows starting before ``before_ts``, newest first."""
        hi = len(self) if before_ts is None else int(np.searchsorted(self.starts, before_ts))
        return self.infos(max(0, hi - limit), hi)[::-1]

    def splice(self, lo_w: int, tail: WindowList) -> WindowList:
        """Return this list with every window ``w >= lo_w`` replaced by ``tail``."""
        cut = int(np.searchsorted(self.ws, lo_w))
        rows = np.concatenate([self.rows[:cut], tail.rows])
        return WindowList(rows, tail.releases, tail.rollups)


class WindowCatalog:
    """The store's windows kept in memory, refreshed incrementally when the store changes.

    Parameters
    ----------
    store : Store
        The store the service writes to.
    window_s : int
        Window length (``HEATMAP_WINDOW_S``).
    horizon_s : int
        Trailing horizon of a release (``HEATMAP_HORIZON_S``).
    check_every_s : float
        How often the change token is read at most (writes by *this* process call
        :meth:`invalidate` and are seen at once; other processes within this delay).
    ttl_s : float
        Without a change token (non-SQLite stores), the list is reloaded this often.

    Notes
    -----
    Only windows that are not older than the watermark can change (late rows are rejected, and
    every window before the watermark is closed), so a refresh reads ``w >= watermark // window_s
    - 1`` and keeps the older prefix: a commit costs a primary-key range read, not a scan.
    """

    def __init__(
        self,
        store: Store,
        window_s: int,
        horizon_s: int | None = None,
        check_every_s: float = 0.05,
        ttl_s: float = 1.0,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.horizon_s = window_s if horizon_s is None else horizon_s
        self.check_every_s = check_every_s
        self.ttl_s = ttl_s
        self._incremental = store.change_token() is not None
        self._list = WindowList(np.zeros((0, 6), dtype=np.int64))
        self._rollups = NO_ROLLUPS
        self._epoch: int | None = None
        self._token: int | None = None
        self._watermark: int | None = None
        self._next_check = 0.0
        self._loaded = False
        self._lock = threading.Lock()
        self._gen = 0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def invalidate(self) -> None:
        """Make the next access check the store (call after committing a batch)."""
        self._gen += 1
        self._next_check = 0.0

    def current(self) -> WindowList:
        """Return the up-to-date window list."""
        if time.monotonic() >= self._next_check:
            self.refresh()
        return self._list

    def peek(self) -> WindowList | None:
        """Return the window list if no check is due (never touches the store), else None."""
        return self._list if time.monotonic() < self._next_check else None

    def cached(self) -> WindowList:
        """Return the window list as last loaded (never touches the store)."""
        return self._list

    def refresh(self, force: bool = False) -> WindowList:
        """Check the change token and reload what changed (everything with ``force``)."""
        with self._lock:
            gen = self._gen
            if not self._incremental:
                rows = self.store.window_rows_since(None)[0]
                self._rollups = Rollups(self.store.rollup_rows())
                self._list = WindowList(rows, self._releases(), self._rollups)
                self._loaded = True
                valid = self.ttl_s
            else:
                token = self.store.change_token()
                if force or not self._loaded or token != self._token:
                    self._reload()
                    self._token = token
                valid = self.check_every_s
            if self._gen == gen:  # no commit was announced meanwhile
                # With a background refresher the list stays valid for two of its periods, so
                # requests do not fall due between two of its runs.
                scale = 2.0 if self._refresher is not None else 1.0
                self._next_check = time.monotonic() + valid * scale
            return self._list

    def start_refresher(self) -> None:
        """Refresh in a daemon thread, so requests never wait on the change check."""
        if self._refresher is not None:
            return
        self._stop.clear()
        period = self.check_every_s if self._incremental else self.ttl_s

        def run() -> None:
            while not self._stop.wait(period):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - requests refresh themselves and report
                    self._next_check = 0.0

        self._refresher = threading.Thread(target=run, name="window-catalog", daemon=True)
        self._refresher.start()

    def stop_refresher(self) -> None:
        """Stop the background refresher (if running)."""
        if self._refresher is not None:
            self._stop.set()
            self._refresher.join(5)
            self._refresher = None

    def _reload(self) -> None:
        old = self._list
        # Compaction rewrites old history (windows out, roll-ups in) and moves this counter:
        # then the whole list is read again, else only what the watermark may still change.
        epoch = self.store.history_epoch()
        if not self._loaded or self._watermark is None or not len(old) or epoch != self._epoch:
            rows, wm = self.store.window_rows_since(None)
            self._rollups = Rollups(self.store.rollup_rows())
            self._list = WindowList(rows, self._releases(), self._rollups)
        else:
            lo = self._watermark // self.window_s - 1
            rows, wm = self.store.window_rows_since(lo)
            self._list = old.splice(lo, WindowList(rows, self._releases(), self._rollups))
        self._epoch = epoch
        self._watermark = wm
        self._loaded = True

    def _releases(self) -> Releases:
        return Releases(self.store.release_rows(), self.horizon_s)

    def close(self) -> None:
        """Stop refreshing."""
        self.stop_refresher()
