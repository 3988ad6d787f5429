"""Coordinate systems used in China: WGS-84, GCJ-02 ("Mars", AMap/Tencent) and BD-09 (Baidu).

Every function takes latitude and longitude arrays (anything ``numpy.asarray`` accepts) and returns
a ``(lat, lng)`` pair of float64 arrays of the broadcast shape. Nothing loops per point in Python.

GCJ-02 is WGS-84 plus a deterministic, smooth offset of a few hundred metres, defined only inside
a rough box around China; outside the box the two systems coincide. BD-09 is a further small
rotation and shift of GCJ-02 in polar coordinates. H3 and everything downstream work on WGS-84:
convert at the edge with :func:`to_wgs84`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from heatmap.errors import BadInput

FloatArray = npt.NDArray[np.float64]
LatLng = tuple[FloatArray, FloatArray]

CRS_NAMES: Final = ("wgs84", "gcj02", "bd09")

# Krasovsky-1940 ellipsoid, the one the GCJ-02 offset is defined on.
_A: Final = 6378245.0
_EE: Final = 0.00669342162296594323

# The rough box inside which GCJ-02 differs from WGS-84 (it includes some neighbours of China;
# that is how every published implementation of the offset behaves, so we match it).
_CHINA_LNG: Final = (72.004, 137.8347)
_CHINA_LAT: Final = (0.8293, 55.8271)

# BD-09 works in "x_pi" units: pi * 3000 / 180.
_X_PI: Final = np.pi * 3000.0 / 180.0
_BD_DLNG: Final = 0.0065
_BD_DLAT: Final = 0.006

# The GCJ-02 inverse is a fixed-point iteration; the offset's Jacobian is ~1e-4 so each round gains
# about two digits; once a round moves points by < 1e-10 degree the remaining error is ~1e-12.
_INVERSE_TOL: Final = 1e-10
_INVERSE_MAX_ITER: Final = 12


def _as_float(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    la, ln = np.broadcast_arrays(
        np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)
    )
    return la.astype(np.float64, copy=True), ln.astype(np.float64, copy=True)


def in_china(lat: npt.ArrayLike, lng: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return True where a point lies in the rough China box inside which GCJ-02 is offset."""
    la = np.asarray(lat, dtype=np.float64)
    ln = np.asarray(lng, dtype=np.float64)
    return (
        (ln >= _CHINA_LNG[0])
        & (ln <= _CHINA_LNG[1])
        & (la >= _CHINA_LAT[0])
        & (la <= _CHINA_LAT[1])
    )


def _gcj_offset(lat: FloatArray, lng: FloatArray) -> LatLng:
    """Return the GCJ-02 offset (dlat, dlng) in degrees at WGS-84 points, zero outside China.

    Notes
    -----
    With ``x = lng - 105`` and ``y = lat - 35`` (degrees), the published GCJ-02 construction adds
    two "noise" polynomials in metres-like units,

    .. math::

        T_{lat} = -100 + 2x + 3y + 0.2y^2 + 0.1xy + 0.2\\sqrt{|x|}
                  + \\tfrac23 [20\\sin 6\\pi x + 20\\sin 2\\pi x]
                  + \\tfrac23 [20\\sin \\pi y + 40\\sin(\\pi y/3)]
                  + \\tfrac23 [160\\sin(\\pi y/12) + 320\\sin(\\pi y/30)]

        T_{lng} = 300 + x + 2y + 0.1x^2 + 0.1xy + 0.1\\sqrt{|x|}
                  + \\tfrac23 [20\\sin 6\\pi x + 20\\sin 2\\pi x]
                  + \\tfrac23 [20\\sin \\pi x + 40\\sin(\\pi x/3)]
                  + \\tfrac23 [150\\sin(\\pi x/12) + 300\\sin(\\pi x/30)]

    and turns them into degrees with the Krasovsky meridian radius ``M = a(1-e^2)/W^3`` and prime
    vertical radius ``N = a/W``, ``W = sqrt(1 - e^2 sin^2 lat)``:
    ``dlat = 180 T_lat / (pi M)``, ``dlng = 180 T_lng / (pi N cos lat)``.
    """
    x = lng - 105.0
    y = lat - 35.0
    pi = np.pi
    # sin(3a) = sin(a) (3 - 4 sin^2 a) gives sin(6 pi x) from sin(2 pi x) and sin(pi x) from
    # sin(pi x / 3): seven sines instead of eleven, which is most of the cost of this function.
    s2x = np.sin(2.0 * pi * x)
    s6x = s2x * (3.0 - 4.0 * s2x * s2x)
    sx3 = np.sin(pi * x / 3.0)
    sx = sx3 * (3.0 - 4.0 * sx3 * sx3)
    sy3 = np.sin(pi * y / 3.0)
    sy = sy3 * (3.0 - 4.0 * sy3 * sy3)
    common = (20.0 * s6x + 20.0 * s2x) * (2.0 / 3.0)
    t_lat = (
        -100.0
        + 2.0 * x
        + 3.0 * y
        + 0.2 * y * y
        + 0.1 * x * y
        + 0.2 * np.sqrt(np.abs(x))
        + common
        + (20.0 * sy + 40.0 * sy3) * (2.0 / 3.0)
        + (160.0 * np.sin(pi * y / 12.0) + 320.0 * np.sin(pi * y / 30.0)) * (2.0 / 3.0)
    )
    t_lng = (
        300.0
        + x
        + 2.0 * y
        + 0.1 * x * x
        + 0.1 * x * y
        + 0.1 * np.sqrt(np.abs(x))
        + common
        + (20.0 * sx + 40.0 * sx3) * (2.0 / 3.0)
        + (150.0 * np.sin(pi * x / 12.0) + 300.0 * np.sin(pi * x / 30.0)) * (2.0 / 3.0)
    )
    phi = np.radians(lat)
    sin_phi = np.sin(phi)
    w2 = 1.0 - _EE * sin_phi * sin_phi
    w = np.sqrt(w2)
    meridian = _A * (1.0 - _EE) / (w2 * w)
    prime_vertical = _A / w
    dlat = np.degrees(t_lat / meridian)
    dlng = np.degrees(t_lng / (prime_vertical * np.cos(phi)))
    inside = in_china(lat, lng)
    return np.where(inside, dlat, 0.0), np.where(inside, dlng, 0.0)


