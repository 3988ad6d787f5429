"""The SQLite store's release state: ``pending``, ``live``, ``live_cells`` and ``releases``.

:class:`SQLiteReleases` is a mixin of :class:`heatmap.store.sqlite.SQLiteStore` (the methods of
the release-state part of :class:`heatmap.store.base.Store`): it runs on the store's one write
connection, under its lock, inside the caller's transaction, on the tables of schemas 3 and 4
(:mod:`heatmap.store.sqlite_schema`).

``pending`` holds per (tick ``k``, device) the latest (ts, cell); ``live`` one row per device;
``live_cells`` the live devices per cell, moved by folding and expiry by the rows they change, so
a release reads the (few) cells instead of grouping every live device; ``releases`` one blob per
release. Folding and expiry delete keyed hashes: they raise the store's ``_hashes_deleted`` flag,
and the store's ``after_commit`` then truncates the WAL, where the deleted rows may still be.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.model import Published, Window
from heatmap.store.base import I64, U64
from heatmap.store.codec import blob_to_published
from heatmap.store.sqlite_schema import i64, insert_rows

# Folding: per device its latest folded row (the larger (ts, cell)); where that beats its live
# row (or it has none) and lands in another cell, the device leaves the old cell (-1) and enters
# the new one (+1). Counted before _FOLD_LIVE moves live, from the same rows. With one tick
# folded, pending's key (k, device) holds one row per device, in device order.
_LATEST_OF_TICKS = """
    SELECT device, ts, cell FROM (
        SELECT device, ts, cell,
            row_number() OVER (PARTITION BY device ORDER BY ts DESC, cell DESC) AS r
        FROM pending WHERE k < ?1
    ) WHERE r = 1
