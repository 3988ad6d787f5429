"""The store interface: persistence and reads, one implementation per backend.

A store keeps the durable state (the ping log, closed windows' blobs made by
:mod:`heatmap.store.codec`, releases' blobs, the watermark, committed batch ids) and offers the
primitives the commit rules of :mod:`heatmap.commit` run inside one ``transaction``. It decides
nothing about what is late, what closes or what gets published.

The *ping log* (schema 5) is what open windows and coming releases still need of the pings: one
entry per committed unit and release slot, a blob of (keyed device hash, ts, base cell) rows
(:func:`heatmap.store.codec.pings_to_blob`), numbered in commit order. A process keeps its own
reading of the log in memory (:mod:`heatmap.live.state`): per-device tables of the live state and
the open windows. Entries leave the log once no open window and no coming release needs them
(``trim_log``), and with them the hashes they hold.
"""

from __future__ import annotations

import abc
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.config import Settings
from heatmap.model import Published, Window
from heatmap.store.alert_rows import AlertRow, EventRow, OutboxRow, WatchRow, WatchStateRow
from heatmap.store.codec import ClosedWindow

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
SCHEMA_VERSION = 7  # 2: open_counts; 3: release state; 4: live_cells; 5: the ping log; 6: roll-ups;
# 7: watches, alerts, events and the webhook outbox
LEVELS = {"hour": 1, "day": 2}
"""Roll-up levels and their codes in the store (``rollups.level``)."""
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}


@dataclass(frozen=True)
class WindowInfo:
    """A window the store knows (open, or closed and final), or a release (``kind``).

    A release at tick ``t`` has ``w = t``, ``window = [t - horizon, t)``, ``closed = False``
    (it is not a complete window) and version 0: it never changes. A roll-up of closed windows
    (kind ``hour`` or ``day``) has ``w`` = its start (epoch seconds), ``closed = True``, version
    0 and ``devices`` = the mean devices per window.
    """

    w: int
    window: Window
    closed: bool
    version: int
    devices: int
    kind: str = "window"

    @property
    def is_release(self) -> bool:
        """Return True for a release."""
        return self.kind == "release"

    @property
    def is_rollup(self) -> bool:
        """Return True for an hourly or daily roll-up."""
        return self.kind in LEVELS


@dataclass(frozen=True)
class Rollup:
    """A roll-up of closed windows' published values over an hour or a day (schema 6).

    ``published`` is what is served (``arrays_to_blob(res, cell, people)``: the mean people per
    window, cells under the display threshold left out); ``sums`` is the sum of the published
    people per cell over the ``windows`` summed, before that threshold, from which the next
    level is rolled up exactly. Both are made of published values only
    (:mod:`heatmap.maintenance`).
    """

    level: str  # "hour" | "day"
    start: int
    end: int
    windows: int
    devices: int  # mean devices per window
    published: bytes
    sums: bytes


@dataclass(frozen=True)
class StoreSize:
    """What the store takes on disk and what is left (``None`` where a backend cannot say)."""

    bytes: int
    free_bytes: int | None
    where: str


