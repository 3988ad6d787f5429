"""Tile math and the zoom -> resolution policy."""

from __future__ import annotations

import math

import h3
import morecantile
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiles.errors import TileOutOfRange
from tiles.grid import (
    MAX_ZOOM,
    MIN_ZOOM,
    check_tile,
    lnglat_to_mercator,
    mercator_to_lnglat,
    tile_bounds_lnglat,
    tile_bounds_m,
    tiles_in_bounds,
    zoom_to_res,
)

TMS = morecantile.tms.get("WebMercatorQuad")


def test_zoom_policy_defaults() -> None:
    got = [zoom_to_res(z) for z in range(0, 19)]
    assert got == [5, 5, 5, 5, 5, 5, 5, 6, 7, 7, 8, 9, 9, 10, 10, 10, 10, 10, 10]


@pytest.mark.parametrize("z", range(MIN_ZOOM, MAX_ZOOM + 1))
def test_zoom_policy_keeps_hexagons_visible(z: int) -> None:
    res = zoom_to_res(z)
    assert 5 <= res <= 10
    assert res == 10 or res == 5 or zoom_to_res(z + 1) >= res  # monotone
    # Unclamped, a mean hexagon is at least 4.5 px (flat to flat) at Shanghai's latitude.
    if 5 < res < 10:
        px_m = 2 * math.pi * 6378137 * math.cos(math.radians(31.23)) / (256 * 2**z)
        width = math.sqrt(3) * h3.average_hexagon_edge_length(res, "m") / px_m
        assert 4.5 <= width <= 30


def test_zoom_policy_clamps_to_the_published_range() -> None:
    assert zoom_to_res(18, min_res=6, base_res=9) == 9
    assert zoom_to_res(0, min_res=6, base_res=9) == 6
    with pytest.raises(ValueError):
        zoom_to_res(10, min_res=9, base_res=8)


@pytest.mark.parametrize(
    ("z", "x", "y", "msg"),
    [
        (19, 0, 0, "zoom 19 outside 0..18"),
        (-1, 0, 0, "zoom -1 outside 0..18"),
        (2, 4, 0, "x 4 outside 0..3 at zoom 2"),
        (2, 0, -1, "y -1 outside 0..3 at zoom 2"),
    ],
)
def test_check_tile_reasons(z: int, x: int, y: int, msg: str) -> None:
    with pytest.raises(TileOutOfRange, match=msg) as e:
        check_tile(z, x, y)
    assert isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_check_tile_accepts_valid_tiles_and_custom_ranges() -> None:
    check_tile(0, 0, 0)
    check_tile(18, 2**18 - 1, 2**18 - 1)
    check_tile(20, 5, 5, maxzoom=22)
    with pytest.raises(TileOutOfRange):
        check_tile(4, 0, 0, minzoom=5)


@given(
    z=st.integers(0, 24),
    fx=st.floats(0, 1, exclude_max=True),
    fy=st.floats(0, 1, exclude_max=True),
)
def test_tile_bounds_match_morecantile(z: int, fx: float, fy: float) -> None:
    x, y = int(fx * 2**z), int(fy * 2**z)
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    got = tile_bounds_m(z, x, y)
    want = (b.left, b.bottom, b.right, b.top)
    assert got == pytest.approx(want, abs=1e-6)
    lnglat = tuple(TMS.bounds(morecantile.Tile(x, y, z)))
    assert tile_bounds_lnglat(z, x, y) == pytest.approx(lnglat)


def test_neighbouring_tiles_share_their_edge_exactly() -> None:
    a = tile_bounds_m(13, 6860, 3346)
    b = tile_bounds_m(13, 6861, 3347)
    assert a[2] == b[0] and a[1] == b[3]


@given(lng=st.floats(-180, 180), lat=st.floats(-85, 85))
def test_mercator_round_trip(lng: float, lat: float) -> None:
    x, y = lnglat_to_mercator(lng, lat)
    mx, my = TMS.xy(lng, lat)
    assert (float(x), float(y)) == pytest.approx((mx, my), abs=1e-6)
    lng2, lat2 = mercator_to_lnglat(x, y)
    assert (float(lng2), float(lat2)) == pytest.approx((lng, lat), abs=1e-9)


def test_tiles_in_bounds() -> None:
    got = list(tiles_in_bounds((121.4, 31.2, 121.5, 31.3), [12]))
    assert got == [(12, t.x, t.y) for t in TMS.tiles(121.4, 31.2, 121.5, 31.3, [12])]
    assert len(got) == 6
