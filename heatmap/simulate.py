"""A synthetic but plausible Shanghai: devices that live, work and go out, pinging as they move.

Each device has a home drawn from a residential density surface (dense central districts, sparse
suburbs, always inside the WGS-84 outline), a workplace biased to the business districts, and a
daily plan in Asia/Shanghai local time: night at home, morning commute, work, lunch, evening out
at the named places of ``sample_data/places.json``, back home. Moves are straight lines at a
plausible speed, so commuters show up along the way. Pings carry 8-25 m of GPS jitter and come
every ``interval_s`` on average (each gap uniform in 0.5x-1.5x), so devices are never in step;
some phones are off at night, some for a few hours in the day, and departing travellers go dark.

Everything is vectorised over devices: a block of time (a few pings per device) is generated with
a handful of numpy operations, never a Python loop per device or ping. The output is a stream of
pyarrow tables, so memory depends on the number of devices, not on the number of pings.
"""

from __future__ import annotations

import gzip
import math
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import shapely
from shapely.geometry.base import BaseGeometry

from heatmap.errors import BadInput
from heatmap.places import SHANGHAI, Place, load_outline, load_places

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
Bool = npt.NDArray[np.bool_]

CITIES: Final = ("shanghai",)
PING_SCHEMA: Final = pa.schema(
    [
        ("device_id", pa.string()),
        ("ts", pa.int64()),
        ("lat", pa.float64()),
        ("lng", pa.float64()),
    ]
)

# Asia/Shanghai is UTC+8 all year (China has had no daylight saving time since 1991).
UTC_OFFSET_S: Final = 8 * 3600
DAY_S: Final = 86_400
HOUR_S: Final = 3600.0

# Metres per degree around 31.2 N. The simulator moves in this local plate carree; the distance
# error across the whole municipality is ~1%, irrelevant for travel times.
LAT_M: Final = 110_860.0
LNG_M: Final = 95_240.0

# Personas: workers commute on workdays; "home" people (retired, carers, students off) make day
# trips and errands; travellers pass through an airport or railway station once a day.
WORKER: Final = 0
HOMEBODY: Final = 1
TRAVELLER: Final = 2
_PERSONA_P: Final = (0.62, 0.30, 0.08)

# Residential density surface: Gaussian blobs (name, lat, lng, sigma km, weight ~ millions of
# residents) for the central districts and the suburban new towns, plus a uniform rural floor.
_RESIDENTIAL: Final[tuple[tuple[str, float, float, float, float], ...]] = (
    ("huangpu", 31.2250, 121.4830, 1.5, 0.66),
    ("jingan-south", 31.2290, 121.4480, 1.5, 0.40),
    ("jingan-north", 31.2700, 121.4580, 2.0, 0.58),
    ("xuhui", 31.1820, 121.4420, 2.5, 1.11),
    ("changning", 31.2130, 121.4000, 2.2, 0.69),
    ("putuo", 31.2480, 121.4100, 2.5, 1.24),
    ("hongkou", 31.2700, 121.4900, 1.7, 0.76),
    ("yangpu", 31.2850, 121.5250, 2.2, 1.24),
    ("pudong-inner", 31.2250, 121.5350, 3.0, 2.20),
    ("pudong-sanlin-zhoupu", 31.1350, 121.5400, 4.0, 1.20),
    ("pudong-chuansha-zhangjiang", 31.1900, 121.6600, 5.0, 1.00),
    ("pudong-gaoqiao-jinqiao", 31.3000, 121.5900, 3.5, 0.60),
    ("pudong-huinan", 31.0500, 121.7600, 5.0, 0.50),
    ("minhang-xinzhuang", 31.1200, 121.4000, 4.0, 2.00),
    ("minhang-south", 31.0250, 121.4300, 3.0, 0.50),
    ("baoshan", 31.3500, 121.4300, 4.0, 1.60),
    ("baoshan-wusong", 31.3800, 121.4900, 2.5, 0.60),
    ("jiading", 31.3800, 121.2600, 3.5, 1.10),
    ("jiading-anting", 31.2950, 121.1700, 3.0, 0.40),
    ("jiading-nanxiang", 31.2900, 121.3100, 3.0, 0.40),
    ("songjiang", 31.0300, 121.2300, 4.0, 1.40),
    ("songjiang-jiuting", 31.1100, 121.2900, 3.0, 0.50),
    ("qingpu", 31.1500, 121.1200, 3.5, 0.80),
    ("qingpu-xujing", 31.1700, 121.2400, 3.0, 0.45),
    ("fengxian-nanqiao", 30.9200, 121.4600, 4.0, 0.80),
    ("fengxian-east", 30.9200, 121.6000, 4.0, 0.30),
    ("jinshan", 30.7450, 121.3300, 4.0, 0.50),
    ("jinshan-zhujing", 30.9000, 121.1700, 4.0, 0.30),
    ("chongming-chengqiao", 31.6300, 121.4000, 4.0, 0.35),
    ("chongming-east", 31.5500, 121.7000, 8.0, 0.25),
)
_RURAL_WEIGHT: Final = 1.5
_CENTRE: Final = (31.2300, 121.4700)  # People's Square, lat/lng

# Homes stay this far inside the coast so that GPS jitter does not push pings into the sea.
_HOME_INSET_DEG: Final = 0.0006
# The trip raster: a pixel is "land" if its centre is 250 m inside the outline, so any point of
# a land pixel (half-diagonal < 150 m) is inside the outline.
_RASTER_STEP_DEG: Final = 0.002
_RASTER_INSET_DEG: Final = 0.0025
_TRIP_SAMPLES: Final = 16  # ~2 km apart on a long trip: no Yangtze channel is narrower
_POOL: Final = 4096  # candidate positions per place
_RES_POOL: Final = 1 << 16  # residential candidates for local jobs

