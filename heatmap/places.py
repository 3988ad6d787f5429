"""Named places (hotspots) and the city outline: loading, geometry and H3 coverage.

A place is a WGS-84 centre with a radius (a disc), or a corridor (a street or waterfront given as a
line and a width), or an explicit polygon. ``sample_data/places.json`` holds the Shanghai set; its
schema is documented in :func:`load_places`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import shapely
from h3.api import numpy_int as h3n
from shapely.geometry import LineString, Point, Polygon, shape
from shapely.geometry.base import BaseGeometry

from heatmap.errors import BadInput

SAMPLE_DATA: Final = Path(__file__).resolve().parent.parent / "sample_data"
DEFAULT_PLACES: Final = SAMPLE_DATA / "places.json"
DEFAULT_OUTLINE: Final = SAMPLE_DATA / "shanghai_outline.geojson"

# Mean Earth radius (IUGG); the local projection below only needs metre accuracy over a few km.
_EARTH_R: Final = 6_371_008.8
_M_PER_DEG: Final = _EARTH_R * math.pi / 180.0
_DISC_SEGMENTS: Final = 16  # segments per quarter circle: 64 vertices, < 0.2% area error


@dataclass(frozen=True)
class Place:
    """A named place: a WGS-84 centre and radius, optionally with an exact polygon.

    ``weight`` (0-1), ``peak_hours`` (local ``[start, end)`` hours), ``weekend`` (Saturday and
    Sunday multiplier) and ``jobs`` (relative number of workplaces) drive the simulator only.
    """

    id: str
    name_zh: str
    name_en: str
    lat: float
    lng: float
    radius_m: float
    kind: str
    polygon: Polygon | None = None
    weight: float = 0.5
    peak_hours: tuple[tuple[float, float], ...] = ()
    weekend: float = 1.0
    jobs: float = 0.0

    def activity(self, hour: float, weekend: bool) -> float:
        """Return the place's pull at a local hour (its weight in a peak hour, else a quarter).

        On Saturday and Sunday the pull is multiplied by the ``weekend`` factor.
        """
        h = hour % 24.0
        in_peak = not self.peak_hours or any(a <= h < b for a, b in self.peak_hours)
        return self.weight * (1.0 if in_peak else 0.25) * (self.weekend if weekend else 1.0)


# -- local metric projection -----------------------------------------------------------------


def _to_local(lat0: float, lng0: float) -> tuple[float, float]:
    """Return metres per degree (lng, lat) of the local equirectangular projection at a point."""
    return _M_PER_DEG * math.cos(math.radians(lat0)), _M_PER_DEG


def _lnglat_to_local(geom: BaseGeometry, lat0: float, lng0: float) -> BaseGeometry:
    kx, ky = _to_local(lat0, lng0)
    return shapely.transform(geom, lambda xy: (xy - (lng0, lat0)) * (kx, ky))


def _local_to_lnglat(geom: BaseGeometry, lat0: float, lng0: float) -> BaseGeometry:
    kx, ky = _to_local(lat0, lng0)
    return shapely.transform(geom, lambda xy: xy / (kx, ky) + (lng0, lat0))


def disc_polygon(lat: float, lng: float, radius_m: float) -> Polygon:
    """Return a WGS-84 polygon approximating a disc of ``radius_m`` metres around a point.

    Notes
    -----
    The disc is drawn in a local equirectangular projection centred on the point
    (``x = R cos(lat0) dlng``, ``y = R dlat``, in radians), whose scale error is below 1e-4 within a
    few kilometres of the centre, then projected back to longitude and latitude.
    """
    local = Point(0.0, 0.0).buffer(radius_m, quad_segs=_DISC_SEGMENTS)
    return cast(Polygon, _local_to_lnglat(local, lat, lng))


def corridor_polygon(coords: Sequence[Sequence[float]], width_m: float) -> Polygon:
    """Return a WGS-84 polygon ``width_m`` wide around a line of ``(lng, lat)`` vertices."""
    line = LineString(coords)
    c = line.centroid
    local = shapely.buffer(_lnglat_to_local(line, c.y, c.x), width_m / 2.0, quad_segs=4)
    return cast(Polygon, _local_to_lnglat(local, c.y, c.x))


def place_to_polygon(place: Place) -> Polygon:
    """Return the place's area: its polygon if it has one, else its disc."""
    if place.polygon is not None:
        return place.polygon
    return disc_polygon(place.lat, place.lng, place.radius_m)


