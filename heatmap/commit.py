"""The unit commit: watermark, late rows, which windows close, which release is due.

A *unit* (one file, one POSTed batch, one backfill) is committed in one write transaction of
the store: the pings that open windows and coming releases need are appended to the store's
ping log (durable before the unit is acknowledged) and applied to the process's in-memory
state (:mod:`heatmap.live.state`), the watermark advances only after the whole unit is in, then
every window it completes closes, together with the unit's release (so public answers change
only at ticks): counts and published values are written, and log entries no window or release
needs any more (keyed hashes) are deleted. The rules live here; the store
(:mod:`heatmap.store`) only persists and reads.

**Releases** ("now"). A release at tick ``t`` (a multiple of ``release_s``) counts each device
once, at its latest ping with ``t - horizon <= ts < t``, and is made once, when the input (the
latest ping seen) has passed ``t + grace``. Pings at or after the last tick wait as *pending*;
making release ``t`` folds the pending pings before ``t`` into the *live* state (each device's
latest position so far), drops live devices last seen before ``t - horizon``, and publishes the
live devices per cell under the privacy rules, as a stored, immutable blob. Because a ping
after ``t`` never reaches the live state before ``t`` is released, the release is exact
whatever the batches span. A batch keeps one position per (slot, device); a file keeps one per
(window, device) and, for its last ``horizon + grace + release_s`` seconds (all a release can
need), one per (slot, device) too. A unit without slot positions (a backfill engine) is
released at the latest window boundary it passed, where per-window positions are exact. When a
unit passes several ticks, only the latest is released (a file of history yields one release,
not one per tick).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl

from heatmap.aggregate import cells_to_counts, windows_of
from heatmap.live.state import Clock, LiveState, log_rows, state_of
from heatmap.policy import PublishPolicy
from heatmap.publish import counts_to_published
from heatmap.store import Store
from heatmap.store.codec import ClosedWindow, close_windows, ping_entries, published_blob


@dataclass
class CommitResult:
    """What one committed unit did."""

    accepted: int = 0
    late: int = 0
    windows_closed: list[int] = field(default_factory=list)
    watermark: int | None = None
    duplicate: bool = False
    release: int | None = None
    """The tick released by this unit, if any."""


@dataclass(frozen=True)
class ReleaseClock:
    """When releases are made and how long they are kept (seconds)."""

    release_s: int
    horizon_s: int
    grace_s: int
    keep_s: int

    def due(self, input_ts: int, step_s: int) -> int:
        """Return the latest tick (a multiple of ``step_s``) the input has passed plus grace."""
        return (input_ts - self.grace_s) // step_s * step_s


@dataclass(frozen=True)
class Precomputed:
    """Closed-window values computed before their unit commits.

    An ingest computes them for windows its input has moved past, on worker threads while it is
    still reading. The commit uses one for a window it closes only if the unit's positions are
    all that window has (no device state stored by earlier units); otherwise it recomputes.
    """

    windows: dict[int, ClosedWindow]

    @staticmethod
    def of(positions: pl.DataFrame, policy: PublishPolicy) -> Precomputed:
        """Compute the closed-window values of every window in ``positions``."""
        counts = cells_to_counts(positions)
        published = counts_to_published(counts, policy)
        ws = windows_of(counts)
        return Precomputed({c.w: c for c in close_windows(ws, counts, published)})

    @staticmethod
    def combine(parts: list[Precomputed], keep: set[int]) -> Precomputed:
        """Return the parts' values for the windows in ``keep``."""
        return Precomputed({w: c for p in parts for w, c in p.windows.items() if w in keep})


def commit_unit(
    store: Store,
    positions: pl.DataFrame,
    max_ts: int | None,
    policy: PublishPolicy,
    *,
    lateness_s: int,
    clock: ReleaseClock | None = None,
    batch_id: str | None = None,
    accepted: int = 0,
    ahead: Precomputed | None = None,
    slots: pl.DataFrame | None = None,
) -> CommitResult:
    """Commit one unit's positions (``w, device, ts, cell`` at base_res) atomically.

    Parameters
    ----------
    store : Store
        Where the unit goes; everything below runs in one of its write transactions.
    positions : polars.DataFrame
        One row per (window, device): its latest position in the unit, device ids hashed.
    max_ts : int or None
        The unit's latest ping time (None: no ping); moves the watermark to
        ``max_ts - lateness_s`` once the unit is in.
    policy : PublishPolicy
        How closing windows and releases are published.
    lateness_s : int
        Watermark lag behind the latest ping (``allowed_lateness_s``).
    clock : ReleaseClock, optional
        The release clock; None makes no release (backfill tools).
    batch_id : str, optional
        Idempotency key: a batch id committed before returns its first result, marked duplicate.
    accepted : int
        The number of pings the positions stand for (reported back).
    ahead : Precomputed, optional
        Values computed from these positions for some windows; a closing window without stored
        state uses them instead of computing them again.
    slots : polars.DataFrame, optional
        The unit's positions per release slot (``w`` = ``ts // release_s``): a batch, or a
        file's tail. Without them the unit's release waits for a window boundary.

    Returns
    -------
    CommitResult
        Accepted and late pings, the windows closed, the release made and the new watermark.
    """
    state = state_of(store, Clock(policy.window_s, policy.release_s, policy.horizon_s))
    try:
        with store.transaction():
            result = _commit(
                store,
                state,
                positions,
                max_ts,
                policy,
                lateness_s,
                clock,
                batch_id,
                accepted,
                ahead,
                slots,
            )
    except BaseException:
        state.invalidate()  # the memory may be ahead of the store: rebuild from the log
        raise
    store.after_commit()
    return result


