"""Per-snapshot spatial index: hexagon vertices in Web Mercator, ordered along a Morton curve.

Building it is the once-per-snapshot cost (dominated by H3 boundary computation); afterwards a
tile finds its cells with a few binary searches on the Morton keys of the cell centres and one
bounding-box filter (a compiled kernel), without touching the rest of the snapshot.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tiles._jit import forgets, kernel
from tiles.grid import ABS_MAX_ZOOM, ORIGIN_SHIFT_M, lnglat_to_mercator, tile_size_m
from tiles.source import BandLike, CellLayer

KEY_ZOOM = ABS_MAX_ZOOM
"""Zoom of the Morton key grid: a tile of any zoom <= this is one contiguous key range."""

_F64 = npt.NDArray[np.float64]
_U64 = npt.NDArray[np.uint64]
_IDX = npt.NDArray[np.intp]


def cells_to_boundaries(cells: _U64) -> tuple[_F64, npt.NDArray[np.uint8]]:
    """Return the boundary vertices of H3 cells as ``(lng, lat)`` degrees.

    Parameters
    ----------
    cells : ndarray of uint64
        H3 cell indexes, any resolutions.

    Returns
    -------
    verts : ndarray, shape (n, V, 2)
        Vertices in H3's order (counter-clockwise seen from above), ``V`` the largest vertex
        count among the cells (6 for hexagons; 5 for pentagons; up to 10 where a cell crosses an
        icosahedron edge). Shorter rings are padded by repeating their last vertex, which only
        adds zero-length edges.
    nverts : ndarray of uint8, shape (n,)
        The real vertex count of each cell.

    Notes
    -----
    Uses h3ronpy's vectorised ``cells_to_wkb_polygons`` (h3o, Rust) and parses the WKB with
    numpy; about 4x faster than a loop over ``h3.cell_to_boundary``, which is the fallback when
    h3ronpy is missing. h3o computes a vertex shared by neighbouring cells bit-for-bit
    identically in each of them, which the raster seam rule relies on.
    """
    cells = np.ascontiguousarray(cells, dtype=np.uint64)
    if cells.size == 0:
        return np.zeros((0, 6, 2)), np.zeros(0, dtype=np.uint8)
    try:
        return _boundaries_h3ronpy(cells)
    except ImportError:  # pragma: no cover - h3ronpy is a declared dependency
        return _boundaries_h3(cells)


def _boundaries_h3ronpy(cells: _U64) -> tuple[_F64, npt.NDArray[np.uint8]]:
    import pyarrow as pa
    from h3ronpy.vector import cells_to_wkb_polygons

    wkb = pa.array(cells_to_wkb_polygons(cells))
    if pa.types.is_large_binary(wkb.type):
        off_type: type[np.signedinteger] = np.int64
    else:
        off_type = np.int32
    bufs = wkb.buffers()
    off = np.frombuffer(bufs[1], dtype=off_type)[wkb.offset : wkb.offset + len(wkb) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8)
    # WKB polygon: byte order (1), type (4), ring count (4), point count (4), points (16 each).
    sizes = np.diff(off)
    npts = (sizes - 13) // 16
    n = cells.shape[0]
    if np.all(sizes == sizes[0]):
        rec = data[off[0] : off[-1]].reshape(n, int(sizes[0]))
        xy = np.ascontiguousarray(rec[:, 13:]).view("<f8").reshape(n, int(npts[0]), 2)
        return np.ascontiguousarray(xy[:, :-1, :]), np.full(n, npts[0] - 1, dtype=np.uint8)
    nv = (npts - 1).astype(np.intp)
    vmax = int(nv.max())
    # Gather each record's coordinate bytes, then pad by repeating the last vertex.
    lens = (npts * 16).astype(np.intp)
    starts = off[:-1].astype(np.intp) + 13
    flat = np.repeat(starts - _exclusive_cumsum(lens), lens) + np.arange(int(lens.sum()))
    coords = np.ascontiguousarray(data[flat]).view("<f8").reshape(-1, 2)
    first = _exclusive_cumsum(npts.astype(np.intp))
    j = np.minimum(np.arange(vmax)[None, :], nv[:, None] - 1)
    verts = coords[first[:, None] + j]
    return verts, nv.astype(np.uint8)


def _boundaries_h3(cells: _U64) -> tuple[_F64, npt.NDArray[np.uint8]]:
    import h3

    rings = [h3.cell_to_boundary(h3.int_to_str(int(c))) for c in cells]
    vmax = max(len(r) for r in rings)
    verts = np.empty((len(rings), vmax, 2))
    for i, r in enumerate(rings):
        a = np.asarray(r)[:, ::-1]
        verts[i, : len(r)] = a
        verts[i, len(r) :] = a[-1]
    return verts, np.array([len(r) for r in rings], dtype=np.uint8)


def _exclusive_cumsum(a: npt.NDArray[np.integer]) -> _IDX:
    out = np.zeros(a.shape[0], dtype=np.intp)
    np.cumsum(a[:-1], out=out[1:])
    return out


def _part1by1(v: _U64) -> _U64:
    """Spread the low 32 bits of ``v`` to the even bit positions (Morton interleave)."""
    v = v & np.uint64(0x00000000FFFFFFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v | (v << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    v = (v | (v << np.uint64(2))) & np.uint64(0x3333333333333333)
    v = (v | (v << np.uint64(1))) & np.uint64(0x5555555555555555)
    return v


def morton_keys(x: _F64, y: _F64) -> _U64:
    """Return the Morton (Z-order) key of Web Mercator points on the zoom-24 tile grid.

    Parameters
    ----------
    x, y : ndarray
        Web Mercator metres.

    Returns
    -------
    ndarray of uint64
        ``interleave(tx, ty)`` with ``tx, ty`` the zoom-:data:`KEY_ZOOM` XYZ tile of each
        point; every tile of zoom ``z <= KEY_ZOOM`` is then the key range
        ``[m << 2(K - z), (m + 1) << 2(K - z))`` with ``m = interleave(x, y)`` of that tile.
    """
    n = 1 << KEY_ZOOM
    size = tile_size_m(KEY_ZOOM)
    tx = np.clip(np.floor((x + ORIGIN_SHIFT_M) / size), 0, n - 1).astype(np.uint64)
    ty = np.clip(np.floor((ORIGIN_SHIFT_M - y) / size), 0, n - 1).astype(np.uint64)
    return _part1by1(tx) | (_part1by1(ty) << np.uint64(1))


@dataclass(frozen=True, eq=False)
class CellIndex:
    """A snapshot's cells in Morton order with their Mercator geometry and values.

    All arrays are aligned and ordered by ``keys``. ``rows`` maps back to the snapshot's rows.
    """

    res: int
    version: str
    cells: _U64
    rows: _IDX
    keys: _U64
    verts: _F64  # (n, V, 2) Web Mercator metres (x, y), rings clockwise seen from above
    nverts: npt.NDArray[np.uint8]
    bounds: _F64  # (4, n): minx, miny, maxx, maxy of each cell in Web Mercator metres
    people: _F64
    density_km2: _F64
    band: npt.NDArray[np.uint8]
    bands: tuple[BandLike, ...]
    people_integral: bool  # every published count is a whole number -> MVT int values
    half_extent: float  # largest half width/height of a cell's bbox about its key point
    sorted_cells: _U64  # the snapshot's sorted cells (for geometry reuse)
    sorted_to_index: _IDX  # position in this index of each sorted cell
    source: _U64  # the published cell whose values each cell shows (itself unless filled)
    source_res: npt.NDArray[np.uint8]  # its resolution

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    @property
    def vxy(self) -> _F64:
        """Return the vertices as a ``(2, V, n)`` view (``[0]`` is x, ``[1]`` is y)."""
        return self.verts.transpose(2, 1, 0)

    @property
    def bbox(self) -> _F64:
        """Return the cell bounding boxes as an ``(n, 4)`` view (minx, miny, maxx, maxy)."""
        return self.bounds.T

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the index arrays."""
        return sum(
            a.nbytes
            for a in (
                self.cells, self.rows, self.keys, self.verts, self.nverts, self.bounds,
                self.people, self.density_km2, self.band, self.sorted_to_index,
                self.source, self.source_res,
            )
        )  # fmt: skip

    def query(self, minx: float, miny: float, maxx: float, maxy: float) -> _IDX:
        """Return the positions of the cells whose bbox overlaps a Web Mercator box.

        Parameters
        ----------
        minx, miny, maxx, maxy : float
            Query box in Web Mercator metres.

        Returns
        -------
        ndarray of intp
            Positions into this index (grouped by key tile, not sorted).

        Notes
        -----
        A cell is keyed by its bbox centre, so every cell overlapping the box has its key point
        in the box grown by :attr:`half_extent`. That grown box is covered by at most 5 x 5 key
        tiles of a zoom whose tile is at least a quarter of the box's span; each is one
        contiguous key range, found by binary search. Candidates are then filtered exactly by
        bbox overlap. Both steps are one compiled kernel: a few microseconds per tile.
        """
        return _query(
            self.keys.view(np.int64), self.bounds, self.half_extent,
            float(minx), float(miny), float(maxx), float(maxy),
        )  # fmt: skip