# A day plan has six stays: home, morning, midday, afternoon, evening, home.
_S: Final = 6
_NEVER: Final = np.float32(3 * DAY_S)

_TARGET_ROWS: Final = 1_000_000
_MAX_CHUNK_ROWS: Final = 2_000_000
_SCALE: Final = 1e6  # coordinates are rounded to 1e-6 degree (~0.1 m), what a phone reports


# -- the city ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _City:
    outline: BaseGeometry
    homes_area: BaseGeometry  # outline shrunk by _HOME_INSET_DEG, prepared
    raster: Bool  # (ny + 2) * (nx + 2) land pixels for trip checks, flat, with a sea border
    r_nx: int
    r_ny: int
    r_lat0: float
    r_lng0: float
    safe_m: float  # every point this close to the centre is land (a disc inside the outline)
    places: tuple[Place, ...]
    p_lat: F64  # (P,) centres
    p_lng: F64
    visit_lat: F64  # (P, _POOL) where visitors stand
    visit_lng: F64
    job_lat: F64  # (P, _POOL) where workers sit (zero rows for places without jobs)
    job_lng: F64
    res_lat: F64  # (_RES_POOL,) residential candidates
    res_lng: F64

    def on_land(self, lat: F64, lng: F64) -> Bool:
        """Return True where a point falls in a land pixel of the trip raster."""
        # Pixel 0 and the last one of each axis are the sea border, so clipping is enough.
        iy = np.clip((lat - self.r_lat0) * (1.0 / _RASTER_STEP_DEG) + 1.0, 0, self.r_ny + 1)
        ix = np.clip((lng - self.r_lng0) * (1.0 / _RASTER_STEP_DEG) + 1.0, 0, self.r_nx + 1)
        flat = iy.astype(np.int64) * (self.r_nx + 2) + ix.astype(np.int64)
        return self.raster[flat]


def _sample_in(
    rng: np.random.Generator, area: BaseGeometry, n: int, draw: _Draw
) -> tuple[F64, F64]:
    """Draw ``n`` points with ``draw`` and redraw, vectorised, those outside ``area``."""
    lat = np.empty(n)
    lng = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        la, ln = draw(rng, todo.size)
        ok = shapely.contains_xy(area, ln, la)
        lat[todo[ok]] = la[ok]
        lng[todo[ok]] = ln[ok]
        todo = todo[~ok]
    return lat, lng


class _Draw:
    """A point distribution: called with (rng, n), returns (lat, lng) arrays."""

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
        raise NotImplementedError


class _Residential(_Draw):
    """The mixture of district blobs and a uniform rural floor over the outline's bounding box."""

    def __init__(self, bounds: tuple[float, float, float, float]) -> None:
        self.bounds = bounds
        comp = np.array([c[1:] for c in _RESIDENTIAL])
        self.lat, self.lng, self.sigma_m = comp[:, 0], comp[:, 1], comp[:, 2] * 1000.0
        w = np.append(comp[:, 3], _RURAL_WEIGHT)
        self.cdf = np.cumsum(w) / w.sum()

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
        k = np.searchsorted(self.cdf, rng.random(n), side="right")
        k = np.minimum(k, len(self.cdf) - 1)
        rural = k == len(self.lat)
        kk = np.where(rural, 0, k)
        z = rng.standard_normal((2, n))
        lat = self.lat[kk] + z[0] * self.sigma_m[kk] / LAT_M
        lng = self.lng[kk] + z[1] * self.sigma_m[kk] / LNG_M
        minx, miny, maxx, maxy = self.bounds
        lat[rural] = rng.uniform(miny, maxy, int(rural.sum()))
        lng[rural] = rng.uniform(minx, maxx, int(rural.sum()))
        return lat, lng


class _InPolygon(_Draw):
    """Uniform points in a polygon (rejection from its bounding box)."""

    def __init__(self, poly: BaseGeometry) -> None:
        self.poly = poly
        shapely.prepare(poly)

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
        minx, miny, maxx, maxy = self.poly.bounds
        lat = np.empty(n)
        lng = np.empty(n)
        todo = np.arange(n)
        while todo.size:
            ln = rng.uniform(minx, maxx, todo.size)
            la = rng.uniform(miny, maxy, todo.size)
            ok = shapely.contains_xy(self.poly, ln, la)
            lat[todo[ok]], lng[todo[ok]] = la[ok], ln[ok]
            todo = todo[~ok]
        return lat, lng


class _Crowd(_Draw):
    """People at a disc place: half gather near the centre (Gaussian), half spread over it."""

    def __init__(self, lat: float, lng: float, radius_m: float) -> None:
        self.lat, self.lng, self.r = lat, lng, radius_m

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
        near = rng.random(n) < 0.5
        rho = np.where(
            near,
            np.minimum(np.abs(rng.standard_normal(n)) * self.r / 2.5, self.r),
            self.r * np.sqrt(rng.random(n)),
        )
        theta = rng.uniform(0.0, 2.0 * np.pi, n)
        return (
            self.lat + rho * np.sin(theta) / LAT_M,
            self.lng + rho * np.cos(theta) / LNG_M,
        )


