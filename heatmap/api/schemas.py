"""Shapes of the answers the HTTP layer builds itself (ingest, health), for code and OpenAPI.

The read side's answers are typed in :mod:`heatmap.read.shapes`; these are the HTTP layer's own.
Like those, they are ``TypedDict`` s: the handlers build plain dicts that mypy checks against
them, and OpenAPI documents the same classes.
"""

from __future__ import annotations

from typing import NotRequired

from typing_extensions import TypedDict

from heatmap.read.shapes import WindowOut


class RejectedRow(TypedDict):
    """A rejected row (1-based data row) and why."""

    row: int
    reason: str


class IngestAnswer(TypedDict):
    """What a POSTed batch did."""

    accepted: int
    rejected: list[RejectedRow]
    rejected_total: int
    late: int
    windows_closed: int
    reasons: dict[str, int]
    release: str | None
    """The release tick this batch made (ISO), or null: it shows from the next release on."""
    duplicate: bool
    batch_id: str | None


class Health(TypedDict):
    """Health of the service."""

    status: str
    store: str
    version: NotRequired[str]
    windows: NotRequired[int]
    latest_window: NotRequired[WindowOut | None]
    latest_window_age_s: NotRequired[float | None]
    latest_release: NotRequired[WindowOut | None]
    latest_release_age_s: NotRequired[float | None]
    ingest_enabled: NotRequired[bool]
    uptime_s: NotRequired[float]
    reason: NotRequired[str]
    """Why the status is not ``ok`` (a 503): the store's fault, or the disk nearly full."""
    store_bytes: NotRequired[int]
    disk_free_bytes: NotRequired[int | None]
    min_free_disk_bytes: NotRequired[int]
    oldest: NotRequired[WindowOut | None]
    """The oldest entry of the history: a daily or hourly roll-up, or a closed window."""
    oldest_window: NotRequired[WindowOut | None]
    """The oldest closed window still kept at full detail."""
    rollups: NotRequired[dict[str, int]]
