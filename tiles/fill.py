"""Multi-resolution fill: at a zoom's resolution, draw every place by its finest published level.

A zoom draws one H3 resolution ``r`` (:func:`tiles.grid.zoom_to_res`). Where cells of ``r`` are
withheld, a published parent (or grandparent, ...) still says how crowded the place is. This
module turns the published layers of all resolutions into one layer of resolution-``r`` cells,
each carrying the values of its *source*: the finest published cell that contains it, itself
included (H3's logical containment: a cell's parent is found from its index alone).

Drawing the gap as res-``r`` pieces, rather than the parent's own hexagon, keeps the map one
tiling: H3's children do not exactly cover their parent, so a parent hexagon drawn next to
res-``r`` cells would overlap some and leave slivers beside others. Every drawn cell is a
res-``r`` hexagon, so the renderers' seam rule holds and no point is painted twice.

Only published values are shown: a piece carries its source's published people, density and
band (the source's average over its whole area). Nothing is derived by subtracting children
from a parent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tiles.source import BandLike, CellLayer

_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_IDX = npt.NDArray[np.intp]

_RES_SHIFT = np.uint64(52)
_RES_MASK = np.uint64(0xF) << _RES_SHIFT
_BASE_SHIFT = np.uint64(45)
_PENTAGON_BASES = np.array([4, 14, 24, 38, 49, 58, 63, 72, 83, 97, 107, 117], dtype=np.uint64)


def _digit_shift(res: int) -> np.uint64:
    return np.uint64(3 * (15 - res))


def cell_to_parent(cells: _U64, res: int) -> _U64:
    """Return the parent at ``res`` of H3 cells of any finer resolution (vectorised bit ops).

    >>> hex(int(cell_to_parent(np.array([0x8A309A4A9C4FFFF], np.uint64), 9)[0]))
    '0x89309a4a9c7ffff'
    """
    cells = np.asarray(cells, dtype=np.uint64)
    unused = np.uint64((1 << (3 * (15 - res))) - 1)  # digits res+1..15 become 7 (unused)
    return (cells & ~_RES_MASK & ~unused) | (np.uint64(res) << _RES_SHIFT) | unused


def cell_to_children(cells: _U64, res: int) -> tuple[_U64, _IDX]:
    """Return the children at ``res`` of H3 cells of resolution ``res - 1``, and their parents.

    Returns ``(children, parent)``: ``parent[i]`` is the position in ``cells`` of child ``i``.
    Each hexagon has 7 children (digit 0-6); a pentagon 6 (H3 deletes its digit-1 child).
    """
    cells = np.asarray(cells, dtype=np.uint64)
    n = cells.shape[0]
    shift = _digit_shift(res)
    base = (cells & ~_RES_MASK & ~(np.uint64(7) << shift)) | (np.uint64(res) << _RES_SHIFT)
    kids = base[:, None] | (np.arange(7, dtype=np.uint64)[None, :] << shift)
    parent = np.repeat(np.arange(n, dtype=np.intp), 7)
    kids = kids.ravel()
    pent = _is_pentagon(cells, res - 1)
    if pent.any():
        drop = np.zeros((n, 7), dtype=bool)
        drop[pent, 1] = True
        keep = ~drop.ravel()
        kids, parent = kids[keep], parent[keep]
    return kids, parent


def _is_pentagon(cells: _U64, res: int) -> npt.NDArray[np.bool_]:
    """Return which cells (all of resolution ``res``) are pentagons."""
    base = (cells >> _BASE_SHIFT) & np.uint64(0x7F)
    digits = np.uint64((1 << (3 * res)) - 1) << _digit_shift(res)
    return np.isin(base, _PENTAGON_BASES) & ((cells & digits) == 0)


def _lookup(sorted_cells: _U64, cells: _U64) -> _IDX:
    """Return the row of each cell in ``sorted_cells``, or -1."""
    if sorted_cells.shape[0] == 0:
        return np.full(cells.shape[0], -1, dtype=np.intp)
    pos = np.minimum(np.searchsorted(sorted_cells, cells), sorted_cells.shape[0] - 1)
    return np.where(sorted_cells[pos] == cells, pos, -1).astype(np.intp)


@dataclass(frozen=True, eq=False)
class FilledLayer:
    """Resolution-``res`` cells drawn at one zoom, each with the values of its source.

    Satisfies :class:`tiles.source.CellLayer` (so every renderer draws it) and adds ``source``
    (the published cell whose values a drawn cell carries: itself where ``res`` is published)
    and ``source_res``. MVT writes one feature per source, the union of its pieces.
    """

    res: int
    version: str
    cells: _U64
    people: _F64
    density_km2: _F64
    band: _U8
    bands: tuple[BandLike, ...]
    source: _U64
    source_res: _U8

    def __len__(self) -> int:
        return int(self.cells.shape[0])


def fill_layer(
    layers: Mapping[int, CellLayer], res: int, version: str | None = None
) -> FilledLayer:
    """Return the filled layer of resolution ``res`` from published layers of every resolution.

    Parameters
    ----------
    layers : mapping of int to CellLayer
        Published cells per resolution; resolutions below ``res`` fill the gaps. Each layer's
        ``cells`` are sorted and unique.
    res : int
        The resolution drawn.
    version : str, optional
        The filled layer's version (default: the ``res`` layer's version plus ``"+fill"``).

    Returns
    -------
    FilledLayer

    Notes
    -----
    Top-down over resolutions ``q = min .. res``: the drawn set ``D_min`` is the published
    cells of the coarsest layer, each its own source; ``D_q`` is the children of ``D_{q-1}``
    (inheriting their parent's source) where a child published at ``q`` becomes its own
    source, plus cells published at ``q`` whose parent was not drawn (possible under DP's
    noisy threshold). Vectorised: about 7x the drawn cells of work per level, no Python loop
    over cells. The result is sorted by cell, so each res-``res`` cell is drawn at most once.
    """
    qs = sorted(q for q in layers if q <= res)
    if res not in layers:
        raise ValueError(f"no layer of resolution {res}")
    top = layers[res]
    bands = tuple(top.bands)
    cur = np.asarray(layers[qs[0]].cells, dtype=np.uint64)
    src_res = np.full(cur.shape[0], qs[0], dtype=np.uint8)
    src_row = np.arange(cur.shape[0], dtype=np.intp)
    for q in range(qs[0] + 1, res + 1):
        kids, parent = cell_to_children(cur, q)
        k_res, k_row = src_res[parent], src_row[parent]
        pub = np.zeros(0, np.uint64)
        if q in layers:
            pub = np.asarray(layers[q].cells, dtype=np.uint64)
        rows = _lookup(pub, kids)
        own = rows >= 0
        k_res[own] = q
        k_row[own] = rows[own]
        drawn = np.zeros(pub.shape[0], dtype=bool)
        drawn[rows[own]] = True
        orphans = np.flatnonzero(~drawn)
        cur = np.concatenate([kids, pub[orphans]])
        src_res = np.concatenate([k_res, np.full(orphans.shape[0], q, dtype=np.uint8)])
        src_row = np.concatenate([k_row, orphans])
    order = np.argsort(cur, kind="stable")
    cur, src_res, src_row = cur[order], src_res[order], src_row[order]
    n = cur.shape[0]
    people, density = np.empty(n), np.empty(n)
    band = np.empty(n, dtype=np.uint8)
    source = np.empty(n, dtype=np.uint64)
    for q in qs:
        m = src_res == q
        if not m.any():
            continue
        lay, rows = layers[q], src_row[m]
        people[m] = np.asarray(lay.people)[rows]
        density[m] = np.asarray(lay.density_km2)[rows]
        band[m] = np.asarray(lay.band)[rows]
        source[m] = np.asarray(lay.cells, dtype=np.uint64)[rows]
    return FilledLayer(
        res=res,
        version=version if version is not None else f"{top.version}+fill",
        cells=cur,
        people=people,
        density_km2=density,
        band=band,
        bands=bands,
        source=source,
        source_res=src_res,
    )


def finest_published(
    layers: Mapping[int, CellLayer], cells_by_res: Mapping[int, _U64], res: int
) -> tuple[_IDX, _IDX]:
    """Return, for points given by their cell at every resolution, the finest published one.

    ``cells_by_res[q]`` holds the cell at resolution ``q`` of each point (aligned arrays). The
    result is ``(q, row)``: the finest resolution ``q <= res`` whose cell of the point is
    published, and that cell's row in ``layers[q]``; ``-1`` for both where none is.
    """
    n = next(iter(cells_by_res.values())).shape[0] if cells_by_res else 0
    best_q = np.full(n, -1, dtype=np.intp)
    best_row = np.full(n, -1, dtype=np.intp)
    for q in sorted((q for q in layers if q <= res and q in cells_by_res), reverse=True):
        todo = best_q < 0
        if not todo.any():
            break
        rows = _lookup(np.asarray(layers[q].cells, dtype=np.uint64), cells_by_res[q][todo])
        hit = rows >= 0
        idx = np.flatnonzero(todo)[hit]
        best_q[idx] = q
        best_row[idx] = rows[hit]
    return best_q, best_row


def fill_size(layers: Mapping[int, CellLayer], res: int) -> int:
    """Return an upper bound of the cells :func:`fill_layer` would draw at ``res``.

    Each published cell of resolution ``q`` stands for at most ``7 ** (res - q)`` cells of
    ``res``; no cell is built, so callers can pick a whole-layer or a per-tile fill first.
    """
    return int(sum(len(layers[q].cells) * 7 ** (res - q) for q in layers if q <= res))


def fill_area(
    layers: Mapping[int, CellLayer],
    res: int,
    bounds: tuple[float, float, float, float],
    version: str = "tile",
) -> FilledLayer:
    """Return the filled layer of ``res`` restricted to the cells near a lng/lat box.

    Parameters
    ----------
    layers, res
        As for :func:`fill_layer`.
    bounds : (west, south, east, north)
        Degrees; every cell of ``res`` overlapping the box is included (cells whose centre
        lies in the box grown by two mean edge lengths), more may be.
    version : str
        The layer's version (it is not meant for a cache).

    Notes
    -----
    Each cell's values depend on the cell alone (its finest published ancestor, by
    :func:`finest_published`), so neighbouring boxes draw a shared cell identically: tiles
    rendered from such pieces meet without seams. This keeps the cost of a street-zoom tile
    proportional to the cells it shows, where a whole-city fill of the finest resolution
    would hold hundreds of thousands of cells.
    """
    import h3
    from h3.api import numpy_int as h3n
    from shapely.geometry import box

    w, s, e, n = bounds
    edge_deg = 2.0 * h3.average_hexagon_edge_length(res, unit="m") / 111_320.0
    lat_c = min(max(abs(s), abs(n)), 85.0)
    grow_x = edge_deg / max(np.cos(np.radians(lat_c)), 0.05)
    area = box(max(w - grow_x, -180.0), max(s - edge_deg, -90.0), min(e + grow_x, 180.0),
               min(n + edge_deg, 90.0))  # fmt: skip
    cells = np.unique(np.asarray(h3n.geo_to_cells(area, res), dtype=np.uint64))
    qs = [q for q in layers if q <= res]
    best_q, best_row = finest_published(layers, {q: cell_to_parent(cells, q) for q in qs}, res)
    keep = best_q >= 0
    cells, best_q, best_row = cells[keep], best_q[keep], best_row[keep]
    m = cells.shape[0]
    people, density = np.empty(m), np.empty(m)
    band = np.empty(m, dtype=np.uint8)
    source = np.empty(m, dtype=np.uint64)
    for q in qs:
        sel = best_q == q
        if sel.any():
            lay, rows = layers[q], best_row[sel]
            people[sel] = np.asarray(lay.people)[rows]
            density[sel] = np.asarray(lay.density_km2)[rows]
            band[sel] = np.asarray(lay.band)[rows]
            source[sel] = np.asarray(lay.cells, dtype=np.uint64)[rows]
    return FilledLayer(
        res=res,
        version=version,
        cells=cells,
        people=people,
        density_km2=density,
        band=band,
        bands=tuple(layers[res].bands),
        source=source,
        source_res=best_q.astype(np.uint8),
    )


class FillCache:
    """A small thread-safe LRU of filled layers keyed by the layers' version and resolution."""

    def __init__(self, size: int = 12) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], FilledLayer] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[str, int], threading.Lock] = {}

    def get(self, layers: Mapping[int, CellLayer], res: int) -> FilledLayer:
        """Return the filled layer of ``res`` (built once per version, even under concurrency)."""
        key = (str(layers[res].version), res)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                hit = self._items.get(key)
            if hit is None:
                hit = fill_layer(layers, res)
                with self._lock:
                    self._items[key] = hit
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
                    self._building.pop(key, None)
            return hit


FILL_CACHE = FillCache()
"""The process-wide cache of filled layers."""


def filled(layers: Mapping[int, CellLayer], res: int) -> FilledLayer:
    """Return the (cached) filled layer of ``res`` for a set of published layers."""
    return FILL_CACHE.get(layers, res)


__all__ = [
    "FilledLayer",
    "cell_to_children",
    "cell_to_parent",
    "fill_area",
    "fill_layer",
    "fill_size",
    "filled",
    "finest_published",
]
