"""MVT tiles, checked by decoding with mapbox-vector-tile against h3-py and shapely."""

from __future__ import annotations

import h3
import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from tiles_testdata import PEOPLES_SQUARE, make_snapshot

from heatmap.model import Snapshot
from tiles.errors import TileOutOfRange
from tiles.grid import zoom_to_res
from tiles.vector import snapshot_to_mvt

TMS = morecantile.tms.get("WebMercatorQuad")
TO_3857 = Transformer.from_crs(4326, 3857, always_xy=True)
EXTENT, BUFFER = 4096, 64


_POLYS: dict[str, np.ndarray] = {}


def polygons(snap: Snapshot) -> np.ndarray:
    """Shapely polygons (EPSG:3857 via pyproj) of every cell, from h3.cell_to_boundary."""
    if snap.version in _POLYS:
        return _POLYS[snap.version]
    rings = []
    for c in snap.cells:
        lat, lng = np.array(h3.cell_to_boundary(h3.int_to_str(int(c)))).T
        x, y = TO_3857.transform(lng, lat)
        rings.append(np.column_stack([x, y]))
    out = _POLYS[snap.version] = shapely.polygons([np.vstack([r, r[:1]]) for r in rings])
    return out


def decode(data: bytes) -> dict:
    return mapbox_vector_tile.decode(data, default_options={"y_coord_down": True})


def tile_frame(z: int, x: int, y: int) -> tuple[float, float, float]:
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    return b.left, b.top, (b.right - b.left) / EXTENT  # origin x, origin y, metres per unit


def to_mercator(coords: list, frame: tuple[float, float, float]) -> np.ndarray:
    ox, oy, unit = frame
    a = np.asarray(coords, dtype=float)
    return np.column_stack([ox + a[:, 0] * unit, oy - a[:, 1] * unit])


def surveyor_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2.0)


def tile_at(z: int, dlat: float = 0.0, dlng: float = 0.0) -> tuple[int, int, int]:
    t = TMS.tile(PEOPLES_SQUARE[1] + dlng, PEOPLES_SQUARE[0] + dlat, z)
    return z, t.x, t.y


def check_tile(snap: Snapshot, z: int, x: int, y: int, buffer: int = BUFFER) -> int:
    """Assert the full contract on one tile; return its feature count."""
    data = snapshot_to_mvt(snap, z, x, y, buffer=buffer)
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    unit = (b.right - b.left) / EXTENT
    box = shapely.box(b.left, b.bottom, b.right, b.top)
    big = shapely.box(
        b.left - buffer * unit, b.bottom - buffer * unit,
        b.right + buffer * unit, b.top + buffer * unit,
    )  # fmt: skip
    polys = polygons(snap)
    inter = shapely.area(shapely.intersection(polys, box))
    must = set(snap.cells[inter > 1e-9 * shapely.area(polys)].tolist())
    may = set(snap.cells[shapely.intersects(polys, big)].tolist())
    if not may:
        assert data == b""
        return 0
    layer = decode(data)["density"]
    assert layer["extent"] == EXTENT
    assert layer["version"] == 2
    feats = layer["features"]
    ids = [f["id"] for f in feats]
    assert len(ids) == len(set(ids)), "a cell appears twice"
    assert must <= set(ids), f"missing {len(must - set(ids))} cells"
    assert set(ids) <= may
    row = {int(c): i for i, c in enumerate(snap.cells)}
    frame = (b.left, b.top, unit)
    for f in feats:
        i = row[f["id"]]
        p = f["properties"]
        assert p["cell"] == h3.int_to_str(f["id"])
        assert p["people"] == snap.people[i]
        assert isinstance(p["people"], int)
        assert p["density_km2"] == snap.density_km2[i]
        assert p["band"] == snap.bands[int(snap.band[i])].name
        assert p["res"] == snap.res
        geom = f["geometry"]
        assert geom["type"] == "Polygon"
        assert len(geom["coordinates"]) == 1  # one exterior ring, no holes
        ring = np.asarray(geom["coordinates"][0], dtype=float)
        if np.array_equal(ring[0], ring[-1]):
            ring = ring[:-1]
        assert surveyor_area(ring) > 0, "exterior ring must be clockwise on screen"
        assert ring.min() >= -buffer and ring.max() <= EXTENT + buffer
        assert (ring != np.roll(ring, 1, axis=0)).any(axis=1).all(), "repeated point"
        got = shapely.Polygon(to_mercator(ring.tolist(), frame))
        want = shapely.intersection(polys[i], big)
        assert shapely.hausdorff_distance(got, want) <= unit, f"geometry of {p['cell']}"
        if shapely.contains_properly(big, polys[i]):
            # Not clipped: the six vertices are h3's, each within one tile unit.
            lat, lng = np.array(h3.cell_to_boundary(p["cell"])).T
            hx, hy = TO_3857.transform(lng, lat)
            tx = (np.asarray(hx) - b.left) / unit
            ty = (b.top - np.asarray(hy)) / unit
            assert len(ring) == len(tx)
            d = np.hypot(ring[:, None, 0] - tx[None, :], ring[:, None, 1] - ty[None, :])
            assert d.min(axis=1).max() <= 1.0
    return len(feats)