def _commit(
    store: Store,
    state: LiveState,
    positions: pl.DataFrame,
    max_ts: int | None,
    policy: PublishPolicy,
    lateness_s: int,
    clock: ReleaseClock | None,
    batch_id: str | None,
    accepted: int,
    ahead: Precomputed | None,
    slots: pl.DataFrame | None,
) -> CommitResult:
    if batch_id is not None:
        prev = store.batch_result(batch_id)
        if prev is not None:
            res = CommitResult(**orjson.loads(prev))
            res.duplicate = True
            return res
    wm = store.watermark()
    result = CommitResult(watermark=wm, accepted=accepted)
    if wm is not None and positions.height:
        # Rows of windows closed before the unit started were dropped and counted while
        # parsing; a window closed meanwhile (another process) costs its positions here.
        late = (pl.col("w") + 1) * policy.window_s <= wm
        result.late = positions.filter(late).height
        positions = positions.filter(~late)
    if slots is not None:
        slots = _not_late(slots, result.watermark, policy)
    state.sync(store)
    if max_ts is not None and positions.height:
        cand = int(positions["ts"].max()) - lateness_s  # type: ignore[arg-type]
        wm = cand if wm is None else max(wm, cand)
    stored_open = set(store.open_window_ids())
    last = store.get_meta("release_t")
    last_t = None if last is None else int(last)
    due: int | None = None
    if clock is not None and wm is not None:
        # The watermark trails the latest ping seen by the lateness: this is the input time.
        step = policy.window_s if slots is None else clock.release_s
        due = clock.due(wm + lateness_s, step)
    releasing = due is not None and (last_t is None or due > last_t)
    unit_ws = set(windows_of(positions))
    # Windows close with a release (or, without a clock, at once): public answers change
    # only at ticks, and the release at a window's end has already published its span.
    may_close = clock is None or releasing
    every = unit_ws | stored_open
    closing = sorted(
        w for w in every if may_close and wm is not None and (w + 1) * policy.window_s <= wm
    )
    staying = sorted(unit_ws - set(closing))
    # The pings to keep: those of windows staying open and, with a clock, those a coming
    # release may count (one before the newest tick's horizon never will).
    floor = None
    if due is not None:
        floor = max(due, last_t if last_t is not None else due) - policy.horizon_s
    keep = _log_rows(positions, slots, staying, floor)
    with contextlib.ExitStack() as helpers:
        entries: list[tuple[int, int, bytes]] | None = None
        encoding: Future[list[tuple[int, int, bytes]]] | None = None
        tables: Future[None] | None = None
        if keep.height:
            dev, ts, cell = log_rows(keep)
            if keep.height >= _BIG_UNIT:
                # A file's tail: its log entries are encoded (numpy, zstd: no GIL) and the
                # open windows' tables take its pings on other threads, while the live table
                # takes them here and the release is made from it.
                pool = helpers.enter_context(
                    ThreadPoolExecutor(2, thread_name_prefix="heatmap-commit")
                )
                encoding = pool.submit(ping_entries, dev, ts, cell, policy.release_s)
                tables = state.apply_beside(pool, dev, ts, cell, set(staying))
            else:
                entries = ping_entries(dev, ts, cell, policy.release_s)
                state.apply(dev, ts, cell, set(staying))
        if releasing and due is not None and clock is not None:
            result.release = make_release(store, state, due, policy, clock)
            last_t = due
        if encoding is not None:
            entries = encoding.result()
        if entries is not None:
            state.appended(store.append_log(entries))
            store.touch_windows(_window_rows(staying, policy.window_s), closed=False)
            if tables is not None:
                tables.result()
            store.set_open_devices([(w, state.window_devices(w)) for w in staying])
    if closing:
        close_stored(store, state, closing, positions, policy, ahead)
    open_after = (stored_open | set(staying)) - set(closing)
    needed = [min(open_after) * policy.window_s] if open_after else []
    if last_t is not None:
        needed.append(last_t - policy.horizon_s)
    if needed or clock is None:
        store.trim_log(min(needed) if needed else _END_OF_TIME)
    if wm is not None:
        store.set_meta("watermark", str(wm))
    result.windows_closed = closing
    result.watermark = wm
    if batch_id is not None:
        store.record_batch(batch_id, orjson.dumps(result.__dict__).decode())
    return result


