"""What an input must hold and how to read it.

The canonical columns (``device_id``, ``ts``, ``lat``, ``lng``) and the names they go by in
inputs; the options of one input unit (:class:`ParseOptions`); its rejected rows, counted by
reason with the first ones listed by row number (:class:`Rejects`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from heatmap.errors import BadInput

WORKERS = min(4, os.cpu_count() or 1)
"""Threads that run a file's tasks at once (the readers make the file's last tasks smaller,
so that these finish together)."""

COLUMNS = ("device_id", "ts", "lat", "lng")
ALIASES: dict[str, str] = {
    "device_id": "device_id",
    "device": "device_id",
    "deviceid": "device_id",
    "uid": "device_id",
    "user_id": "device_id",
    "ts": "ts",
    "timestamp": "ts",
    "time": "ts",
    "datetime": "ts",
    "lat": "lat",
    "latitude": "lat",
    "lng": "lng",
    "lon": "lng",
    "long": "lng",
    "longitude": "lng",
}
CRS_NAMES = ("wgs84", "gcj02", "bd09")
MAX_SAMPLES = 1000  # rejected rows listed one by one; the counts are always complete


@dataclass
class Rejects:
    """Rejected rows of one input unit: counts by reason and the first rows with their reason."""

    counts: Counter[str] = field(default_factory=Counter)
    rows: list[tuple[int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Return the number of rejected rows."""
        return sum(self.counts.values())

    def add(self, rows: list[int], reasons: list[str]) -> None:
        """Record rejected rows (1-based data-row numbers) and their reasons."""
        self.counts.update(reasons)
        room = MAX_SAMPLES - len(self.rows)
        if room > 0:
            self.rows.extend(zip(rows[:room], reasons[:room], strict=True))

    def merge(self, other: Rejects) -> None:
        """Add another part's rejected rows (parts merged in input order keep rows in order)."""
        self.counts.update(other.counts)
        room = MAX_SAMPLES - len(self.rows)
        if room > 0:
            self.rows.extend(sorted(other.rows)[:room])


@dataclass(frozen=True)
class ParseOptions:
    """How to read one input unit."""

    crs: str = "wgs84"
    strict: bool = False
    max_future_s: int = 3600
    now: float | None = None  # epoch s; default time.time() at parse
    chunk_rows: int = 1 << 20

    def __post_init__(self) -> None:
        if self.crs not in CRS_NAMES:
            raise BadInput(f"unknown --crs {self.crs!r}: use one of {', '.join(CRS_NAMES)}")


def resolve_columns(names: list[str]) -> dict[str, str]:
    """Map the canonical columns to the input's column names (aliases, any case).

    Raises ``BadInput`` naming the missing column and the columns that are there.
    """
    found: dict[str, str] = {}
    for name in names:
        canon = ALIASES.get(name.strip().lower().replace("-", "_"))
        if canon and canon not in found:
            found[canon] = name
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        have = ", ".join(names[:10]) or "none"
        raise BadInput(f"missing column {missing[0]!r} (columns found: {have})")
    return found