@pytest.mark.parametrize("where", [(0.0, 0.0), (0.05, -0.07)])
def test_z8_city_tile(snap7: Snapshot, where: tuple[float, float]) -> None:
    assert zoom_to_res(8) == 7
    assert check_tile(snap7, *tile_at(8, *where)) > 0


@pytest.mark.parametrize("where", [(0.0, 0.0), (0.02, 0.03), (-0.1, 0.1)])
def test_z12_district_tile(snap9: Snapshot, where: tuple[float, float]) -> None:
    assert zoom_to_res(12) == 9
    assert check_tile(snap9, *tile_at(12, *where)) > 0


@pytest.mark.parametrize("where", [(0.0, 0.0), (0.013, 0.0031)])
def test_z16_street_tile(snap10: Snapshot, where: tuple[float, float]) -> None:
    assert zoom_to_res(16) == 10
    assert check_tile(snap10, *tile_at(16, *where)) > 0


def test_edge_of_the_data(snap9: Snapshot) -> None:
    # A tile on the rim of the disc: partly empty, clipped cells on all sides.
    assert check_tile(snap9, *tile_at(13, 0.0, 0.155)) > 0


def test_hexagons_crossing_a_tile_edge_appear_in_both_tiles(snap10: Snapshot) -> None:
    z, x, y = tile_at(15)
    left = {f["id"] for f in decode(snapshot_to_mvt(snap10, z, x, y))["density"]["features"]}
    right = {f["id"] for f in decode(snapshot_to_mvt(snap10, z, x + 1, y))["density"]["features"]}
    assert left & right


def test_empty_area_is_empty_bytes(snap9: Snapshot) -> None:
    assert snapshot_to_mvt(snap9, *tile_at(12, 1.0, 1.0)) == b""
    assert snapshot_to_mvt(snap9, 5, 0, 0) == b""


@pytest.mark.parametrize(
    ("z", "x", "y"), [(-1, 0, 0), (25, 0, 0), (3, 8, 0), (3, 0, 8), (3, -1, 2)]
)
def test_out_of_range_raises(snap9: Snapshot, z: int, x: int, y: int) -> None:
    with pytest.raises(TileOutOfRange):
        snapshot_to_mvt(snap9, z, x, y)


def test_noisy_counts_are_doubles() -> None:
    snap = make_snapshot(9, 8, integral=False)
    feats = decode(snapshot_to_mvt(snap, *tile_at(13)))["density"]["features"]
    row = {int(c): i for i, c in enumerate(snap.cells)}
    assert feats
    for f in feats:
        assert isinstance(f["properties"]["people"], float)
        assert f["properties"]["people"] == snap.people[row[f["id"]]]
        assert f["properties"]["density_km2"] == snap.density_km2[row[f["id"]]]


