"""PNG tiles, checked by decoding with Pillow against h3-py geometry and the band colours."""

from __future__ import annotations

import io

import h3
import morecantile
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pyproj import Transformer
from tiles_testdata import PEOPLES_SQUARE, make_snapshot

from heatmap.model import Snapshot
from tiles.errors import TileOutOfRange
from tiles.grid import tile_bounds_m
from tiles.index import get_index
from tiles.raster import rasterize, snapshot_to_png

TMS = morecantile.tms.get("WebMercatorQuad")
TO_3857 = Transformer.from_crs(4326, 3857, always_xy=True)


def tile_at(z: int, dlat: float = 0.0, dlng: float = 0.0) -> tuple[int, int, int]:
    t = TMS.tile(PEOPLES_SQUARE[1] + dlng, PEOPLES_SQUARE[0] + dlat, z)
    return z, t.x, t.y


def rgba(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return np.asarray(im.convert("RGBA"))


def pixel_polygons(snap: Snapshot, z: int, x: int, y: int, size: int) -> np.ndarray:
    """h3.cell_to_boundary of every cell, in the tile's pixel frame (pyproj, morecantile)."""
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    k = size / (b.right - b.left)
    rings = []
    for c in snap.cells:
        lat, lng = np.array(h3.cell_to_boundary(h3.int_to_str(int(c)))).T
        mx, my = TO_3857.transform(lng, lat)
        ring = np.column_stack([(np.asarray(mx) - b.left) * k, (b.top - np.asarray(my)) * k])
        rings.append(np.vstack([ring, ring[:1]]))
    return shapely.polygons(rings)


def band_colours(snap: Snapshot) -> np.ndarray:
    return np.array([b.rgba for b in snap.bands], dtype=np.uint8)


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize(("z", "fixture"), [(12, "snap9"), (14, "snap10"), (16, "snap10")])
def test_centre_pixel_has_the_band_colour(
    z: int, fixture: str, scale: int, request: pytest.FixtureRequest
) -> None:
    snap: Snapshot = request.getfixturevalue(fixture)
    z, x, y = tile_at(z, 0.004, -0.003)
    size = 256 * scale
    img = rgba(snapshot_to_png(snap, z, x, y, scale=scale))
    assert img.shape == (size, size, 4)
    polys = pixel_polygons(snap, z, x, y, size)
    inside = shapely.contains(shapely.box(0, 0, size, size), polys)
    assert inside.sum() >= 1
    colours = band_colours(snap)
    for i in np.flatnonzero(inside):
        lat, lng = h3.cell_to_latlng(h3.int_to_str(int(snap.cells[i])))
        b = TMS.xy_bounds(morecantile.Tile(x, y, z))
        mx, my = TO_3857.transform(lng, lat)
        col = int((mx - b.left) / (b.right - b.left) * size)
        row = int((b.top - my) / (b.top - b.bottom) * size)
        assert (img[row, col] == colours[snap.band[i]]).all(), h3.int_to_str(int(snap.cells[i]))


def test_pixels_far_from_cells_are_transparent_and_covered_ones_are_not(
    snap9: Snapshot,
) -> None:
    # A tile on the rim of the disc: part data, part empty, some dropped cells inside.
    z, x, y = tile_at(13, 0.0, 0.155)
    img = rgba(snapshot_to_png(snap9, z, x, y, outline=False))
    polys = pixel_polygons(snap9, z, x, y, 256)
    union = shapely.union_all(polys)
    cy, cx = np.mgrid[0:256, 0:256] + 0.5
    near = shapely.contains_xy(shapely.buffer(union, 1.0), cx, cy)
    deep = shapely.contains_xy(shapely.buffer(union, -1.0), cx, cy)
    assert (~near).sum() > 1000 and deep.sum() > 1000
    assert (img[~near][:, 3] == 0).all()
    assert (img[deep][:, 3] == 180).all()


def test_each_pixel_belongs_to_the_hexagon_containing_its_centre() -> None:
    snap = make_snapshot(9, 25, drop=0.0, seed=3)
    idx = get_index(snap)
    z, x, y = tile_at(13)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    rows = idx.query(minx, miny, maxx, maxy)
    lab = rasterize(idx, rows, minx, maxy, 256 / (maxx - minx), 256)
    assert (lab > 0).all(), "a gap inside a fully covered tile"
    assert lab.max() <= rows.size
    polys = pixel_polygons(snap, z, x, y, 256)
    row_of = {int(c): i for i, c in enumerate(snap.cells)}
    owner = np.array([row_of[int(c)] for c in idx.cells[rows]])[lab - 1]
    cy, cx = np.mgrid[0:256, 0:256] + 0.5
    # The centre is inside its owner, up to the 1/65536 px vertex snapping of the renderer.
    assert shapely.dwithin(polys[owner], shapely.points(cx, cy), 1e-4).all()


def test_2x_is_the_same_picture_at_double_resolution(snap10: Snapshot) -> None:
    z, x, y = tile_at(15, 0.003, 0.002)
    one = rgba(snapshot_to_png(snap10, z, x, y, scale=1, outline=False))
    two = rgba(snapshot_to_png(snap10, z, x, y, scale=2, outline=False))
    assert two.shape == (512, 512, 4)
    # Wherever a 1x pixel and its 8 neighbours agree, the hexagon (convex) holds the square
    # spanned by their centres, hence the four 2x pixel centres of that pixel.
    flat = one.view(np.uint32)[..., 0]
    pad = np.pad(flat, 1, mode="edge")
    same = np.ones((256, 256), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= pad[1 + dy : 257 + dy, 1 + dx : 257 + dx] == flat
    same[[0, -1], :] = same[:, [0, -1]] = False  # no neighbours beyond the tile
    two32 = two.view(np.uint32)[..., 0]
    for oy in (0, 1):
        for ox in (0, 1):
            assert (two32[oy::2, ox::2][same] == flat[same]).all()
    assert same.mean() > 0.8


def test_outline_at_street_zoom_only(snap10: Snapshot) -> None:
    colours = {tuple(c) for c in band_colours(snap10)} | {(0, 0, 0, 0)}
    near = rgba(snapshot_to_png(snap10, *tile_at(17)))  # hexagons ~130 px wide
    far = rgba(snapshot_to_png(snap10, *tile_at(14)))  # ~16 px
    near_set = {tuple(c) for c in near.reshape(-1, 4)}
    far_set = {tuple(c) for c in far.reshape(-1, 4)}
    assert far_set <= colours
    assert near_set - colours, "no outline colour at z17"
    forced = rgba(snapshot_to_png(snap10, *tile_at(14), outline=True))
    assert {tuple(c) for c in forced.reshape(-1, 4)} - colours


def test_palette_png_with_transparency(snap9: Snapshot) -> None:
    data = snapshot_to_png(snap9, *tile_at(12))
    im = Image.open(io.BytesIO(data))
    assert im.mode == "P"
    assert "transparency" in im.info
    assert im.size == (256, 256)


def test_empty_area_is_empty_bytes(snap9: Snapshot) -> None:
    assert snapshot_to_png(snap9, *tile_at(12, 1.0, 1.0)) == b""
    assert snapshot_to_png(snap9, *tile_at(12, 1.0, 1.0), scale=2) == b""


@pytest.mark.parametrize(("z", "x", "y"), [(-1, 0, 0), (25, 0, 0), (4, 16, 0), (4, 0, -1)])
def test_out_of_range_raises(snap9: Snapshot, z: int, x: int, y: int) -> None:
    with pytest.raises(TileOutOfRange):
        snapshot_to_png(snap9, z, x, y)


def test_bad_scale_raises(snap9: Snapshot) -> None:
    with pytest.raises(ValueError, match="scale"):
        snapshot_to_png(snap9, *tile_at(12), scale=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    z=st.integers(12, 18),
    dlat=st.floats(-0.07, 0.07),
    dlng=st.floats(-0.08, 0.08),
    scale=st.sampled_from([1, 2]),
)
def test_random_tiles_only_use_band_and_outline_colours(
    snap10: Snapshot, z: int, dlat: float, dlng: float, scale: int
) -> None:
    data = snapshot_to_png(snap10, *tile_at(z, dlat, dlng), scale=scale)
    if not data:
        return
    img = rgba(data)
    cols = band_colours(snap10)
    ok = {tuple(c) for c in cols} | {(0, 0, 0, 0)}
    dark = {(int(r * 0.55), int(g * 0.55), int(b * 0.55), 230) for r, g, b, _ in cols}
    assert {tuple(c) for c in img.reshape(-1, 4)} <= ok | dark


def test_every_pixel_is_painted_exactly_once() -> None:
    # Hexagon by hexagon: the coverage counts of a fully covered tile are all 1, at 1x and 2x
    # (no seam pixel claimed by both neighbours, none by neither).
    snap = make_snapshot(9, 25, drop=0.0, seed=4)
    idx = get_index(snap)
    z, x, y = tile_at(13, 0.01, -0.01)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    rows = idx.query(minx, miny, maxx, maxy)
    for size in (256, 512):
        k = size / (maxx - minx)
        count = np.zeros((size, size), dtype=np.int32)
        for r in rows:
            count += rasterize(idx, np.array([r]), minx, maxy, k, size) > 0
        assert (count == 1).all(), f"{(count > 1).sum()} double, {(count == 0).sum()} unpainted"


def test_a_z24_tile_inside_a_hexagon_is_one_colour(snap10: Snapshot) -> None:
    cell = h3.str_to_int(h3.latlng_to_cell(*PEOPLES_SQUARE, 10))
    assert cell in set(snap10.cells.tolist())
    lat, lng = h3.cell_to_latlng(h3.int_to_str(cell))
    t = TMS.tile(lng, lat, 24)
    colour = band_colours(snap10)[snap10.band[snap10.cells.tolist().index(cell)]]
    for scale in (1, 2):
        img = rgba(snapshot_to_png(snap10, 24, t.x, t.y, scale=scale))  # outline on, none here
        assert (img == colour).all()


def test_zoom_0_and_tiny_hexagons() -> None:
    # Res-7 hexagons are far below a pixel at z0-z3: whatever pixel centres they catch, only
    # band colours appear; an empty result is b"".
    snap = make_snapshot(7, 12)
    cols = {tuple(c) for c in band_colours(snap)} | {(0, 0, 0, 0)}
    for z in range(4):
        t = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
        data = snapshot_to_png(snap, z, t.x, t.y)
        assert data == b"" or {tuple(c) for c in rgba(data).reshape(-1, 4)} <= cols
    t = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], 6)
    assert snapshot_to_png(snap, 6, t.x, t.y)
