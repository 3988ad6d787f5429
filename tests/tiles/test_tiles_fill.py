"""Multi-resolution fill: withheld cells show their finest published ancestor, in MVT and PNG.

The layers are independent snapshots around People's Square: every res-7 cell published, half
the res-8 cells, a fifth of the res-9 cells. The reference is a plain h3-py loop.
"""

from __future__ import annotations

import io

import h3
import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from PIL import Image
from pyproj import Transformer
from tiles_testdata import PEOPLES_SQUARE, make_snapshot

from heatmap.model import Snapshot
from tiles.fill import fill_area, fill_layer, fill_size
from tiles.grid import tile_bounds_lnglat
from tiles.index import build_index
from tiles.raster import snapshot_to_png
from tiles.vector import snapshot_to_mvt

TMS = morecantile.tms.get("WebMercatorQuad")
TO_3857 = Transformer.from_crs(4326, 3857, always_xy=True)
Z = 12  # draws res 9


@pytest.fixture(scope="module")
def layers() -> dict[int, Snapshot]:
    return {
        7: make_snapshot(7, 3, drop=0.0, seed=1, version="f7"),
        8: make_snapshot(8, 8, drop=0.5, seed=2, version="f8"),
        9: make_snapshot(9, 20, drop=0.8, seed=3, version="f9"),
    }


def reference_source(layers: dict[int, Snapshot], cell: str) -> tuple[int, int] | None:
    """The finest published ancestor (itself included) of a res-9 cell: (res, row)."""
    for q in (9, 8, 7):
        c = h3.str_to_int(h3.cell_to_parent(cell, q)) if q < 9 else h3.str_to_int(cell)
        row = int(layers[q].lookup(np.array([c], dtype=np.uint64))[0])
        if row >= 0:
            return q, row
    return None


def test_fill_draws_every_covered_cell_once_with_its_finest_published_ancestor(
    layers: dict[int, Snapshot],
) -> None:
    fl = fill_layer(layers, 9)
    assert len(np.unique(fl.cells)) == len(fl.cells), "a cell drawn twice"
    expected = {
        h3.str_to_int(c)
        for p in layers[7].cells
        for c in h3.cell_to_children(h3.int_to_str(int(p)), 9)
    } | set(layers[9].cells.tolist())
    assert set(fl.cells.tolist()) == expected
    counts = {q: int((fl.source_res == q).sum()) for q in (7, 8, 9)}
    assert all(counts.values()), counts  # all three levels fill something
    for i in range(0, len(fl.cells), 7):
        q, row = reference_source(layers, h3.int_to_str(int(fl.cells[i])))  # type: ignore[misc]
        snap = layers[q]
        assert fl.source_res[i] == q and fl.source[i] == snap.cells[row]
        assert fl.people[i] == snap.people[row] and fl.band[i] == snap.band[row]
    assert fill_size(layers, 9) >= len(fl)


def test_fill_of_an_area_equals_the_whole_fill_there(layers: dict[int, Snapshot]) -> None:
    whole = fill_layer(layers, 9)
    w, s, e, n = tile_bounds_lnglat(*tile_at(13))
    part = fill_area(layers, 9, (w, s, e, n))
    pos = np.searchsorted(whole.cells, part.cells)
    assert (whole.cells[pos] == part.cells).all()
    assert (whole.source[pos] == part.source).all()
    assert (whole.band[pos] == part.band).all()
    # Every cell whose centre is in the box is there.
    inside = [c for c in whole.cells if _in(h3.cell_to_latlng(h3.int_to_str(int(c))), (w, s, e, n))]
    assert inside and set(inside) <= set(part.cells.tolist())


