"""Named places on the read side: their cells, current values, usual level, forecast, ranking.

A place's value in a window is the sum of its *published* cells at its resolution
(:func:`place_res`), so every number here is derived from privacy-applied values only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import polars as pl

from heatmap.config import Settings
from heatmap.errors import NotFound
from heatmap.model import Snapshot, epoch_to_iso
from heatmap.places import Place, find_place, load_places, place_cells
from heatmap.policy import PublishPolicy
from heatmap.publish import cell_area_km2, density_to_band, make_bands
from heatmap.read.answers import TREND_STEADY, suppressed_label, trend_json, window_json
from heatmap.read.catalog import WindowList
from heatmap.read.reader import Reader
from heatmap.read.ref import LATEST, Ref
from heatmap.read.shapes import (
    BandValue,
    BestTime,
    ForecastStep,
    PlaceDetail,
    PlaceHead,
    PlaceItem,
    PlacesAnswer,
    UsualBasis,
    UsualHour,
)
from heatmap.store import WindowInfo

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

HISTORY_WEEKS = 4
"""Weeks of history averaged for the usual level at an hour of the week."""

HISTORY_DAYS = 7
"""Days of history averaged for the usual level at an hour of the day (fallback)."""

FORECAST_TAU_H = 2.0
"""e-folding time (hours) of the current departure from usual in the forecast."""

FORECAST_STEPS_MIN = (30, 60, 90, 120)
"""Forecast horizons in minutes after the current window starts."""

RATIO_CLIP = (0.25, 4.0)
"""Bounds of the current/usual ratio used by the forecast (one odd window cannot explode it)."""


def place_res(place: Place, min_res: int, base_res: int, max_cells: int = 7) -> int:
    """Return the finest resolution at which a place is covered by at most ``max_cells`` cells.

    A place then reads a handful of cells: fine enough to follow its outline, coarse enough
    that few of them are withheld. Clamped to ``[min_res, base_res]``.
    """
    for r in range(base_res, min_res - 1, -1):
        if len(place_cells(place, r)) <= max_cells:
            return r
    return min_res


@dataclass(frozen=True)
class PlaceCells:
    """The cells a place reads and their true area."""

    place: Place
    res: int
    cells: U64
    area_km2: float


class PlaceBook:
    """Named places, their current values and their history.

    Parameters
    ----------
    places : sequence of Place
        The places (default ``sample_data/places.json``).
    settings : Settings
        Published resolutions, bands and display time zone.

    Notes
    -----
    A place's value in a window is the sum of its *published* cells at its resolution
    (:func:`place_res`): ``None`` when all of them are withheld. Values of closed windows never
    change and are memoised; the history is read from the stored published values (no snapshot
    build). See :meth:`usual` and :meth:`forecast` for the methods.
    """

    HISTORY_MEMO = 100_000

    def __init__(self, places: Sequence[Place], settings: Settings) -> None:
        self.settings = settings
        self.places = tuple(places)
        self.index = {p.id: i for i, p in enumerate(self.places)}
        self.cells: list[PlaceCells] = []
        for p in self.places:
            r = place_res(p, settings.min_res, settings.base_res)
            c = place_cells(p, r)
            self.cells.append(PlaceCells(p, r, c, float(cell_area_km2(c).sum())))
        self.area = np.array([pc.area_km2 for pc in self.cells])
        # Per resolution: all place cells concatenated, and which place each belongs to.
        self._by_res: dict[int, tuple[U64, npt.NDArray[np.intp]]] = {}
        for r in sorted({pc.res for pc in self.cells}):
            own = [i for i, pc in enumerate(self.cells) if pc.res == r]
            cells = np.concatenate([self.cells[i].cells for i in own])
            owner = np.concatenate([np.full(len(self.cells[i].cells), i) for i in own])
            self._by_res[r] = (cells.astype(np.uint64), owner.astype(np.intp))
        self.policy = PublishPolicy.from_settings(settings)
        self.bands = make_bands(self.policy.bands_km2)
        try:
            self.tz = ZoneInfo(settings.tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.tz = ZoneInfo("UTC")
        self._history: dict[int, F64] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> PlaceBook:
        """Return the book of the places file (default ``sample_data/places.json``)."""
        return cls(load_places(path), settings)

    def find(self, query: str) -> int:
        """Return the index of a place by id (or, failing that, by name); ``NotFound``."""
        i = self.index.get(query)
        if i is not None:
            return i
        p = find_place(self.places, query)
        if p is None:
            raise NotFound(f"no place {query!r}: see /api/v1/places")
        return self.index[p.id]

    # -- values --------------------------------------------------------------------------------
    def values(self, lookup: Callable[[int, U64], F64]) -> F64:
        """Return each place's people; ``lookup(res, cells)`` gives people per cell or NaN."""
        out = np.zeros(len(self.places))
        seen = np.zeros(len(self.places), dtype=bool)
        for r, (cells, owner) in self._by_res.items():
            v = lookup(r, cells)
            ok = ~np.isnan(v)
            np.add.at(out, owner[ok], v[ok])
            seen[owner[ok]] = True
        out[~seen] = np.nan
        return out

    def from_snapshots(self, snaps: dict[int, Snapshot]) -> F64:
        """Return each place's people in a window from its snapshots."""

        def lookup(r: int, cells: U64) -> F64:
            snap = snaps[r]
            rows = snap.lookup(cells)
            return np.where(rows >= 0, snap.people[np.maximum(rows, 0)] if len(snap) else 0, np.nan)

        return self.values(lookup)

    def from_published(self, frame: pl.DataFrame) -> F64:
        """Return each place's people from stored published values (res, cell, people)."""
        res = frame["res"].to_numpy()
        cells_all = frame["cell"].to_numpy()
        people_all = frame["people"].to_numpy()

        def lookup(r: int, cells: U64) -> F64:
            m = res == r
            c, p = cells_all[m], people_all[m]
            order = np.argsort(c)
            c, p = c[order], p[order]
            pos = np.minimum(np.searchsorted(c, cells), max(len(c) - 1, 0))
            found = (c[pos] == cells) if len(c) else np.zeros(len(cells), dtype=bool)
            return np.where(found, p[pos] if len(c) else 0, np.nan)

        return self.values(lookup)

    def closed_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in a closed window (memoised: closed windows are final)."""
        hit = self._history.get(info.w)
        if hit is not None:
            return hit
        pub = reader.store.read_published(info.w)
        vals = np.full(len(self.places), np.nan) if pub is None else self.from_published(pub.frame)
        with self._lock:
            if len(self._history) >= self.HISTORY_MEMO:
                self._history.pop(next(iter(self._history)))
            self._history[info.w] = vals
        return vals

    def window_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in any window (open ones from the live snapshot)."""
        if info.closed:
            return self.closed_values(reader, info)
        return self.from_snapshots(reader.snapshots(info))

    # -- history -------------------------------------------------------------------------------
    def hour_level(self, reader: Reader, wl: WindowList, hour_start: int) -> F64 | None:
        """Return the places' people in the closed window nearest the middle of an hour."""
        wins = [i for i in wl.between(hour_start, hour_start + 3600) if i.closed]
        if not wins:
            return None
        mid = hour_start + 1800
        best = min(wins, key=lambda i: abs((i.window.start + i.window.end) / 2 - mid))
        return self.closed_values(reader, best)

    def usual(self, reader: Reader, wl: WindowList, t: int) -> tuple[F64, UsualBasis]:
        """Return each place's usual people in the local hour containing ``t``, and the basis.

        Notes
        -----
        The usual level is the mean, over the previous :data:`HISTORY_WEEKS` weeks, of the level
        at the same local hour of the same weekday (``hour_of_week``); a place or week without a
        published value is left out. Without any such week the same hour of the previous
        :data:`HISTORY_DAYS` days is used (``hour_of_day``); without that, NaN (``none``). The
        level of an hour is its closed window nearest the half hour (:meth:`hour_level`).
        """
        local = datetime.fromtimestamp(t, self.tz).replace(minute=0, second=0, microsecond=0)
        bases: tuple[tuple[UsualBasis, timedelta, int], ...] = (
            ("hour_of_week", timedelta(weeks=1), HISTORY_WEEKS),
            ("hour_of_day", timedelta(days=1), HISTORY_DAYS),
        )
        for basis, step, count in bases:
            levels = []
            for k in range(1, count + 1):
                lv = self.hour_level(reader, wl, int((local - k * step).timestamp()))
                if lv is not None:
                    levels.append(lv)
            if levels:
                stack = np.vstack(levels)
                with np.errstate(invalid="ignore"):
                    have = (~np.isnan(stack)).sum(axis=0)
                    mean = np.where(
                        have > 0, np.nansum(stack, axis=0) / np.maximum(have, 1), np.nan
                    )
                return mean.astype(np.float64), basis
        return np.full(len(self.places), np.nan), "none"

    def band_of(self, i: int, people: float | None) -> BandValue:
        """Return ``density_km2``, ``band`` and ``label`` of a place value."""
        if people is None:
            return {
                "density_km2": None,
                "band": None,
                "label": suppressed_label(self.policy),
            }
        d = people / self.area[i] if self.area[i] > 0 else 0.0
        b = self.bands[int(density_to_band(np.array([d]), self.bands)[0])]
        return {"density_km2": d, "band": b.name, "label": {"en": b.label_en, "zh": b.label_zh}}


