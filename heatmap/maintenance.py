"""Retention and roll-ups: what ``heatmap compact`` and the service's periodic job do.

Closed windows are kept at full detail for ``HEATMAP_KEEP_FULL_DAYS``; then each whole hour of
them becomes one *hourly roll-up* at resolutions up to ``HEATMAP_ROLLUP_HOUR_RES`` and the
windows go. Hourly roll-ups are kept ``HEATMAP_KEEP_HOURLY_DAYS``; then each whole local day
(``HEATMAP_TZ``) becomes one *daily roll-up* at resolutions up to ``HEATMAP_ROLLUP_DAY_RES``, and
daily roll-ups go after ``HEATMAP_KEEP_DAILY_DAYS`` (0 = kept for good). Ages are measured back
from the end of the newest closed window, not from the wall clock: a store of last year's data
replayed today is not emptied, and a stopped feed keeps its history.

What a roll-up holds
--------------------
Only published values enter: a roll-up cell's people is the **mean over the period's closed
windows of the cell's published people**, a window where it was withheld counting 0 (the mean
crowd over the hour or day as the public saw it; a withheld value is at most ``k_min`` devices,
so a cell withheld often reads a little low). Whatever is computed from published values alone
reveals nothing they did not (post-processing; with DP, the post-processing theorem), so the
privacy rules need no new suppression for safety, and the raw counts are never read. A mean can
still fall below ``k_min`` devices (a cell published in one window of twelve): such cells are
left out of the roll-up (``people < k_min * expansion``), so that no number shown describes
fewer than ``k_min`` devices, as rule 2 reads everywhere else; the public audience sees roll-ups
rounded like any snapshot. The sums before that threshold are kept beside the means (never
served), so a day is the exact mean of its windows, not a mean of thresholded hours.

Each period is rolled up once its whole span is past the cutoff, and its roll-up is written and
its windows (or hours) deleted in one transaction, so a crash leaves either the windows or the
roll-up, never both or neither; compaction is idempotent and safe to run from several nodes at
once (they take turns on the commit lock and the second finds the work done).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from heatmap.config import Settings
from heatmap.store import Store
from heatmap.store.base import LEVEL_NAMES, Rollup
from heatmap.store.codec import arrays_to_blob, blob_to_arrays

DAY_S = 86_400
HOUR_S = 3_600
CHUNK = 24
"""Periods written per transaction (a day of hours): the commit lock is held briefly."""

_SUMS = {"res": pl.Int64, "cell": pl.UInt64, "people": pl.Float64}


@dataclass
class CompactReport:
    """What one compaction did; ``summary()`` is the CLI's last line."""

    windows_rolled: int = 0
    hours_made: int = 0
    hours_rolled: int = 0
    days_made: int = 0
    days_deleted: int = 0
    batches_forgotten: int = 0
    seconds: float = 0.0
    cutoffs: dict[str, int | None] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Return True when the history changed."""
        return bool(self.windows_rolled or self.hours_rolled or self.days_deleted)

    def summary(self) -> dict[str, object]:
        """Return the JSON summary."""
        return {
            "windows_rolled_up": self.windows_rolled,
            "hours_made": self.hours_made,
            "hours_rolled_up": self.hours_rolled,
            "days_made": self.days_made,
            "days_deleted": self.days_deleted,
            "batch_ids_forgotten": self.batches_forgotten,
            "cutoffs": self.cutoffs,
            "seconds": round(self.seconds, 3),
        }


def sums_to_rollup(
    level: str,
    start: int,
    end: int,
    windows: int,
    devices: int,
    sums: pl.DataFrame,
    threshold: float,
) -> Rollup:
    """Return the roll-up of a period from its summed published people (``res, cell, people``).

    The served values are the means ``people / windows``, without the cells whose mean is
    below ``threshold`` (``k_min * expansion``); ``sums`` are kept whole for the next level.

    >>> s = pl.DataFrame({"res": [8, 8], "cell": [1, 2], "people": [240.0, 60.0]})
    >>> r = sums_to_rollup("hour", 0, 3600, 12, 25, s, 10.0)
    >>> from heatmap.store.codec import blob_to_published
    >>> from heatmap.model import Window
    >>> blob_to_published(r.published, Window(0, 3600)).frame["people"].to_list()
    [20.0]
    """
    sums = sums.sort("res", "cell")
    res = sums["res"].to_numpy().astype(np.int64)
    cells = sums["cell"].to_numpy().astype(np.uint64)
    total = sums["people"].to_numpy().astype(np.float64)
    mean = total / max(windows, 1)
    keep = mean >= threshold
    shown = arrays_to_blob(res[keep], cells[keep].view(np.int64), mean[keep])
    kept = arrays_to_blob(res, cells.view(np.int64), total)
    return Rollup(level, start, end, windows, devices, shown, kept)


def _sum(parts: list[pl.DataFrame], max_res: int) -> pl.DataFrame:
    """Return the people summed per ``(res, cell)`` over frames, resolutions up to ``max_res``."""
    if not parts:
        return pl.DataFrame(schema=_SUMS)
    every = pl.concat([p.select(pl.col(c).cast(t) for c, t in _SUMS.items()) for p in parts])
    kept = every.filter(pl.col("res") <= max_res)
    return kept.group_by("res", "cell").agg(pl.col("people").sum())


def _sums_of(blob: bytes) -> pl.DataFrame:
    res, cell, people = blob_to_arrays(blob, (np.int64, np.int64, np.float64))
    return pl.DataFrame({"res": res, "cell": cell.view(np.uint64), "people": people})


def _tz(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def day_of(ts: int, tz: ZoneInfo) -> tuple[int, int]:
    """Return the local day ``[start, end)`` (epoch seconds) containing ``ts`` (23 or 25 hours
    long on a day the clocks change).

    >>> day_of(3600, ZoneInfo("Asia/Shanghai"))
    (-28800, 57600)
    """
    d0 = datetime.fromtimestamp(ts, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    d1 = d0 + timedelta(days=1)  # wall-clock arithmetic: the next local midnight
    return int(d0.timestamp()), int(d1.timestamp())


def compact(
    store: Store,
    settings: Settings,
    progress: Callable[[str, int], None] | None = None,
    wall_now: float | None = None,
    cancel: threading.Event | None = None,
) -> CompactReport:
    """Roll up and delete what the retention settings say is past its time; return a report.

    Parameters
    ----------
    store : Store
        The store (may be serving: every step is its own short transaction).
    settings : Settings
        Retention (``keep_*_days``), roll-up resolutions, ``k_min``, ``expansion``, ``tz``.
    progress : callable, optional
        Receives ``(stage, periods done)``.
    wall_now : float, optional
        The wall clock for forgetting batch ids (default now).
    cancel : threading.Event, optional
        Stops the work between two transactions when set (a service shutting down).
    """
    t0 = time.perf_counter()
    report = CompactReport()
    rows, _ = store.window_rows_since(None)
    closed = rows[rows[:, 3] != 0]
    threshold = settings.k_min * settings.expansion
    if len(closed):
        newest = int(closed[:, 2].max())
        report.cutoffs = {"newest_window_end": newest}
        if settings.keep_full_days:
            cut = newest - int(settings.keep_full_days * DAY_S)
            report.cutoffs["full_detail_from"] = cut
            _windows_to_hours(store, settings, closed, cut, threshold, report, progress, cancel)
            if settings.keep_hourly_days:
                cut = newest - int(settings.keep_hourly_days * DAY_S)
                report.cutoffs["hourly_from"] = cut
                _hours_to_days(store, settings, cut, threshold, report, progress, cancel)
                if settings.keep_daily_days:
                    cut = newest - int(settings.keep_daily_days * DAY_S)
                    report.cutoffs["daily_from"] = cut
                    _drop_days(store, cut, report)
    forget = int((time.time() if wall_now is None else wall_now) - settings.batch_keep_days * DAY_S)
    with store.transaction(guard=False):
        report.batches_forgotten = store.forget_batches(forget)
    store.after_commit()
    if report.changed or report.batches_forgotten:
        store.reclaim()
    report.seconds = time.perf_counter() - t0
    return report


def _windows_to_hours(
    store: Store,
    settings: Settings,
    closed: np.ndarray,
    cut: int,
    threshold: float,
    report: CompactReport,
    progress: Callable[[str, int], None] | None,
    cancel: threading.Event | None = None,
) -> None:
    """Roll every whole hour of closed windows that ends by ``cut`` into an hourly roll-up.

    Hours without any window (nobody pinged anywhere) get an empty roll-up too, from the first
    hour not rolled up yet: like the window list, the history then tells nothing of whether
    anyone pinged, only when the store began.
    """
    hour = closed[:, 1] - closed[:, 1] % HOUR_S  # the hour of each window's start
    ripe = hour + HOUR_S <= cut
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    ws, hs, ds = closed[ripe, 0].tolist(), hour[ripe].tolist(), closed[ripe, 5].tolist()
    for w, h, d in zip(ws, hs, ds, strict=True):
        groups[h].append((w, d))
    if groups:
        done = store.rollup_rows()
        end = int(done[:, 2].max()) if len(done) else min(groups)
        for h in range(-(-end // HOUR_S) * HOUR_S, max(groups), HOUR_S):
            groups.setdefault(h, [])
    hours = sorted(groups)
    for i in range(0, len(hours), CHUNK):
        if cancel is not None and cancel.is_set():
            return
        made, gone = [], []
        for h in hours[i : i + CHUNK]:
            members = groups[h]
            parts = []
            for w, _ in members:
                pub = store.read_published(w)
                if pub is not None:
                    parts.append(pub.frame)
            devices = round(sum(d for _, d in members) / max(len(members), 1))
            sums = _sum(parts, settings.hour_res)
            made.append(
                sums_to_rollup("hour", h, h + HOUR_S, len(members), devices, sums, threshold)
            )
            gone += [w for w, _ in members]
        with store.transaction(guard=False):
            store.write_rollups(made)
            store.delete_windows(gone)
            store.mark_history_changed()
        store.after_commit()
        report.hours_made += len(made)
        report.windows_rolled += len(gone)
        if progress:
            progress("hours", report.hours_made)


def _hours_to_days(
    store: Store,
    settings: Settings,
    cut: int,
    threshold: float,
    report: CompactReport,
    progress: Callable[[str, int], None] | None,
    cancel: threading.Event | None = None,
) -> None:
    """Roll every whole local day of hourly roll-ups that ends by ``cut`` into a daily one."""
    tz = _tz(settings)
    ru = store.rollup_rows()
    hours = ru[ru[:, 0] == 1]
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for start, windows, devices in zip(
        hours[:, 1].tolist(), hours[:, 3].tolist(), hours[:, 4].tolist(), strict=True
    ):
        day = day_of(start, tz)
        if day[1] <= cut:
            groups[day].append((start, windows, devices))
    days = sorted(groups)
    for i in range(0, len(days), CHUNK):
        if cancel is not None and cancel.is_set():
            return
        made, gone = [], []
        for day in days[i : i + CHUNK]:
            members = groups[day]
            starts = [s for s, _, _ in members]
            stored = store.read_rollup_sums("hour", starts)
            parts = [_sums_of(blob) for _, blob in stored.values()]
            windows = sum(n for n, _ in stored.values())
            devices = round(sum(d * n for _, n, d in members) / max(windows, 1))
            sums = _sum(parts, settings.day_res)
            made.append(sums_to_rollup("day", *day, windows, devices, sums, threshold))
            gone += starts
        with store.transaction(guard=False):
            store.write_rollups(made)
            store.delete_rollups("hour", gone)
            store.mark_history_changed()
        store.after_commit()
        report.days_made += len(made)
        report.hours_rolled += len(gone)
        if progress:
            progress("days", report.days_made)


def _drop_days(store: Store, cut: int, report: CompactReport) -> None:
    """Delete the daily roll-ups that end by ``cut``."""
    ru = store.rollup_rows()
    old = ru[(ru[:, 0] == 2) & (ru[:, 2] <= cut)]
    if not len(old):
        return
    with store.transaction(guard=False):
        store.delete_rollups("day", old[:, 1].tolist())
        store.mark_history_changed()
    store.after_commit()
    report.days_deleted += len(old)


def history_summary(store: Store) -> dict[str, object]:
    """Return how much history the store holds at each level (for ``heatmap compact``)."""
    rows, _ = store.window_rows_since(None)
    closed = rows[rows[:, 3] != 0]
    ru = store.rollup_rows()
    out: dict[str, object] = {"windows": len(closed)}
    for code, name in LEVEL_NAMES.items():
        out[f"{name}s"] = int((ru[:, 0] == code).sum())
    return out


log = logging.getLogger("heatmap.maintenance")


class Compactor:
    """Runs :func:`compact` every ``HEATMAP_COMPACT_EVERY_S`` in a daemon thread (the service).

    ``on_change`` is called after a run that changed the history (the service's readers reload
    their window lists at once). A failed run is logged and counted; the next one tries again.
    """

    FIRST_DELAY_S = 10.0
    """Seconds after start before the first run (start-up first, upkeep after)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        on_change: Callable[[CompactReport], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_change = on_change
        self.last: CompactReport | None = None
        self.last_at: float | None = None
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> CompactReport:
        """Compact now (in the caller's thread)."""
        report = compact(self.store, self.settings, cancel=self._stop)
        self.runs += 1
        self.last, self.last_at = report, time.time()
        if report.changed and self.on_change is not None:
            self.on_change(report)
        return report

    def start(self) -> None:
        """Start the periodic runs (nothing when ``compact_every_s`` is 0)."""
        every = self.settings.compact_every_s
        if not every or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            delay = min(self.FIRST_DELAY_S, float(every))
            while not self._stop.wait(delay):
                delay = float(every)
                try:
                    report = self.run_once()
                    if report.changed:
                        log.info("compaction %s", report.summary())
                except Exception as exc:  # noqa: BLE001 - upkeep must not kill the service
                    self.failures += 1
                    log.warning("compaction failed: %s: %s", type(exc).__name__, exc)

        self._thread = threading.Thread(target=loop, name="heatmap-compactor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the runs; a run in progress stops at its next transaction boundary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def trim_memory() -> bool:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim``); False elsewhere.

    The read side frees many short-lived arrays (snapshots, indexes, tiles) of varying sizes;
    glibc keeps freed pages in its arenas, so without this the resident size creeps up long
    after every cache is full (measured: ~0.2 MB per batch at 100,000 devices, all of it given
    back by a trim).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


class MemoryTrimmer:
    """Calls :func:`trim_memory` every ``HEATMAP_MEMORY_TRIM_S`` in a daemon thread."""

    def __init__(self, every_s: int) -> None:
        self.every_s = every_s
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (nothing when ``every_s`` is 0)."""
        if not self.every_s or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.every_s):
                trim_memory()
                self.trims += 1

        self._thread = threading.Thread(target=loop, name="heatmap-memory-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the trims."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