class _Blob(_Draw):
    """Workplaces of a district: a Gaussian around its centre, cut at 2.5 radii.

    With sigma = radius / 1.5, offices thin out towards the edge instead of stopping at a circle.
    """

    def __init__(self, lat: float, lng: float, radius_m: float) -> None:
        self.lat, self.lng, self.sigma = lat, lng, radius_m / 1.5

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
        z = rng.standard_normal((2, n))
        r = np.hypot(z[0], z[1])
        z *= np.minimum(1.0, 3.75 / np.maximum(r, 1e-9))  # 3.75 sigma = 2.5 radii
        return self.lat + z[0] * self.sigma / LAT_M, self.lng + z[1] * self.sigma / LNG_M


@lru_cache(maxsize=2)
def _city(name: str) -> _City:
    """Return the (cached, deterministic) model of a city: outline, raster and position pools."""
    if name != "shanghai":
        raise BadInput(f"unknown city {name!r}: expected one of {', '.join(CITIES)}")
    # The model (centre, districts, pools) is Shanghai's: always its bundled files, whatever
    # city the service is set to.
    outline = load_outline(SHANGHAI.outline)
    homes_area = shapely.buffer(outline, -_HOME_INSET_DEG)
    shapely.prepare(homes_area)
    minx, miny, maxx, maxy = outline.bounds
    inset = shapely.buffer(outline, -_RASTER_INSET_DEG)
    shapely.prepare(inset)
    ny = int(math.ceil((maxy - miny) / _RASTER_STEP_DEG))
    nx = int(math.ceil((maxx - minx) / _RASTER_STEP_DEG))
    gy = miny + (np.arange(ny) + 0.5) * _RASTER_STEP_DEG
    gx = minx + (np.arange(nx) + 0.5) * _RASTER_STEP_DEG
    xx, yy = np.meshgrid(gx, gy)
    raster = np.zeros((ny + 2, nx + 2), dtype=bool)
    raster[1:-1, 1:-1] = shapely.contains_xy(inset, xx.ravel(), yy.ravel()).reshape(ny, nx)
    # The largest disc around the centre that is inside the trip raster's land: straight trips
    # with both ends in it need no check (a disc is convex).
    centre = shapely.Point(_CENTRE[1], _CENTRE[0])
    safe_m = float(shapely.distance(centre, shapely.boundary(inset))) * LNG_M - 1000.0

    places = load_places(SHANGHAI.places)
    rng = np.random.default_rng(20_240_601)  # fixed: the city is the same for every seed
    visit = np.empty((2, len(places), _POOL))
    job = np.zeros((2, len(places), _POOL))
    for i, p in enumerate(places):
        draw: _Draw = (
            _InPolygon(p.polygon) if p.polygon is not None else _Crowd(p.lat, p.lng, p.radius_m)
        )
        visit[0, i], visit[1, i] = _sample_in(rng, homes_area, _POOL, draw)
        if p.jobs > 0:
            job[0, i], job[1, i] = _sample_in(
                rng, homes_area, _POOL, _Blob(p.lat, p.lng, p.radius_m)
            )
    res_lat, res_lng = _sample_in(rng, homes_area, _RES_POOL, _Residential(outline.bounds))
    return _City(
        outline=outline,
        homes_area=homes_area,
        raster=raster.ravel(),
        r_nx=nx,
        r_ny=ny,
        safe_m=max(safe_m, 0.0),
        r_lat0=miny,
        r_lng0=minx,
        places=places,
        p_lat=np.array([p.lat for p in places]),
        p_lng=np.array([p.lng for p in places]),
        visit_lat=visit[0],
        visit_lng=visit[1],
        job_lat=job[0],
        job_lng=job[1],
        res_lat=res_lat,
        res_lng=res_lng,
    )


def _dist_m(lat_a: F64, lng_a: F64, lat_b: F64 | float, lng_b: F64 | float) -> F64:
    return np.hypot((lat_b - lat_a) * LAT_M, (lng_b - lng_a) * LNG_M)


def _trips_on_land(city: _City, lat_a: F64, lng_a: F64, lat_b: F64, lng_b: F64) -> Bool:
    """Return False for straight trips longer than 1 km that cross water or leave the city.

    Short trips are not checked: both ends are inside, so they cannot stray far outside; nor
    are trips within the central disc that lies wholly inside the city.
    """
    ok = np.ones(lat_a.shape, dtype=bool)
    moved = np.flatnonzero((lat_a != lat_b) | (lng_a != lng_b))  # most "trips" stay put
    la0, ln0, la1, ln1 = lat_a[moved], lng_a[moved], lat_b[moved], lng_b[moved]
    central = (_dist_m(la0, ln0, *_CENTRE) < city.safe_m) & (
        _dist_m(la1, ln1, *_CENTRE) < city.safe_m
    )
    check = ~central & (_dist_m(la0, ln0, la1, ln1) > 1000.0)
    if check.any():
        long = moved[check]
        f = (np.arange(1, _TRIP_SAMPLES) / _TRIP_SAMPLES)[None, :]
        la = lat_a[long, None] + f * (lat_b[long] - lat_a[long])[:, None]
        ln = lng_a[long, None] + f * (lng_b[long] - lng_a[long])[:, None]
        ok[long] = city.on_land(la, ln).all(axis=1)
    return ok