def place_cells(place: Place, res: int) -> npt.NDArray[np.uint64]:
    """Return the sorted uint64 H3 cells at ``res`` covering a place (always its centre cell).

    A cell is in when its centre lies in the place's polygon or disc (h3 polygon-to-cells); the
    centre cell is added so a place smaller than a cell still has one.
    """
    if not 0 <= res <= 15:
        raise BadInput(f"H3 resolution must be 0-15, got {res}")
    cells = np.asarray(h3n.geo_to_cells(place_to_polygon(place), res), dtype=np.uint64)
    centre = np.uint64(h3n.latlng_to_cell(place.lat, place.lng, res))
    return np.unique(np.append(cells, centre))


# -- loading -----------------------------------------------------------------------------------


def _fail(path: Path, where: str, reason: str) -> BadInput:
    return BadInput(f"{path.name}: {where}: {reason}")


def _number(
    raw: dict[str, Any], key: str, path: Path, where: str, default: float | None = None
) -> float:
    value = raw.get(key, default)
    if value is None:
        raise _fail(path, where, f"missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, where, f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def _text(raw: dict[str, Any], key: str, path: Path, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"{key!r} must be a non-empty string")
    return value.strip()


def _peak(
    raw: dict[str, Any], path: Path, where: str
) -> tuple[tuple[tuple[float, float], ...], float]:
    peak = raw.get("peak", {})
    if not isinstance(peak, dict):
        raise _fail(path, where, "'peak' must be an object")
    hours_raw = peak.get("hours", [])
    if not isinstance(hours_raw, list):
        raise _fail(path, where, "'peak.hours' must be a list of [start, end] hours")
    hours: list[tuple[float, float]] = []
    for h in hours_raw:
        ok = isinstance(h, list) and len(h) == 2 and all(isinstance(v, int | float) for v in h)
        if not ok or not 0 <= h[0] < h[1] <= 24:
            raise _fail(
                path, where, f"bad peak hours {h!r}: expected [start, end], 0 <= start < end <= 24"
            )
        hours.append((float(h[0]), float(h[1])))
    weekend = _number(peak, "weekend", path, where + " peak", default=1.0)
    if weekend < 0:
        raise _fail(path, where, "'peak.weekend' must be >= 0")
    return tuple(hours), weekend


def _polygon(raw: dict[str, Any], path: Path, where: str) -> Polygon | None:
    try:
        if "polygon" in raw:
            poly = Polygon(raw["polygon"])
        elif "line" in raw:
            width = _number(raw, "width_m", path, where)
            if width <= 0:
                raise _fail(path, where, "'width_m' must be > 0")
            poly = corridor_polygon(raw["line"], width)
        else:
            return None
    except BadInput:
        raise
    except (TypeError, ValueError, shapely.errors.ShapelyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, where, f"bad polygon or line: {reason}") from None
    if poly.is_empty or not poly.is_valid:
        raise _fail(path, where, "polygon is empty or invalid")
    return poly


def _place(raw: object, path: Path, i: int) -> Place:
    where = f"place #{i}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be an object")
    pid = _text(raw, "id", path, where)
    where = f"place #{i} ({pid})"
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", pid):
        raise _fail(path, where, "'id' must be a lower-case slug (a-z, 0-9, '-')")
    lat = _number(raw, "lat", path, where)
    lng = _number(raw, "lng", path, where)
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise _fail(path, where, f"lat/lng out of range: {lat}, {lng}")
    radius = _number(raw, "radius_m", path, where)
    if radius <= 0:
        raise _fail(path, where, "'radius_m' must be > 0")
    weight = _number(raw, "weight", path, where, default=0.5)
    jobs = _number(raw, "jobs", path, where, default=0.0)
    if weight < 0 or jobs < 0:
        raise _fail(path, where, "'weight' and 'jobs' must be >= 0")
    hours, weekend = _peak(raw, path, where)
    return Place(
        id=pid,
        name_zh=_text(raw, "name_zh", path, where),
        name_en=_text(raw, "name_en", path, where),
        lat=lat,
        lng=lng,
        radius_m=radius,
        kind=_text(raw, "kind", path, where),
        polygon=_polygon(raw, path, where),
        weight=weight,
        peak_hours=hours,
        weekend=weekend,
        jobs=jobs,
    )