@kernel
def _spread(v: int) -> int:
    """Scalar :func:`_part1by1` for the key tiles of one query (``v < 2**KEY_ZOOM``)."""
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    return (v | (v << 1)) & 0x5555555555555555


@kernel
def _lower_bound(keys: npt.NDArray[np.int64], v: int) -> int:
    """First position in sorted ``keys`` whose key is ``>= v`` (``np.searchsorted``, left)."""
    a, b = 0, keys.size
    while a < b:
        mid = (a + b) >> 1
        if keys[mid] < v:
            a = mid + 1
        else:
            b = mid
    return a


@kernel
def _query(
    keys: npt.NDArray[np.int64],
    bounds: _F64,
    half: float,
    minx: float,
    miny: float,
    maxx: float,
    maxy: float,
) -> _IDX:
    """Kernel of :meth:`CellIndex.query`: key ranges by binary search, then the bbox filter."""
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    qx0, qy0, qx1, qy1 = minx - half, miny - half, maxx + half, maxy + half
    span = max(qx1 - qx0, qy1 - qy0, 1e-9)
    zq = min(max(int(math.floor(math.log2(2.0 * ORIGIN_SHIFT_M / span))) + 2, 0), KEY_ZOOM)
    size = 2.0 * ORIGIN_SHIFT_M / (1 << zq)
    last = float((1 << zq) - 1)
    tx0 = int(min(max((qx0 + ORIGIN_SHIFT_M) // size, 0.0), last))
    tx1 = int(min(max((qx1 + ORIGIN_SHIFT_M) // size, 0.0), last))
    ty0 = int(min(max((ORIGIN_SHIFT_M - qy1) // size, 0.0), last))
    ty1 = int(min(max((ORIGIN_SHIFT_M - qy0) // size, 0.0), last))
    shift = 2 * (KEY_ZOOM - zq)
    nt = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
    lo = np.empty(nt, dtype=np.intp)
    hi = np.empty(nt, dtype=np.intp)
    total = 0
    t = 0
    for ty in range(ty0, ty1 + 1):
        for tx in range(tx0, tx1 + 1):
            m = _spread(tx) | (_spread(ty) << 1)
            lo[t] = _lower_bound(keys, m << shift)
            hi[t] = _lower_bound(keys, (m + 1) << shift)
            total += hi[t] - lo[t]
            t += 1
    out = np.empty(total, dtype=np.intp)
    k = 0
    for t in range(nt):
        for c in range(lo[t], hi[t]):
            if bounds[0, c] < maxx and bounds[2, c] > minx and bounds[1, c] < maxy:
                if bounds[3, c] > miny:
                    out[k] = c
                    k += 1
    return out[:k]


def build_index(layer: CellLayer, reuse: CellIndex | None = None) -> CellIndex:
    """Build the spatial index of a layer.

    Parameters
    ----------
    layer : CellLayer
        The snapshot; ``cells`` sorted and unique. A layer with ``source`` and ``source_res``
        arrays (:class:`tiles.fill.FilledLayer`) keeps them: each cell is then drawn with the
        values of its source, and MVT writes one feature per source.
    reuse : CellIndex, optional
        An index of the same resolution (usually the previous version of the window): the
        geometry of cells present in both is copied instead of recomputed.

    Returns
    -------
    CellIndex
    """
    cells = np.asarray(layer.cells, dtype=np.uint64)
    n = cells.shape[0]
    same_res = reuse if reuse is not None and reuse.res == layer.res else None
    verts, nverts = _mercator_vertices(cells, same_res)
    if n:
        vx, vy = verts[:, :, 0], verts[:, :, 1]
        minx, maxx = vx.min(axis=1), vx.max(axis=1)
        miny, maxy = vy.min(axis=1), vy.max(axis=1)
        half = float(max((maxx - minx).max(), (maxy - miny).max()) / 2.0) * (1 + 1e-9)
        cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
        keys = morton_keys(cx, cy)
    else:
        minx = maxx = miny = maxy = np.zeros(0)
        half = 0.0
        keys = np.zeros(0, dtype=np.uint64)
    perm = np.argsort(keys, kind="stable")
    inv = np.empty(n, dtype=np.intp)
    inv[perm] = np.arange(n)
    people = np.asarray(layer.people, dtype=np.float64)
    source = getattr(layer, "source", None)
    src = cells if source is None else np.asarray(source, dtype=np.uint64)
    source_res = getattr(layer, "source_res", None)
    if source_res is None:
        src_res = np.full(n, int(layer.res), dtype=np.uint8)
    else:
        src_res = np.asarray(source_res, dtype=np.uint8)
    integral = bool(n == 0 or (np.all(people == np.rint(people)) and np.all(people >= 0)))
    return CellIndex(
        res=int(layer.res),
        version=str(layer.version),
        cells=cells[perm],
        rows=perm,
        keys=keys[perm],
        verts=np.ascontiguousarray(verts[perm]),
        nverts=nverts[perm],
        bounds=np.stack([minx[perm], miny[perm], maxx[perm], maxy[perm]]),
        people=people[perm],
        density_km2=np.asarray(layer.density_km2, dtype=np.float64)[perm],
        band=np.asarray(layer.band, dtype=np.uint8)[perm],
        bands=tuple(layer.bands),
        people_integral=integral,
        half_extent=half,
        sorted_cells=cells,
        sorted_to_index=inv,
        source=src[perm],
        source_res=src_res[perm],
    )


def _mercator_vertices(cells: _U64, reuse: CellIndex | None) -> tuple[_F64, npt.NDArray[np.uint8]]:
    """Return Mercator vertices for sorted ``cells``, copying those already in ``reuse``."""
    n = cells.shape[0]
    if reuse is not None and len(reuse) and n:
        pos = np.minimum(np.searchsorted(reuse.sorted_cells, cells), len(reuse) - 1)
        hit = reuse.sorted_cells[pos] == cells
    else:
        pos = np.zeros(n, dtype=np.intp)
        hit = np.zeros(n, dtype=bool)
    miss = ~hit
    new_v, new_n = cells_to_boundaries(cells[miss])
    if new_v.shape[0]:
        new_v = _reverse_rings(new_v, new_n)
        mx, my = lnglat_to_mercator(new_v[:, :, 0], new_v[:, :, 1])
        new_v = np.stack([mx, my], axis=-1)
    if reuse is None or not hit.any():
        return new_v, new_n
    assert reuse is not None
    old_rows = reuse.sorted_to_index[pos[hit]]
    vmax = max(reuse.verts.shape[1], new_v.shape[1] if new_v.shape[0] else 0)
    out = np.empty((n, vmax, 2))
    out[hit] = _pad(reuse.verts[old_rows], vmax)
    if new_v.shape[0]:
        out[miss] = _pad(new_v, vmax)
    nv = np.empty(n, dtype=np.uint8)
    nv[hit] = reuse.nverts[old_rows]
    nv[miss] = new_n
    return out, nv


def _reverse_rings(verts: _F64, nverts: npt.NDArray[np.uint8]) -> _F64:
    """Reverse each ring's real vertices (H3's counter-clockwise -> clockwise on a north-up map).

    Clockwise seen from above is a positive surveyor's area in y-down tile coordinates, the MVT
    exterior-ring convention; padding still repeats the (new) last vertex.
    """
    nv = nverts.astype(np.intp)[:, None]
    j = np.arange(verts.shape[1])[None, :]
    src = np.where(j < nv, nv - 1 - j, 0)
    return np.take_along_axis(verts, src[:, :, None], axis=1)


def _pad(verts: _F64, vmax: int) -> _F64:
    """Pad ``(n, V, 2)`` vertex rings to ``vmax`` by repeating the last vertex."""
    v = verts.shape[1]
    if v == vmax:
        return verts
    tail = np.repeat(verts[:, -1:, :], vmax - v, axis=1)
    return np.concatenate([verts, tail], axis=1)


class IndexCache:
    """A thread-safe, byte-bounded LRU of :class:`CellIndex` keyed by layer version and res."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], CellIndex] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[tuple[object, ...], threading.Lock] = {}
        self.builds = 0

    @staticmethod
    def key(layer: CellLayer) -> tuple[object, ...]:
        """Return the cache key of a layer: version, res and a cheap fingerprint of the cells."""
        c = layer.cells
        n = int(c.shape[0])
        first, last = (int(c[0]), int(c[-1])) if n else (0, 0)
        return (str(layer.version), int(layer.res), n, first, last)

    def get(self, layer: CellLayer) -> CellIndex:
        """Return the layer's index, building it (once, even under concurrency) on a miss."""
        key = self.key(layer)
        with self._lock:
            idx = self._items.get(key)
            if idx is not None:
                self._items.move_to_end(key)
                return idx
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:
            with self._lock:
                idx = self._items.get(key)
                if idx is not None:
                    return idx
                reuse = self._latest_of_res(int(layer.res))
            idx = build_index(layer, reuse)
            with self._lock:
                self.builds += 1
                self._items[key] = idx
                self._bytes += idx.nbytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
                self._building.pop(key, None)
            return idx

    def _latest_of_res(self, res: int) -> CellIndex | None:
        """Return the cached index of ``res`` with the most cells (geometry depends on the
        cell alone, so the largest one has the most to reuse; a filled layer's, usually)."""
        best: CellIndex | None = None
        for idx in reversed(self._items.values()):
            if idx.res == res and (best is None or len(idx) > len(best)):
                best = idx
        return best

    def discard(self, layer: CellLayer) -> None:
        """Drop the layer's index, if cached."""
        with self._lock:
            idx = self._items.pop(self.key(layer), None)
            if idx is not None:
                self._bytes -= idx.nbytes

    def clear(self) -> None:
        """Drop every index."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


INDEX_CACHE = IndexCache()
"""The process-wide index cache used by the renderers."""
forgets(INDEX_CACHE.discard)  # the warm-up layer must not stay cached, nor be reused


def get_index(layer: CellLayer) -> CellIndex:
    """Return the (cached) spatial index of ``layer``."""
    return INDEX_CACHE.get(layer)
