"""Rows of the crowd-warning tables (schema 7): watches, their state, alerts, events, outbox.

The store keeps these as they are given; what they mean (rules, lifecycle, signatures) is
:mod:`heatmap.alerts`. JSON columns hold text the alerts package wrote and reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WatchRow:
    """A planner's watch: its JSON spec (target, rule, name) and its webhook, if any."""

    id: str
    created: int
    spec: str
    webhook_url: str | None = None
    webhook_secret: str | None = None


@dataclass(frozen=True)
class WatchStateRow:
    """Where a watch stands: releases in a row its rule held, its open alert, its cooldown."""

    watch_id: str
    streak: int
    alert_id: int | None
    quiet_until: int


@dataclass(frozen=True)
class AlertRow:
    """An alert: opened at a release tick with the values that triggered it, maybe closed."""

    id: int
    watch_id: str
    audience: str
    opened_t: int
    closed_t: int | None
    opened: str
    closed: str | None


@dataclass(frozen=True)
class EventRow:
    """One event of the stream (``release`` or ``alert``), numbered in commit order."""

    seq: int
    audience: str
    kind: str
    data: str
    at: int


@dataclass(frozen=True)
class OutboxRow:
    """One webhook message and how its delivery stands (``pending``, ``delivered``, ``dead``)."""

    id: int
    watch_id: str
    msg_id: str
    url: str
    secret: str
    body: str
    state: str = "pending"
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    created: float = 0.0
    done_at: float | None = None

    @staticmethod
    def of(r: Sequence[Any]) -> OutboxRow:
        """A row of :data:`OUTBOX_COLS` as either backend returns it."""
        return OutboxRow(
            int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
            int(r[7]), float(r[8]), r[9], float(r[10]), None if r[11] is None else float(r[11]),
        )  # fmt: skip


# The outbox statements both backends run, with ``?`` placeholders (PostgreSQL: ``pg()``).
OUTBOX_COLS = (
    "id, watch_id, msg_id, url, secret, body, state, attempts, next_at, last_error, created, "
    "done_at"
)
DUE_WEBHOOKS = (
    f"SELECT {OUTBOX_COLS} FROM outbox o WHERE state = 'pending' "  # noqa: S608 - fixed names
    "AND id = (SELECT min(id) FROM outbox WHERE watch_id = o.watch_id "
    "AND state = 'pending') AND next_at <= ? AND lease_until <= ? ORDER BY id LIMIT ?"
)
"""Each watch's oldest pending message when it is due and not leased: (now, now, limit)."""
LEASE_WEBHOOK = (
    "UPDATE outbox SET lease_until = ? WHERE id = ? AND state = 'pending' AND lease_until <= ?"
)
"""Take a pending message until a time: (until, id, now)."""
FINISH_WEBHOOK = (
    "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ?, "
    "lease_until = 0, done_at = ? WHERE id = ?"
)
"""A delivery attempt's outcome: (state, attempts, next_at, error, done_at, id)."""
WEBHOOK_ROWS = (
    f"SELECT {OUTBOX_COLS} FROM outbox WHERE watch_id = ? "  # noqa: S608 - fixed names
    "ORDER BY id DESC LIMIT ?"
)
"""A watch's newest messages, newest first: (watch_id, limit)."""
DELETE_WEBHOOKS = "DELETE FROM outbox WHERE state <> 'pending' AND done_at < ?"
"""Forget finished messages: (done_before,)."""


def pg(statement: str) -> str:
    """A statement above with PostgreSQL's ``%s`` placeholders."""
    return statement.replace("?", "%s")
