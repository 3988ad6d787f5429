"""The unit commit: watermark, late rows, which windows close, which release is due.

A *unit* (one file, one POSTed batch, one backfill) is committed in one write transaction of
the store: its positions merge with the durable state of open windows, the watermark advances
only after the whole unit is in, then every window it completes closes, together with the
unit's release (so public answers change only at ticks): counts and published values are
written and the window's device state (keyed hashes) is deleted. The rules live
here; the store (:mod:`heatmap.store`) only persists and reads.

**Releases** ("now"). A release at tick ``t`` (a multiple of ``release_s``) counts each device
once, at its latest ping with ``t - horizon <= ts < t``, and is made once, when the input (the
latest ping seen) has passed ``t + grace``. Pings wait in the store's *pending* state, keyed by
(device, slot ``ts // release_s``), until their slot is released; making release ``t`` folds
the pending slots before ``t`` into the *live* state (each device's latest position so far),
drops live devices last seen before ``t - horizon`` (no later release needs their hash), and
publishes the live devices per cell under the privacy rules, as a stored, immutable blob.
Because a ping after ``t`` never reaches the live state before ``t`` is released, the release
is exact whatever the batches span. A batch keeps one position per (slot, device); a file
keeps one per (window, device) and, for its last ``horizon + grace + release_s`` seconds (all a
release can need), one per (slot, device) too. A unit without slot positions (a backfill
engine) is released at the latest window boundary it passed, where per-window positions are
exact. When a unit passes several ticks, only the latest is released (a file of history
yields one release, not one per tick).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl

from heatmap.aggregate import cells_to_counts, merge_positions, windows_of
from heatmap.policy import PublishPolicy
from heatmap.publish import counts_to_published
from heatmap.store import Store
from heatmap.store.codec import ClosedWindow, close_windows


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
        How closing windows are published.
    lateness_s : int
        Watermark lag behind the latest ping (``allowed_lateness_s``).
    batch_id : str, optional
        Idempotency key: a batch id committed before returns its first result, marked duplicate.
    accepted : int
        The number of pings the positions stand for (reported back).
    ahead : Precomputed, optional
        Values computed from these positions for some windows; a closing window without stored
        state uses them instead of computing them again.
    clock : ReleaseClock, optional
        The release clock; None makes no release (backfill tools).
    slots : polars.DataFrame, optional
        The unit's positions per release slot (``w`` = ``ts // release_s``): a batch. Without
        them the unit's positions are per window and its release waits for a window boundary.

    Returns
    -------
    CommitResult
        Accepted and late pings, the windows closed and the new watermark.
    """
    state_deleted = False
    with store.transaction():
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
        if max_ts is not None and positions.height:
            cand = int(positions["ts"].max()) - lateness_s  # type: ignore[arg-type]
            wm = cand if wm is None else max(wm, cand)
        if clock is not None and wm is not None:
            fresh = positions if slots is None else _not_late(slots, result.watermark, policy)
            # The watermark trails the latest ping seen by the lateness: this is the input time.
            result.release = release_due(
                store, fresh, wm + lateness_s, policy, clock, slots is None
            )
        unit_ws = set(windows_of(positions))
        stored_open = set(store.open_window_ids())
        every = unit_ws | stored_open
        # Windows close with a release (or, without a clock, at once): public answers change
        # only at ticks, and the release at a window's end has already published its span.
        may_close = clock is None or result.release is not None
        closing = sorted(
            w for w in every if may_close and wm is not None and (w + 1) * policy.window_s <= wm
        )
        staying = sorted(unit_ws - set(closing))
        if closing:
            state_deleted |= close_stored(store, closing, positions, stored_open, policy, ahead)
        if staying:
            store.upsert_state(positions.filter(pl.col("w").is_in(staying)))
            store.touch_windows(_window_rows(staying, policy.window_s), closed=False)
        if wm is not None:
            store.set_meta("watermark", str(wm))
        result.windows_closed = closing
        result.watermark = wm
        if batch_id is not None:
            store.record_batch(batch_id, orjson.dumps(result.__dict__).decode())
    # Hashes of a closing window are on disk only if an earlier unit stored its state (this
    # unit's own positions of closing windows never become rows).
    store.after_commit(state_deleted)
    return result


