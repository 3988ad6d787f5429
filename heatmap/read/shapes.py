"""The shapes of the read side's JSON answers: one definition for the code and for OpenAPI.

The answers are built as plain dicts (no validation cost per request); these ``TypedDict`` s
type them for mypy, and the HTTP layer hands the same classes to OpenAPI as response models.
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import TypedDict


class Label(TypedDict):
    """A text label in both languages."""

    en: str
    zh: str


class WindowOut(TypedDict):
    """What an answer describes: a release (the live answer), a closed window, or an hourly or
    daily roll-up of closed windows past their full-detail retention (``hour``, ``day``).

    ``[start, end)`` in ISO-8601 UTC; ``complete`` for a closed window; ``as_of`` the time
    the numbers hold for; ``horizon_s`` the span counted.
    """

    start: str
    end: str
    complete: bool
    kind: Literal["release", "window", "hour", "day"]
    as_of: str
    horizon_s: int


class Trend(TypedDict):
    """Change from the previous window (nulls when either side is withheld)."""

    previous_window: WindowOut | None
    previous_people: float | None
    change: float | None
    ratio: float | None
    direction: Literal["busier", "quieter", "steady"] | None


Coverage = Literal["published", "parent", "withheld", "outside"]
"""Why a point reads what it reads: its cell at the asked resolution is published, a coarser
published cell (parent, grandparent...) fills its withheld cell, every level is withheld, or
the point is outside the covered area."""


class DensityAnswer(TypedDict):
    """Density at a point (``people: null, suppressed: true`` when withheld).

    ``cell`` and ``res`` are the cell whose values are shown: the finest published one that
    contains the point at or above ``drawn_res`` (the resolution asked, the map's at that
    zoom), ``coverage`` says which case it is and ``note`` explains it in words.
    """

    cell: str
    res: int
    window: WindowOut
    people: float | None
    density_km2: float | None
    band: str | None
    label: Label
    suppressed: bool
    trend: Trend
    drawn_res: int
    coverage: Coverage
    note: Label | None


class CellProperties(TypedDict):
    """Properties of one published cell (same as the MVT)."""

    cell: str
    people: float
    density_km2: float
    band: str


class CellFeature(TypedDict):
    """A GeoJSON feature of one cell."""

    type: Literal["Feature"]
    id: str
    geometry: dict[str, Any]
    properties: CellProperties


class CellCollection(TypedDict):
    """Published cells in a bbox as a GeoJSON FeatureCollection."""

    type: Literal["FeatureCollection"]
    bbox: list[float]
    res: int
    window: WindowOut
    count: int
    features: list[CellFeature]


class WindowsAnswer(TypedDict):
    """A page of windows, newest first."""

    total: int
    window_s: int
    first: WindowOut | None
    latest: WindowOut | None
    latest_release: WindowOut | None
    windows: list[WindowOut]
    next_before: str | None


class LegendBand(TypedDict):
    """One band of the legend."""

    band: str
    color: str
    label: Label
    min_km2: float
    max_km2: float | None


class PrivacyAnswer(TypedDict):
    """The privacy parameters in force and the budget they spend per device."""

    k_min: int
    unit: Literal["device"]
    expansion: float
    resolutions: list[int]
    release_s: int
    horizon_s: int
    window_s: int
    dp_epsilon: float | None
    dp: dict[str, Any] | None
    """With DP: epsilon per release, window, ping and day; noise; threshold; explanation."""
    temporal_limit: dict[str, str] | None
    """Without DP: what k-anonymity alone cannot stop, in plain words."""


class LegendAnswer(TypedDict):
    """The legend and privacy parameters."""

    unit: str
    bands: list[LegendBand]
    k_min: int
    dp_epsilon: float | None
    expansion: float
    suppressed: Label
    privacy: PrivacyAnswer


class ResStats(TypedDict):
    """Published figures at one resolution."""

    res: int
    cells: int
    people: float
    cells_by_band: dict[str, int]


class StatsAnswer(TypedDict):
    """City figures of a window."""

    window: WindowOut
    people: float
    published_cells: int
    by_res: list[ResStats]
    k_min: int
    dp_epsilon: float | None
    expansion: float


class BandValue(TypedDict):
    """Density, band and label of a value (nulls and the withheld label when it is None)."""

    density_km2: float | None
    band: str | None
    label: Label


class PlaceHead(TypedDict):
    """What identifies a place and the cells it reads."""

    id: str
    name: Label
    kind: str
    lat: float
    lng: float
    res: int
    cells: int
    area_km2: float


class BestTime(BandValue):
    """The coming local hour with the lowest expected level."""

    hour: int
    start: str
    end: str
    people: float


class PlaceItem(PlaceHead, BandValue):
    """A place in the ranking (``quieter_at``: its next calmer hour today, if any)."""

    people: float | None
    suppressed: bool
    trend: Trend
    rank: int
    quieter_at: BestTime | None


class PlacesAnswer(TypedDict):
    """Places ranked by crowding."""

    window: WindowOut
    places: list[PlaceItem]


class PlaceNow(BandValue):
    """A place's value now (``levels``: the resolutions its cells' values come from)."""

    people: float | None
    suppressed: bool
    levels: list[int]


UsualBasis = Literal["hour_of_week", "hour_of_day", "none"]
"""What a usual level was computed from."""


class PlaceUsual(BandValue):
    """A place's usual level at this hour and how today compares."""

    people: float | None
    basis: UsualBasis
    ratio: float | None
    busier_than_usual: bool | None


class ForecastStep(BandValue):
    """The expected level some minutes ahead."""

    at: str
    minutes: int
    people: float | None
    method: str


class UsualHour(TypedDict):
    """The usual level of one local hour of the day (popular times), its band, and whether
    it is the current hour."""

    hour: int
    start: str
    usual: float | None
    band: str | None
    current: bool


class PlaceDetail(PlaceHead):
    """One place: now, trend, usual, forecast, best time today."""

    window: WindowOut
    now: PlaceNow
    trend: Trend
    usual: PlaceUsual
    forecast: list[ForecastStep]
    today: list[UsualHour]
    best_time_today: BestTime | None
    timezone: str
