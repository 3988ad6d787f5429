"""The SQLite store's crowd-warning tables: watches, their state, alerts, events, the outbox.

:class:`SQLiteAlerts` is a mixin of :class:`heatmap.store.sqlite.SQLiteStore` (the schema 7
methods of :class:`heatmap.store.base.Store`). Writes run on the store's one write connection
under its lock, inside the caller's transaction where there is one. The reads that run often
(the event stream's tail, due webhooks) go through the store's read-only connection, so they
never queue behind an ingest commit holding the writer.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from heatmap.errors import StoreUnavailable
from heatmap.store.alert_rows import (
    DELETE_WEBHOOKS,
    DUE_WEBHOOKS,
    FINISH_WEBHOOK,
    LEASE_WEBHOOK,
    WEBHOOK_ROWS,
    AlertRow,
    EventRow,
    OutboxRow,
    WatchRow,
    WatchStateRow,
)


class SQLiteAlerts:
    """Watches, alerts, events and webhooks on the SQLite store (a mixin of ``SQLiteStore``)."""

    # Provided by SQLiteStore.
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _read_lock: threading.Lock

    if TYPE_CHECKING:

        def _q(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

        def _reader(self) -> sqlite3.Connection: ...

    def _ro(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read on the read-only connection (sees the last commit, never waits on it)."""
        with self._read_lock:
            try:
                return self._reader().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"store read failed ({exc})") from exc

    # -- watches -----------------------------------------------------------------------------
    def insert_watch(self, row: WatchRow) -> None:
        """Store a new watch."""
        self._q(
            "INSERT INTO watches(id, created, spec, webhook_url, webhook_secret) "
            "VALUES (?, ?, ?, ?, ?)",
            (row.id, row.created, row.spec, row.webhook_url, row.webhook_secret),
        )

    def watch_rows(self) -> list[WatchRow]:
        """Return every stored watch, oldest first."""
        rows = self._q(
            "SELECT id, created, spec, webhook_url, webhook_secret FROM watches "
            "ORDER BY created, id"
        )
        return [WatchRow(str(a), int(b), str(c), d, e) for a, b, c, d, e in rows]  # type: ignore[call-overload,arg-type]

    def delete_watch(self, watch_id: str) -> bool:
        """Delete a watch and its state."""
        with self._lock:
            n = self._conn.execute("DELETE FROM watches WHERE id = ?", (watch_id,)).rowcount
            self._conn.execute("DELETE FROM watch_state WHERE watch_id = ?", (watch_id,))
            return n > 0

    def watch_states(self) -> list[WatchStateRow]:
        """Return every watch's state."""
        rows = self._q("SELECT watch_id, streak, alert_id, quiet_until FROM watch_state")
        return [
            WatchStateRow(str(w), int(s), None if a is None else int(a), int(q))  # type: ignore[call-overload]
            for w, s, a, q in rows
        ]

    def put_watch_states(self, rows: list[WatchStateRow]) -> None:
        """Create or replace watch states."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO watch_state(watch_id, streak, alert_id, quiet_until) "
                "VALUES (?, ?, ?, ?)",
                [(r.watch_id, r.streak, r.alert_id, r.quiet_until) for r in rows],
            )

    # -- alerts ------------------------------------------------------------------------------
    def open_alert(self, watch_id: str, audience: str, t: int, opened: str) -> int:
        """Store an open alert; return its number."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO alerts(watch_id, audience, opened_t, opened) VALUES (?, ?, ?, ?)",
                (watch_id, audience, t, opened),
            )
            return int(cur.lastrowid or 0)

    def close_alert(self, alert_id: int, t: int, closed: str) -> None:
        """Close an alert."""
        self._q("UPDATE alerts SET closed_t = ?, closed = ? WHERE id = ?", (t, closed, alert_id))

    def alert_rows(self, closed_since: int) -> list[AlertRow]:
        """Return open alerts and those closed at or after ``closed_since``."""
        rows = self._ro(
            "SELECT id, watch_id, audience, opened_t, closed_t, opened, closed FROM alerts "
            "WHERE closed_t IS NULL OR closed_t >= ? ORDER BY id",
            (closed_since,),
        )
        return [AlertRow(int(i), w, a, int(o), c, op, cl) for i, w, a, o, c, op, cl in rows]

    def delete_alerts_closed_before(self, t: int) -> int:
        """Forget alerts closed before ``t``."""
        with self._lock:
            return int(self._conn.execute("DELETE FROM alerts WHERE closed_t < ?", (t,)).rowcount)

    # -- events ------------------------------------------------------------------------------
    def append_events(self, rows: list[tuple[str, str, str, int]]) -> list[int]:
        """Append events; return their numbers."""
        out = []
        with self._lock:
            for audience, kind, data, at in rows:
                cur = self._conn.execute(
                    "INSERT INTO events(audience, kind, data, at) VALUES (?, ?, ?, ?)",
                    (audience, kind, data, at),
                )
                out.append(int(cur.lastrowid or 0))
        return out

    def events_after(self, seq: int, limit: int) -> list[EventRow]:
        """Return events numbered above ``seq``, in order (read connection)."""
        rows = self._ro(
            "SELECT seq, audience, kind, data, at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [EventRow(int(s), a, k, d, int(t)) for s, a, k, d, t in rows]

    def last_event_seq(self) -> int:
        """Return the newest event number ever given (AUTOINCREMENT's counter)."""
        rows = self._ro("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0][0]) if rows else 0

    def delete_events_before(self, at: int) -> int:
        """Delete events written before ``at``."""
        with self._lock:
            return int(self._conn.execute("DELETE FROM events WHERE at < ?", (at,)).rowcount)

    # -- webhook outbox ----------------------------------------------------------------------
    def enqueue_webhooks(self, rows: list[OutboxRow]) -> None:
        """Add messages to the outbox."""
        with self._lock:
            self._conn.executemany(
                "INSERT INTO outbox(watch_id, msg_id, url, secret, body, next_at, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.watch_id, r.msg_id, r.url, r.secret, r.body, r.next_at, r.created)
                    for r in rows
                ],
            )

    def due_webhooks(self, now: float, limit: int) -> list[OutboxRow]:
        """Return each watch's oldest pending message when it is due and not leased."""
        return [OutboxRow.of(r) for r in self._ro(DUE_WEBHOOKS, (now, now, limit))]

    def lease_webhook(self, msg: int, now: float, until: float) -> bool:
        """Take a pending message for delivery until ``until``."""
        with self._lock:
            return self._conn.execute(LEASE_WEBHOOK, (until, msg, now)).rowcount > 0

    def finish_webhook(
        self, msg: int, state: str, attempts: int, next_at: float, error: str | None, now: float
    ) -> None:
        """Record a delivery attempt's outcome."""
        done = None if state == "pending" else now
        self._q(FINISH_WEBHOOK, (state, attempts, next_at, error, done, msg))

    def webhook_rows(self, watch_id: str, limit: int) -> list[OutboxRow]:
        """Return a watch's newest messages, newest first."""
        return [OutboxRow.of(r) for r in self._ro(WEBHOOK_ROWS, (watch_id, limit))]

    def delete_webhooks_before(self, done_before: float) -> int:
        """Forget delivered and dead messages finished before ``done_before``."""
        with self._lock:
            return int(self._conn.execute(DELETE_WEBHOOKS, (done_before,)).rowcount)