def test_huge_tile_with_three_byte_value_indexes() -> None:
    # 20k+ features: value indexes exceed two varint bytes.
    snap = make_snapshot(10, 85, drop=0.0)
    z, x, y = tile_at(10)
    feats = decode(snapshot_to_mvt(snap, z, x, y))["density"]["features"]
    assert len(feats) == len(snap) > 1 << 14
    row = {int(c): i for i, c in enumerate(snap.cells)}
    for f in feats[:: len(feats) // 50]:
        assert f["properties"]["people"] == snap.people[row[f["id"]]]
        assert f["properties"]["cell"] == h3.int_to_str(f["id"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    z=st.integers(12, 18),
    dlat=st.floats(-0.09, 0.09),
    dlng=st.floats(-0.11, 0.11),
)
def test_random_tiles_decode_to_valid_polygons(
    snap10: Snapshot, z: int, dlat: float, dlng: float
) -> None:
    z, x, y = tile_at(z, dlat, dlng)
    data = snapshot_to_mvt(snap10, z, x, y)
    if not data:
        return
    feats = decode(data)["density"]["features"]
    ids = [f["id"] for f in feats]
    assert len(ids) == len(set(ids))
    for f in feats:
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=float)
        poly = shapely.Polygon(ring)
        assert poly.is_valid
        assert surveyor_area(ring[:-1] if np.array_equal(ring[0], ring[-1]) else ring) > 0
        assert ring.min() >= -BUFFER and ring.max() <= EXTENT + BUFFER


def hexagon_centre_tile(cell: int, z: int) -> tuple[int, int, float, float]:
    """The zoom-``z`` tile holding a cell's centre, and the centre's fractional tile position."""
    lat, lng = h3.cell_to_latlng(h3.int_to_str(cell))
    mx, my = TO_3857.transform(lng, lat)
    size = 2 * TMS.xy_bbox.right / 2**z
    fx, fy = (mx - TMS.xy_bbox.left) / size, (TMS.xy_bbox.top - my) / size
    return int(fx), int(fy), fx, fy


@pytest.mark.parametrize("buffer", [0, BUFFER])
def test_a_tile_corner_inside_a_hexagon_clips_it_in_all_four_tiles(
    snap10: Snapshot, buffer: int
) -> None:
    # At z19 a tile (~65 m) is smaller than a res-10 hexagon (inradius ~65 m): the tile corner
    # nearest a hexagon's centre lies inside it, so the hexagon crosses two edges of each of
    # the four tiles meeting there.
    cell = int(snap10.cells[len(snap10) // 2])
    _, _, fx, fy = hexagon_centre_tile(cell, 19)
    cx, cy = round(fx), round(fy)
    for x, y in [(cx - 1, cy - 1), (cx, cy - 1), (cx - 1, cy), (cx, cy)]:
        assert check_tile(snap10, 19, x, y, buffer=buffer) > 0
        ids = {
            f["id"]
            for f in decode(snapshot_to_mvt(snap10, 19, x, y, buffer=buffer))["density"]["features"]
        }
        assert cell in ids


@pytest.mark.parametrize("buffer", [0, BUFFER])
def test_a_z24_tile_inside_a_hexagon_is_the_buffered_square(snap10: Snapshot, buffer: int) -> None:
    cell = int(snap10.cells[len(snap10) // 3])
    x, y, _, _ = hexagon_centre_tile(cell, 24)
    feats = decode(snapshot_to_mvt(snap10, 24, x, y, buffer=buffer))["density"]["features"]
    assert [f["id"] for f in feats] == [cell]
    ring = feats[0]["geometry"]["coordinates"][0]
    lo, hi = -buffer, EXTENT + buffer
    assert sorted(map(tuple, ring[:-1])) == [(lo, lo), (lo, hi), (hi, lo), (hi, hi)]
    assert surveyor_area(np.asarray(ring[:-1], dtype=float)) > 0
    assert check_tile(snap10, 24, x, y, buffer=buffer) == 1


def test_zoom_0_holds_every_cell(snap7: Snapshot) -> None:
    # Res-7 hexagons are ~0.25 units wide at z0 with extent 4096 (so they round away); with
    # 2**22 units (~10 m) each keeps a valid ring, its coordinates far beyond two bytes.
    feats = decode(snapshot_to_mvt(snap7, 0, 0, 0, extent=1 << 22))["density"]["features"]
    assert sorted(f["id"] for f in feats) == snap7.cells.tolist()
    for f in feats:
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=float)[:-1]
        assert len(ring) == 6 and surveyor_area(ring) > 0
        assert shapely.Polygon(ring).is_valid


def test_rings_that_round_to_nothing_are_dropped(snap9: Snapshot) -> None:
    # With extent 1 every res-9 hexagon of a z8 tile rounds to one point: no feature is left.
    z, x, y = tile_at(8)
    assert snapshot_to_mvt(snap9, z, x, y, extent=1, buffer=0) == b""
    # With extent 256 the smallest survive as triangles or quadrilaterals, still clockwise.
    feats = decode(snapshot_to_mvt(snap9, z, x, y, extent=256, buffer=0))["density"]["features"]
    assert feats
    for f in feats:
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=float)[:-1]
        assert len(ring) >= 3 and surveyor_area(ring) > 0


def test_layer_name_and_extent_are_written(snap9: Snapshot) -> None:
    data = snapshot_to_mvt(snap9, *tile_at(12), extent=512, layer_name="人口")
    layer = decode(data)["人口"]
    assert layer["extent"] == 512
    assert layer["features"]
    assert snapshot_to_mvt(snap9, *tile_at(12), layer_name="")  # an empty name is still valid


def test_bad_extent_or_buffer_raises(snap9: Snapshot) -> None:
    with pytest.raises(ValueError, match="extent"):
        snapshot_to_mvt(snap9, *tile_at(12), extent=0)
    with pytest.raises(ValueError, match="buffer"):
        snapshot_to_mvt(snap9, *tile_at(12), buffer=-1)