def _not_late(slots: pl.DataFrame, watermark: int | None, policy: PublishPolicy) -> pl.DataFrame:
    """Return the slot positions whose window had not closed before the unit."""
    if watermark is None or not slots.height:
        return slots
    return slots.filter(pl.col("ts") >= watermark // policy.window_s * policy.window_s)


def release_due(
    store: Store,
    positions: pl.DataFrame,
    input_ts: int,
    policy: PublishPolicy,
    clock: ReleaseClock,
    per_window: bool,
) -> int | None:
    """Queue a unit's positions for the releases and make the release now due, if any.

    Inside the caller's transaction. ``positions`` (``ts``, ``device``, ``cell``) wait as
    pending until their slot is released; ``input_ts`` is the latest ping time seen. With
    ``per_window`` positions (a backfill engine) the release is made at a window boundary
    only. Returns the tick released, or None.
    """
    last = store.get_meta("release_t")
    last_t = None if last is None else int(last)
    due = clock.due(input_ts, policy.window_s if per_window else clock.release_s)
    floor = max(due, last_t if last_t is not None else due) - clock.horizon_s
    # Positions older than every coming release's horizon would be dropped at once: skip them.
    rows = positions.filter(pl.col("ts") >= floor) if positions.height else positions
    releasing = last_t is None or due > last_t
    if rows.height:
        rows = rows.select(
            "device",
            k=pl.col("ts") // clock.release_s,
            ts="ts",
            cell=pl.col("cell").cast(pl.UInt64),
        )
        if releasing:
            # Slots folded by this very release need only each device's latest row (the fold
            # keeps the latest anyway): a file's tail then writes one row per device, not one
            # per slot.
            folded = pl.col("k") < due // clock.release_s
            now = rows.filter(folded).sort("device", "ts", "cell").unique("device", keep="last")
            rows = pl.concat([now, rows.filter(~folded)])
        store.add_pending(rows)
    if not releasing:
        return None
    store.fold_pending(due // clock.release_s)
    store.expire_live(due - clock.horizon_s)
    cells, devices = store.live_counts()
    counts = pl.DataFrame(
        {"w": np.zeros(len(cells), np.int64), "cell": cells.astype(np.uint64), "devices": devices}
    )
    published = counts_to_published(counts, policy)
    (packed,) = close_windows([0], counts, published)
    store.write_release(due, packed.published, packed.devices)
    store.delete_releases_before(due - clock.keep_s)
    store.set_meta("release_t", str(due))
    return due


def close_stored(
    store: Store,
    closing: list[int],
    positions: pl.DataFrame,
    stored_open: set[int],
    policy: PublishPolicy,
    ahead: Precomputed | None = None,
) -> bool:
    """Close windows ``closing`` inside the caller's transaction; return True if state was deleted.

    A closing window's final positions are its stored device state (if ``stored_open`` holds
    it) merged with the unit's ``positions``; its counts and published values are written once,
    then its device state is deleted. Values in ``ahead`` are used for windows without state.
    """
    with_state = [w for w in closing if w in stored_open]
    ready = {} if ahead is None else ahead.windows
    done = [ready[w] for w in closing if w in ready and w not in stored_open]
    todo = [w for w in closing if w not in ready or w in stored_open]
    if todo:
        final = merge_positions(
            [store.load_state(with_state), positions.filter(pl.col("w").is_in(todo))]
        )
        counts = cells_to_counts(final)
        done += close_windows(todo, counts, counts_to_published(counts, policy))
    store.write_closed(sorted(done, key=lambda c: c.w))
    store.delete_state(with_state)
    store.touch_windows(_window_rows(closing, policy.window_s), closed=True)
    return bool(with_state)


def _window_rows(ws: list[int], window_s: int) -> list[tuple[int, int, int]]:
    """Return ``(w, start, end)`` of windows ``ws``."""
    return [(w, w * window_s, (w + 1) * window_s) for w in ws]