def _gravity_choice(
    city: _City, rng: np.random.Generator, lat: F64, lng: F64, pull: F64, scale_m: float
) -> tuple[npt.NDArray[np.intp], F64]:
    """Pick a place for each origin with probability ~ pull / (1 + (distance / scale)^2).

    Returns the place indexes and each origin's total attraction divided by ``pull.sum()`` (its
    access to the places, 1.0 if every place were next door). Places without pull are skipped
    and origins are taken in slices, so memory stays small for millions of devices.
    """
    cand = np.flatnonzero(pull > 0)
    p_lat = city.p_lat[cand].astype(np.float32)
    p_lng = city.p_lng[cand].astype(np.float32)
    w = pull[cand].astype(np.float32)
    inv_scale2 = np.float32(1.0 / (scale_m * scale_m))
    idx = np.empty(lat.size, dtype=np.intp)
    access = np.empty(lat.size)
    u = rng.random(lat.size)
    for a in range(0, lat.size, 1 << 17):
        sl = slice(a, a + (1 << 17))
        dy = (lat[sl, None].astype(np.float32) - p_lat) * np.float32(LAT_M)
        dx = (lng[sl, None].astype(np.float32) - p_lng) * np.float32(LNG_M)
        g = w / (1.0 + (dy * dy + dx * dx) * inv_scale2)
        cdf = np.cumsum(g, axis=1)
        total = cdf[:, -1]
        pick = (cdf < (u[sl] * total)[:, None]).sum(axis=1)
        idx[sl] = cand[np.minimum(pick, cand.size - 1)]
        access[sl] = total
    return idx, access / float(w.sum())


# -- the population ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """The devices of one simulation and what stays fixed about them from day to day."""

    home_lat: F64
    home_lng: F64
    work_lat: F64
    work_lng: F64
    persona: npt.NDArray[np.uint8]  # WORKER, HOMEBODY or TRAVELLER
    wake_s: F32  # phone off at night until this local second (0 = always on)
    sleep_s: F32  # ... and from this local second (past the day end = always on)

    @property
    def size(self) -> int:
        """Return the number of devices."""
        return int(self.home_lat.shape[0])


def make_population(devices: int, *, seed: int = 0, city: str = "shanghai") -> Population:
    """Return ``devices`` synthetic residents of ``city``, deterministic for a seed.

    Homes follow the residential density surface and are all inside the outline (checked with
    ``shapely.contains_xy``). Half of the workers work in a business district chosen by size and
    distance (a gravity model), the others at the nearest of four residential candidates (shops,
    schools, factories near where people live). A commute that would cross water (the Yangtze
    islands) falls back to a local job.
    """
    if devices < 1:
        raise BadInput(f"devices must be >= 1, got {devices}")
    c = _city(city)
    rng = np.random.default_rng([seed, 0])
    n = devices
    persona = rng.choice(len(_PERSONA_P), size=n, p=_PERSONA_P).astype(np.uint8)
    home_lat, home_lng = _sample_in(rng, c.homes_area, n, _Residential(c.outline.bounds))
    night_off = rng.random(n) < 0.25
    wake = np.where(night_off, rng.uniform(5.5, 7.5, n) * HOUR_S, 0.0).astype(np.float32)
    bedtime = rng.uniform(22.5, 25.0, n) * HOUR_S
    sleep = np.where(night_off & (bedtime < DAY_S), bedtime, float(_NEVER)).astype(np.float32)

    # Local job: the nearest of four residential candidates.
    cand = rng.integers(0, _RES_POOL, (n, 4))
    d = _dist_m(home_lat[:, None], home_lng[:, None], c.res_lat[cand], c.res_lng[cand])
    pick = cand[np.arange(n), d.argmin(axis=1)]
    work_lat, work_lng = c.res_lat[pick], c.res_lng[pick]
    # Business-district job for half of the workers.
    jobs = np.array([p.jobs for p in c.places])
    bd = np.flatnonzero((persona == WORKER) & (rng.random(n) < 0.5))
    k, _ = _gravity_choice(c, rng, home_lat[bd], home_lng[bd], jobs, 15_000.0)
    slot = rng.integers(0, _POOL, bd.size)
    bd_lat, bd_lng = c.job_lat[k, slot], c.job_lng[k, slot]
    ok = _trips_on_land(c, home_lat[bd], home_lng[bd], bd_lat, bd_lng)
    work_lat[bd[ok]], work_lng[bd[ok]] = bd_lat[ok], bd_lng[ok]
    ok = _trips_on_land(c, home_lat, home_lng, work_lat, work_lng)
    work_lat = np.where(ok, work_lat, home_lat)  # nowhere reachable: works at home
    work_lng = np.where(ok, work_lng, home_lng)
    not_worker = persona != WORKER
    work_lat[not_worker], work_lng[not_worker] = home_lat[not_worker], home_lng[not_worker]
    return Population(home_lat, home_lng, work_lat, work_lng, persona, wake, sleep)


# -- one day -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DayPlan:
    """Where each device is during one local day: ``_S`` stays and the moves between them.

    Stay ``s`` is at (lat, lng)[:, s] from ``arr[:, s]`` to ``dep[:, s]`` (local seconds since
    midnight); between ``dep[:, s]`` and ``arr[:, s + 1]`` the device moves in a straight line.
    """

    lat: F64  # (N, S)
    lng: F64
    arr: F32  # (N, S)
    dep: F32
    arr_t: F32  # (S, N) contiguous copy, for comparisons broadcast over a block of pings
    wake: F32  # off during [0, wake)
    off_from: F32  # off during [off_from, day end)
    gap0: F32  # off during [gap0, gap1)
    gap1: F32


def _travel_s(lat_a: F64, lng_a: F64, lat_b: F64, lng_b: F64) -> F64:
    """Return door-to-door travel time: walking under 1.2 km, else transit at ~24 km/h + 8 min."""
    d = _dist_m(lat_a, lng_a, lat_b, lng_b)
    walk = d / (4.5 / 3.6)
    ride = 480.0 + d / (24.0 / 3.6)
    return np.minimum(np.where(d < 1200.0, walk, ride), 2.5 * HOUR_S)


