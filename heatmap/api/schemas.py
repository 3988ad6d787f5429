"""Response shapes for OpenAPI (documentation only: answers are built as dicts by the core)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Label(BaseModel):
    """A text label in both languages."""

    en: str
    zh: str


class WindowOut(BaseModel):
    """A window ``[start, end)`` in ISO-8601 UTC; ``complete`` once it is closed."""

    start: str
    end: str
    complete: bool


class Trend(BaseModel):
    """Change from the previous window (nulls when either side is withheld)."""

    previous_window: WindowOut | None
    previous_people: float | None
    change: float | None
    ratio: float | None
    direction: Literal["busier", "quieter", "steady"] | None


class DensityAnswer(BaseModel):
    """Density at a point."""

    cell: str = Field(description="H3 index (hex string)")
    res: int
    window: WindowOut
    people: float | None
    density_km2: float | None
    band: str | None
    label: Label
    suppressed: bool = Field(description="True when the cell is withheld (fewer than k_min)")
    trend: Trend


class CellProperties(BaseModel):
    """Properties of one published cell (same as the MVT)."""

    cell: str
    people: float
    density_km2: float
    band: str


class CellFeature(BaseModel):
    """A GeoJSON feature of one cell."""

    type: Literal["Feature"]
    id: str
    geometry: dict[str, Any]
    properties: CellProperties


class CellCollection(BaseModel):
    """Published cells in a bbox as a GeoJSON FeatureCollection."""

    type: Literal["FeatureCollection"]
    bbox: list[float]
    res: int
    window: WindowOut
    count: int
    features: list[CellFeature]


class WindowsAnswer(BaseModel):
    """A page of windows, newest first."""

    total: int
    window_s: int
    first: WindowOut | None
    latest: WindowOut | None
    windows: list[WindowOut]
    next_before: str | None


class LegendBand(BaseModel):
    """One band of the legend."""

    band: str
    color: str
    label: Label
    min_km2: float
    max_km2: float | None


class LegendAnswer(BaseModel):
    """The legend and privacy parameters."""

    unit: str
    bands: list[LegendBand]
    k_min: int
    dp_epsilon: float | None
    expansion: float
    suppressed: Label


class ResStats(BaseModel):
    """Published figures at one resolution."""

    res: int
    cells: int
    people: float
    cells_by_band: dict[str, int]


class StatsAnswer(BaseModel):
    """City figures of a window."""

    window: WindowOut
    people: float
    published_cells: int
    by_res: list[ResStats]
    k_min: int
    dp_epsilon: float | None
    expansion: float


class PlaceItem(BaseModel):
    """A place in the ranking."""

    id: str
    name: Label
    kind: str
    lat: float
    lng: float
    res: int
    cells: int
    area_km2: float
    people: float | None
    density_km2: float | None
    band: str | None
    label: Label
    suppressed: bool
    trend: Trend
    rank: int


class PlacesAnswer(BaseModel):
    """Places ranked by crowding."""

    window: WindowOut
    places: list[PlaceItem]


class PlaceDetail(BaseModel):
    """One place: now, trend, usual, forecast, best time today."""

    id: str
    name: Label
    kind: str
    window: WindowOut
    now: dict[str, Any]
    trend: Trend
    usual: dict[str, Any]
    forecast: list[dict[str, Any]]
    today: list[dict[str, Any]]
    best_time_today: dict[str, Any] | None
    timezone: str


class RejectedRow(BaseModel):
    """A rejected row (1-based data row) and why."""

    row: int
    reason: str


class IngestAnswer(BaseModel):
    """What a POSTed batch did."""

    accepted: int
    rejected: list[RejectedRow]
    rejected_total: int
    late: int
    windows_closed: int
    reasons: dict[str, int]
    duplicate: bool
    batch_id: str | None


class Health(BaseModel):
    """Health of the service."""

    status: str
    store: str
    version: str | None = None
    windows: int | None = None
    latest_window: WindowOut | None = None
    latest_window_age_s: float | None = None
    ingest_enabled: bool | None = None
    uptime_s: float | None = None