class Store(abc.ABC):
    """Durable counts and open-window state; one implementation per backend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- backend primitives (called inside ``transaction``) ------------------------------------
    @abc.abstractmethod
    def transaction(self, guard: bool = True) -> contextlib.AbstractContextManager[None]:
        """Return a context manager holding the write lock; commits on success.

        With ``guard`` a backend that knows its disk refuses to start writing when the free
        space is below ``HEATMAP_MIN_FREE_DISK_MB`` (``StoreUnavailable``, a 503): writes that
        free space (compaction) pass ``guard=False``.
        """

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
    def touch_windows(self, rows: list[tuple[int, int, int]], closed: bool) -> None:
        """Create or bump windows ``(w, start, end)``: version += 1, set closed if asked."""

    @abc.abstractmethod
    def set_open_devices(self, totals: list[tuple[int, int]]) -> None:
        """Set the device totals ``(w, devices)`` of open windows."""

    @abc.abstractmethod
    def write_closed(self, closed: list[ClosedWindow]) -> None:
        """Store the blobs and device totals of closing windows."""

    @abc.abstractmethod
    def batch_result(self, batch_id: str) -> str | None:
        """Return the stored result of an already committed batch id."""

    @abc.abstractmethod
    def record_batch(self, batch_id: str, result: str) -> None:
        """Remember a committed batch id (idempotent ingest)."""

    # -- the ping log and releases (called inside ``transaction``) ---------------------------
    @abc.abstractmethod
    def append_log(self, entries: list[tuple[int, int, bytes]]) -> int:
        """Append entries ``(lo_ts, hi_ts, blob)`` in order; return the last one's number.

        Numbers grow in commit order and are never reused (also after ``trim_log``).
        """

    @abc.abstractmethod
    def read_log(self, after: int) -> Iterator[tuple[int, tuple[I64, I64, U64]]]:
        """Yield ``(number, (device, ts, cell))`` of the entries numbered above ``after``, in
        order."""

    @abc.abstractmethod
    def trim_log(self, before_ts: int) -> int:
        """Delete the entries whose every ping is before ``before_ts``; return how many.

        Deleted hashes must leave the disk: a backend whose deleted rows linger (a write-ahead
        log) clears them in ``after_commit``.
        """

    @abc.abstractmethod
    def write_release(self, t: int, blob: bytes, devices: int) -> None:
        """Store release ``t`` (a published blob, its device total) and move the change token.

        Releases are immutable: a release already stored at ``t`` is kept as it is.
        """

    @abc.abstractmethod
    def read_release(self, t: int, window: Window) -> Published | None:
        """Return the published values of release ``t`` (labelled ``window``), if stored."""

    @abc.abstractmethod
    def release_rows(self) -> I64:
        """Return every stored release as int64 rows ``(t, devices)``, ascending ``t``."""

    @abc.abstractmethod
    def delete_releases_before(self, t: int) -> None:
        """Delete the releases older than ``t`` (past the retention span)."""

    # -- history: roll-ups and retention (schema 6; :mod:`heatmap.maintenance` drives them) -----
    @abc.abstractmethod
    def rollup_rows(self) -> I64:
        """Return every roll-up as int64 rows ``(level, start, end, windows, devices)``, by
        ascending ``start`` (days before hours: they never overlap)."""

    @abc.abstractmethod
    def write_rollups(self, rollups: list[Rollup]) -> None:
        """Store roll-ups; one already stored at its ``(level, start)`` is kept as it is."""

    @abc.abstractmethod
    def read_rollup(self, level: str, start: int, window: Window) -> Published | None:
        """Return the published values of a roll-up (labelled ``window``), if stored."""

    @abc.abstractmethod
    def read_rollup_sums(self, level: str, starts: list[int]) -> dict[int, tuple[int, bytes]]:
        """Return ``start -> (windows, sums blob)`` of stored roll-ups of a level."""

    @abc.abstractmethod
    def delete_windows(self, ws: list[int]) -> None:
        """Delete closed windows (their row, published values and raw counts)."""

    @abc.abstractmethod
    def delete_rollups(self, level: str, starts: list[int]) -> None:
        """Delete roll-ups of a level."""

    @abc.abstractmethod
    def forget_batches(self, before_epoch: int) -> int:
        """Forget batch ids committed before ``before_epoch`` (wall clock); return how many."""

    @abc.abstractmethod
    def size(self) -> StoreSize:
        """Return the store's size on disk and the free space beside it."""

    def reclaim(self) -> None:
        """Give back what a large deletion left behind (the SQLite WAL); default nothing."""
        return

    def history_epoch(self) -> int:
        """Return a counter that moves whenever compaction rewrote the history."""
        v = self.get_meta("history_epoch")
        return 0 if v is None else int(v)

    def mark_history_changed(self) -> None:
        """Move the history counter (inside the compaction's transaction)."""
        self.set_meta("history_epoch", str(self.history_epoch() + 1))

    # -- crowd warnings (schema 7; :mod:`heatmap.alerts` drives them) ---------------------------
    @abc.abstractmethod
    def insert_watch(self, row: WatchRow) -> None:
        """Store a new watch."""

    @abc.abstractmethod
    def watch_rows(self) -> list[WatchRow]:
        """Return every stored watch, oldest first."""

    @abc.abstractmethod
    def delete_watch(self, watch_id: str) -> bool:
        """Delete a watch and its state; return False when there was none."""

    @abc.abstractmethod
    def watch_states(self) -> list[WatchStateRow]:
        """Return the state of every watch evaluated so far."""

    @abc.abstractmethod
    def put_watch_states(self, rows: list[WatchStateRow]) -> None:
        """Create or replace watch states (inside ``transaction``)."""

    @abc.abstractmethod
    def open_alert(self, watch_id: str, audience: str, t: int, opened: str) -> int:
        """Store a new open alert; return its number (numbers grow, never reused)."""

    @abc.abstractmethod
    def close_alert(self, alert_id: int, t: int, closed: str) -> None:
        """Mark an alert closed at release ``t`` with its closing values."""

    @abc.abstractmethod
    def alert_rows(self, closed_since: int) -> list[AlertRow]:
        """Return open alerts and those closed at or after ``closed_since``, oldest first."""

    @abc.abstractmethod
    def delete_alerts_closed_before(self, t: int) -> int:
        """Forget alerts closed before release ``t``; return how many."""

    @abc.abstractmethod
    def append_events(self, rows: list[tuple[str, str, str, int]]) -> list[int]:
        """Append events ``(audience, kind, data, at)`` in order; return their numbers."""

    @abc.abstractmethod
    def events_after(self, seq: int, limit: int) -> list[EventRow]:
        """Return up to ``limit`` events numbered above ``seq``, in order (never blocks on a
        writer where the backend can avoid it)."""

    @abc.abstractmethod
    def last_event_seq(self) -> int:
        """Return the number of the newest event ever appended (0 before the first)."""

    @abc.abstractmethod
    def delete_events_before(self, at: int) -> int:
        """Delete the events written before ``at`` (epoch seconds); return how many."""

    @abc.abstractmethod
    def enqueue_webhooks(self, rows: list[OutboxRow]) -> None:
        """Add messages to the outbox (their ``id`` is assigned here; inside ``transaction``)."""

    @abc.abstractmethod
    def due_webhooks(self, now: float, limit: int) -> list[OutboxRow]:
        """Return the oldest pending message of each watch if it is due and not leased."""

    @abc.abstractmethod
    def lease_webhook(self, msg: int, now: float, until: float) -> bool:
        """Take a pending message for delivery until ``until``; False if someone has it."""

    @abc.abstractmethod
    def finish_webhook(
        self, msg: int, state: str, attempts: int, next_at: float, error: str | None, now: float
    ) -> None:
        """Record a delivery attempt's outcome (state, attempts, next try, error) and free it."""

    @abc.abstractmethod
    def webhook_rows(self, watch_id: str, limit: int) -> list[OutboxRow]:
        """Return a watch's newest messages, newest first."""

    @abc.abstractmethod
    def delete_webhooks_before(self, done_before: float) -> int:
        """Forget delivered and dead messages finished before ``done_before``."""

    # -- reads ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def windows(self) -> list[WindowInfo]:
        """Return every window, oldest first."""

    @abc.abstractmethod
    def read_published(self, w: int) -> Published | None:
        """Return the stored published values of a closed window."""

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

    def watermark(self) -> int | None:
        """Return the watermark (latest ping time seen minus allowed lateness), if any."""
        v = self.get_meta("watermark")
        return None if v is None else int(v)

    def after_commit(self) -> None:
        """Run after a unit's transaction committed.

        A backend whose deleted rows may linger elsewhere on disk (a write-ahead log) removes
        them here when the unit trimmed the ping log (the backend tracks that itself). The
        default does nothing.
        """
        return

    def read_open_counts(self, w: int) -> tuple[U64, I64]:
        """Return base-resolution (cells, devices) of open window ``w`` from the ping log.

        For tests and tools (open windows are never served): reads the whole log.
        """
        parts = [
            pl.DataFrame({"device": d, "ts": t, "cell": c}) for _, (d, t, c) in self.read_log(0)
        ]
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        rows = pl.concat(parts).filter(pl.col("ts") // self.settings.window_s == w)
        latest = rows.sort("device", "ts", "cell").unique("device", keep="last")
        counts = latest.group_by("cell").len().sort("cell")
        return counts["cell"].to_numpy(), counts["len"].to_numpy().astype(np.int64)

    def identity(self) -> str:
        """Return this store's identity: a random id made once and kept in its metadata.

        Snapshot versions include it, so two stores never share a version (and with it a cached
        index or centre table) in one process, whatever their windows and counters.
        """
        have = self.get_meta("store_id")
        if have is None:
            with self.transaction():
                have = self.get_meta("store_id")
                if have is None:
                    have = secrets.token_hex(8)
                    self.set_meta("store_id", have)
        return have

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
