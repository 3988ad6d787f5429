"""Named places (hotspots) and the city outline: loading, geometry and H3 coverage.

A place is a WGS-84 centre with a radius (a disc), or a corridor (a street or waterfront given as a
line and a width), or an explicit polygon. ``sample_data/places.json`` holds the Shanghai set; its
schema is documented in :func:`load_places`.

Where the files are: the Shanghai sample ships inside the package (a wheel holds it as
``heatmap/sample_data``, found with :mod:`importlib.resources`; a source checkout reads
``sample_data/`` beside the package). A city serving its own places and outline names them with
``HEATMAP_PLACES_FILE`` / ``HEATMAP_OUTLINE_FILE``: ``create_app`` calls :func:`select_city`, and
every default load (:func:`load_places`, :func:`load_outline` without a path) then reads those.
The simulator always models Shanghai (:data:`SHANGHAI`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import shapely
from h3.api import numpy_int as h3n
from shapely.geometry import LineString, Point, Polygon, shape
from shapely.geometry.base import BaseGeometry

from heatmap.errors import BadInput


def sample_data_dir() -> Path:
    """Return the folder of the bundled sample data (Shanghai's places and outline).

    Installed from a wheel it is ``heatmap/sample_data`` inside the package; in a source checkout
    (editable install) it is ``sample_data/`` beside the package, which the wheel is built from.
    """
    packaged = resources.files(__package__ or "heatmap") / "sample_data"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sample_data"


@dataclass(frozen=True)
class CityFiles:
    """A city's named places (JSON, see :func:`load_places`) and outline (GeoJSON, WGS-84)."""

    places: Path
    outline: Path


SAMPLE_DATA: Final = sample_data_dir()
DEFAULT_PLACES: Final = SAMPLE_DATA / "places.json"
DEFAULT_OUTLINE: Final = SAMPLE_DATA / "shanghai_outline.geojson"
SHANGHAI: Final = CityFiles(DEFAULT_PLACES, DEFAULT_OUTLINE)
"""The bundled Shanghai sample: the default city and the simulator's model."""

_city = SHANGHAI


def city_files() -> CityFiles:
    """Return the files of the city this process serves (default :data:`SHANGHAI`)."""
    return _city


def select_city(places: str | Path | None = None, outline: str | Path | None = None) -> CityFiles:
    """Serve a city's own places and/or outline in this process (None: the bundled sample).

    Both files are read and checked first, so a wrong path or a bad file fails here with one
    line (:class:`heatmap.errors.BadInput`) rather than on the first request. One city per
    process: answers cached before a change keep the city they were made for.
    """
    global _city
    chosen = CityFiles(
        Path(places) if places is not None else SHANGHAI.places,
        Path(outline) if outline is not None else SHANGHAI.outline,
    )
    if chosen != _city:
        load_places(chosen.places)
        load_outline(chosen.outline)
        _city = chosen
    return chosen


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
    aliases: tuple[str, ...] = ()
    """Other names people search for (zh and en); pinyin is derived (:func:`search_keys`)."""

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
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise _fail(path, where, "'aliases' must be a list of non-empty strings")
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
        aliases=tuple(a.strip() for a in aliases),
    )


def load_places(path: str | Path | None = None) -> tuple[Place, ...]:
    """Return the places of a JSON file (default: the served city's, see :func:`city_files`),
    in file order.

    The file is ``{"places": [...]}`` (or a bare list). Each place has ``id`` (slug), ``name_zh``,
    ``name_en``, ``lat``, ``lng`` (WGS-84), ``radius_m`` and ``kind``; optionally ``polygon`` (a
    ring of ``[lng, lat]``) or ``line`` (``[lng, lat]`` vertices) with ``width_m``, and the
    simulator hints ``weight``, ``peak: {hours: [[start, end], ...], weekend}`` and ``jobs``.
    Any problem raises :class:`heatmap.errors.BadInput` with a one-line reason.
    """
    p = Path(path) if path is not None else _city.places
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
    """Return a city outline (default: the served city's, see :func:`city_files`), WGS-84.

    Several features are merged into one (Multi)Polygon. Raises :class:`heatmap.errors.BadInput`.
    """
    p = Path(path) if path is not None else _city.outline
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


_HAN = re.compile(r"[\u3400-\u9fff]")


def _pinyin(text: str) -> list[str]:
    """Return the pinyin keys of a Chinese text: full syllables and initials, no tones.

    ``南京东路`` gives ``nanjingdonglu`` and ``njdl``; empty without any Han character (or
    without ``pypinyin``).
    """
    if not _HAN.search(text):
        return []
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError:  # pragma: no cover - a declared dependency
        return []
    han = "".join(_HAN.findall(text))
    full = lazy_pinyin(han, errors="ignore")
    initials = lazy_pinyin(han, style=Style.FIRST_LETTER, errors="ignore")
    return ["".join(full), "".join(initials)]


def search_keys(place: Place) -> tuple[str, ...]:
    """Return the folded texts a search matches against, best first.

    The id, both names, the aliases, then the pinyin (full and initials) of every Chinese one:
    ``南京东路``, ``Nanjing East Road``, ``nanjing dong lu`` and ``njdl`` all find the
    pedestrian street.
    """
    names = [place.id, place.name_zh, place.name_en, *place.aliases]
    keys = [_fold(n) for n in names]
    for n in [place.name_zh, *place.aliases]:
        keys += _pinyin(n)
    return tuple(dict.fromkeys(k for k in keys if k))


def find_place(places: Iterable[Place], query: str) -> Place | None:
    """Return the place that best matches ``query`` on id, names, aliases or pinyin, or None.

    Matching ignores case, spaces and punctuation ("peoples square" finds ``peoples-square``,
    "renmin guangchang" finds 人民广场; see :func:`search_keys`).
    An exact match wins over a prefix, and a prefix over a substring; ties go to file order.
    """
    q = _fold(query)
    if not q:
        return None
    best: tuple[int, int] | None = None
    found: Place | None = None
    for order, place in enumerate(places):
        keys = _keys(place)
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


_KEYS: dict[Place, tuple[str, ...]] = {}


def _keys(place: Place) -> tuple[str, ...]:
    """Return a place's search keys (memoised: pinyin costs a few hundred microseconds)."""
    hit = _KEYS.get(place)
    if hit is None:
        hit = _KEYS[place] = search_keys(place)
    return hit
