"""XYZ Web Mercator tile math and the zoom -> H3 resolution policy.

Tile addressing is morecantile's ``WebMercatorQuad`` (EPSG:3857, XYZ, y down from the north).
The hot path uses the closed-form bounds below, which the tests check against morecantile.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import morecantile
import numpy as np
import numpy.typing as npt

from tiles.errors import TileOutOfRange

TMS = morecantile.tms.get("WebMercatorQuad")
"""The tile matrix set every tile address refers to."""

EARTH_RADIUS_M = 6378137.0
"""Web Mercator sphere radius (metres)."""

ORIGIN_SHIFT_M = math.pi * EARTH_RADIUS_M
"""Half the width of the Web Mercator square (metres); x and y range over +- this."""

MIN_ZOOM = 0
"""Lowest zoom served by default."""

MAX_ZOOM = 18
"""Highest zoom served by default (base-res hexagons are ~250 px wide there)."""

DATA_MIN_ZOOM = 5
"""Lowest zoom at which the coarsest published resolution (5) is still >= 4 px wide."""

ABS_MAX_ZOOM = 24
"""Highest zoom the renderers accept at all (the spatial index key has 24 levels)."""

# Finest H3 resolution whose mean hexagon (flat-to-flat width sqrt(3) * mean edge length,
# h3.average_hexagon_edge_length) is at least 4.5 px wide on a 256 px tile at 31.23 N
# (Shanghai), where one pixel is 2 pi R cos(lat) / (256 * 2**z) metres of ground.
_IDEAL_RES: tuple[int, ...] = (
    1, 2, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 9, 10, 11, 12, 12, 13, 14, 14, 15, 15, 15, 15, 15,
)  # fmt: skip


def zoom_to_res(z: int, min_res: int = 5, base_res: int = 10) -> int:
    """Return the H3 resolution drawn at zoom ``z``.

    The policy keeps a hexagon at least ~4.5 px wide (flat to flat, 256 px tiles, at Shanghai's
    latitude) so the map never degenerates into noise, and otherwise uses the finest resolution
    so a tile never holds only a handful of cells; it is then clamped to the published range
    ``[min_res, base_res]``: parents from the roll-up at low zoom, ``base_res`` at street zoom.

    Parameters
    ----------
    z : int
        Zoom level, 0-24.
    min_res : int
        Coarsest published resolution (``HEATMAP_MIN_RES``, default 5).
    base_res : int
        Finest published resolution (``HEATMAP_BASE_RES``, default 10).

    Returns
    -------
    int
        ``min(base_res, max(min_res, ideal(z)))``.

    Notes
    -----
    With the defaults (5, 10); width is the mean hexagon's flat-to-flat size in 256 px tile
    pixels at 31.23 N (@2x tiles: double it):

    ====  ======  ========  ====  ======  ========
    zoom  res     width px  zoom  res     width px
    ====  ======  ========  ====  ======  ========
    0-4   5       0.1-2.0   12    9       10.6
    5     5       4.1       13    10      8.0
    6     5       8.2       14    10      16
    7     6       6.2       15    10      32
    8     7       4.7       16    10      64
    9     7       9.3       17    10      129
    10    8       7.0       18    10      257
    11    9       5.3       19+   10      515+
    ====  ======  ========  ====  ======  ========

    The unclamped ideal resolution by zoom 0..24 is
    ``1 2 2 3 4 4 5 6 7 7 8 9 9 10 11 12 12 13 14 14 15 15 15 15 15``. Data tiles start at
    :data:`DATA_MIN_ZOOM`; below it resolution 5 is under 4 px.

    Examples
    --------
    >>> [zoom_to_res(z) for z in (4, 8, 12, 16)]
    [5, 7, 9, 10]
    """
    if min_res > base_res:
        raise ValueError(f"min_res {min_res} > base_res {base_res}")
    ideal = _IDEAL_RES[min(max(z, 0), len(_IDEAL_RES) - 1)]
    return min(base_res, max(min_res, ideal))


def check_tile(z: int, x: int, y: int, minzoom: int = MIN_ZOOM, maxzoom: int = MAX_ZOOM) -> None:
    """Raise :class:`~tiles.errors.TileOutOfRange` unless ``z/x/y`` is a servable tile.

    >>> check_tile(1, 2, 0)
    Traceback (most recent call last):
    ...
    tiles.errors.TileOutOfRange: x 2 outside 0..1 at zoom 1
    """
    if not minzoom <= z <= maxzoom:
        raise TileOutOfRange(f"zoom {z} outside {minzoom}..{maxzoom}")
    n = 1 << z
    if not 0 <= x < n:
        raise TileOutOfRange(f"x {x} outside 0..{n - 1} at zoom {z}")
    if not 0 <= y < n:
        raise TileOutOfRange(f"y {y} outside 0..{n - 1} at zoom {z}")


def tile_size_m(z: int) -> float:
    """Return the width of a zoom-``z`` tile in Web Mercator metres."""
    return 2.0 * ORIGIN_SHIFT_M / (1 << z)


def tile_bounds_m(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Return ``(minx, miny, maxx, maxy)`` of a tile in Web Mercator metres.

    Closed form of ``TMS.xy_bounds(x, y, z)``; exact at tile edges shared by neighbours
    (both compute ``-ORIGIN_SHIFT_M + i * size`` for the same ``i``).
    """
    size = tile_size_m(z)
    return (
        -ORIGIN_SHIFT_M + x * size,
        ORIGIN_SHIFT_M - (y + 1) * size,
        -ORIGIN_SHIFT_M + (x + 1) * size,
        ORIGIN_SHIFT_M - y * size,
    )


def tile_bounds_lnglat(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Return ``(west, south, east, north)`` of a tile in degrees (morecantile)."""
    b = TMS.bounds(morecantile.Tile(x, y, z))
    return b.left, b.bottom, b.right, b.top


def lnglat_to_mercator(
    lng: npt.ArrayLike, lat: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Project WGS 84 degrees to Web Mercator metres (vectorised, spherical formulas).

    Parameters
    ----------
    lng, lat : array_like
        Longitude and latitude in degrees; latitude within the Mercator limit (+-85.0511).

    Returns
    -------
    x, y : ndarray
        ``x = R * lng_rad``, ``y = R * ln(tan(pi/4 + lat_rad/2))``, ``R = 6378137``.
    """
    lng_a = np.asarray(lng, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    x = np.radians(lng_a) * EARTH_RADIUS_M
    y = np.log(np.tan(np.pi / 4.0 + np.radians(lat_a) / 2.0)) * EARTH_RADIUS_M
    return x, y


def mercator_to_lnglat(
    x: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Unproject Web Mercator metres to WGS 84 degrees; inverse of :func:`lnglat_to_mercator`."""
    x_a = np.asarray(x, dtype=np.float64)
    y_a = np.asarray(y, dtype=np.float64)
    lng = np.degrees(x_a / EARTH_RADIUS_M)
    lat = np.degrees(2.0 * np.arctan(np.exp(y_a / EARTH_RADIUS_M)) - np.pi / 2.0)
    return lng, lat


def tiles_in_bounds(
    bounds: tuple[float, float, float, float], zooms: range | list[int]
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(z, x, y)`` of every tile intersecting ``(west, south, east, north)`` degrees."""
    west, south, east, north = bounds
    for t in TMS.tiles(west, south, east, north, list(zooms)):
        yield t.z, t.x, t.y
