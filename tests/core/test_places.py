"""Named places: the sample file, H3 coverage against h3-py, lookup, and bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h3
import numpy as np
import pytest
import shapely

from heatmap.crs import gcj02_to_wgs84
from heatmap.errors import BadInput
from heatmap.places import (
    DEFAULT_OUTLINE,
    Place,
    disc_polygon,
    find_place,
    load_outline,
    load_places,
    place_cells,
    place_to_polygon,
)

REQUIRED = {
    "the-bund",
    "peoples-square",
    "nanjing-road",
    "lujiazui",
    "xujiahui",
    "jingan-temple",
    "yu-garden",
    "hongqiao-airport",
    "pudong-airport",
    "hongqiao-railway-station",
    "shanghai-railway-station",
    "disneyland",
    "wujiaochang",
    "xintiandi",
    "tianzifang",
    "century-park",
    "zhongshan-park",
    "wukang-road",
    "qibao-old-town",
    "oriental-pearl-tower",
    "necc",
    "zhujiajiao",
}
SHARED_OUTLINE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "boundaries" / "shanghai.json"
)


@pytest.fixture(scope="module")
def places() -> tuple[Place, ...]:
    return load_places()


def by_id(places: tuple[Place, ...], pid: str) -> Place:
    return next(p for p in places if p.id == pid)


def test_sample_places_cover_the_named_hotspots(places):
    ids = [p.id for p in places]
    assert len(places) >= 20
    assert len(set(ids)) == len(ids)
    assert REQUIRED <= set(ids)
    for p in places:
        assert p.name_zh and p.name_en and p.kind
        assert p.radius_m > 0 and p.weight > 0
        assert all(0 <= a < b <= 24 for a, b in p.peak_hours)


def test_every_place_is_inside_the_wgs84_outline(places):
    outline = load_outline()
    lat = np.array([p.lat for p in places])
    lng = np.array([p.lng for p in places])
    assert shapely.contains_xy(outline, lng, lat).all()
    for p in places:
        assert shapely.contains(outline, place_to_polygon(p)), p.id


def test_corridor_places_have_a_polygon_around_their_centre(places):
    bund = by_id(places, "the-bund")
    assert bund.polygon is not None
    assert bund.polygon.distance(shapely.Point(bund.lng, bund.lat)) < 1e-3
    assert by_id(places, "peoples-square").polygon is None


def test_place_cells_match_h3_polygon_to_cells(places):
    p = by_id(places, "peoples-square")
    for res in (8, 9, 10):
        cells = place_cells(p, res)
        poly = disc_polygon(p.lat, p.lng, p.radius_m)
        ring = [(lat, lng) for lng, lat in poly.exterior.coords]
        expect = {h3.str_to_int(c) for c in h3.polygon_to_cells(h3.LatLngPoly(ring), res)}
        expect.add(h3.str_to_int(h3.latlng_to_cell(p.lat, p.lng, res)))
        assert cells.dtype == np.uint64
        assert np.all(np.diff(cells.astype(np.float64)) > 0) or cells.size == 1
        assert set(cells.tolist()) == expect


def test_place_cells_cover_about_the_disc_area(places):
    p = by_id(places, "lujiazui")
    cells = place_cells(p, 10)
    area = sum(h3.cell_area(h3.int_to_str(int(c)), unit="m^2") for c in cells)
    assert area == pytest.approx(math.pi * p.radius_m**2, rel=0.15)


def test_every_cell_centre_is_in_the_place_except_the_centre_cell(places):
    bund = by_id(places, "the-bund")
    cells = place_cells(bund, 10)
    assert cells.size > 3
    centre = h3.str_to_int(h3.latlng_to_cell(bund.lat, bund.lng, 10))
    for c in cells.tolist():
        lat, lng = h3.cell_to_latlng(h3.int_to_str(c))
        assert c == centre or bund.polygon.contains(shapely.Point(lng, lat))


def test_a_place_smaller_than_a_cell_still_has_its_centre_cell(places):
    p = by_id(places, "tianzifang")
    cells = place_cells(p, 6)
    assert cells.tolist() == [h3.str_to_int(h3.latlng_to_cell(p.lat, p.lng, 6))]


def test_place_cells_rejects_a_bad_resolution(places):
    with pytest.raises(BadInput):
        place_cells(places[0], 16)


def test_disc_polygon_has_the_requested_radius():
    poly = disc_polygon(31.23, 121.47, 500.0)
    k = 6_371_008.8 * math.pi / 180.0
    for lng, lat in poly.exterior.coords:
        d = math.hypot((lat - 31.23) * k, (lng - 121.47) * k * math.cos(math.radians(31.23)))
        assert d == pytest.approx(500.0, rel=1e-3)


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("the-bund", "the-bund"),
        ("外滩", "the-bund"),
        ("THE BUND", "the-bund"),
        ("bund", "the-bund"),
        ("people's square", "peoples-square"),
        ("Peoples Square", "peoples-square"),
        ("人民广场", "peoples-square"),
        ("pudong", "pudong-airport"),
        ("disney", "disneyland"),
        ("城隍庙", "yu-garden"),
        ("Shanghai Railway Station", "shanghai-railway-station"),
    ],
)
def test_find_place(places, query, expect):
    found = find_place(places, query)
    assert found is not None and found.id == expect


def test_find_place_prefers_an_exact_match_over_a_substring(places):
    # "Nanjing Road" is a substring of "West Nanjing Road" and the prefix of the pedestrian street.
    found = find_place(places, "nanjing-road")
    assert found is not None and found.id == "nanjing-road"


@pytest.mark.parametrize("query", ["", "   ", "atlantis", "北京"])
def test_find_place_without_a_match_is_none(places, query):
    assert find_place(places, query) is None


def test_activity_peaks_and_weekends(places):
    park = by_id(places, "century-park")
    assert park.activity(8.0, weekend=False) == pytest.approx(park.weight)
    assert park.activity(22.0, weekend=False) == pytest.approx(park.weight * 0.25)
    assert park.activity(8.0, weekend=True) > park.activity(8.0, weekend=False)


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "places.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


GOOD = {
    "id": "x",
    "name_zh": "某地",
    "name_en": "Somewhere",
    "lat": 31.2,
    "lng": 121.4,
    "radius_m": 100,
    "kind": "park",
}


def test_a_minimal_place_file_loads_with_defaults(tmp_path):
    (p,) = load_places(write(tmp_path, [GOOD]))
    assert (p.id, p.weight, p.weekend, p.jobs, p.peak_hours, p.polygon) == (
        "x",
        0.5,
        1.0,
        0.0,
        (),
        None,
    )


def test_a_polygon_place_loads(tmp_path):
    ring = [[121.40, 31.20], [121.41, 31.20], [121.41, 31.21], [121.40, 31.20]]
    (p,) = load_places(write(tmp_path, {"places": [{**GOOD, "polygon": ring}]}))
    assert p.polygon is not None and p.polygon.area > 0
    assert place_cells(p, 10).size > 10


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"places": []}, "non-empty list"),
        ({"nope": 1}, "non-empty list"),
        ([{k: v for k, v in GOOD.items() if k != "lat"}], "missing 'lat'"),
        ([{**GOOD, "lat": "31.2"}], "'lat' must be a finite number"),
        ([{**GOOD, "lat": 95.0}], "out of range"),
        ([{**GOOD, "radius_m": 0}], "'radius_m' must be > 0"),
        ([{**GOOD, "id": "Has Space"}], "slug"),
        ([{**GOOD, "name_en": ""}], "'name_en'"),
        ([GOOD, GOOD], "duplicate place id"),
        ([{**GOOD, "peak": {"hours": [[20, 10]]}}], "bad peak hours"),
        ([{**GOOD, "line": [[121.4, 31.2]], "width_m": 50}], "bad polygon or line"),
        ([{**GOOD, "line": [[121.4, 31.2], [121.5, 31.3]]}], "missing 'width_m'"),
        (["not an object"], "must be an object"),
    ],
)
def test_a_bad_place_file_gives_a_one_line_reason(tmp_path, doc, reason):
    with pytest.raises(BadInput, match=reason) as err:
        load_places(write(tmp_path, doc))
    assert "\n" not in str(err.value)


def test_unreadable_or_invalid_json_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot read"):
        load_places(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInput, match="not valid JSON") as err:
        load_places(bad)
    assert "\n" not in str(err.value)


def test_the_outline_is_a_wgs84_multipolygon_of_the_right_size():
    outline = load_outline()
    assert outline.geom_type == "MultiPolygon"
    # 6,340 km2 of land plus rivers, lakes and tidal flats; a rough equal-area scale at 31.2 N.
    km2 = outline.area * 111.32 * 111.32 * math.cos(math.radians(31.2))
    assert 6_000 < km2 < 9_000


@pytest.mark.realdata
def test_the_outline_matches_the_shared_gcj02_original_converted():
    if not SHARED_OUTLINE.exists():
        pytest.skip(
            f"shared outline not present at {SHARED_OUTLINE} "
            "(it is in CI; outside CI it may be absent)"
        )
    outline = load_outline()
    src = json.loads(SHARED_OUTLINE.read_text(encoding="utf-8"))
    gcj = shapely.geometry.shape(src["features"][0]["geometry"])
    gx, gy = shapely.get_coordinates(gcj).T
    wx, wy = shapely.get_coordinates(outline).T
    assert len(gx) == len(wx)
    lat, lng = gcj02_to_wgs84(gy, gx)
    assert np.abs(lat - wy).max() < 1e-6 and np.abs(lng - wx).max() < 1e-6
    assert np.abs(gx - wx).mean() > 0.003  # the GCJ-02 offset (~400 m east) is gone


def test_the_default_outline_file_exists():
    assert DEFAULT_OUTLINE.exists()


def test_a_bad_outline_is_bad_input(tmp_path):
    bad = tmp_path / "o.geojson"
    bad.write_text(
        '{"type": "FeatureCollection", "features": [{"geometry": null}]}', encoding="utf-8"
    )
    with pytest.raises(BadInput):
        load_outline(bad)