_END_OF_TIME = 2**62
_BIG_UNIT = 1 << 17
"""Pings kept in the log from which a unit's commit uses helper threads (its log entries
encoded and its open windows' tables updated beside the release)."""


def _log_rows(
    positions: pl.DataFrame, slots: pl.DataFrame | None, staying: list[int], floor: int | None
) -> pl.DataFrame:
    """Return the unit's pings (``device, ts, cell``) that go to the log: from ``floor`` on (a
    coming release's horizon; None: no release), every position per release slot; before it,
    the positions of windows staying open.

    The two parts are disjoint in time, and together they hold every position a staying window
    needs: a device's latest ping in a window is also its latest in that ping's slot, so from
    ``floor`` on the slot positions include it (a file keeps slot positions for its tail, which
    starts before any release's floor).
    """
    cols = ("device", "ts", "cell")
    before = positions.filter(pl.col("w").is_in(staying)) if staying else positions.clear()
    if floor is None:
        return before.select(cols)
    src = positions if slots is None else slots
    parts = [before.filter(pl.col("ts") < floor).select(cols), src.filter(pl.col("ts") >= floor)]
    return pl.concat([parts[0], parts[1].select(cols)])


def _not_late(slots: pl.DataFrame, watermark: int | None, policy: PublishPolicy) -> pl.DataFrame:
    """Return the slot positions whose window had not closed before the unit."""
    if watermark is None or not slots.height:
        return slots
    return slots.filter(pl.col("ts") >= watermark // policy.window_s * policy.window_s)


def make_release(
    store: Store, state: LiveState, t: int, policy: PublishPolicy, clock: ReleaseClock
) -> int:
    """Make release ``t`` from the state, store it, drop releases past the keep span; inside
    the caller's transaction. Returns ``t``."""
    cells, devices = state.release(t)
    counts = pl.DataFrame(
        {"w": np.zeros(len(cells), np.int64), "cell": cells.astype(np.uint64), "devices": devices}
    )
    published = counts_to_published(counts, policy)
    store.write_release(t, published_blob(published), int(devices.sum()))
    store.delete_releases_before(t - clock.keep_s)
    store.set_meta("release_t", str(t))
    return t


def close_stored(
    store: Store,
    state: LiveState,
    closing: list[int],
    positions: pl.DataFrame,
    policy: PublishPolicy,
    ahead: Precomputed | None = None,
) -> None:
    """Close windows ``closing`` inside the caller's transaction.

    A closing window's final positions are its state's (if earlier units left some) with the
    unit's ``positions`` applied; its counts and published values are written once, then its
    state is dropped. Values in ``ahead`` are used for windows without state.
    """
    ready = {} if ahead is None else ahead.windows
    done: list[ClosedWindow] = []
    parts: list[pl.DataFrame] = []
    plain: list[int] = []
    for w in closing:
        if state.has_window(w):
            rows = positions.filter(pl.col("w") == w)
            if rows.height:
                state.apply(*log_rows(rows), {w}, live=False)
            cells, dev = state.window_counts(w)
            parts.append(
                pl.DataFrame({"w": np.full(len(cells), w, np.int64), "cell": cells, "devices": dev})
            )
        elif w in ready:
            done.append(ready[w])
        else:
            plain.append(w)
    if plain:
        parts.append(cells_to_counts(positions.filter(pl.col("w").is_in(plain))))
    todo = [w for w in closing if state.has_window(w)] + plain
    if todo:
        counts = (
            pl.concat(parts, how="vertical_relaxed")
            if parts
            else cells_to_counts(positions.clear())
        )
        done += close_windows(sorted(todo), counts, counts_to_published(counts, policy))
    store.write_closed(sorted(done, key=lambda c: c.w))
    store.touch_windows(_window_rows(closing, policy.window_s), closed=True)
    for w in closing:
        state.drop_window(w)


def _window_rows(ws: list[int], window_s: int) -> list[tuple[int, int, int]]:
    """Return ``(w, start, end)`` of windows ``ws``."""
    return [(w, w * window_s, (w + 1) * window_s) for w in ws]
