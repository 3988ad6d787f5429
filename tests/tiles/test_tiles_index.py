"""The per-snapshot spatial index: geometry against h3-py, queries against brute force."""

from __future__ import annotations

import h3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiles_testdata import make_snapshot

from heatmap.model import Snapshot
from tiles.grid import lnglat_to_mercator, mercator_to_lnglat, tile_bounds_m
from tiles.index import IndexCache, build_index, cells_to_boundaries, get_index
from tiles.raster import snapshot_to_png
from tiles.vector import snapshot_to_mvt


def h3_rings(cells: np.ndarray) -> list[np.ndarray]:
    return [np.array(h3.cell_to_boundary(h3.int_to_str(int(c))))[:, ::-1] for c in cells]


def test_boundaries_match_h3_including_pentagons_and_distorted_cells() -> None:
    pent = h3.get_pentagons(3)[4]
    cells = sorted({h3.str_to_int(c) for c in h3.grid_disk(pent, 3)})
    cells += sorted(h3.str_to_int(c) for c in h3.grid_disk(h3.latlng_to_cell(31.2, 121.5, 9), 2))
    arr = np.array(cells, dtype=np.uint64)
    verts, nv = cells_to_boundaries(arr)
    rings = h3_rings(arr)
    assert {len(r) for r in rings} != {6}, "the sample should hold pentagons / distorted cells"
    for i, ring in enumerate(rings):
        assert nv[i] == len(ring)
        assert np.allclose(verts[i, : nv[i]], ring, atol=1e-12)
        assert np.allclose(verts[i, nv[i] :], ring[-1], atol=1e-12)  # padding: last vertex


def test_index_geometry_is_mercator_clockwise(snap9: Snapshot) -> None:
    idx = get_index(snap9)
    i = len(idx) // 3
    ring = h3_rings(idx.cells[i : i + 1])[0][::-1]  # clockwise seen from above
    x, y = lnglat_to_mercator(ring[:, 0], ring[:, 1])
    got = idx.verts[i, : idx.nverts[i]]
    assert np.allclose(got[:, 0], x, atol=1e-6) and np.allclose(got[:, 1], y, atol=1e-6)
    assert (snap9.cells[idx.rows] == idx.cells).all()
    assert (snap9.people[idx.rows] == idx.people).all()
    assert np.all(np.diff(idx.keys.astype(np.float64)) >= 0)


@settings(max_examples=60, deadline=None)
@given(
    cx=st.floats(-0.2, 0.2),
    cy=st.floats(-0.2, 0.2),
    w=st.floats(1e-4, 0.5),
    h=st.floats(1e-4, 0.5),
)
def test_query_equals_brute_force(
    snap9: Snapshot, cx: float, cy: float, w: float, h: float
) -> None:
    idx = get_index(snap9)
    x0, y0 = lnglat_to_mercator(121.4755 + cx - w / 2, 31.2335 + cy - h / 2)
    x1, y1 = lnglat_to_mercator(121.4755 + cx + w / 2, 31.2335 + cy + h / 2)
    got = idx.query(float(x0), float(y0), float(x1), float(y1))
    bb = idx.bbox
    want = np.flatnonzero((bb[:, 0] < x1) & (bb[:, 2] > x0) & (bb[:, 1] < y1) & (bb[:, 3] > y0))
    assert np.array_equal(np.sort(got), want)


def test_rebuild_reuses_geometry_of_the_previous_version() -> None:
    a = make_snapshot(9, 20, seed=1, version="a")
    b = make_snapshot(9, 21, seed=2, version="b")  # overlapping, different cell set
    fresh = build_index(b)
    reused = build_index(b, reuse=build_index(a))
    assert np.array_equal(fresh.cells, reused.cells)
    assert np.array_equal(fresh.vxy, reused.vxy)
    assert np.array_equal(fresh.nverts, reused.nverts)


def test_index_cache_is_keyed_by_version_and_bounded() -> None:
    cache = IndexCache(max_bytes=1)
    a = make_snapshot(8, 5, version="x1")
    b = make_snapshot(8, 6, version="x2")
    ia = cache.get(a)
    assert cache.get(a) is ia and cache.builds == 1
    cache.get(b)
    assert cache.builds == 2
    assert len(cache) == 1  # over the byte bound: only the newest stays


def test_empty_layer() -> None:
    snap = make_snapshot(9, 3, drop=1.0, version="empty")
    assert len(snap) == 0
    z, x, y = 12, 3430, 1673
    assert snapshot_to_mvt(snap, z, x, y) == b""
    assert snapshot_to_png(snap, z, x, y) == b""
    assert get_index(snap).query(*tile_bounds_m(z, x, y)).size == 0


def test_pentagon_tiles_render() -> None:
    # Variable vertex counts go through the general paths of both renderers.
    pent = h3.get_pentagons(4)[2]
    cells = np.array(sorted(h3.str_to_int(c) for c in h3.grid_disk(pent, 4)), dtype=np.uint64)
    lat, lng = h3.cell_to_latlng(pent)
    base = make_snapshot(4, 1)
    snap = Snapshot(
        base.window, 4, "pent", True, cells, np.full(cells.size, 50.0),
        np.full(cells.size, 1.0), np.zeros(cells.size, np.uint8), base.bands,
    )  # fmt: skip
    import mapbox_vector_tile
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lng, lat, 6)
    feats = mapbox_vector_tile.decode(snapshot_to_mvt(snap, 6, t.x, t.y))["density"]["features"]
    assert h3.str_to_int(pent) in {f["id"] for f in feats}
    assert snapshot_to_png(snap, 6, t.x, t.y)
    x, y = mercator_to_lnglat(0.0, 0.0)
    assert float(x) == pytest.approx(0.0) and float(y) == pytest.approx(0.0)