def _nearby(
    city: _City, rng: np.random.Generator, lat: F64, lng: F64, sigma_m: float
) -> tuple[F64, F64]:
    """Return points ~``sigma_m`` away (errands, lunch), or the point itself where that is sea."""
    z = rng.standard_normal((2, lat.size))
    la = lat + z[0] * sigma_m / LAT_M
    ln = lng + z[1] * sigma_m / LNG_M
    ok = city.on_land(la, ln)
    return np.where(ok, la, lat), np.where(ok, ln, lng)


def _visit(
    city: _City,
    rng: np.random.Generator,
    lat: F64,
    lng: F64,
    hour: float,
    weekend: bool,
    kinds: tuple[str, ...] | None = None,
) -> tuple[F64, F64, F64]:
    """Pick a place to visit from each origin; return its position and the origin's access.

    Places attract by ``activity(hour)`` (weight, peak hours, weekend factor) over a gravity
    distance decay of 10 km. Access is the total attraction relative to a distance-free city,
    used to make outings rarer in the far suburbs.
    """
    pull = np.array(
        [
            p.activity(hour, weekend) if kinds is None or p.kind in kinds else 0.0
            for p in city.places
        ]
    )
    k, access = _gravity_choice(city, rng, lat, lng, pull, 10_000.0)
    slot = rng.integers(0, _POOL, lat.size)
    return city.visit_lat[k, slot], city.visit_lng[k, slot], access


def _day_plan(city: _City, pop: Population, day: int, seed: int) -> _DayPlan:
    """Return the plan of every device for one local day (``day`` = days since 1970-01-01)."""
    rng = np.random.default_rng([seed, 2, day])
    n = pop.size
    weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    h = HOUR_S
    lat = np.repeat(pop.home_lat[:, None], _S, axis=1)
    lng = np.repeat(pop.home_lng[:, None], _S, axis=1)
    abs_dep = np.zeros((n, _S))  # leave a stay no earlier than this...
    min_dur = np.zeros((n, _S))  # ... and no sooner than this after arriving

    working = (pop.persona == WORKER) & (rng.random(n) < (0.12 if weekend else 0.88))
    traveller = pop.persona == TRAVELLER
    w = np.flatnonzero(working)
    o = np.flatnonzero(~working & ~traveller)
    t = np.flatnonzero(traveller)

    # Workers: home -> work -> lunch -> work -> (evening out) -> home.
    abs_dep[w, 0] = np.clip(rng.normal(7.9, 0.6, w.size), 5.5, 10.5) * h
    for s in (1, 2, 3):
        lat[w, s], lng[w, s] = pop.work_lat[w], pop.work_lng[w]
    abs_dep[w, 1] = np.clip(rng.normal(12.0, 0.25, w.size), 11.0, 13.0) * h
    lunch = w[rng.random(w.size) < 0.45]
    lat[lunch, 2], lng[lunch, 2] = _nearby(
        city, rng, pop.work_lat[lunch], pop.work_lng[lunch], 250.0
    )
    min_dur[w, 2] = rng.uniform(0.5, 1.0, w.size) * h
    abs_dep[w, 3] = np.clip(rng.normal(18.0, 0.8, w.size), 15.5, 21.5) * h

    # Others: home -> day out (a place or an errand) -> afternoon errand -> home -> evening -> home.
    abs_dep[o, 0] = np.clip(rng.normal(9.8, 1.3, o.size), 7.0, 15.0) * h
    v_lat, v_lng, access = _visit(city, rng, pop.home_lat[o], pop.home_lng[o], 14.0, weekend)
    p_day = (0.55 if weekend else 0.35) * np.clip(access / 0.5, 0.2, 1.0)
    roll = rng.random(o.size)
    out = roll < p_day
    errand = ~out & (roll < p_day + 0.45)
    lat[o[out], 1], lng[o[out], 1] = v_lat[out], v_lng[out]
    e = o[errand]
    lat[e, 1], lng[e, 1] = _nearby(city, rng, pop.home_lat[e], pop.home_lng[e], 700.0)
    lat[o, 2], lng[o, 2] = lat[o, 1], lng[o, 1]
    min_dur[o, 1] = rng.uniform(1.5, 3.5, o.size) * h
    e = o[rng.random(o.size) < 0.3]
    lat[e, 2], lng[e, 2] = _nearby(city, rng, pop.home_lat[e], pop.home_lng[e], 700.0)
    min_dur[o, 2] = rng.uniform(0.5, 1.5, o.size) * h
    abs_dep[o, 3] = (
        rng.uniform(17.0, 19.5, o.size) if weekend else rng.uniform(18.0, 20.0, o.size)
    ) * h

    # Evening out, from wherever the afternoon ended.
    wo = np.concatenate([w, o])
    v_lat, v_lng, access = _visit(city, rng, lat[wo, 3], lng[wo, 3], 19.5, weekend)
    p_eve = np.where(working[wo], 0.45 if weekend else 0.35, 0.50 if weekend else 0.20)
    sel = rng.random(wo.size) < p_eve * np.clip(access / 0.5, 0.25, 1.0)
    go = wo[sel]
    lat[go, 4], lng[go, 4] = v_lat[sel], v_lng[sel]
    min_dur[go, 4] = rng.uniform(1.0, 2.8, go.size) * h

    # Travellers: home -> airport or station for an hour or two -> gone (half) or back home.
    hub_lat, hub_lng, _ = _visit(
        city, rng, pop.home_lat[t], pop.home_lng[t], 12.0, weekend, kinds=("transport",)
    )
    lat[t, 1], lng[t, 1] = hub_lat, hub_lng
    at_hub = rng.uniform(6.5, 21.5, t.size) * h
    abs_dep[t, 0] = np.maximum(
        at_hub - _travel_s(pop.home_lat[t], pop.home_lng[t], hub_lat, hub_lng), 0.0
    )
    min_dur[t, 1] = rng.uniform(0.75, 2.0, t.size) * h
    departs = rng.random(t.size) < 0.5

    # A straight trip over water (Yangtze islands) or outside the city cancels the day's outings.
    ok = np.ones(n, dtype=bool)
    for s in range(1, _S):
        ok &= _trips_on_land(city, lat[:, s - 1], lng[:, s - 1], lat[:, s], lng[:, s])
    lat[~ok] = pop.home_lat[~ok, None]
    lng[~ok] = pop.home_lng[~ok, None]

    arr = np.zeros((n, _S))
    dep = np.zeros((n, _S))
    dep[:, 0] = abs_dep[:, 0]
    for s in range(1, _S):
        arr[:, s] = dep[:, s - 1] + _travel_s(lat[:, s - 1], lng[:, s - 1], lat[:, s], lng[:, s])
        dep[:, s] = np.maximum(abs_dep[:, s], arr[:, s] + min_dur[:, s])
    # A day ends at midnight: late returns are cut there (the next day starts at home).
    np.minimum(arr, DAY_S - 1.0, out=arr)
    np.minimum(dep, DAY_S - 1.0, out=dep)
    dep[:, _S - 1] = _NEVER

    off_from = pop.sleep_s.copy()
    gone = t[departs & ok[t]]
    off_from[gone] = np.minimum(off_from[gone], dep[gone, 1])
    gap = rng.random(n) < 0.08
    gap0 = np.where(gap, rng.uniform(8.0, 20.0, n) * h, 0.0)
    gap1 = np.where(gap, gap0 + rng.uniform(1.0, 4.0, n) * h, 0.0)
    arr32 = arr.astype(np.float32)
    return _DayPlan(
        lat=lat,
        lng=lng,
        arr=arr32,
        dep=dep.astype(np.float32),
        arr_t=np.ascontiguousarray(arr32.T),
        wake=pop.wake_s,
        off_from=off_from,
        gap0=gap0.astype(np.float32),
        gap1=gap1.astype(np.float32),
    )