def forecast_value(
    usual_t: float | None, usual_now: float | None, now: float | None, hours: float
) -> tuple[float | None, str]:
    """Return the expected people ``hours`` ahead and the method used.

    Notes
    -----
    With the usual level at the target hour ``U(t)``, the usual level now ``U(t0)`` and the
    current value ``N``::

        r = clip(N / U(t0), 0.25, 4)            # how far from usual it is now
        F(t) = U(t) * r ** exp(-h / tau)        # the departure decays, tau = 2 h

    so a place twice as busy as usual now is expected ~1.6x usual in one hour and ~1.4x in two,
    following the usual profile's shape. Without ``U(t0)`` or ``N`` the usual level is the
    forecast (``usual``); without any usual level, the current value persists
    (``persistence``); with neither, ``None``.

    >>> forecast_value(100.0, 50.0, 100.0, 0.0)
    (200.0, 'profile_scaled')
    >>> forecast_value(None, None, 80.0, 1.0)
    (80.0, 'persistence')
    """
    if usual_t is not None:
        if usual_now is not None and now is not None and usual_now > 0:
            r = min(max(now / usual_now, RATIO_CLIP[0]), RATIO_CLIP[1])
            return usual_t * r ** math.exp(-hours / FORECAST_TAU_H), "profile_scaled"
        return usual_t, "usual"
    if now is not None:
        return now, "persistence"
    return None, "none"


