"""Places read at their finest published level; popular times for every hour; best time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import h3
import numpy as np
import pytest

from heatmap.config import Settings
from heatmap.places import load_places
from heatmap.publish import cell_area_km2
from heatmap.read.places import PlaceBook
from heatmap.read.popular import best_slots, expected, hour_profile, usual_at

TZ = ZoneInfo("Asia/Shanghai")
T0 = int(datetime(2026, 11, 24, 6, 10, tzinfo=UTC).timestamp())  # Tuesday 14:10 in Shanghai


def book() -> PlaceBook:
    settings = Settings(db="/nonexistent/x.db", basemap_url="", secret="s", tz="Asia/Shanghai")  # type: ignore[call-arg]
    return PlaceBook(load_places()[:3], settings)


def test_a_withheld_place_reads_its_published_parents_density() -> None:
    b = book()
    pc = b.cells[0]
    parent_res = pc.res - 1
    parents = {h3.cell_to_parent(h3.int_to_str(int(c)), parent_res) for c in pc.cells}
    published = {h3.str_to_int(p): 700.0 for p in parents}  # only the parents, 700 people each

    def lookup(r: int, cells: np.ndarray) -> np.ndarray:
        if r != parent_res:
            return np.full(len(cells), np.nan)
        return np.array([published.get(int(c), np.nan) for c in cells])

    people, levels = b.values_levels(lookup)
    # Reference: each of the place's cells at the parent's density, times its own area.
    ref = sum(
        700.0
        / h3.cell_area(h3.cell_to_parent(h3.int_to_str(int(c)), parent_res), "km^2")
        * float(cell_area_km2(np.array([c], dtype=np.uint64))[0])
        for c in pc.cells
    )
    assert people[0] == pytest.approx(ref, rel=1e-9)
    assert levels[0].tolist() == [
        r == parent_res for r in range(b.settings.min_res, b.settings.base_res + 1)
    ]


def test_a_place_with_every_level_withheld_is_none() -> None:
    b = book()
    people, levels = b.values_levels(lambda r, cells: np.full(len(cells), np.nan))
    assert np.isnan(people).all() and not levels.any()


def test_every_hour_the_history_covers_has_a_usual_level() -> None:
    # A day of history before T0 (14:10, from 13:10 yesterday): every local hour, today's
    # morning included (the level of an hour is read by its start).
    def level_at(ts: int) -> np.ndarray | None:
        return (
            np.array([float(datetime.fromtimestamp(ts, TZ).hour)])
            if T0 - 90_000 <= ts < T0
            else None
        )

    profile, basis = hour_profile(level_at, TZ, T0, 1)
    assert not np.isnan(profile).any()
    assert profile[:, 0].tolist() == [float(h) for h in range(24)]
    assert set(basis) == {"hour_of_day"}


def test_forecast_and_best_time_read_one_expected_level() -> None:
    profile = np.array([[10.0] * 24]).T.copy()
    profile[15] = 100.0  # 15:00 is busy, 20:00 quiet
    profile[20] = 1.0
    now = np.array([10.0])
    at_20 = int(datetime(2026, 11, 24, 20, 30, tzinfo=TZ).timestamp())
    band = lambda v: np.where(np.isnan(v), -1, np.searchsorted([5.0, 20.0, 50.0], v, "right"))  # noqa: E731
    starts, best, pick = best_slots(profile, TZ, T0, now, band, 3)
    assert starts[pick[0]].hour == 20
    assert best[0] == pytest.approx(expected(profile, TZ, T0, now, at_20)[0])
    assert usual_at(profile, TZ, at_20)[0] == pytest.approx(1.0)


def test_best_time_is_never_crowded_when_a_calmer_hour_comes() -> None:
    # Crowded for the rest of today, quiet tomorrow morning.
    profile = np.full((24, 1), 100.0)
    profile[2:6] = 1.0
    now = np.array([100.0])
    band = lambda v: np.where(np.isnan(v), -1, np.searchsorted([5.0, 20.0, 50.0], v, "right"))  # noqa: E731
    late = int(datetime(2026, 11, 24, 20, 10, tzinfo=TZ).timestamp())
    starts, best, pick = best_slots(profile, TZ, late, now, band, 3)
    assert int(band(best)[0]) < 3 and 2 <= starts[pick[0]].hour < 6
