"""The SQLite store's ping log and releases: ``ping_log`` and ``releases``.

:class:`SQLiteReleases` is a mixin of :class:`heatmap.store.sqlite.SQLiteStore` (the ping-log
and release methods of :class:`heatmap.store.base.Store`): it runs on the store's one write
connection, under its lock, inside the caller's transaction, on the tables of schemas 3 and 5
(:mod:`heatmap.store.sqlite_schema`).

``ping_log`` holds one row per entry (a unit's pings of one release slot, as one blob), numbered
by ``AUTOINCREMENT`` (never reused); ``releases`` one blob per release. Trimming the log deletes
keyed hashes: it raises the store's ``_hashes_deleted`` flag, and the store's ``after_commit``
then truncates the WAL, where the deleted rows may still be.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from heatmap.model import Published, Window
from heatmap.store.base import I64, U64
from heatmap.store.codec import blob_to_pings, blob_to_published

_READ_ENTRIES = 64


class SQLiteReleases:
    """Ping log and releases on the SQLite store's connection (a mixin of ``SQLiteStore``)."""

    # Provided by SQLiteStore.
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _hashes_deleted: bool

    if TYPE_CHECKING:

        def _q(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

    def append_log(self, entries: list[tuple[int, int, bytes]]) -> int:
        """Append entries ``(lo_ts, hi_ts, blob)``; return the last one's number."""
        with self._lock:
            cur = self._conn.cursor()
            seq = 0
            for lo, hi, blob in entries:
                cur.execute(
                    "INSERT INTO ping_log(lo_ts, hi_ts, data) VALUES (?, ?, ?)", (lo, hi, blob)
                )
                seq = int(cur.lastrowid or 0)
            return seq

    def read_log(self, after: int) -> Iterator[tuple[int, tuple[I64, I64, U64]]]:
        """Yield the entries numbered above ``after``, in order, a few blobs in memory at once."""
        while True:
            rows = self._q(
                "SELECT seq, data FROM ping_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, _READ_ENTRIES),
            )
            for seq, blob in rows:
                after = int(seq)  # type: ignore[call-overload]
                yield after, blob_to_pings(blob)  # type: ignore[arg-type]
            if len(rows) < _READ_ENTRIES:
                return

    def trim_log(self, before_ts: int) -> int:
        """Delete the entries whose pings are all before ``before_ts``; return how many."""
        with self._lock:
            n = self._conn.execute("DELETE FROM ping_log WHERE hi_ts < ?", (before_ts,)).rowcount
            self._hashes_deleted |= n > 0
            return int(n)

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
