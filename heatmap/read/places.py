"""Named places on the read side: their cells, current values, usual level, forecast, ranking.

A place's value in a window is read from its cells at its resolution (:func:`place_res`), each
at its finest published level (the cell itself, or where it is withheld its published parent or
grandparent, as the map draws it), so every number here is derived from privacy-applied values
only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
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
from heatmap.read.popular import (
    FORECAST_TAU_H,
    HISTORY_DAYS,
    HISTORY_WEEKS,
    RATIO_CLIP,
    best_slots,
    expected,
    hour_profile,
    usual_at,
)
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
from tiles.fill import cell_to_parent

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

FORECAST_STEPS_MIN = (30, 60, 90, 120)
"""Forecast horizons in minutes after the time the numbers hold for (``as_of``)."""


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
class _ResCells:
    """The cells of the places read at one resolution, with their ancestors."""

    cells: U64
    owner: npt.NDArray[np.intp]
    area: F64
    ancestors: dict[int, U64]
    ancestor_area: dict[int, F64]


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
    A place's value in a window is read from its cells at its resolution (:func:`place_res`),
    each at its finest published level (:meth:`values_levels`): ``None`` when every level is
    withheld. Values of closed windows never
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
        # Per resolution: all place cells concatenated, which place each belongs to, and each
        # cell's ancestor (itself included) and its area at every coarser published resolution.
        self._by_res: dict[int, _ResCells] = {}
        for r in sorted({pc.res for pc in self.cells}):
            own = [i for i, pc in enumerate(self.cells) if pc.res == r]
            cells = np.concatenate([self.cells[i].cells for i in own]).astype(np.uint64)
            owner = np.concatenate([np.full(len(self.cells[i].cells), i) for i in own])
            anc = {q: cell_to_parent(cells, q) for q in range(settings.min_res, r + 1)}
            self._by_res[r] = _ResCells(
                cells=cells,
                owner=owner.astype(np.intp),
                area=cell_area_km2(cells),
                ancestors=anc,
                ancestor_area={q: cell_area_km2(a) for q, a in anc.items()},
            )
        self.policy = PublishPolicy.from_settings(settings)
        self.bands = make_bands(self.policy.bands_km2)
        try:
            self.tz = ZoneInfo(settings.tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.tz = ZoneInfo("UTC")
        self._history: dict[tuple[str, int], F64] = {}
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
        return self.values_levels(lookup)[0]

    def values_levels(self, lookup: Callable[[int, U64], F64]) -> tuple[F64, npt.NDArray[np.bool_]]:
        """Return each place's people and which resolutions they come from.

        Notes
        -----
        Each cell of a place reads its finest published level, as the map draws it
        (:mod:`tiles.fill`): its own published people, or, where it is withheld, the density
        of its finest published ancestor (parent, grandparent...) times the cell's area. Only
        published values enter (no parent minus children). A place's people is the sum over
        its cells; ``None`` (NaN) when every level of every cell is withheld. ``levels[i, j]``
        says place ``i`` uses resolution ``min_res + j``.
        """
        n_res = self.settings.base_res - self.settings.min_res + 1
        out = np.zeros(len(self.places))
        seen = np.zeros(len(self.places), dtype=bool)
        levels = np.zeros((len(self.places), n_res), dtype=bool)
        for r, rc in self._by_res.items():
            est = np.full(rc.cells.shape[0], np.nan)
            for q in range(r, self.settings.min_res - 1, -1):
                todo = np.flatnonzero(np.isnan(est))
                if not todo.size:
                    break
                v = lookup(q, rc.ancestors[q][todo])
                ok = ~np.isnan(v)
                hit = todo[ok]
                est[hit] = v[ok] if q == r else v[ok] / rc.ancestor_area[q][hit] * rc.area[hit]
                levels[rc.owner[hit], q - self.settings.min_res] = True
            ok = ~np.isnan(est)
            np.add.at(out, rc.owner[ok], est[ok])
            seen[rc.owner[ok]] = True
        out[~seen] = np.nan
        return out, levels

    @staticmethod
    def snapshot_lookup(snaps: dict[int, Snapshot]) -> Callable[[int, U64], F64]:
        """Return the people lookup ``(res, cells) -> people or NaN`` of a window's snapshots."""

        def lookup(r: int, cells: U64) -> F64:
            snap = snaps[r]
            rows = snap.lookup(cells)
            return np.where(rows >= 0, snap.people[np.maximum(rows, 0)] if len(snap) else 0, np.nan)

        return lookup

    @staticmethod
    def published_lookup(frame: pl.DataFrame) -> Callable[[int, U64], F64]:
        """Return the people lookup of stored published values (res, cell, people)."""
        frame = frame.sort("res", "cell")
        res = frame["res"].to_numpy()
        cells_all = frame["cell"].to_numpy().astype(np.uint64)
        people_all = frame["people"].to_numpy().astype(np.float64)

        def lookup(r: int, cells: U64) -> F64:
            a, b = np.searchsorted(res, r, "left"), np.searchsorted(res, r, "right")
            c, p = cells_all[a:b], people_all[a:b]
            if not len(c):
                return np.full(len(cells), np.nan)
            pos = np.minimum(np.searchsorted(c, cells), len(c) - 1)
            return np.where(c[pos] == cells, p[pos], np.nan)

        return lookup

    def from_snapshots(self, snaps: dict[int, Snapshot]) -> F64:
        """Return each place's people in a window from its snapshots."""
        return self.values(self.snapshot_lookup(snaps))

    def from_published(self, frame: pl.DataFrame) -> F64:
        """Return each place's people from stored published values (res, cell, people)."""
        return self.values(self.published_lookup(frame))

    def closed_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in a closed window (memoised: closed windows are final)."""
        key = (info.kind, info.w)
        hit = self._history.get(key)
        if hit is not None:
            return hit
        pub = reader.published(info)  # a closed window or a roll-up
        vals = np.full(len(self.places), np.nan) if pub is None else self.from_published(pub.frame)
        with self._lock:
            while self._history and len(self._history) >= self.HISTORY_MEMO:
                self._history.pop(next(iter(self._history)))
            if self.HISTORY_MEMO:
                self._history[key] = vals
        return vals

    def window_values(self, reader: Reader, info: WindowInfo) -> F64:
        """Return the places' people in any window (open ones from the live snapshot)."""
        if info.closed:
            return self.closed_values(reader, info)
        return self.from_snapshots(reader.snapshots(info))

    # -- history -------------------------------------------------------------------------------
    def hour_level(self, reader: Reader, wl: WindowList, hour_start: int) -> F64 | None:
        """Return the places' people in the closed window nearest the middle of an hour (past the
        full-detail retention: the hour's roll-up, its mean)."""
        wins = [i for i in wl.between(hour_start, hour_start + 3600) if i.closed]
        if not wins:
            rolled = wl.rollups.at("hour", hour_start + 1800)
            return None if rolled is None else self.closed_values(reader, rolled)
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

    def band_index(self, people: F64) -> npt.NDArray[np.intp]:
        """Return the band index of each place's people (-1 where None)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(self.area > 0, people / self.area, 0.0)
        idx = density_to_band(np.nan_to_num(d), self.bands).astype(np.intp)
        return np.where(np.isnan(people), -1, idx)

    def profile(self, reader: Reader, wl: WindowList, t0: int) -> tuple[F64, list[str]]:
        """Return the places' usual level per local hour of ``t0``'s day (24 x places)."""
        return hour_profile(
            lambda ts: self.hour_level(reader, wl, ts), self.tz, t0, len(self.places)
        )


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


def for_audience(reader: Reader, people: F64) -> F64:
    """Return places' people as the reader's audience sees them.

    The public sees multiples of ``k_min * expansion`` (at least one: a value shown stands for
    at least ``k_min`` devices), as :func:`heatmap.publish.round_for_public` does for cells: a
    place read partly from a parent's average would otherwise show, and change by, less.
    Planners see the values as computed.
    """
    step = reader.policy.k_min * reader.policy.expansion
    if not reader.public or step <= 0:
        return people
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(people), np.nan, np.maximum(np.round(people / step), 1.0) * step)


def _best_json(book: PlaceBook, i: int, start: datetime, value: float) -> BestTime:
    return {
        "hour": start.hour,
        "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(),
        "people": round(value, 1),
        **book.band_of(i, value),
    }


def places_ranking(reader: Reader, book: PlaceBook, ref: Ref = LATEST) -> PlacesAnswer:
    """Return the places ranked by crowding (density of their cells' values), busiest first.

    Places whose cells are all withheld come last with ``people: None, suppressed: true``.
    ``quieter_at`` is a place's best coming hour (:func:`heatmap.read.popular.best_slots`) when
    it is expected in a calmer band than now.
    """
    info = reader.window(ref)
    now = for_audience(reader, book.window_values(reader, info))
    prev_info = reader.previous(info)
    before = None
    if prev_info is not None:
        before = for_audience(reader, book.window_values(reader, prev_info))
    t0 = info.window.end  # the time the numbers hold for (a release's tick)
    profile, _ = book.profile(reader, reader.windows(), t0)
    starts, best, pick = best_slots(profile, book.tz, t0, now, book.band_index, len(book.bands) - 1)
    calmer = (pick >= 0) & (book.band_index(best) < book.band_index(now))
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
                "quieter_at": _best_json(book, i, starts[pick[i]], best[i]) if calmer[i] else None,
            }
        )
    items.sort(key=lambda x: (x["density_km2"] is None, -(x["density_km2"] or 0.0)))
    for rank, item in enumerate(items, 1):
        item["rank"] = rank
    return {"window": window_json(info), "places": items}


def place_detail(reader: Reader, book: PlaceBook, place_id: str, ref: Ref = LATEST) -> PlaceDetail:
    """Return one place: now, trend, usual for this hour, forecast, popular times, best time.

    One expected level (:func:`heatmap.read.popular.expected`: the usual profile of the day,
    scaled by how far from usual the place is now, the departure fading with
    :data:`FORECAST_TAU_H`) gives the forecast and the best time, so they agree; the usual
    level by hour (``today``, "popular times") is :meth:`PlaceBook.profile`. "Best time" is
    the quietest coming hour of the day, never a crowded one while a calmer hour is coming
    (:func:`heatmap.read.popular.best_slots`).
    """
    i = book.find(place_id)
    info = reader.window(ref)
    wl = reader.windows()
    t0 = info.window.end  # the time the numbers hold for (a release's tick)
    now_all, levels = book.values_levels(_lookup_of(book, reader, info))
    now_all = for_audience(reader, now_all)
    now = _num(now_all[i])
    prev_info = reader.previous(info)
    before = None
    if prev_info is not None:
        before = _num(for_audience(reader, book.window_values(reader, prev_info))[i])
    profile, basis = book.profile(reader, wl, t0)
    usual_now = _num(usual_at(profile, book.tz, t0)[i])
    ratio = None if now is None or not usual_now else round(now / usual_now, 4)

    forecast: list[ForecastStep] = []
    for minutes in FORECAST_STEPS_MIN:
        t = t0 + minutes * 60
        value = _num(expected(profile, book.tz, t0, now_all, t)[i])
        _, method = forecast_value(
            _num(usual_at(profile, book.tz, t)[i]), usual_now, now, minutes / 60.0
        )
        forecast.append(
            {
                "at": epoch_to_iso(t),
                "minutes": minutes,
                "people": None if value is None else round(value, 1),
                **book.band_of(i, value),
                "method": method,
            }
        )

    day0 = datetime.fromtimestamp(t0, book.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    hour_now = datetime.fromtimestamp(t0, book.tz).hour
    today: list[UsualHour] = []
    for h in range(24):
        u = _num(profile[h, i])
        today.append(
            {
                "hour": h,
                "start": (day0 + timedelta(hours=h)).isoformat(),
                "usual": None if u is None else round(u, 1),
                "band": book.band_of(i, u)["band"],
                "current": h == hour_now,
            }
        )
    starts, best_v, pick = best_slots(
        profile, book.tz, t0, now_all, book.band_index, len(book.bands) - 1
    )
    best = None if pick[i] < 0 else _best_json(book, i, starts[pick[i]], float(best_v[i]))
    used = [book.settings.min_res + j for j in np.flatnonzero(levels[i])]
    return {
        **_place_head(book, i),
        "window": window_json(info),
        "now": {
            "people": now,
            **book.band_of(i, now),
            "suppressed": now is None,
            "levels": [int(q) for q in used],
        },
        "trend": trend_json(now, before, prev_info),
        "usual": {
            "people": usual_now,
            **book.band_of(i, usual_now),
            "basis": cast(UsualBasis, basis[hour_now]),
            "ratio": ratio,
            "busier_than_usual": None if ratio is None else ratio > 1 + TREND_STEADY,
        },
        "forecast": forecast,
        "today": today,
        "best_time_today": best,
        "timezone": str(book.tz),
    }


def _lookup_of(book: PlaceBook, reader: Reader, info: WindowInfo) -> Callable[[int, U64], F64]:
    """Return the people lookup of a window (closed: stored values; release: its snapshots)."""
    if info.closed:
        pub = reader.published(info)
        if pub is not None:
            return book.published_lookup(pub.frame)
    snaps = reader.snapshots(info)
    return book.snapshot_lookup(snaps)