def _num(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _place_head(book: PlaceBook, i: int) -> PlaceHead:
    p = book.places[i]
    pc = book.cells[i]
    return {
        "id": p.id,
        "name": {"zh": p.name_zh, "en": p.name_en},
        "kind": p.kind,
        "lat": p.lat,
        "lng": p.lng,
        "res": pc.res,
        "cells": len(pc.cells),
        "area_km2": round(pc.area_km2, 6),
    }


def places_ranking(reader: Reader, book: PlaceBook, ref: Ref = LATEST) -> PlacesAnswer:
    """Return the places ranked by crowding (density of their published cells), busiest first.

    Places whose cells are all withheld come last with ``people: None, suppressed: true``.
    """
    info = reader.window(ref)
    now = book.window_values(reader, info)
    prev_info = reader.previous(info)
    before = None if prev_info is None else book.window_values(reader, prev_info)
    items: list[PlaceItem] = []
    for i in range(len(book.places)):
        people = _num(now[i])
        prev = None if before is None else _num(before[i])
        items.append(
            {
                **_place_head(book, i),
                "people": people,
                **book.band_of(i, people),
                "suppressed": people is None,
                "trend": trend_json(people, prev, prev_info),
                "rank": 0,
            }
        )
    items.sort(key=lambda x: (x["density_km2"] is None, -(x["density_km2"] or 0.0)))
    for rank, item in enumerate(items, 1):
        item["rank"] = rank
    return {"window": window_json(info), "places": items}


def place_detail(reader: Reader, book: PlaceBook, place_id: str, ref: Ref = LATEST) -> PlaceDetail:
    """Return one place: now, trend, usual for this hour, forecast, best time to go today.

    The forecast method is :func:`forecast_value`; the usual level is :meth:`PlaceBook.usual`.
    "Best time today" is the remaining local hour of the window's day with the lowest expected
    level (forecast within two hours, usual level beyond).
    """
    i = book.find(place_id)
    info = reader.window(ref)
    wl = reader.windows()
    t0 = info.window.start
    now = _num(book.window_values(reader, info)[i])
    prev_info = reader.previous(info)
    before = None if prev_info is None else _num(book.window_values(reader, prev_info)[i])
    usual_all, basis = book.usual(reader, wl, t0)
    usual_now = _num(usual_all[i])
    ratio = None if now is None or not usual_now else round(now / usual_now, 4)

    forecast: list[ForecastStep] = []
    for minutes in FORECAST_STEPS_MIN:
        t = t0 + minutes * 60
        u_t = _num(book.usual(reader, wl, t)[0][i])
        value, method = forecast_value(u_t, usual_now, now, minutes / 60.0)
        forecast.append(
            {
                "at": epoch_to_iso(t),
                "minutes": minutes,
                "people": None if value is None else round(value, 1),
                **book.band_of(i, value),
                "method": method,
            }
        )

    local0 = datetime.fromtimestamp(t0, book.tz)
    day0 = local0.replace(hour=0, minute=0, second=0, microsecond=0)
    today: list[UsualHour] = []
    best: BestTime | None = None
    for h in range(24):
        start = day0 + timedelta(hours=h)
        ts = int(start.timestamp())
        usual_h = _num(book.usual(reader, wl, ts)[0][i])
        today.append({"hour": h, "start": start.isoformat(), "usual": usual_h})
        if ts + 3600 <= t0:
            continue  # this hour is over
        mid = max(ts + 1800, t0)
        ahead_h = (mid - t0) / 3600.0
        if ahead_h <= 2.0:
            expected, _ = forecast_value(usual_h, usual_now, now, ahead_h)
        else:
            expected = usual_h
        if expected is not None and (best is None or expected < best["people"]):
            best = {
                "hour": h,
                "start": start.isoformat(),
                "end": (start + timedelta(hours=1)).isoformat(),
                "people": round(expected, 1),
                **book.band_of(i, expected),
            }

    return {
        **_place_head(book, i),
        "window": window_json(info),
        "now": {
            "people": now,
            **book.band_of(i, now),
            "suppressed": now is None,
        },
        "trend": trend_json(now, before, prev_info),
        "usual": {
            "people": usual_now,
            **book.band_of(i, usual_now),
            "basis": basis,
            "ratio": ratio,
            "busier_than_usual": None if ratio is None else ratio > 1 + TREND_STEADY,
        },
        "forecast": forecast,
        "today": today,
        "best_time_today": best,
        "timezone": str(book.tz),
    }
