"""Rows of the crowd-warning tables (schema 7): watches, their state, alerts, events, outbox.

The store keeps these as they are given; what they mean (rules, lifecycle, signatures) is
:mod:`heatmap.alerts`. JSON columns hold text the alerts package wrote and reads back.
"""

from __future__ import annotations

from dataclasses import dataclass


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
