"""The embedded store: one SQLite file in WAL mode, durable before any acknowledgement.

Closed windows keep one row holding the published arrays as a (zstd) blob, and the raw
base-resolution counts likewise; releases a blob each; the ping log (schema 5) one blob per entry.
Deleted hashes (trimmed log entries) are overwritten (``secure_delete``) and the WAL truncated
after a unit deleted some, so no unneeded hash stays on disk.

This module holds :class:`SQLiteStore`: opening and migrating the file, transactions, windows
and reads. The tables (DDL by migration) are in :mod:`heatmap.store.sqlite_schema`; the ping
log and release methods are the mixin :class:`heatmap.store.sqlite_releases.SQLiteReleases`,
roll-ups, retention, size and backups the mixin
:class:`heatmap.store.sqlite_history.SQLiteHistory`, watches, alerts, events and the webhook
outbox the mixin :class:`heatmap.store.sqlite_alerts.SQLiteAlerts`, all run on this store's
connections and lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from heatmap.config import Settings
from heatmap.errors import StoreUnavailable
from heatmap.model import Published, Window
from heatmap.store.base import I64, SCHEMA_VERSION, U64, Store, WindowInfo
from heatmap.store.codec import ClosedWindow, blob_to_arrays, blob_to_published
from heatmap.store.sqlite_alerts import SQLiteAlerts
from heatmap.store.sqlite_history import SQLiteHistory
from heatmap.store.sqlite_releases import SQLiteReleases
from heatmap.store.sqlite_schema import APPLICATION_ID, MIGRATIONS, absorb_rows

# ``_migrate`` reads MIGRATIONS and SCHEMA_VERSION as globals of this module: tests replace them
# here to make a store of an older schema.

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _store_fault(exc: BaseException) -> bool:
    """Return True for a fault of the file or the disk (I/O, full, read-only, locked,
    malformed), as opposed to a bug in a statement (integrity, programming errors)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class SQLiteStore(SQLiteReleases, SQLiteHistory, SQLiteAlerts, Store):
    """SQLite (WAL) backend; safe to share between threads of one process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.path = Path(settings.db)
        self._check_file()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._lock = threading.RLock()
            self._hashes_deleted = False  # by trim_log: see after_commit
            self._read_lock = threading.Lock()
            self._read: sqlite3.Connection | None = None
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "secure_delete=ON",
                "foreign_keys=ON",
                "busy_timeout=30000",
                # The writer's page cache (default 2 MB): 128 MiB keeps the live table's index
                # hot, which halves the per-release fold at a million live devices.
                "cache_size=-131072",
            ):
                self._conn.execute(f"PRAGMA {pragma}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"{self.path}: cannot open the store ({exc})") from exc
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot open the store ({exc.strerror})") from exc
        self.check_compatible()

    def _check_file(self) -> None:
        if self.path.is_dir():
            raise StoreUnavailable(f"{self.path}: is a directory, not a store file")
        if self.path.exists() and self.path.stat().st_size > 0:
            try:
                with self.path.open("rb") as fh:
                    head = fh.read(100)
            except OSError as exc:
                raise StoreUnavailable(
                    f"{self.path}: cannot read the store ({exc.strerror})"
                ) from exc
            if not head.startswith(_SQLITE_MAGIC):
                raise StoreUnavailable(f"{self.path}: not a heatmap store (not an SQLite file)")
            app_id = int.from_bytes(head[68:72], "big")
            if app_id != APPLICATION_ID:
                raise StoreUnavailable(
                    f"{self.path}: an SQLite file of another application; refusing to touch it"
                )

    def _migrate(self) -> None:
        with self._lock:
            cur = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if cur > max(MIGRATIONS):
                raise StoreUnavailable(
                    f"{self.path}: store schema v{cur} is newer than this heatmap "
                    f"(v{max(MIGRATIONS)}); upgrade heatmap"
                )
            for version in sorted(v for v in MIGRATIONS if v > cur):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._conn.execute("PRAGMA user_version").fetchone()[0] >= version:
                        self._conn.execute("COMMIT")  # another process migrated meanwhile
                        continue
                    for stmt in MIGRATIONS[version].split(";"):
                        if stmt.strip():
                            self._conn.execute(stmt)
                    if version == 5:
                        absorb_rows(self._conn, self.settings.release_s)
                    self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    self._conn.execute(f"PRAGMA user_version={version}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            if cur < max(MIGRATIONS):
                with self.transaction():
                    self.set_meta("schema_version", str(SCHEMA_VERSION))
                    if cur == 0:
                        self.set_meta("window_s", str(self.settings.window_s))
                        self.set_meta("base_res", str(self.settings.base_res))
                # Move the new header (application id, schema version) from the WAL into the
                # file itself, where the next opener's _check_file reads it.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- primitives ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, guard: bool = True) -> Iterator[None]:
        """Hold the write lock (BEGIN IMMEDIATE); commit on success, roll back on error.

        With ``guard``, refuse to start when the disk is nearly full (:meth:`check_space`).
        """
        with self._lock:
            if self._conn.in_transaction:  # nested: join the outer transaction
                yield
                return
            if guard:
                self.check_space()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"{self.path}: store is not writable ({exc})") from exc
            try:
                yield
            except BaseException as exc:
                # SQLite may already have rolled back (I/O error, disk full): keep the cause.
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                if _store_fault(exc):
                    raise StoreUnavailable(f"{self.path}: write failed ({exc})") from exc
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise StoreUnavailable(f"{self.path}: commit failed ({exc})") from exc

    def _q(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                if not _store_fault(exc):
                    raise
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        self._q(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def open_window_ids(self) -> list[int]:
        """Return open window numbers."""
        return [int(r[0]) for r in self._q("SELECT w FROM windows WHERE closed = 0 ORDER BY w")]  # type: ignore[call-overload]

    def touch_windows(self, rows: list[tuple[int, int, int]], closed: bool) -> None:
        """Create or bump windows (open windows' device totals move in ``upsert_state``)."""
        with self._lock:
            self._conn.executemany(
                'INSERT INTO windows(w, start, "end", closed, version) VALUES (?, ?, ?, ?, 1) '
                "ON CONFLICT(w) DO UPDATE SET version = version + 1, "
                "closed = max(closed, excluded.closed)",
                [(w, a, b, int(closed)) for w, a, b in rows],
            )

    def set_open_devices(self, totals: list[tuple[int, int]]) -> None:
        """Set the device totals of open windows."""
        with self._lock:
            self._conn.executemany(
                "UPDATE windows SET devices = ? WHERE w = ?", [(n, w) for w, n in totals]
            )

    def write_closed(self, closed: list[ClosedWindow]) -> None:
        """Store the blobs and device totals of closing windows."""
        n = self.settings.window_s
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO base_counts(w, data) VALUES (?, ?)",
                [(c.w, c.base) for c in closed],
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO published(w, data) VALUES (?, ?)",
                [(c.w, c.published) for c in closed],
            )
            self._conn.executemany(
                'INSERT INTO windows(w, start, "end", closed, version, devices) '
                "VALUES (?, ?, ?, 1, 0, ?) ON CONFLICT(w) DO UPDATE SET devices = excluded.devices",
                [(c.w, c.w * n, (c.w + 1) * n, c.devices) for c in closed],
            )

    def batch_result(self, batch_id: str) -> str | None:
        """Return the result of a committed batch id."""
        rows = self._q("SELECT result FROM batches WHERE batch_id = ?", (batch_id,))
        return str(rows[0][0]) if rows else None

    def record_batch(self, batch_id: str, result: str) -> None:
        """Remember a committed batch id."""
        self._q(
            "INSERT INTO batches(batch_id, result, at) VALUES (?, ?, ?)",
            (batch_id, result, int(time.time())),
        )

    def after_commit(self) -> None:
        """Truncate the WAL if the unit deleted hashes (trimmed the ping log)."""
        with self._lock:  # a transaction holds it throughout: any that set the flag committed
            deleted, self._hashes_deleted = self._hashes_deleted, False
            if deleted:
                self._q("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reads -----------------------------------------------------------------------------------
    def windows(self) -> list[WindowInfo]:
        """Return every window, oldest first."""
        rows = self._q('SELECT w, start, "end", closed, version, devices FROM windows ORDER BY w')
        return [
            WindowInfo(int(w), Window(int(a), int(b)), bool(c), int(v), int(d))  # type: ignore[call-overload]
            for w, a, b, c, v, d in rows
        ]

    def read_published(self, w: int) -> Published | None:
        """Return stored published values of a closed window."""
        rows = self._q("SELECT data FROM published WHERE w = ?", (w,))
        if not rows:
            return None
        n = self.settings.window_s
        return blob_to_published(rows[0][0], Window(w * n, (w + 1) * n))  # type: ignore[arg-type]

    def read_base_counts(self, ws: list[int]) -> dict[int, tuple[U64, I64]]:
        """Return raw base-resolution counts of closed windows."""
        out = {}
        for w in ws:
            rows = self._q("SELECT data FROM base_counts WHERE w = ?", (w,))
            if rows:
                cells, dev = blob_to_arrays(rows[0][0], (np.int64, np.int64))  # type: ignore[arg-type]
                out[w] = (cells.view(np.uint64), dev)
        return out

    def _reader(self) -> sqlite3.Connection:
        # A private read-only connection: reads of the window list never queue behind the
        # writer's lock, and ``data_version`` moves when *another* connection commits.
        if self._read is None:
            self._read = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=5
            )
            self._read.execute("PRAGMA query_only=1")
        return self._read

    def change_token(self) -> int | None:
        """Return ``PRAGMA data_version`` of the read connection (moves on every commit)."""
        with self._read_lock:
            try:
                return int(self._reader().execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def window_rows_since(self, lo: int | None) -> tuple[I64, int | None]:
        """Return windows ``w >= lo`` and the watermark in one read transaction."""
        sql = 'SELECT w, start, "end", closed, version, devices FROM windows'
        with self._read_lock:
            con = self._reader()
            try:
                con.execute("BEGIN")
                try:
                    if lo is None:
                        rows = con.execute(sql + " ORDER BY w").fetchall()
                    else:
                        rows = con.execute(sql + " WHERE w >= ? ORDER BY w", (lo,)).fetchall()
                    wm = con.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
                finally:
                    con.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc
        arr = np.array(rows, dtype=np.int64).reshape(-1, 6)
        return arr, None if wm is None else int(wm[0])

    def close(self) -> None:
        """Close the connections."""
        with self._lock, self._read_lock:
            self._conn.close()
            if self._read is not None:
                self._read.close()
