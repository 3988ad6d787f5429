"""WGS-84 / GCJ-02 / BD-09 conversions: reference values, round trips, the China box."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from heatmap import crs
from heatmap.errors import BadInput

# Latitude and longitude well inside the box where GCJ-02 applies.
china_lat = st.floats(18.0, 53.0)
china_lng = st.floats(74.0, 134.0)


def metres(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Return the equirectangular distance in metres (fine below a few km)."""
    k = 6_371_008.8 * math.pi / 180.0
    return math.hypot((lat2 - lat1) * k, (lng2 - lng1) * k * math.cos(math.radians(lat1)))


def test_wgs84_to_gcj02_reference_point():
    # The widely published test vector (Tiananmen area): the forward transform is exact maths.
    lat, lng = crs.wgs84_to_gcj02(39.915, 116.404)
    assert float(lat) == pytest.approx(39.91640428150164, abs=1e-11)
    assert float(lng) == pytest.approx(116.41024449916938, abs=1e-11)


def test_gcj02_to_bd09_reference_point():
    lat, lng = crs.gcj02_to_bd09(39.915, 116.404)
    assert float(lat) == pytest.approx(39.92133699351022, abs=1e-11)
    assert float(lng) == pytest.approx(116.41036949371029, abs=1e-11)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(china_lat, china_lng), min_size=1, max_size=50))
def test_wgs_gcj_wgs_round_trip_is_below_1e6_degree(points):
    lat = np.array([p[0] for p in points])
    lng = np.array([p[1] for p in points])
    back_lat, back_lng = crs.gcj02_to_wgs84(*crs.wgs84_to_gcj02(lat, lng))
    assert np.abs(back_lat - lat).max() < 1e-6
    assert np.abs(back_lng - lng).max() < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(china_lat, china_lng), min_size=1, max_size=50))
def test_gcj_wgs_gcj_round_trip_is_below_1e6_degree(points):
    lat = np.array([p[0] for p in points])
    lng = np.array([p[1] for p in points])
    back_lat, back_lng = crs.wgs84_to_gcj02(*crs.gcj02_to_wgs84(lat, lng))
    assert np.abs(back_lat - lat).max() < 1e-6
    assert np.abs(back_lng - lng).max() < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(china_lat, china_lng), min_size=1, max_size=50))
def test_bd09_round_trips(points):
    lat = np.array([p[0] for p in points])
    lng = np.array([p[1] for p in points])
    b_lat, b_lng = crs.gcj02_to_bd09(lat, lng)
    g_lat, g_lng = crs.bd09_to_gcj02(b_lat, b_lng)
    assert np.abs(g_lat - lat).max() < 1e-6
    assert np.abs(g_lng - lng).max() < 1e-6
    w_lat, w_lng = crs.bd09_to_wgs84(*crs.wgs84_to_bd09(lat, lng))
    assert np.abs(w_lat - lat).max() < 1e-6
    assert np.abs(w_lng - lng).max() < 1e-6


def test_gcj02_inverse_is_far_better_than_the_one_step_approximation():
    rng = np.random.default_rng(1)
    lat = rng.uniform(20, 50, 10_000)
    lng = rng.uniform(80, 130, 10_000)
    g_lat, g_lng = crs.wgs84_to_gcj02(lat, lng)
    w_lat, w_lng = crs.gcj02_to_wgs84(g_lat, g_lng)
    assert max(np.abs(w_lat - lat).max(), np.abs(w_lng - lng).max()) < 1e-9


def test_offset_in_shanghai_is_a_few_hundred_metres():
    lat, lng = 31.2304, 121.4737  # People's Square
    g_lat, g_lng = crs.wgs84_to_gcj02(lat, lng)
    d = metres(lat, lng, float(g_lat), float(g_lng))
    assert 300.0 < d < 800.0
    # GCJ-02 shifts Shanghai east and south.
    assert g_lng > lng and g_lat < lat
    b_lat, b_lng = crs.wgs84_to_bd09(lat, lng)
    assert 800.0 < metres(lat, lng, float(b_lat), float(b_lng)) < 1500.0


@pytest.mark.parametrize(
    ("lat", "lng"),
    [(51.5074, -0.1278), (35.6762, 139.9), (-33.8688, 151.2093), (40.7128, -74.006), (0.5, 100.0)],
)
def test_outside_china_there_is_no_offset(lat, lng):
    g_lat, g_lng = crs.wgs84_to_gcj02(lat, lng)
    assert (float(g_lat), float(g_lng)) == (lat, lng)
    w_lat, w_lng = crs.gcj02_to_wgs84(lat, lng)
    assert (float(w_lat), float(w_lng)) == (lat, lng)


@given(arrays(np.float64, 20, elements=st.floats(-89, 89)), st.floats(-179, 179))
def test_in_china_matches_the_box(lat, lng):
    inside = crs.in_china(lat, lng)
    expect = (lat >= 0.8293) & (lat <= 55.8271) & (72.004 <= lng <= 137.8347)
    assert np.array_equal(inside, expect)


def test_arrays_in_arrays_out_and_shapes_broadcast():
    lat = np.full((3, 4), 31.2)
    lng = np.linspace(121.0, 122.0, 4)
    out_lat, out_lng = crs.gcj02_to_wgs84(lat, lng)
    assert out_lat.shape == out_lng.shape == (3, 4)
    assert out_lat.dtype == out_lng.dtype == np.float64
    empty = crs.gcj02_to_wgs84(np.array([]), np.array([]))
    assert empty[0].shape == (0,)


def test_nan_passes_through_without_spoiling_other_points():
    lat = np.array([31.2, np.nan, 31.3])
    lng = np.array([121.4, 121.5, np.nan])
    w_lat, w_lng = crs.gcj02_to_wgs84(lat, lng)
    assert np.isnan(w_lat[1]) and np.isnan(w_lng[2])
    g_lat, g_lng = crs.wgs84_to_gcj02(w_lat[0], w_lng[0])
    assert abs(float(g_lat) - 31.2) < 1e-9 and abs(float(g_lng) - 121.4) < 1e-9


def test_to_wgs84_dispatches_on_crs_name():
    lat, lng = np.array([31.23]), np.array([121.47])
    w = crs.to_wgs84(lat, lng, "wgs84")
    assert np.array_equal(w[0], lat) and np.array_equal(w[1], lng)
    g = crs.to_wgs84(lat, lng, "gcj02")
    assert np.array_equal(g[0], crs.gcj02_to_wgs84(lat, lng)[0])
    b = crs.to_wgs84(lat, lng, "BD09")
    assert np.array_equal(b[1], crs.bd09_to_wgs84(lat, lng)[1])


def test_to_wgs84_rejects_an_unknown_crs():
    with pytest.raises(BadInput, match="unknown crs"):
        crs.to_wgs84([31.2], [121.4], "epsg:3857")
