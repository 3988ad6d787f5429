"""What a release says about the watched targets, and whether each rule holds on it.

A target is read exactly like a named place (:class:`heatmap.read.places.PlaceBook`): its cells
at the place's resolution, each at its finest *published* level. So an alert is made of the
numbers the maps and place pages already publish, never of anything finer. The public's
watches read the public's values (people rounded to ``k_min`` devices, as on the place pages),
planners' watches the exact published values; the usual level and the forecast are the place
pages' own (:func:`heatmap.read.popular.expected`).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from heatmap.alerts.rules import FORECAST_STEP_S, Rule
from heatmap.model import epoch_to_iso
from heatmap.read.catalog import WindowList
from heatmap.read.places import PlaceBook, for_audience
from heatmap.read.popular import expected, usual_at
from heatmap.read.reader import Reader
from heatmap.store import WindowInfo

F64 = npt.NDArray[np.float64]


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 1)


class Reading:
    """One release's values of the places of one book, as one audience sees them (lazy).

    Parameters
    ----------
    book : PlaceBook
        The targets, read as places.
    reader : Reader
        The audience's reader (the public's rounds people).
    info : WindowInfo
        The release.
    wl : WindowList
        The store's windows and kept releases (history for the usual level, earlier releases).
    """

    def __init__(self, book: PlaceBook, reader: Reader, info: WindowInfo, wl: WindowList) -> None:
        self.book = book
        self.reader = reader
        self.info = info
        self.wl = wl
        self.t0 = info.window.end
        self._forecasts: dict[float, tuple[npt.NDArray[np.intp], F64, F64]] = {}
        self._earlier: dict[int, tuple[WindowInfo | None, F64 | None]] = {}

    @cached_property
    def now(self) -> F64:
        """Return each place's people in the release (NaN: withheld)."""
        return for_audience(self.reader, self.book.window_values(self.reader, self.info))

    @cached_property
    def band(self) -> npt.NDArray[np.intp]:
        """Return each place's band index now (-1: withheld)."""
        return self.book.band_index(self.now)

    @cached_property
    def profile(self) -> F64:
        """Return the usual level of each local hour of the release's day (24 x places)."""
        return self.book.profile(self.reader, self.wl, self.t0)[0]

    @cached_property
    def usual(self) -> F64:
        """Return each place's usual level at the release's time (NaN: no history)."""
        return usual_at(self.profile, self.book.tz, self.t0)

    def forecast(self, hours: float) -> tuple[npt.NDArray[np.intp], F64, F64]:
        """Return per place the highest band expected within ``hours`` and, for each band
        index, when and at what level it is first reached (as arrays: ``(steps, places)``)."""
        hit = self._forecasts.get(hours)
        if hit is None:
            n = max(1, int(hours * 3600 // FORECAST_STEP_S))
            times = np.array([self.t0 + FORECAST_STEP_S * (k + 1) for k in range(n)], np.float64)
            values = np.vstack(
                [expected(self.profile, self.book.tz, self.t0, self.now, int(t)) for t in times]
            )
            bands = np.vstack([self.book.band_index(v) for v in values])
            hit = (bands, times, values)
            self._forecasts[hours] = hit
        return hit

    def earlier(self, minutes: int) -> tuple[WindowInfo | None, F64 | None]:
        """Return the newest kept release at least ``minutes`` before this one and its values."""
        if minutes not in self._earlier:
            info = self.wl.releases.at_or_before(self.t0 - minutes * 60)
            values = None
            if info is not None:
                values = for_audience(self.reader, self.book.window_values(self.reader, info))
            self._earlier[minutes] = (info, values)
        return self._earlier[minutes]


def band_index(name: str | None, book: PlaceBook) -> int:
    """Return the index of a band name in the book's bands."""
    return next(i for i, b in enumerate(book.bands) if b.name == name)


def check(rule: Rule, reading: Reading, i: int) -> tuple[bool, dict[str, Any]]:
    """Return whether ``rule`` holds for place ``i`` of a reading, and the values it read.

    A withheld value never makes a rule hold: an alert says only what is published.
    """
    book = reading.book
    now = float(reading.now[i])
    people = _num(now)
    shown = book.band_of(i, people)
    density = shown["density_km2"]
    values: dict[str, Any] = {
        "release": epoch_to_iso(reading.t0),
        "people": people,
        "density_km2": None if density is None else round(float(density), 1),
        "band": shown["band"],
    }
    if rule.kind == "band":
        return bool(reading.band[i] >= band_index(rule.band, book)), values
    if rule.kind == "ratio":
        usual = float(reading.usual[i])
        values["usual"] = _num(usual)
        ratio = now / usual if usual > 0 and not math.isnan(now) else math.nan
        values["ratio"] = None if math.isnan(ratio) else round(ratio, 3)
        return bool(ratio > (rule.above or math.inf)), values
    if rule.kind == "rise":
        info, before = reading.earlier(rule.minutes or 0)
        then = math.nan if before is None else float(before[i])
        values["previous_release"] = None if info is None else epoch_to_iso(info.window.end)
        values["previous_people"] = _num(then)
        rise = (now - then) / then * 100 if then > 0 and not math.isnan(now) else math.nan
        values["rise_percent"] = None if math.isnan(rise) else round(rise, 1)
        return bool(rise > (rule.percent or math.inf)), values
    bands, times, levels = reading.forecast(rule.hours or 0)
    reached = np.flatnonzero(bands[:, i] >= band_index(rule.band, book))
    values["forecast_hours"] = rule.hours
    if not reached.size:
        top = int(np.argmax(bands[:, i]))
        values["forecast_at"] = epoch_to_iso(int(times[top]))
        values["forecast_people"] = _num(float(levels[top, i]))
        values["forecast_band"] = book.band_of(i, _num(float(levels[top, i])))["band"]
        return False, values
    k = int(reached[0])
    values["forecast_at"] = epoch_to_iso(int(times[k]))
    values["forecast_people"] = _num(float(levels[k, i]))
    values["forecast_band"] = book.band_of(i, _num(float(levels[k, i])))["band"]
    return True, values
