"""The SQLite store's history upkeep: roll-ups, retention, size and free disk, online backup.

:class:`SQLiteHistory` is a mixin of :class:`heatmap.store.sqlite.SQLiteStore` (the roll-up and
retention methods of :class:`heatmap.store.base.Store`), run on the store's write connection
under its lock, on the ``rollups`` table of schema 6 (:mod:`heatmap.store.sqlite_schema`).
Deleted windows are overwritten like every deleted row (``secure_delete``); their pages go to
the file's free list and are reused by later windows, so the file stops growing once the
retention settings hold as much as it did (``heatmap compact --vacuum`` gives them back).

Backups use SQLite's online backup API on a connection of their own: one step copies every page
under one read transaction, a consistent snapshot at a commit boundary, while the writer goes on
(WAL readers never block it).
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heatmap.config import Settings
from heatmap.errors import StoreUnavailable
from heatmap.model import Published, Window
from heatmap.store.base import I64, LEVELS, Rollup, StoreSize
from heatmap.store.codec import blob_to_published

_SIDE_FILES = ("-wal", "-shm")
_SPACE_CHECK_S = 1.0  # statvfs at most this often (a batch every few ms would ask each time)


class SQLiteHistory:
    """Roll-ups, retention, size and backups on the SQLite store (a mixin of ``SQLiteStore``)."""

    # Provided by SQLiteStore.
    _conn: sqlite3.Connection
    _lock: threading.RLock
    path: Path
    settings: Settings

    _read_lock: threading.Lock

    if TYPE_CHECKING:

        def _q(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

        def _reader(self) -> sqlite3.Connection: ...

    def _read_rows(self, sql: str) -> list[tuple[object, ...]]:
        """Run a read on the private read connection (never queues behind a commit)."""
        with self._read_lock:
            try:
                return self._reader().execute(sql).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    _free_checked = (0.0, 0)  # (monotonic time, free bytes) of the last statvfs

    # -- the disk guard ----------------------------------------------------------------------
    def free_bytes(self) -> int:
        """Return the free bytes of the file system holding the store (checked at most 1/s)."""
        at, free = self._free_checked
        now = time.monotonic()
        if now - at >= _SPACE_CHECK_S:
            try:
                free = shutil.disk_usage(self.path.parent).free
            except OSError:
                return 1 << 62  # cannot tell: let SQLite report the real fault
            self._free_checked = (now, free)
        return free

    def check_space(self) -> None:
        """Refuse to start a write when the disk is nearly full (``StoreUnavailable``, 503).

        Refusing before the disk is full keeps room for what frees space (compaction, the WAL
        checkpoint) and turns a late I/O error mid-transaction into a clear reason up front.
        """
        need = self.settings.min_free_disk_mb << 20
        if not need:
            return
        free = self.free_bytes()
        if free < need:
            raise StoreUnavailable(
                f"{self.path}: disk nearly full: {free >> 20} MiB free, below "
                f"HEATMAP_MIN_FREE_DISK_MB={self.settings.min_free_disk_mb}; writes are refused "
                "until space is freed (heatmap compact, shorter retention, a bigger disk)"
            )

    def size(self) -> StoreSize:
        """Return the bytes of the file and its WAL, and the free space beside them."""
        total = 0
        for suffix in ("", *_SIDE_FILES):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except OSError:
                pass
        try:
            free: int | None = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = None
        return StoreSize(total, free, str(self.path))

    # -- roll-ups ----------------------------------------------------------------------------
    def rollup_rows(self) -> I64:
        """Return ``(level, start, end, windows, devices)`` of every roll-up, by start."""
        rows = self._read_rows(
            'SELECT level, start, "end", windows, devices FROM rollups ORDER BY start'
        )
        return np.array(rows, dtype=np.int64).reshape(-1, 5)

    def history_epoch(self) -> int:
        """Return the counter compaction moves (read on the read connection)."""
        rows = self._read_rows("SELECT value FROM meta WHERE key = 'history_epoch'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def write_rollups(self, rollups: list[Rollup]) -> None:
        """Store roll-ups (an existing one is kept)."""
        with self._lock:
            self._conn.executemany(
                'INSERT INTO rollups(level, start, "end", windows, devices, data, sums) '
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(level, start) DO NOTHING",
                [
                    (LEVELS[r.level], r.start, r.end, r.windows, r.devices, r.published, r.sums)
                    for r in rollups
                ],
            )

    def read_rollup(self, level: str, start: int, window: Window) -> Published | None:
        """Return the published values of a roll-up, if stored."""
        rows = self._q(
            "SELECT data FROM rollups WHERE level = ? AND start = ?", (LEVELS[level], start)
        )
        return blob_to_published(rows[0][0], window) if rows else None  # type: ignore[arg-type]

    def read_rollup_sums(self, level: str, starts: list[int]) -> dict[int, tuple[int, bytes]]:
        """Return ``start -> (windows, sums)`` of stored roll-ups."""
        out: dict[int, tuple[int, bytes]] = {}
        for start in starts:
            rows = self._q(
                "SELECT windows, sums FROM rollups WHERE level = ? AND start = ?",
                (LEVELS[level], start),
            )
            if rows:
                out[start] = (int(rows[0][0]), bytes(rows[0][1]))  # type: ignore[call-overload,arg-type]
        return out

    def delete_windows(self, ws: list[int]) -> None:
        """Delete closed windows: rows, published values, raw counts."""
        with self._lock:
            for table in ("published", "base_counts", "windows"):
                self._conn.executemany(
                    f"DELETE FROM {table} WHERE w = ?",  # noqa: S608 - fixed names
                    [(w,) for w in ws],
                )

    def delete_rollups(self, level: str, starts: list[int]) -> None:
        """Delete roll-ups of a level."""
        with self._lock:
            self._conn.executemany(
                "DELETE FROM rollups WHERE level = ? AND start = ?",
                [(LEVELS[level], s) for s in starts],
            )

    def forget_batches(self, before_epoch: int) -> int:
        """Forget batch ids recorded before ``before_epoch`` (those of schema < 6 count as 0)."""
        with self._lock:
            return int(
                self._conn.execute("DELETE FROM batches WHERE at < ?", (before_epoch,)).rowcount
            )

    # -- backups -----------------------------------------------------------------------------
    def backup_to(self, out: Path) -> None:
        """Copy the store into a new file ``out``: consistent, while writers go on.

        One step of the online backup API on a private connection: every page is copied under
        one read transaction (a snapshot at a commit boundary); the copy is checked before it
        is moved into place.
        """
        out = Path(out)
        tmp = out.with_name(out.name + ".partial")
        tmp.unlink(missing_ok=True)
        src = sqlite3.connect(self.path, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # pages=-1: all at once, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                dst.close()
        except sqlite3.Error as exc:
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"{self.path}: backup failed ({exc})") from exc
        finally:
            src.close()
        if check != "ok":
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"{self.path}: the backup copy is not sound ({check})")
        tmp.replace(out)

    def reclaim(self) -> None:
        """Truncate the WAL: compaction rewrites many pages, and the WAL keeps its high mark."""
        with self._lock:
            self._q("PRAGMA wal_checkpoint(TRUNCATE)")

    def vacuum(self) -> None:
        """Give the free pages back to the file system (``VACUUM``: needs the file's size free)."""
        with self._lock:
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