def _in(latlng: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    w, s, e, n = box
    return w < latlng[1] < e and s < latlng[0] < n


def tile_at(z: int) -> tuple[int, int, int]:
    t = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
    return z, t.x, t.y


def pixel(z: int, x: int, y: int, size: int, cell: int) -> tuple[float, float]:
    """The (column, row) of a cell's centre in a tile of ``size`` pixels."""
    lat, lng = h3.cell_to_latlng(h3.int_to_str(cell))
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    mx, my = TO_3857.transform(lng, lat)
    return (mx - b.left) / (b.right - b.left) * size, (b.top - my) / (b.top - b.bottom) * size


@pytest.mark.parametrize("local", [False, True], ids=["layer", "per-tile"])
def test_mvt_cell_centres_fall_in_one_feature_with_the_parents_band(
    layers: dict[int, Snapshot], local: bool
) -> None:
    z, x, y = tile_at(Z)
    fl = fill_layer(layers, 9)
    source = build_index(fill_area(layers, 9, tile_bounds_lnglat(z, x, y))) if local else fl
    doc = mapbox_vector_tile.decode(
        snapshot_to_mvt(source, z, x, y), default_options={"y_coord_down": True}
    )
    feats = doc["density"]["features"]
    ids = [f["id"] for f in feats]
    assert len(ids) == len(set(ids)), "one source, one feature"
    shapes = [shapely.MultiPolygon([shapely.Polygon(p[0]) for p in _polys(f)]) for f in feats]
    coarse = 0
    for i in range(len(fl.cells)):
        col, row = pixel(z, x, y, 4096, int(fl.cells[i]))
        if not (40 < col < 4056 and 40 < row < 4056):
            continue
        hits = [j for j, g in enumerate(shapes) if g.contains(shapely.Point(col, row))]
        assert len(hits) == 1, f"cell centre covered {len(hits)} times"
        p = feats[hits[0]]["properties"]
        q = int(fl.source_res[i])
        assert feats[hits[0]]["id"] == int(fl.source[i])
        assert p["res"] == q and p["cell"] == h3.int_to_str(int(fl.source[i]))
        assert p["band"] == layers[q].bands[int(fl.band[i])].name
        assert p["people"] == fl.people[i]
        coarse += q < 9
    assert coarse > 50, "the tile should show withheld cells filled by their parents"


def _polys(feature: dict) -> list:
    g = feature["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]


@pytest.mark.parametrize("local", [False, True], ids=["layer", "per-tile"])
def test_png_pixel_at_a_withheld_cells_centre_has_its_parents_colour(
    layers: dict[int, Snapshot], local: bool
) -> None:
    z, x, y = tile_at(Z)
    fl = fill_layer(layers, 9)
    source = build_index(fill_area(layers, 9, tile_bounds_lnglat(z, x, y))) if local else fl
    img = np.asarray(Image.open(io.BytesIO(snapshot_to_png(source, z, x, y))).convert("RGBA"))
    colours = np.array([b.rgba for b in layers[9].bands], dtype=np.uint8)
    checked = {7: 0, 8: 0, 9: 0}
    for i in range(len(fl.cells)):
        col, row = pixel(z, x, y, 256, int(fl.cells[i]))
        if not (2 < col < 254 and 2 < row < 254):
            continue
        assert (img[int(row), int(col)] == colours[fl.band[i]]).all()
        checked[int(fl.source_res[i])] += 1
    assert min(checked.values()) >= 10, checked


def test_without_the_fill_the_withheld_cells_are_blank(layers: dict[int, Snapshot]) -> None:
    """The check above can fail: drawing res 9 alone leaves the filled centres transparent."""
    z, x, y = tile_at(Z)
    img = np.asarray(Image.open(io.BytesIO(snapshot_to_png(layers[9], z, x, y))).convert("RGBA"))
    fl = fill_layer(layers, 9)
    blank = 0
    for i in np.flatnonzero(fl.source_res < 9):
        col, row = pixel(z, x, y, 256, int(fl.cells[i]))
        if 2 < col < 254 and 2 < row < 254:
            blank += int(img[int(row), int(col), 3] == 0)
    assert blank > 50
