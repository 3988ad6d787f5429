"""The unit commit: watermark, late rows, which windows close and what they publish.

A *unit* (one file, one POSTed batch, one backfill) is committed in one write transaction of
the store: its positions merge with the durable state of open windows, the watermark advances
only after the whole unit is in, then every window it completes closes: counts and published
values are written and the window's device state (keyed hashes) is deleted. The rules live
here; the store (:mod:`heatmap.store`) only persists and reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    batch_id: str | None = None,
    accepted: int = 0,
    ahead: Precomputed | None = None,
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
        unit_ws = set(windows_of(positions))
        stored_open = set(store.open_window_ids())
        every = unit_ws | stored_open
        closing = sorted(w for w in every if wm is not None and (w + 1) * policy.window_s <= wm)
        staying = sorted(unit_ws - set(closing))
        if closing:
            state_deleted = close_stored(store, closing, positions, stored_open, policy, ahead)
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