"""
_LATEST_OF_ONE_TICK = "SELECT device, ts, cell FROM pending WHERE k < ?1"
_FOLD_CELLS = """
INSERT INTO live_cells(cell, devices)
WITH latest AS ({latest}), moved AS MATERIALIZED (
    SELECT n.cell AS new, l.cell AS old FROM latest n LEFT JOIN live l ON l.device = n.device
    WHERE l.device IS NULL OR ((n.ts, n.cell) > (l.ts, l.cell) AND n.cell != l.cell)
)
SELECT cell, sum(d) FROM (
    SELECT new AS cell, 1 AS d FROM moved
    UNION ALL
    SELECT old, -1 FROM moved WHERE old IS NOT NULL
) GROUP BY cell HAVING sum(d) != 0
ON CONFLICT(cell) DO UPDATE SET devices = devices + excluded.devices
"""
_FOLD_LIVE = """
INSERT INTO live(device, ts, cell)
SELECT device, ts, cell FROM pending WHERE k < ? ORDER BY device
ON CONFLICT(device) DO UPDATE SET ts = excluded.ts, cell = excluded.cell
WHERE (excluded.ts, excluded.cell) > (live.ts, live.cell)
"""
# Adds per-cell changes (rows of cell, change) to live_cells: see insert_rows.
_ADD_CELLS = " ON CONFLICT(cell) DO UPDATE SET devices = devices + excluded.devices"
_FETCH_ROWS = 65_536


class SQLiteReleases:
    """Release state on the SQLite store's connection (a mixin of ``SQLiteStore``)."""

    # Provided by SQLiteStore.
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _hashes_deleted: bool

    if TYPE_CHECKING:

        def _q(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

    def add_pending(self, rows: pl.DataFrame) -> None:
        """Merge pings into pending: per (device, k) the larger (ts, cell) stays."""
        cols = _latest_per_key(rows)
        with self._lock:
            insert_rows(
                self._conn,
                "pending(k, device, ts, cell)",
                cols,
                " ON CONFLICT(k, device) DO UPDATE SET ts = excluded.ts, cell = excluded.cell "
                "WHERE (excluded.ts, excluded.cell) > (pending.ts, pending.cell)",
            )

    def fold_pending(self, below_k: int) -> int:
        """Move pending rows with ``k < below_k`` into live (per device the larger (ts, cell));
        ``live_cells`` moves by the devices that enter or change cell."""
        with self._lock:
            conn = self._conn
            hi = conn.execute("SELECT max(k) FROM pending WHERE k < ?", (below_k,)).fetchone()[0]
            if hi is None:
                return 0
            lo = conn.execute("SELECT min(k) FROM pending").fetchone()[0]
            latest = _LATEST_OF_ONE_TICK if lo == hi else _LATEST_OF_TICKS
            # Counts first, while live still holds the old positions. SQLite upserts row by
            # row, so a device's later rows meet its earlier ones in live: the larger (ts, cell)
            # stays without a per-device reduction first. Device order writes live's B-tree in
            # key order.
            conn.execute(_FOLD_CELLS.format(latest=latest), (below_k,))
            conn.execute(_FOLD_LIVE, (below_k,))
            n = conn.execute("DELETE FROM pending WHERE k < ?", (below_k,)).rowcount
            conn.execute("DELETE FROM live_cells WHERE devices = 0")
            self._hashes_deleted |= n > 0
            return int(n)

    def expire_live(self, min_ts: int) -> int:
        """Delete live rows with ``ts < min_ts``; return how many. ``live_cells`` loses each
        one on its cell."""
        with self._lock:
            conn = self._conn
            # The delete reads every expiring row anyway (found by live_ts) and hands back its
            # cell: a grouped query first would look each row up in live once more.
            cur = conn.execute("DELETE FROM live WHERE ts < ? RETURNING cell", (min_ts,))
            parts = [np.zeros(0, np.int64)]
            while rows := cur.fetchmany(_FETCH_ROWS):
                parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            gone = np.concatenate(parts)
            if gone.size:
                cells, n = np.unique(gone, return_counts=True)
                insert_rows(conn, "live_cells(cell, devices)", [cells, -n], _ADD_CELLS)
                conn.execute("DELETE FROM live_cells WHERE devices = 0")
            self._hashes_deleted |= gone.size > 0
            return int(gone.size)

    def live_counts(self) -> tuple[U64, I64]:
        """Return (cells ascending, devices per cell) over every live row, from ``live_cells``."""
        rows = self._q("SELECT cell, devices FROM live_cells WHERE devices > 0 ORDER BY cell")
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].view(np.uint64), arr[:, 1].copy()

    def write_release(self, t: int, blob: bytes, devices: int) -> None:
        """Store release ``t`` once (an existing one is kept); readers see a new data_version."""
        self._q(
            "INSERT INTO releases(t, devices, data) VALUES (?, ?, ?) ON CONFLICT(t) DO NOTHING",
            (t, devices, blob),
        )

    def read_release(self, t: int, window: Window) -> Published | None:
        """Return the published values of release ``t``, if stored."""
        rows = self._q("SELECT data FROM releases WHERE t = ?", (t,))
        return blob_to_published(rows[0][0], window) if rows else None  # type: ignore[arg-type]

    def release_rows(self) -> I64:
        """Return ``(t, devices)`` of every stored release, ascending ``t``."""
        rows = self._q("SELECT t, devices FROM releases ORDER BY t")
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def delete_releases_before(self, t: int) -> None:
        """Delete releases older than ``t``."""
        self._q("DELETE FROM releases WHERE t < ?", (t,))


def _latest_per_key(rows: pl.DataFrame) -> list[npt.NDArray[np.int64]]:
    """Return pending rows as int64 columns ``(k, device, ts, cell)`` in key order, one row per
    (k, device): its larger (ts, cell). Cells compare alike as int64 (bit 63 is clear)."""
    k, device, ts = (rows[c].to_numpy().astype(np.int64, copy=False) for c in ("k", "device", "ts"))
    cell = i64(rows["cell"].to_numpy())
    order = np.lexsort((cell, ts, device, k))
    k, device, ts, cell = k[order], device[order], ts[order], cell[order]
    last = np.ones(len(k), dtype=bool)
    last[:-1] = (k[1:] != k[:-1]) | (device[1:] != device[:-1])
    return [k[last], device[last], ts[last], cell[last]]