def wgs84_to_gcj02(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return GCJ-02 (lat, lng) for WGS-84 points; points outside China are returned unchanged."""
    la, ln = _as_float(lat, lng)
    dlat, dlng = _gcj_offset(la, ln)
    return la + dlat, ln + dlng


def gcj02_to_wgs84(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return WGS-84 (lat, lng) for GCJ-02 points, inverting the offset to ~1e-12 degree.

    Notes
    -----
    The forward map is ``g = w + d(w)`` with a smooth, slowly varying offset ``d``. The inverse is
    the fixed point of ``w <- g - d(w)``, started at ``w = g``: the error shrinks by the size of the
    offset's derivative (about 1e-4 per degree of offset per degree of position) at each round, so
    a handful of vectorised rounds suffice. Iteration stops once no point moves by ``1e-10``
    degree, leaving an error of about ``1e-12`` degree (five rounds). The one-step ``g - d(g)``
    that many libraries use is off by up to ~1 m.
    """
    g_lat, g_lng = _as_float(lat, lng)
    w_lat, w_lng = g_lat.copy(), g_lng.copy()
    for _ in range(_INVERSE_MAX_ITER):
        dlat, dlng = _gcj_offset(w_lat, w_lng)
        new_lat = g_lat - dlat
        new_lng = g_lng - dlng
        step = max(_max_abs(new_lat - w_lat), _max_abs(new_lng - w_lng))
        w_lat, w_lng = new_lat, new_lng
        if step < _INVERSE_TOL:
            break
    return w_lat, w_lng


def _max_abs(a: FloatArray) -> float:
    # nan (missing input) must not keep the loop running, and an empty array has no maximum.
    if a.size == 0:
        return 0.0
    m = np.nanmax(np.abs(a)) if not np.all(np.isnan(a)) else 0.0
    return float(m)


def _gcj_to_bd_raw(lat: FloatArray, lng: FloatArray) -> LatLng:
    r = np.hypot(lng, lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lng) + 0.000003 * np.cos(lng * _X_PI)
    return r * np.sin(theta) + _BD_DLAT, r * np.cos(theta) + _BD_DLNG


def gcj02_to_bd09(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return BD-09 (lat, lng) for GCJ-02 points.

    Notes
    -----
    In polar coordinates around (0, 0), ``r' = r + 2e-5 sin(lat * x_pi)`` and
    ``theta' = theta + 3e-6 cos(lng * x_pi)`` with ``x_pi = pi * 3000 / 180``; then the result is
    shifted by (+0.006 lat, +0.0065 lng). Baidu applies it everywhere, so there is no China test.
    """
    la, ln = _as_float(lat, lng)
    return _gcj_to_bd_raw(la, ln)


def bd09_to_gcj02(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return GCJ-02 (lat, lng) for BD-09 points.

    Notes
    -----
    The usual closed-form inverse (undo the shift, then subtract the polar perturbations evaluated
    at the BD-09 point) is accurate to ~1e-6 degree; two fixed-point corrections against the exact
    forward map bring the round trip to ~1e-12 degree.
    """
    b_lat, b_lng = _as_float(lat, lng)
    x = b_lng - _BD_DLNG
    y = b_lat - _BD_DLAT
    r = np.hypot(x, y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    g_lat, g_lng = r * np.sin(theta), r * np.cos(theta)
    for _ in range(3):
        f_lat, f_lng = _gcj_to_bd_raw(g_lat, g_lng)
        g_lat = g_lat - (f_lat - b_lat)
        g_lng = g_lng - (f_lng - b_lng)
    return g_lat, g_lng


def wgs84_to_bd09(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return BD-09 (lat, lng) for WGS-84 points (via GCJ-02)."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lat, lng))


def bd09_to_wgs84(lat: npt.ArrayLike, lng: npt.ArrayLike) -> LatLng:
    """Return WGS-84 (lat, lng) for BD-09 points (via GCJ-02)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lng))


def to_wgs84(lat: npt.ArrayLike, lng: npt.ArrayLike, crs: str) -> LatLng:
    """Return WGS-84 (lat, lng) for points given in ``crs`` (``wgs84``, ``gcj02`` or ``bd09``).

    ``wgs84`` input is returned as float64 arrays without any change. An unknown ``crs`` raises
    :class:`heatmap.errors.BadInput`.
    """
    key = crs.strip().lower()
    if key == "wgs84":
        return _as_float(lat, lng)
    if key == "gcj02":
        return gcj02_to_wgs84(lat, lng)
    if key == "bd09":
        return bd09_to_wgs84(lat, lng)
    raise BadInput(f"unknown crs {crs!r}: expected one of {', '.join(CRS_NAMES)}")
