"""The PostgreSQL store's crowd-warning tables: watches, their state, alerts, events, the outbox.

:class:`PostgresAlerts` is a mixin of :class:`heatmap.store.postgres.PostgresStore` (the
schema 7 methods of :class:`heatmap.store.base.Store`). It runs on the store's connections:
inside the caller's transaction (under the commit lock) when there is one, else one autocommit
statement on a pooled connection. Events are appended under the commit lock only, so their
numbers grow in commit order and a reader tailing ``seq > n`` never skips a later-visible one.
Leasing a webhook message is one conditional UPDATE: two nodes never deliver it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
    pg,
)


class PostgresAlerts:
    """Watches, alerts, events and webhooks on PostgreSQL (a mixin of ``PostgresStore``)."""

    if TYPE_CHECKING:

        def _q(self, query: Any, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

        def _n(self, query: str, params: Sequence[object] = ()) -> int: ...

    # -- watches -----------------------------------------------------------------------------
    def insert_watch(self, row: WatchRow) -> None:
        """Store a new watch."""
        self._q(
            "INSERT INTO watches (id, created, spec, webhook_url, webhook_secret) "
            "VALUES (%s, %s, %s, %s, %s)",
            (row.id, row.created, row.spec, row.webhook_url, row.webhook_secret),
        )

    def watch_rows(self) -> list[WatchRow]:
        """Return every stored watch, oldest first."""
        rows = self._q(
            "SELECT id, created, spec, webhook_url, webhook_secret FROM watches "
            "ORDER BY created, id"
        )
        return [WatchRow(a, int(b), c, d, e) for a, b, c, d, e in rows]

    def delete_watch(self, watch_id: str) -> bool:
        """Delete a watch and its state."""
        n = self._n("DELETE FROM watches WHERE id = %s", (watch_id,))
        self._n("DELETE FROM watch_state WHERE watch_id = %s", (watch_id,))
        return n > 0

    def watch_states(self) -> list[WatchStateRow]:
        """Return every watch's state."""
        rows = self._q("SELECT watch_id, streak, alert_id, quiet_until FROM watch_state")
        return [
            WatchStateRow(w, int(s), None if a is None else int(a), int(q)) for w, s, a, q in rows
        ]

    def put_watch_states(self, rows: list[WatchStateRow]) -> None:
        """Create or replace watch states."""
        if not rows:
            return
        self._q(
            "INSERT INTO watch_state AS x (watch_id, streak, alert_id, quiet_until) "
            "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
            "ON CONFLICT (watch_id) DO UPDATE SET streak = excluded.streak, "
            "alert_id = excluded.alert_id, quiet_until = excluded.quiet_until",
            (
                [r.watch_id for r in rows],
                [r.streak for r in rows],
                [r.alert_id for r in rows],
                [r.quiet_until for r in rows],
            ),
        )

    # -- alerts ------------------------------------------------------------------------------
    def open_alert(self, watch_id: str, audience: str, t: int, opened: str) -> int:
        """Store an open alert; return its number."""
        rows = self._q(
            "INSERT INTO alerts (watch_id, audience, opened_t, opened) VALUES (%s, %s, %s, %s) "
            "RETURNING id",
            (watch_id, audience, t, opened),
        )
        return int(rows[0][0])

    def close_alert(self, alert_id: int, t: int, closed: str) -> None:
        """Close an alert."""
        self._q("UPDATE alerts SET closed_t = %s, closed = %s WHERE id = %s", (t, closed, alert_id))

    def alert_rows(self, closed_since: int) -> list[AlertRow]:
        """Return open alerts and those closed at or after ``closed_since``."""
        rows = self._q(
            "SELECT id, watch_id, audience, opened_t, closed_t, opened, closed FROM alerts "
            "WHERE closed_t IS NULL OR closed_t >= %s ORDER BY id",
            (closed_since,),
        )
        return [
            AlertRow(int(i), w, a, int(o), None if c is None else int(c), op, cl)
            for i, w, a, o, c, op, cl in rows
        ]

    def delete_alerts_closed_before(self, t: int) -> int:
        """Forget alerts closed before ``t``."""
        return self._n("DELETE FROM alerts WHERE closed_t < %s", (t,))

    # -- events ------------------------------------------------------------------------------
    def append_events(self, rows: list[tuple[str, str, str, int]]) -> list[int]:
        """Append events; return their numbers (call under the commit lock)."""
        out = []
        for audience, kind, data, at in rows:
            got = self._q(
                "INSERT INTO events (audience, kind, data, at) VALUES (%s, %s, %s, %s) "
                "RETURNING seq",
                (audience, kind, data, at),
            )
            out.append(int(got[0][0]))
        return out

    def events_after(self, seq: int, limit: int) -> list[EventRow]:
        """Return events numbered above ``seq``, in order."""
        rows = self._q(
            "SELECT seq, audience, kind, data, at FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [EventRow(int(s), a, k, d, int(t)) for s, a, k, d, t in rows]

    def last_event_seq(self) -> int:
        """Return the newest event number given (the sequence's last value)."""
        rows = self._q("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq_seq")
        return int(rows[0][0]) if rows else 0

    def delete_events_before(self, at: int) -> int:
        """Delete events written before ``at``."""
        return self._n("DELETE FROM events WHERE at < %s", (at,))

    # -- webhook outbox ----------------------------------------------------------------------
    def enqueue_webhooks(self, rows: list[OutboxRow]) -> None:
        """Add messages to the outbox."""
        for r in rows:
            self._q(
                "INSERT INTO outbox (watch_id, msg_id, url, secret, body, next_at, created) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (r.watch_id, r.msg_id, r.url, r.secret, r.body, r.next_at, r.created),
            )

    def due_webhooks(self, now: float, limit: int) -> list[OutboxRow]:
        """Return each watch's oldest pending message when it is due and not leased."""
        return [OutboxRow.of(r) for r in self._q(pg(DUE_WEBHOOKS), (now, now, limit))]

    def lease_webhook(self, msg: int, now: float, until: float) -> bool:
        """Take a pending message for delivery until ``until``."""
        return self._n(pg(LEASE_WEBHOOK), (until, msg, now)) > 0

    def finish_webhook(
        self, msg: int, state: str, attempts: int, next_at: float, error: str | None, now: float
    ) -> None:
        """Record a delivery attempt's outcome."""
        done = None if state == "pending" else now
        self._q(pg(FINISH_WEBHOOK), (state, attempts, next_at, error, done, msg))

    def webhook_rows(self, watch_id: str, limit: int) -> list[OutboxRow]:
        """Return a watch's newest messages, newest first."""
        return [OutboxRow.of(r) for r in self._q(pg(WEBHOOK_ROWS), (watch_id, limit))]

    def delete_webhooks_before(self, done_before: float) -> int:
        """Forget delivered and dead messages finished before ``done_before``."""
        return self._n(pg(DELETE_WEBHOOKS), (done_before,))