# -- pings -------------------------------------------------------------------------------------


def _device_ids(n: int) -> npt.NDArray[np.bytes_]:
    """Return fixed-width ids ``d000000``, ``d000001``, ... as a numpy bytes array."""
    width = max(6, len(str(n - 1)))
    i = np.arange(n, dtype=np.int64)
    digits = np.empty((n, width + 1), dtype=np.uint8)
    digits[:, 0] = ord("d")
    for p in range(width):
        digits[:, width - p] = ord("0") + (i // 10**p) % 10
    return digits.view(f"S{width + 1}").ravel()


def _string_column(ids: npt.NDArray[np.bytes_], rows: I32) -> pa.Array:
    """Return the pyarrow string array ``ids[rows]`` without a Python object per row."""
    width = ids.dtype.itemsize
    n = rows.shape[0]
    # Gathering whole rows of a (devices, width) byte matrix is faster than gathering S7 items.
    data = np.take(ids.view(np.uint8).reshape(-1, width), rows, axis=0)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _numeric(a: npt.NDArray[np.int64] | F64) -> pa.Array:
    """Return a zero-copy pyarrow array over a contiguous numeric numpy array."""
    c = np.ascontiguousarray(a)
    return pa.Array.from_buffers(pa.from_numpy_dtype(c.dtype), c.size, [None, pa.py_buffer(c)])


class _Noise:
    """GPS jitter, read cyclically from a table of 2^20 (lat, lng) errors made once per run.

    Each error is a normal pair scaled by a standard deviation drawn from 8-25 m (fixes vary with
    sky view and device), stored in millionths of a degree. Drawing two normals per ping would
    cost more than all the rest of a ping; reading the table from a random offset for each block
    is indistinguishable on a map and stays deterministic.
    """

    size: Final = 1 << 20

    def __init__(self, rng: np.random.Generator) -> None:
        self.table = rng.standard_normal((2, self.size), dtype=np.float32)
        self.table *= rng.uniform(8.0, 25.0, self.size).astype(np.float32)
        self.table[0] *= np.float32(_SCALE / LAT_M)
        self.table[1] *= np.float32(_SCALE / LNG_M)

    def take(self, rng: np.random.Generator, n: int) -> F32:
        """Return (2, n) errors starting at a random place in the table."""
        start = int(rng.integers(0, self.size))
        reps = (start + n) // self.size + 1
        if reps == 1:
            return self.table[:, start : start + n]
        return np.tile(self.table, (1, reps))[:, start : start + n]


def _positions(
    plan: _DayPlan, noise: F32, dev: I32, tau: F32, k: npt.NDArray[np.int8]
) -> tuple[F64, F64]:
    """Return jittered (lat, lng) of pings: device ``dev`` at local second ``tau`` in stay ``k``."""
    f = dev * np.int32(_S)
    np.add(f, k, out=f, casting="unsafe")
    lat = plan.lat.ravel()[f]
    lng = plan.lng.ravel()[f]
    dep = plan.dep.ravel()[f]
    moving = np.flatnonzero(tau >= dep)
    if moving.size:
        f1 = f[moving] + 1  # the last stay never ends, so a moving device has a next one
        d0 = dep[moving]
        span = np.maximum(plan.arr.ravel()[f1] - d0, 1.0)
        frac = np.clip((tau[moving] - d0) / span, 0.0, 1.0)
        lat[moving] += frac * (plan.lat.ravel()[f1] - lat[moving])
        lng[moving] += frac * (plan.lng.ravel()[f1] - lng[moving])
    for coord, z in ((lat, noise[0]), (lng, noise[1])):
        # Add the jitter and round to 1e-6 degree in place: coord = rint(coord * 1e6 + z) / 1e6.
        coord *= _SCALE
        coord += z
        np.rint(coord, out=coord)
        coord /= _SCALE
    return lat, lng


def _check_args(city: str, devices: int, start: datetime, hours: float, interval_s: int) -> None:
    if city not in CITIES:
        raise BadInput(f"unknown city {city!r}: expected one of {', '.join(CITIES)}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise BadInput(f"devices must be a positive integer, got {devices!r}")
    if start.tzinfo is None or start.utcoffset() is None:
        raise BadInput("start must be timezone-aware (UTC), e.g. 2026-11-28T01:00:00Z")
    if not (isinstance(hours, int | float) and math.isfinite(hours) and hours > 0):
        raise BadInput(f"hours must be a positive number, got {hours!r}")
    if isinstance(interval_s, bool) or not isinstance(interval_s, int) or interval_s < 1:
        raise BadInput(f"interval_s must be a positive integer, got {interval_s!r}")


def simulate_pings(
    *,
    city: str = "shanghai",
    devices: int,
    start: datetime,
    hours: float,
    interval_s: int = 60,
    seed: int = 0,
) -> Iterator[pa.Table]:
    """Return a stream of ping tables for ``devices`` synthetic residents over ``hours`` hours.

    Parameters
    ----------
    city
        Only ``"shanghai"``.
    devices
        Number of devices (phones) to simulate.
    start
        Timezone-aware start instant; a fraction of a second is rounded up to the next second.
    hours
        Duration; every ping's ``ts`` is in ``[start, start + hours)``.
    interval_s
        Mean time between two pings of a device; each gap is uniform in ``[0.5, 1.5]`` times it.
    seed
        Same seed and arguments, same tables, byte for byte.

    Returns
    -------
    Iterator[pyarrow.Table]
        Chunks of up to ~2 M rows with columns ``device_id`` (string, ``d000123``), ``ts``
        (int64 epoch seconds), ``lat`` and ``lng`` (float64, WGS-84, 6 decimals). Rows are
        roughly in time order. Arguments are checked at call time (``BadInput``); pings are made
        lazily, one block at a time.

    Notes
    -----
    Each block covers ``K * interval_s`` seconds (never across local midnight), with ``K`` chosen
    so that a block holds about a million pings. For every device, the ping times of a block are
    a cumulative sum of uniform gaps continuing from the previous block; the stay each ping falls
    in is found by comparing its local time with the day plan's arrival times (broadcast over the
    block), then positions are gathered, and interpolated only for the pings on the move.
    """
    _check_args(city, devices, start, hours, interval_s)
    return _generate(city, devices, start, float(hours), interval_s, seed)


def _generate(
    city: str, devices: int, start: datetime, hours: float, interval_s: int, seed: int
) -> Iterator[pa.Table]:
    c = _city(city)
    pop = make_population(devices, seed=seed, city=city)
    ids = _device_ids(devices)
    s0 = math.ceil(start.timestamp())
    total = hours * HOUR_S
    step = float(interval_s)
    rng = np.random.default_rng([seed, 1])
    noise = _Noise(rng)
    next_t = rng.random(devices) * step  # first pings spread over one interval: never in step
    # At least a few pings per device per block: the per-device work of a block is then shared.
    per_block = max(4, round(_TARGET_ROWS / devices))
    span = min(per_block * step, 6 * HOUR_S)
    plans: dict[int, _DayPlan] = {}

    b0 = 0.0
    while b0 < total:
        day = (s0 + int(b0) + UTC_OFFSET_S) // DAY_S
        day_end = day * DAY_S + DAY_S - UTC_OFFSET_S - s0
        b1 = min(b0 + span, float(day_end), total)
        if day not in plans:
            plans.clear()  # one day at a time: memory stays O(devices)
            plans[day] = _day_plan(c, pop, day, seed)
        plan = plans[day]
        tau_shift = float(s0 + UTC_OFFSET_S - day * DAY_S)
        parts: list[tuple[I32, F32, npt.NDArray[np.int8]]] = []
        sub = np.arange(devices, dtype=np.int32)
        while sub.size:
            part, next_t[sub], pending = _block_times(
                rng, plan, next_t[sub], sub, b1, step, tau_shift
            )
            parts.append(part)
            sub = sub[pending]
        if len(parts) == 1:
            dev, tau, k = parts[0]
        else:
            dev, tau, k = (np.concatenate([p[i] for p in parts]) for i in range(3))
        lat, lng = _positions(plan, noise.take(rng, dev.size), dev, tau, k)
        ts = tau.astype(np.int64)  # tau >= 0, so truncation is floor
        ts += day * DAY_S - UTC_OFFSET_S
        for a in range(0, dev.size, _MAX_CHUNK_ROWS):
            sl = slice(a, a + _MAX_CHUNK_ROWS)
            cols = [
                _string_column(ids, dev[sl]),
                _numeric(ts[sl]),
                _numeric(lat[sl]),
                _numeric(lng[sl]),
            ]
            yield pa.Table.from_arrays(cols, schema=PING_SCHEMA)
        b0 = b1


def _block_times(
    rng: np.random.Generator,
    plan: _DayPlan,
    start_t: F64,
    sub: I32,
    end: float,
    step: float,
    tau_shift: float,
) -> tuple[tuple[I32, F32, npt.NDArray[np.int8]], F64, Bool]:
    """Return the pings of devices ``sub`` before ``end``, their next ping times, still-pending.

    A (rows x devices) matrix of uniform gaps, summed down the rows, gives each device's ping
    times from ``start_t``. Rows are sized for the expected count plus about three standard
    deviations; the rare device that needs more is reported pending and continued by the caller.
    Pings are returned as (device, local time of day ``tau``, stay index); ``tau`` is float32
    (1/128 s resolution within a day), which halves the memory traffic of the block.
    """
    n = sub.size
    expect = max((end - float(start_t.min())) / step, 0.0)
    rows = int(min(2.0 * expect + 2.0, expect + 3.0 * math.sqrt(expect / 12.0) + 1.5))
    # 16-bit uniform gaps: a 1/65536 interval grain is invisible and far cheaper than floats.
    gaps = rng.integers(0, 1 << 16, (rows, n), dtype=np.uint16).astype(np.float32)
    gaps *= np.float32(step / 65536.0)
    gaps += np.float32(0.5 * step)
    tau = np.empty((rows + 1, n), dtype=np.float32)
    tau[0] = start_t + tau_shift
    for r in range(rows):  # rows is a handful; each add is over all devices
        np.add(tau[r], gaps[r], out=tau[r + 1])
    end_tau = np.float32(end + tau_shift)
    count = (tau[:rows] < end_tau).sum(axis=0)
    nxt = tau[count, np.arange(n)].astype(np.float64) - tau_shift
    pending = nxt < end

    tau = tau[:rows]
    live = tau < end_tau
    first = tau[0]
    # A block is minutes long: only the few devices whose phone switches off or on, or that
    # arrive somewhere, within it need the per-ping comparisons; the rest are constant.
    full = n == plan.wake.size  # the first round covers every device: no gather needed

    def cols(a: F32) -> F32:
        return a if full else a[..., sub]

    wake, off_from, gap0, gap1 = (cols(a) for a in (plan.wake, plan.off_from, plan.gap0, plan.gap1))
    off = (first < wake) | (end_tau > off_from) | ((first < gap1) & (end_tau > gap0))
    j = np.flatnonzero(off)
    if j.size:
        tj = tau[:, j]
        dead = (tj < wake[j]) | (tj >= off_from[j]) | ((tj >= gap0[j]) & (tj < gap1[j]))
        live[:, j] &= ~dead
    arr = cols(plan.arr_t[1:])  # (S - 1, n) arrival times at stays 1..S-1
    stay = np.empty((rows, n), dtype=np.int8)
    stay[:] = (arr <= first).sum(axis=0, dtype=np.int8)
    j = np.flatnonzero(((arr > first) & (arr < end_tau)).any(axis=0))
    if j.size:
        tj = tau[:, j]
        k = (arr[0, j] <= tj).view(np.int8)
        for s in range(1, _S - 1):
            k += arr[s, j] <= tj
        stay[:, j] = k
    dev = np.broadcast_to(sub, (rows, n))[live]
    return (dev, tau[live], stay[live]), nxt, pending


# -- files -------------------------------------------------------------------------------------


def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".csv.gz", "csv.gz"), (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise BadInput(f"{path.name}: unknown output format; use .csv, .csv.gz or .parquet")


def _prefetch(chunks: Iterable[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Yield ``chunks`` in order while a thread produces the next ones.

    Generation (numpy) and writing (Arrow's CSV/Parquet encoders, zlib) both release the GIL,
    so on two cores the file is written while the next block is simulated. Errors on either
    side stop the other; the order, hence the bytes of the file, is unchanged.
    """
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for table in chunks:
                if not put(("table", table)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))

    worker = threading.Thread(target=produce, name="simulate-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            assert isinstance(item, pa.Table)
            yield item
    finally:
        stop.set()
        worker.join()


def write_pings(path: str | Path, chunks: Iterable[pa.Table]) -> int:
    """Stream ping tables to CSV, gzip CSV or Parquet (chosen by suffix); return rows written.

    The file has a header (CSV) or schema (Parquet) even when there is no row. Chunks are
    written as they come (the next one is produced in a background thread meanwhile), so memory
    does not grow with the file. Parquet is zstd-compressed; gzip uses a fast level.
    """
    p = Path(path)
    fmt = _format(p)
    rows = 0
    if fmt == "parquet":
        with pq.ParquetWriter(
            p, PING_SCHEMA, compression="zstd", compression_level=1, use_dictionary=["device_id"]
        ) as pw:
            for table in _prefetch(chunks):
                pw.write_table(table.cast(PING_SCHEMA))
                rows += table.num_rows
        return rows
    # Ids and numbers never need quotes; unquoted CSV is what other tools write and expect.
    options = pacsv.WriteOptions(quoting_style="none", include_header=False)
    raw = gzip.open(p, "wb", compresslevel=1) if fmt == "csv.gz" else open(p, "wb")  # noqa: SIM115
    with raw:
        raw.write((",".join(PING_SCHEMA.names) + "\n").encode())  # Arrow would quote the names
        with pacsv.CSVWriter(raw, PING_SCHEMA, write_options=options) as cw:
            for table in _prefetch(chunks):
                cw.write_table(table.cast(PING_SCHEMA))
                rows += table.num_rows
    return rows
