"""The SQLite store's file: its tables, made by numbered migrations.

The file is marked as ours by ``APPLICATION_ID`` (a stranger's SQLite file is refused, never
touched) and its schema version is ``PRAGMA user_version``:
:class:`heatmap.store.sqlite.SQLiteStore` applies the missing ``MIGRATIONS`` in order, one
transaction each. Version numbers match the PostgreSQL store's
(:data:`heatmap.store.base.SCHEMA_VERSION`) even where a version adds nothing there.

Every column but the blobs is an INTEGER: H3 cells fit unchanged (bit 63 is clear). Schema 5
replaced the per-row state of schemas 1-4 by the ping log; :func:`absorb_rows` moves a migrating
store's rows into it.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from heatmap.store.codec import ping_entries

APPLICATION_ID = 0x48454154  # "HEAT": marks the file as ours
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE windows (
        w INTEGER PRIMARY KEY, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0,
        devices INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE device_state (
        w INTEGER NOT NULL, device INTEGER NOT NULL, ts INTEGER NOT NULL, cell INTEGER NOT NULL,
        PRIMARY KEY (w, device)
    ) WITHOUT ROWID;
    CREATE TABLE base_counts (w INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE published (w INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE batches (batch_id TEXT PRIMARY KEY, result TEXT NOT NULL);
    """,
    # Devices per (open window, base cell), kept in step with device_state by upsert_state, so
    # a live snapshot reads the (few) counted cells instead of grouping every device.
    2: """
    CREATE TABLE open_counts (
        w INTEGER NOT NULL, cell INTEGER NOT NULL, devices INTEGER NOT NULL,
        PRIMARY KEY (w, cell)
    ) WITHOUT ROWID;
    INSERT INTO open_counts(w, cell, devices)
        SELECT w, cell, count(*) FROM device_state GROUP BY w, cell;
    """,
    # Release state: pending pings per (tick, device) (the key leads with k: folding reads a
    # prefix), live positions per device, published releases. WITHOUT ROWID: a rowid table's
    # interior pages keep copies of deleted keys as dividers, so an expired hash would stay.
    3: """
    CREATE TABLE pending (
        k INTEGER NOT NULL, device INTEGER NOT NULL, ts INTEGER NOT NULL, cell INTEGER NOT NULL,
        PRIMARY KEY (k, device)
    ) WITHOUT ROWID;
    CREATE TABLE live (
        device INTEGER PRIMARY KEY, ts INTEGER NOT NULL, cell INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX live_ts ON live (ts);
    CREATE TABLE releases (t INTEGER PRIMARY KEY, devices INTEGER NOT NULL, data BLOB NOT NULL);
    """,
    # Devices per cell of live, moved by fold_pending and expire_live by the rows they change,
    # so a release reads the (few) cells instead of grouping every live device. A cell that
    # reaches zero leaves (the partial index finds it without a scan).
    4: """
    CREATE TABLE live_cells (cell INTEGER PRIMARY KEY, devices INTEGER NOT NULL);
    CREATE INDEX live_cells_empty ON live_cells (cell) WHERE devices = 0;
    INSERT INTO live_cells(cell, devices) SELECT cell, count(*) FROM live GROUP BY cell;
    """,
    # The ping log (heatmap.store.base) replaces the per-row state of schemas 1-4: their rows
    # move into it as entries (absorb_rows, a step in Python), then those tables go.
    5: """
    CREATE TABLE ping_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, lo_ts INTEGER NOT NULL, hi_ts INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX ping_log_hi ON ping_log (hi_ts);
    """,
    # Roll-ups of closed windows past their full-detail retention (heatmap.maintenance): one
    # row per hour or day, its published means and the sums the next level is made from.
    # Batch ids get the time they were recorded, so they can be forgotten after a while.
    6: """
    CREATE TABLE rollups (
        level INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        windows INTEGER NOT NULL, devices INTEGER NOT NULL, data BLOB NOT NULL,
        sums BLOB NOT NULL, PRIMARY KEY (level, start)
    );
    ALTER TABLE batches ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
    """,
    # Crowd warnings (heatmap.alerts): planners' watches, each watch's state, alerts, the event
    # stream (numbered in commit order, read back by Last-Event-ID) and the webhook outbox,
    # written in the transaction that evaluated a release (delivered at least once from here).
    7: """
    CREATE TABLE watches (
        id TEXT PRIMARY KEY, created INTEGER NOT NULL, spec TEXT NOT NULL,
        webhook_url TEXT, webhook_secret TEXT
    );
    CREATE TABLE watch_state (
        watch_id TEXT PRIMARY KEY, streak INTEGER NOT NULL, alert_id INTEGER,
        quiet_until INTEGER NOT NULL
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, watch_id TEXT NOT NULL, audience TEXT NOT NULL,
        opened_t INTEGER NOT NULL, closed_t INTEGER, opened TEXT NOT NULL, closed TEXT
    );
    CREATE INDEX alerts_closed ON alerts (closed_t);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, audience TEXT NOT NULL, kind TEXT NOT NULL,
        data TEXT NOT NULL, at INTEGER NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, watch_id TEXT NOT NULL, msg_id TEXT NOT NULL,
        url TEXT NOT NULL, secret TEXT NOT NULL, body TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL, lease_until REAL NOT NULL DEFAULT 0, last_error TEXT,
        created REAL NOT NULL, done_at REAL
    );
    CREATE INDEX outbox_pending ON outbox (watch_id, id) WHERE state = 'pending';
    CREATE INDEX outbox_watch ON outbox (watch_id, id);
    """,
}
_ROW_STATE = ("device_state", "pending", "live")
_ROW_TABLES = ("device_state", "open_counts", "pending", "live", "live_cells")


def absorb_rows(conn: sqlite3.Connection, slot_s: int) -> None:
    """Move the rows of a schema 1-4 store's state tables into the ping log (schema 5), then
    drop those tables. Inside the migration's transaction."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    parts = [np.zeros((0, 3), dtype=np.int64)]
    for table in [t for t in _ROW_STATE if t in have]:
        rows = conn.execute(f"SELECT device, ts, cell FROM {table}").fetchall()  # noqa: S608 - fixed names
        parts.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
    every = np.concatenate(parts)
    entries = ping_entries(every[:, 0], every[:, 1], every[:, 2].view(np.uint64), slot_s)
    conn.executemany("INSERT INTO ping_log(lo_ts, hi_ts, data) VALUES (?, ?, ?)", entries)
    for table in [t for t in _ROW_TABLES if t in have]:
        conn.execute(f"DROP TABLE {table}")
