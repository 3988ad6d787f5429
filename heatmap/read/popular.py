"""Popular times: the usual level of every local hour of the day, the expected level at any
time, and the best coming hour to go, for all named places at once (numpy over places).

One function gives the expected level at a time (:func:`expected`): the forecast, the
"popular times" chart and "best time to go" all read it, so they cannot contradict each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

HISTORY_WEEKS = 4
"""Weeks of history averaged for the usual level at an hour of the week."""

HISTORY_DAYS = 7
"""Days of history averaged for the usual level at an hour of the day (fallback)."""

FORECAST_TAU_H = 2.0
"""e-folding time (hours) of the current departure from usual in the forecast."""

RATIO_CLIP = (0.25, 4.0)
"""Bounds of the current/usual ratio used by the forecast (one odd window cannot explode it)."""

LevelAt = Callable[[int], F64 | None]
"""The places' level in the local hour starting at an epoch second (None: no closed window)."""


def _mean(levels: list[F64], n: int) -> F64:
    if not levels:
        return np.full(n, np.nan)
    stack = np.vstack(levels)
    have = (~np.isnan(stack)).sum(axis=0)
    total = np.nansum(stack, axis=0)
    return np.where(have > 0, total / np.maximum(have, 1), np.nan)


def hour_profile(level_at: LevelAt, tz: tzinfo, t0: int, n: int) -> tuple[F64, list[str]]:
    """Return the usual level of each local hour of the day (24 x n places) and its basis.

    Notes
    -----
    For local hour ``h`` of ``t0``'s day: the mean over the previous :data:`HISTORY_WEEKS`
    weeks of the level at ``h`` on the same weekday (``hour_of_week``); without any, the mean
    over the last :data:`HISTORY_DAYS` occurrences of ``h`` that are over by ``t0`` (today's
    own, when it is past, included: ``hour_of_day``); without any, NaN (``none``). So every
    hour the history covers has a usual level, even in a store one day long. A place or
    occurrence without a published value is left out of its mean.
    """
    day0 = datetime.fromtimestamp(t0, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    out = np.full((24, n), np.nan)
    basis = ["none"] * 24
    for h in range(24):
        start = day0 + timedelta(hours=h)
        weekly = [
            lv
            for k in range(1, HISTORY_WEEKS + 1)
            if (lv := level_at(int((start - timedelta(weeks=k)).timestamp()))) is not None
        ]
        if weekly:
            out[h], basis[h] = _mean(weekly, n), "hour_of_week"
            continue
        daily = []
        for k in range(HISTORY_DAYS + 1):
            ts = int((start - timedelta(days=k)).timestamp())
            if ts + 3600 > t0:
                continue  # not over yet
            lv = level_at(ts)
            if lv is not None:
                daily.append(lv)
            if len(daily) == HISTORY_DAYS:
                break
        if daily:
            out[h], basis[h] = _mean(daily, n), "hour_of_day"
    return out, basis


def usual_at(profile: F64, tz: tzinfo, t: int) -> F64:
    """Return the usual level at time ``t``: the profile interpolated between hour middles.

    An hour without a usual level gives way to its neighbour; with neither, NaN.
    """
    local = datetime.fromtimestamp(t, tz)
    x = local.hour + local.minute / 60.0 + local.second / 3600.0 - 0.5
    h0 = math.floor(x)
    w = x - h0
    a, b = profile[h0 % 24], profile[(h0 + 1) % 24]
    mixed = a * (1.0 - w) + b * w
    return np.where(np.isnan(a), b, np.where(np.isnan(b), a, mixed))


def forecast_array(usual_t: F64, usual_now: F64, now: F64, hours: float) -> F64:
    """Vectorised :func:`heatmap.read.places.forecast_value` (NaN for None)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(now / usual_now, *RATIO_CLIP)
        scaled = usual_t * r ** math.exp(-hours / FORECAST_TAU_H)
    ok = ~np.isnan(usual_now) & ~np.isnan(now) & (usual_now > 0)
    out = np.where(ok, scaled, usual_t)
    return np.where(np.isnan(usual_t), now, out)


def expected(profile: F64, tz: tzinfo, t0: int, now: F64, t: int) -> F64:
    """Return the places' expected level at ``t >= t0``: the one forecast everything reads."""
    return forecast_array(
        usual_at(profile, tz, t), usual_at(profile, tz, t0), now, max(t - t0, 0) / 3600.0
    )


def coming_slots(tz: tzinfo, t0: int, hours: int = 24) -> list[tuple[datetime, int]]:
    """Return the coming local hours (the current one first) as ``(start, time evaluated)``.

    The current hour is evaluated at ``max(its middle, t0)``, later ones at their middle.
    """
    first = datetime.fromtimestamp(t0, tz).replace(minute=0, second=0, microsecond=0)
    out = []
    for k in range(hours):
        start = first + timedelta(hours=k)
        out.append((start, max(int(start.timestamp()) + 1800, t0)))
    return out


def best_slots(
    profile: F64,
    tz: tzinfo,
    t0: int,
    now: F64,
    band: Callable[[F64], npt.NDArray[np.intp]],
    top: int,
) -> tuple[list[datetime], F64, npt.NDArray[np.intp]]:
    """Return, per place, the best coming hour: its slot, expected level and index (-1: none).

    Notes
    -----
    The quietest expected hour left today (ties: the earliest). If that hour is in the top
    band (index ``top``) while some hour of the next 24 is in a calmer band, the quietest of
    those 24 hours is taken instead: the best time to go is never a crowded one when a calmer
    exists. ``band(values)`` gives the band index of each place's value (-1 for NaN). A place
    without any usual level has no best time (-1): its forecast is today's level throughout.
    """
    slots = coming_slots(tz, t0)
    starts = [s for s, _ in slots]
    values = np.vstack([expected(profile, tz, t0, now, t) for _, t in slots])  # (24, n)
    bands = np.vstack([band(v) for v in values])
    today = np.array([s.date() == starts[0].date() for s in starts])
    masked = np.where(today[:, None] & ~np.isnan(values), values, np.inf)
    pick = np.argmin(masked, axis=0)
    n = values.shape[1]
    cols = np.arange(n)
    none_today = np.isinf(masked[pick, cols])
    any_24 = np.where(~np.isnan(values), values, np.inf)
    pick24 = np.argmin(any_24, axis=0)
    calmer = (bands[pick24, cols] >= 0) & (bands[pick24, cols] < bands[pick, cols])
    switch = none_today | ((bands[pick, cols] == top) & calmer)
    pick = np.where(switch, pick24, pick)
    best = values[pick, cols]
    # Without any usual level the expected level is today's, unchanged: no hour is better.
    known = ~np.isnan(profile).all(axis=0)
    pick = np.where(np.isnan(best) | ~known, -1, pick)
    return starts, best, pick
