"""The SQLite store's file: its tables, made by numbered migrations, and how rows go in.

The file is marked as ours by ``APPLICATION_ID`` (a stranger's SQLite file is refused, never
touched) and its schema version is ``PRAGMA user_version``:
:class:`heatmap.store.sqlite.SQLiteStore` applies the missing ``MIGRATIONS`` in order, one
transaction each. Version numbers match the PostgreSQL store's
(:data:`heatmap.store.base.SCHEMA_VERSION`) even where a version adds nothing there.

Every column is an INTEGER: H3 cells fit unchanged (:func:`i64`), and aligned int64 columns from
numpy go in many rows to a statement (:func:`insert_rows`), for window state and release state
alike.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import numpy.typing as npt

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
}

_ROWS_PER_INSERT = 256


def i64(cells: np.ndarray) -> np.ndarray:
    """Return H3 cells as int64, the type of an SQLite INTEGER."""
    # H3 indexes keep bit 63 at zero, so they fit SQLite's signed 64-bit INTEGER unchanged.
    return np.asarray(cells, dtype=np.uint64).view(np.int64)


def insert_rows(
    conn: sqlite3.Connection, target: str, cols: list[npt.NDArray[np.int64]], suffix: str = ""
) -> None:
    """Insert aligned integer columns as rows of ``target`` (``table(col, ...)``), each statement
    ending with ``suffix`` (an upsert clause, say).

    Rows go ``_ROWS_PER_INSERT`` to a statement (multi-row ``VALUES``): about 2.5x faster than
    one ``executemany`` row at a time, which pays a statement step and a tuple per row.
    """
    n, width = len(cols[0]), len(cols)
    if not n:
        return
    flat = np.stack([np.asarray(c, dtype=np.int64) for c in cols], axis=1).ravel().tolist()
    row = "(" + ", ".join("?" * width) + ")"
    full = n - n % _ROWS_PER_INSERT
    if full:
        step = _ROWS_PER_INSERT * width
        conn.executemany(
            f"INSERT INTO {target} VALUES {', '.join([row] * _ROWS_PER_INSERT)}{suffix}",  # noqa: S608 - fixed names
            (flat[i : i + step] for i in range(0, full * width, step)),
        )
    if full < n:
        conn.execute(
            f"INSERT INTO {target} VALUES {', '.join([row] * (n - full))}{suffix}",  # noqa: S608 - fixed names
            flat[full * width :],
        )
