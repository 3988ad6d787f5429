"""The shared store: PostgreSQL (psycopg 3 + a connection pool) for several API nodes.

Same layout as the SQLite store: closed windows keep one ``bytea`` blob of raw base counts and
one of published values; releases one blob each; the ping log (keyed hashes) one blob per entry,
partitioned by slot: trimming drops whole partitions, so the hashes leave the table files at
once. A DELETE would leave them in the pages' free space (PostgreSQL does not zero it, even after
VACUUM) and cost a scan besides.

Several processes may commit at once. Every write transaction starts with
``pg_advisory_xact_lock``: commits serialise across processes and threads, and because the
transaction runs at READ COMMITTED, each statement after the lock sees everything the previous
holder committed (a REPEATABLE READ snapshot would be taken before the wait and miss it). The lock
is released by COMMIT or ROLLBACK, never leaked by a crashed client. Batch ids are recorded in the
same transaction as the batch's effects, so a batch is applied exactly once however often it is
sent and whichever node receives it.

Readers (API threads) never take the lock: each read is one statement on a pooled autocommit
connection and sees the last committed state. The ``windows`` table carries a ``version`` per
window, bumped by every commit that changes it; the service re-reads it (per request or on a
short TTL), so a node sees another node's commits. For cheaper polling, ``change_token()`` reads
one counter row that every such commit bumps in its own transaction (a sequence would not do: its
increments are visible before the commit, so a reader could cache the old windows under the new
token); commits also ``NOTIFY heatmap_windows`` for listeners that prefer to be told.

Bulk data moves with binary ``COPY`` built and parsed by numpy (no Python loop per row).

This module holds :class:`PostgresStore`: connecting, migrating, transactions, windows and
reads. The tables (DDL by migration, staging tables, partition names) are in
:mod:`heatmap.store.postgres_schema`, the binary COPY codec in :mod:`heatmap.store.postgres_copy`,
and the ping-log and release methods are the mixin
:class:`heatmap.store.postgres_releases.PostgresReleases`, roll-ups and retention the mixin
:class:`heatmap.store.postgres_history.PostgresHistory`, watches, alerts, events and the webhook
outbox the mixin :class:`heatmap.store.postgres_alerts.PostgresAlerts`, all run on this store's
connections.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from heatmap.config import Settings
from heatmap.errors import StoreUnavailable
from heatmap.model import Published, Window
from heatmap.store.base import I64, U64, Store, WindowInfo
from heatmap.store.codec import ClosedWindow, blob_to_arrays, blob_to_published
from heatmap.store.postgres_alerts import PostgresAlerts
from heatmap.store.postgres_copy import copy_to_int64_columns, int64_columns_to_copy
from heatmap.store.postgres_history import PostgresHistory
from heatmap.store.postgres_releases import PostgresReleases, absorb_rows
from heatmap.store.postgres_schema import MIGRATIONS, STAGING

# ``_migrate`` reads MIGRATIONS as a global of this module: tests replace it here to make
# a store of an older schema. The COPY codec is re-exported for them too.
__all__ = [
    "MIGRATIONS",
    "NOTIFY_CHANNEL",
    "PostgresStore",
    "copy_to_int64_columns",
    "int64_columns_to_copy",
]

# Advisory lock keys (64-bit, arbitrary but fixed): ASCII "HEATMAP" + a role byte.
COMMIT_LOCK = 0x484541544D415001
MIGRATE_LOCK = 0x484541544D415002
NOTIFY_CHANNEL = "heatmap_windows"
POOL_MAX = 16  # connections per process: API threads beyond this wait for one


def _cells(a: np.ndarray) -> np.ndarray:
    # H3 indexes keep bit 63 at zero, so they fit bigint unchanged (and compare the same).
    return np.asarray(a, dtype=np.uint64).view(np.int64)


class PostgresStore(PostgresReleases, PostgresHistory, PostgresAlerts, Store):
    """PostgreSQL backend: several processes (and threads) may read and commit concurrently."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.secret:
            # Each node would otherwise generate its own hashing key beside its working
            # directory: one device, two hashes, counted twice. Fail instead.
            raise StoreUnavailable(
                "a PostgreSQL store needs HEATMAP_SECRET, the same on every node "
                "(device ids must hash alike wherever they are ingested)"
            )
        self.url = settings.db
        self._local = threading.local()
        try:
            # One direct connection first: a wrong URL or a server that is down fails at once
            # with the server's own reason (a pool would retry until its timeout).
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                self._migrate(conn)
            self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                self.url,
                min_size=1,
                max_size=POOL_MAX,
                kwargs={"autocommit": True, "connect_timeout": 10},
                configure=self._configure,
                check=ConnectionPool.check_connection,
                open=True,
                timeout=30,
                name="heatmap",
            )
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreUnavailable(
                f"{self._where()}: cannot open the store ({_one_line(exc)})"
            ) from exc
        try:
            self.check_compatible()
        except BaseException:
            self.pool.close()  # else its threads outlive the refused store
            raise

    def _where(self) -> str:
        # The URL without its password, for messages and logs.
        try:
            info = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            return "postgresql store"
        return (
            f"postgresql://{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
        )

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        for stmt in STAGING:
            conn.execute(stmt)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Two nodes starting together: one migrates, the other waits and finds it done.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
            newest = max(MIGRATIONS)
            if done and max(done) > newest:
                raise StoreUnavailable(
                    f"{self._where()}: store schema v{max(done)} is newer than this heatmap "
                    f"(v{newest}); upgrade heatmap"
                )
            for version in sorted(set(MIGRATIONS) - done):
                for stmt in MIGRATIONS[version]:
                    conn.execute(stmt)  # DDL is transactional: a failed migration leaves nothing
                if version == 5:
                    absorb_rows(conn, self._bucket_of(conn))
                conn.execute("INSERT INTO schema_migrations(version) VALUES (%s)", (version,))
            if not done:
                for key, value in (
                    ("window_s", self.settings.window_s),
                    ("base_res", self.settings.base_res),
                ):
                    conn.execute(
                        "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (key, str(value)),
                    )
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(newest),),
            )
            self._bucket = self._bucket_of(conn)

    def _bucket_of(self, conn: psycopg.Connection[Any]) -> int:
        """Return the store's slot length for partitions (``release_s`` when it was made)."""
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('live_bucket_s', %s) ON CONFLICT DO NOTHING",
            (str(self.settings.release_s),),
        )
        row = conn.execute("SELECT value FROM meta WHERE key = 'live_bucket_s'").fetchone()
        return int(row[0])  # type: ignore[index]

    # -- connections -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The thread's transaction connection if it is in one, else a pooled connection."""
        tx = getattr(self._local, "conn", None)
        if tx is not None:
            yield tx
            return
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"{self._where()}: no connection available ({exc})") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{self._where()}: {_one_line(exc)}") from exc

    @contextlib.contextmanager
    def transaction(self, guard: bool = True) -> Iterator[None]:
        """Hold the store-wide commit lock (advisory, transaction-scoped); commit on success.

        ``guard`` is ignored: the server's disk is not visible from here (a full one fails the
        statement with the server's reason, a 503).
        """
        if getattr(self._local, "conn", None) is not None:  # nested: join the outer one
            yield
            return
        with self._conn() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (COMMIT_LOCK,))
                    self._local.conn = conn
                    try:
                        yield
                    finally:
                        self._local.conn = None
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(
                    f"{self._where()}: commit failed ({_one_line(exc)})"
                ) from exc

    def _q(self, query: str | sql.Composed, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def _n(self, query: str, params: Sequence[object] = ()) -> int:
        """Run a statement and return how many rows it changed."""
        with self._conn() as conn:
            return int(conn.execute(query, params).rowcount)  # type: ignore[arg-type]

    def _copy_out(self, query: str, params: Sequence[object], ncols: int) -> list[np.ndarray]:
        with self._conn() as conn, conn.cursor() as cur:
            with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)", params) as copy:
                data = b"".join(bytes(block) for block in copy)
        return copy_to_int64_columns(data, ncols)

    # -- primitives --------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""
        rows = self._q("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value."""
        self._q(
            "INSERT INTO meta(key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def open_window_ids(self) -> list[int]:
        """Return open window numbers."""
        return [int(r[0]) for r in self._q("SELECT w FROM windows WHERE NOT closed ORDER BY w")]

    def touch_windows(self, rows: list[tuple[int, int, int]], closed: bool) -> None:
        """Create or bump windows (version += 1)."""
        if not rows:
            return
        ws, starts, ends = (list(c) for c in zip(*rows, strict=True))
        self._q(
            'INSERT INTO windows AS x (w, start, "end", closed, version) '
            "SELECT w, s, e, %s, 1 FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) "
            "AS t(w, s, e) "
            "ON CONFLICT (w) DO UPDATE SET version = x.version + 1, "
            "closed = x.closed OR excluded.closed",
            (closed, ws, starts, ends),
        )
        self._changed()

    def _changed(self) -> None:
        """Move the change token and notify listeners (both visible when the commit is)."""
        # A row, not the (non-transactional) sequence: a reader sees the new token only once the
        # commit is visible, so it can never cache the old windows under the new token.
        self._q(
            "INSERT INTO meta(key, value) VALUES ('window_changes', '1') ON CONFLICT (key) "
            "DO UPDATE SET value = (meta.value::bigint + 1)::text"
        )
        self._q("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))

    def set_open_devices(self, totals: list[tuple[int, int]]) -> None:
        """Set the device totals of open windows."""
        if totals:
            ws, ns = (list(c) for c in zip(*totals, strict=True))
            self._q(
                "UPDATE windows AS x SET devices = t.n "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS t(w, n) WHERE x.w = t.w",
                (ws, ns),
            )

    def write_closed(self, closed: list[ClosedWindow]) -> None:
        """Store the blobs and device totals of closing windows."""
        if not closed:
            return
        n = self.settings.window_s
        self._put_blobs("base_counts", ((c.w, c.base) for c in closed))
        self._put_blobs("published", ((c.w, c.published) for c in closed))
        self._q(
            'INSERT INTO windows AS x (w, start, "end", closed, version, devices) '
            "SELECT w, w * %s, (w + 1) * %s, true, 0, d "
            "FROM unnest(%s::bigint[], %s::bigint[]) AS t(w, d) "
            "ON CONFLICT (w) DO UPDATE SET devices = excluded.devices",
            (n, n, [c.w for c in closed], [c.devices for c in closed]),
        )

    def _put_blobs(self, table: str, rows: Iterator[tuple[int, bytes]]) -> None:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE blob_in")
            with cur.copy("COPY blob_in (w, data) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "bytea"])
                for row in rows:
                    cp.write_row(row)
            cur.execute(
                f"INSERT INTO {table} (w, data) SELECT w, data FROM blob_in "  # noqa: S608 - fixed names
                "ON CONFLICT (w) DO UPDATE SET data = excluded.data"
            )

    def batch_result(self, batch_id: str) -> str | None:
        """Return the result of a committed batch id."""
        rows = self._q("SELECT result FROM batches WHERE batch_id = %s", (batch_id,))
        return str(rows[0][0]) if rows else None

    def record_batch(self, batch_id: str, result: str) -> None:
        """Remember a committed batch id (same transaction as its effects)."""
        self._q("INSERT INTO batches(batch_id, result) VALUES (%s, %s)", (batch_id, result))

    # -- reads -------------------------------------------------------------------------------
    def change_token(self) -> int:
        """Return a number that changes whenever a commit changed a window (any process).

        One row read: poll it and reload ``windows()`` only when it moved. It is bumped in the
        committing transaction, so it moves exactly when the commit becomes visible.
        """
        rows = self._q("SELECT value FROM meta WHERE key = 'window_changes'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def windows(self) -> list[WindowInfo]:
        """Return every window, oldest first."""
        rows = self._q('SELECT w, start, "end", closed, version, devices FROM windows ORDER BY w')
        return [
            WindowInfo(int(w), Window(int(a), int(b)), bool(c), int(v), int(d))
            for w, a, b, c, v, d in rows
        ]

    def read_published(self, w: int) -> Published | None:
        """Return stored published values of a closed window."""
        rows = self._q("SELECT data FROM published WHERE w = %s", (w,))
        if not rows:
            return None
        n = self.settings.window_s
        return blob_to_published(bytes(rows[0][0]), Window(w * n, (w + 1) * n))

    def read_base_counts(self, ws: list[int]) -> dict[int, tuple[U64, I64]]:
        """Return raw base-resolution counts of closed windows."""
        out = {}
        for w, data in self._q("SELECT w, data FROM base_counts WHERE w = ANY(%s)", (ws,)):
            cells, dev = blob_to_arrays(bytes(data), (np.int64, np.int64))
            out[int(w)] = (cells.view(np.uint64), dev)
        return out

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