def load_places(path: str | Path | None = None) -> tuple[Place, ...]:
    """Return the places of a JSON file (default ``sample_data/places.json``), in file order.

    The file is ``{"places": [...]}`` (or a bare list). Each place has ``id`` (slug), ``name_zh``,
    ``name_en``, ``lat``, ``lng`` (WGS-84), ``radius_m`` and ``kind``; optionally ``polygon`` (a
    ring of ``[lng, lat]``) or ``line`` (``[lng, lat]`` vertices) with ``width_m``, and the
    simulator hints ``weight``, ``peak: {hours: [[start, end], ...], weekend}`` and ``jobs``.
    Any problem raises :class:`heatmap.errors.BadInput` with a one-line reason.
    """
    p = Path(path) if path is not None else DEFAULT_PLACES
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"{p}: cannot read places file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{p.name}: not valid JSON: {str(exc).splitlines()[0]}") from None
    raw = doc.get("places") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise BadInput(f"{p.name}: expected a non-empty list of places under 'places'")
    places = tuple(_place(r, p, i) for i, r in enumerate(raw))
    seen: set[str] = set()
    for pl in places:
        if pl.id in seen:
            raise BadInput(f"{p.name}: duplicate place id {pl.id!r}")
        seen.add(pl.id)
    return places


def load_outline(path: str | Path | None = None) -> BaseGeometry:
    """Return the city outline (default ``sample_data/shanghai_outline.geojson``, WGS-84).

    Several features are merged into one (Multi)Polygon. Raises :class:`heatmap.errors.BadInput`.
    """
    p = Path(path) if path is not None else DEFAULT_OUTLINE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        feats = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
        geoms = [shape(f["geometry"] if "geometry" in f else f) for f in feats]
    except OSError as exc:
        raise BadInput(f"{p}: cannot read outline: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, shapely.errors.ShapelyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{p.name}: not a GeoJSON outline: {reason}") from None
    geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise BadInput(f"{p.name}: the outline has no polygon")
    return geom


# -- lookup ------------------------------------------------------------------------------------

_FOLD = re.compile(r"[\s'’\-_./·()（）]+")


def _fold(text: str) -> str:
    """Return a text folded for matching: case-insensitive, without spaces and punctuation."""
    return _FOLD.sub("", text.casefold())


def find_place(places: Iterable[Place], query: str) -> Place | None:
    """Return the place that best matches ``query`` on id, Chinese or English name, or None.

    Matching ignores case, spaces and punctuation ("peoples square" finds ``peoples-square``).
    An exact match wins over a prefix, and a prefix over a substring; ties go to file order.
    """
    q = _fold(query)
    if not q:
        return None
    best: tuple[int, int] | None = None
    found: Place | None = None
    for order, place in enumerate(places):
        keys = [_fold(place.id), _fold(place.name_zh), _fold(place.name_en)]
        if q in keys:
            rank = 0
        elif any(k.startswith(q) for k in keys):
            rank = 1
        elif any(q in k for k in keys):
            rank = 2
        else:
            continue
        if best is None or (rank, order) < best:
            best, found = (rank, order), place
    return found
