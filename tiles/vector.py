"""Mapbox Vector Tiles (MVT 2.1) of a density layer, encoded by one compiled kernel per tile.

One layer, ``density``; one polygon feature per published cell that overlaps the tile plus its
buffer; feature id = the H3 index (uint64); properties ``cell`` (H3 string), ``people``,
``density_km2``, ``band`` (name) and ``res`` (the cell's resolution). ``mapbox-vector-tile`` is
the decoding reference in tests. A filled layer (:mod:`tiles.fill`) draws a withheld area with
pieces of its published parent: the pieces of one source form one multi-polygon feature whose
id and properties are the source's.

The index query returns the candidate cells; :func:`_encode_layer` then projects, clips and
rounds each ring, groups the rings by source and writes the whole layer's protobuf bytes into
one preallocated buffer, so a tile costs a few microseconds plus well under one per feature.
The per-snapshot tables (value ranks, the keys and band names) are built once per index with
numpy.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import numpy.typing as npt

from tiles._jit import kernel, warms
from tiles._pbf import (
    _put_bytes,
    _put_h3_string,
    _put_number,
    _put_raw,
    _put_varint,
    _varint_len,
    _zigzag,
    _zz_len,
    field_bytes,
)
from tiles.grid import ABS_MAX_ZOOM, check_tile, tile_bounds_m
from tiles.index import CellIndex, get_index
from tiles.source import CellLayer

LAYER_NAME = "density"
"""Name of the single layer in every tile."""

FIELDS = ("cell", "people", "density_km2", "band", "res")
"""Property keys, in the order of the layer's ``keys`` table."""

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_IDX = npt.NDArray[np.intp]

_MOVE_TO_1 = 9  # command 1 (MoveTo) | count 1 << 3
_LINE_TO = 2
_CLOSE_PATH = 15  # command 7 (ClosePath) | count 1 << 3
_HEAD_ROOM = 6  # room before the layer for the tile's field tag and a 5-byte length


def snapshot_to_mvt(
    layer: CellLayer | CellIndex,
    z: int,
    x: int,
    y: int,
    *,
    extent: int = 4096,
    buffer: int = 64,
    layer_name: str = LAYER_NAME,
) -> bytes:
    """Return the MVT of tile ``z/x/y`` for a density layer, or ``b""`` if no cell touches it.

    Parameters
    ----------
    layer : CellLayer
        Published cells of one resolution (pick it with :func:`tiles.grid.zoom_to_res`).
    z, x, y : int
        XYZ tile address.
    extent : int
        Tile coordinate range (MVT ``extent``), default 4096.
    buffer : int
        Extra margin kept around the tile, in extent units, so renderers draw seamless edges.
    layer_name : str
        The layer's name.

    Returns
    -------
    bytes
        An uncompressed MVT 2.1 tile (gzip is the HTTP layer's business).

    Raises
    ------
    tiles.errors.TileOutOfRange
        If ``z/x/y`` is not a tile of zoom 0-24.

    Notes
    -----
    Vertices are projected to tile coordinates ``((X - minx) k, (maxy - Y) k)`` with
    ``k = extent / tile width``. Rings entirely inside the buffered tile keep their vertices;
    the others are clipped to ``[-buffer, extent + buffer]^2`` (:func:`_clip_ring`). Then
    coordinates are rounded to integers (half to even), consecutive duplicate points removed
    and rings left with fewer than three points or no positive area dropped. Exterior rings
    have a positive surveyor's area in tile coordinates (clockwise on screen).
    """
    check_tile(z, x, y, 0, ABS_MAX_ZOOM)
    if extent <= 0 or buffer < 0:
        raise ValueError("extent must be > 0 and buffer >= 0")
    idx = layer if isinstance(layer, CellIndex) else get_index(layer)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    k = extent / (maxx - minx)
    bm = buffer / k
    rows = idx.query(minx - bm, miny - bm, maxx + bm, maxy + bm)
    if rows.size == 0:
        return b""
    tab = _tables(idx)
    name = np.frombuffer(layer_name.encode(), dtype=np.uint8)
    buf, start, end = _encode_layer(
        idx.verts, idx.nverts, tab.ids, idx.band, tab.ranks, tab.values, tab.whole,
        len(idx.bands), tab.head, name, rows, minx, maxy, k, float(-buffer),
        float(extent + buffer), extent,
    )  # fmt: skip
    return buf[start:end].tobytes()


warms(snapshot_to_mvt)


class _Tables:
    """Per-index data every tile of it reuses: value ranks and the layer's fixed tables.

    ``people``, ``density_km2`` and ``res`` become layer values, each distinct value once per
    tile. Values are ranked: whole counts are ``uint_value`` records, densities ``double_value``
    records ranked after them (noisy, fractional counts share the densities' ranks, both being
    doubles), resolutions ``uint_value`` records last. ``ranks[i]`` holds cell ``i``'s three
    ranks, ``values[rank]`` the number itself or the IEEE 754 bits of the double, and
    ``whole[rank]`` which of the two. ``ids`` is each cell's feature id: its source's H3 index.
    """

    def __init__(self, idx: CellIndex) -> None:
        n = len(idx)
        self.ids = idx.source.view(np.int64)  # H3 indexes are below 2**63
        if idx.people_integral:
            p_vals, p_rank = np.unique(idx.people, return_inverse=True)
            d_vals, d_rank = np.unique(idx.density_km2, return_inverse=True)
            values = np.concatenate([p_vals.astype(np.int64), d_vals.view(np.int64)])
            whole = np.concatenate([np.ones(p_vals.size, bool), np.zeros(d_vals.size, bool)])
            d_rank = d_rank + p_vals.size
        else:
            both = np.concatenate([idx.people, idx.density_km2])
            doubles, rank = np.unique(both, return_inverse=True)
            values = doubles.view(np.int64)
            whole = np.zeros(doubles.size, dtype=bool)
            p_rank, d_rank = rank[:n], rank[n:]
        r_vals, r_rank = np.unique(idx.source_res, return_inverse=True)
        r_rank = r_rank + values.size
        self.ranks = np.stack([p_rank, d_rank, r_rank], axis=1).astype(np.int64)
        self.values = np.ascontiguousarray(
            np.concatenate([values, r_vals.astype(np.int64)]), dtype=np.int64
        )
        self.whole = np.concatenate([whole, np.ones(r_vals.size, dtype=bool)])
        head = b"".join(
            [field_bytes(3, f.encode()) for f in FIELDS]
            + [field_bytes(4, field_bytes(1, b.name.encode())) for b in idx.bands]
        )
        self.head = np.frombuffer(head, dtype=np.uint8)


_TABLES: weakref.WeakKeyDictionary[CellIndex, _Tables] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _tables(idx: CellIndex) -> _Tables:
    t = _TABLES.get(idx)
    if t is None:
        t = _Tables(idx)
        with _TABLES_LOCK:
            _TABLES[idx] = t
    return t


@kernel
def _encode_layer(
    verts: _F64,
    nverts: _U8,
    ids: _I64,
    band: _U8,
    ranks: _I64,
    values: _I64,
    whole: npt.NDArray[np.bool_],
    nb: int,
    head: _U8,
    name: _U8,
    rows: _IDX,
    minx: float,
    maxy: float,
    k: float,
    lo: float,
    hi: float,
    extent: int,
) -> tuple[_U8, int, int]:
    """Write the tile (one ``density`` layer) of the candidate ``rows``.

    Returns a buffer and the ``[start, end)`` range of the tile in it (empty when no ring is
    left). Four passes: the rings of all candidates (:func:`_tile_rings`), their features
    (rings of one source, in order of first appearance: :func:`_group`), the values the
    features use (:func:`_used_values`), then the bytes (:func:`_write_layer`).
    """
    keep, xs, ys, first, npts = _tile_rings(verts, nverts, rows, minx, maxy, k, lo, hi)
    m = keep.size
    if m == 0:
        return np.zeros(0, dtype=np.uint8), 0, 0
    r = np.empty(m, dtype=np.intp)
    for i in range(m):
        r[i] = rows[keep[i]]
    order, gstart = _group(ids, r)
    g = gstart.size - 1
    vrank = np.empty(3 * g, dtype=np.int64)
    for j in range(g):
        lead = r[order[gstart[j]]]
        vrank[3 * j] = ranks[lead, 0]
        vrank[3 * j + 1] = ranks[lead, 1]
        vrank[3 * j + 2] = ranks[lead, 2]
    used, local = _used_values(vrank)
    # Bytes: per feature <= 70 + its H3 string (19) and three values (14 each); per ring <= 12
    # plus 20 per point.
    cap = _HEAD_ROOM + 32 + head.size + name.size + g * 131 + m * 12 + 20 * xs.size
    cap += 14 * used.size
    buf = np.empty(cap, dtype=np.uint8)
    pos = _write_layer(
        buf, _HEAD_ROOM, name, head, nb, ids, band, r, order, gstart, xs, ys, first, npts,
        local, used, values, whole, extent,
    )  # fmt: skip
    body = pos - _HEAD_ROOM
    start = _HEAD_ROOM - 1 - _varint_len(body)
    buf[start] = 0x1A  # Tile.layers, field 3, length-delimited
    _put_varint(buf, start + 1, body)
    return buf, start, pos


@kernel
def _group(ids: _I64, r: _IDX) -> tuple[_IDX, _IDX]:
    """Group rings by feature id, in order of first appearance.

    Returns ``order`` (ring positions, grouped) and ``gstart`` (group ``j`` is
    ``order[gstart[j] : gstart[j + 1]]``). An open-addressing hash table maps ids to groups;
    a plain layer's rings are one per id, so its features keep the rings' order.
    """
    m = r.size
    size = 16
    while size < 2 * m:
        size *= 2
    mask = size - 1
    slot_id = np.empty(size, dtype=np.int64)
    slot_grp = np.full(size, -1, dtype=np.intp)
    grp = np.empty(m, dtype=np.intp)
    count = np.zeros(m + 1, dtype=np.intp)
    g = 0
    for i in range(m):
        v = ids[r[i]]
        h = ((v * 0x9E3779B97F4A7C15) >> 32) & mask
        while slot_grp[h] != -1 and slot_id[h] != v:
            h = (h + 1) & mask
        if slot_grp[h] == -1:
            slot_id[h] = v
            slot_grp[h] = g
            g += 1
        grp[i] = slot_grp[h]
        count[grp[i] + 1] += 1
    for j in range(g):
        count[j + 1] += count[j]
    gstart = count[: g + 1].copy()
    fill = count[:g].copy()
    order = np.empty(m, dtype=np.intp)
    for i in range(m):
        order[fill[grp[i]]] = i
        fill[grp[i]] += 1
    return order, gstart


@kernel
def _tile_rings(
    verts: _F64,
    nverts: _U8,
    rows: _IDX,
    minx: float,
    maxy: float,
    k: float,
    lo: float,
    hi: float,
) -> tuple[_IDX, _I64, _I64, _IDX, _IDX]:
    """Project, clip and round the ring of each candidate.

    Returns the positions (into ``rows``) of the rings kept, and their integer points: ring
    ``i`` is ``xs[first[i] : first[i] + npts[i]]`` (and ``ys``), clockwise on screen.
    """
    nc = rows.size
    nvmax = verts.shape[1]
    work = 16 * nvmax + 64  # clipping a ring of n points by 4 half-planes leaves <= 16 n
    fx = np.empty((2, work))
    fy = np.empty((2, work))
    cap = nc * (nvmax + 4)  # a convex ring gains at most one point per clip side
    xs = np.empty(cap, dtype=np.int64)
    ys = np.empty(cap, dtype=np.int64)
    keep = np.empty(nc, dtype=np.intp)
    first = np.empty(nc, dtype=np.intp)
    npts = np.empty(nc, dtype=np.intp)
    m = 0
    at = 0
    for i in range(nc):
        c = rows[i]
        n = int(np.intp(nverts[c]))  # numba: int(uint8) is a uint64, and uint64 + int a float
        inside = True
        for j in range(n):
            px = (verts[c, j, 0] - minx) * k
            py = (maxy - verts[c, j, 1]) * k
            fx[0, j] = px
            fy[0, j] = py
            inside &= lo <= px <= hi and lo <= py <= hi
        src = 0
        if not inside:
            n, src = _clip_ring(fx, fy, n, lo, hi)
        if at + n > xs.size:  # only a ring that is not convex can get here
            xs = _grow(xs, at + n)
            ys = _grow(ys, at + n)
        n = _round_ring(fx[src], fy[src], n, xs, ys, at)
        if n:
            keep[m] = i
            first[m] = at
            npts[m] = n
            m += 1
            at += n
    return keep[:m], xs[:at], ys[:at], first[:m], npts[:m]


@kernel
def _grow(a: _I64, need: int) -> _I64:
    out = np.empty(max(2 * a.size, need), dtype=np.int64)
    for i in range(a.size):
        out[i] = a[i]
    return out


@kernel
def _clip_ring(fx: _F64, fy: _F64, n: int, lo: float, hi: float) -> tuple[int, int]:
    """Clip the ring in ``fx[0, :n], fy[0, :n]`` to the square ``[lo, hi]^2`` (Sutherland-Hodgman).

    The ring is clipped by the four half-planes ``x >= lo``, ``x <= hi``, ``y >= lo``,
    ``y <= hi`` in turn, ping-ponging between rows 0 and 1 of ``fx, fy``. Walking each edge
    ``a -> b``: ``b`` is kept when inside, and the crossing with the clip line is added when
    exactly one end is inside (then the two differ along that axis, so the division is safe).
    A convex ring stays convex and in order (clockwise stays clockwise); a point on the line
    is inside, which can leave repeated points for the rounding step to drop.

    Returns the point count and the row holding the result (0 points if the ring misses).
    """
    src = 0
    for side in range(4):
        if n == 0:
            break
        dst = 1 - src
        axis_x = side < 2
        bound = lo if side % 2 == 0 else hi
        sign = 1.0 if side % 2 == 0 else -1.0  # inside: sign * (v - bound) >= 0
        out = 0
        ax, ay = fx[src, n - 1], fy[src, n - 1]
        a_in = sign * ((ax if axis_x else ay) - bound) >= 0.0
        for j in range(n):
            bx, by = fx[src, j], fy[src, j]
            b_in = sign * ((bx if axis_x else by) - bound) >= 0.0
            if a_in != b_in:
                if axis_x:
                    fx[dst, out] = bound
                    fy[dst, out] = ay + (bound - ax) / (bx - ax) * (by - ay)
                else:
                    fx[dst, out] = ax + (bound - ay) / (by - ay) * (bx - ax)
                    fy[dst, out] = bound
                out += 1
            if b_in:
                fx[dst, out] = bx
                fy[dst, out] = by
                out += 1
            ax, ay, a_in = bx, by, b_in
        n = out
        src = dst
    return n, src


@kernel
def _round_ring(fx: _F64, fy: _F64, n: int, xs: _I64, ys: _I64, at: int) -> int:
    """Round a ring to integers into ``xs[at:], ys[at:]``, dropping repeated points.

    A point equal to the one before it (the last one, for the first) is dropped; this leaves no
    two equal neighbours around the ring unless all points are equal. Returns the points kept,
    or 0 when fewer than three remain or the ring's surveyor's area is not positive.
    """
    if n < 3:
        return 0
    px = np.int64(np.rint(fx[n - 1]))
    py = np.int64(np.rint(fy[n - 1]))
    m = 0
    for j in range(n):
        x = np.int64(np.rint(fx[j]))
        y = np.int64(np.rint(fy[j]))
        if x != px or y != py:
            xs[at + m] = x
            ys[at + m] = y
            m += 1
        px, py = x, y
    if m < 3:
        return 0
    area2 = 0
    for j in range(m):
        jn = at + (j + 1) % m
        area2 += xs[at + j] * ys[jn] - xs[jn] * ys[at + j]
    return m if area2 > 0 else 0


@kernel
def _used_values(vrank: _I64) -> tuple[_I64, _I64]:
    """Return the distinct value ranks used (in order of first use) and each element's position
    among them.

    An open-addressing hash table (linear probing, at most half full, multiplicative hash)
    maps each rank to its position: one pass, ``O(m)`` whatever the number of values in the
    snapshot.
    """
    m = vrank.size
    size = 16
    while size < 2 * m:
        size *= 2
    mask = size - 1
    slot_rank = np.full(size, -1, dtype=np.int64)
    slot_pos = np.empty(size, dtype=np.int64)
    used = np.empty(m, dtype=np.int64)
    local = np.empty(m, dtype=np.int64)
    nu = 0
    for j in range(m):
        v = vrank[j]
        h = ((v * 0x9E3779B97F4A7C15) >> 32) & mask
        while slot_rank[h] != -1 and slot_rank[h] != v:
            h = (h + 1) & mask
        if slot_rank[h] == -1:
            slot_rank[h] = v
            slot_pos[h] = nu
            used[nu] = v
            nu += 1
        local[j] = slot_pos[h]
    return used[:nu], local


@kernel
def _write_layer(
    buf: _U8,
    pos: int,
    name: _U8,
    head: _U8,
    nb: int,
    ids: _I64,
    band: _U8,
    r: _IDX,
    order: _IDX,
    gstart: _IDX,
    xs: _I64,
    ys: _I64,
    first: _IDX,
    npts: _IDX,
    local: _I64,
    used: _I64,
    values: _I64,
    whole: npt.NDArray[np.bool_],
    extent: int,
) -> int:
    """Write the layer message's fields from ``buf[pos]``; return the end position.

    Layout: ``version = 2``, ``name``, the features, ``keys`` and the band names (``head``),
    then the values: one H3 string per feature, then the used numbers in order of first use.
    Feature ``j`` (the rings ``order[gstart[j] : gstart[j + 1]]``, cells of one source) has
    tags ``cell -> nb + j``, ``people``, ``density_km2`` and ``res`` -> ``nb + g`` plus the
    position of their rank in ``used``, and ``band -> band`` (the band names are values
    ``0 .. nb - 1``).
    """
    g = gstart.size - 1
    base = nb + g
    buf[pos] = 0x78  # version (field 15, varint) = 2
    buf[pos + 1] = 2
    pos = _put_bytes(buf, pos + 2, 0x0A, name)
    tags = np.empty(10, dtype=np.int64)
    tags[0], tags[2], tags[4], tags[6], tags[8] = 0, 1, 2, 3, 4  # keys, FIELDS order
    for j in range(g):
        rings = order[gstart[j] : gstart[j + 1]]
        c = r[rings[0]]
        tags[1] = nb + j
        tags[3] = base + local[3 * j]
        tags[5] = base + local[3 * j + 1]
        tags[7] = band[c]
        tags[9] = base + local[3 * j + 2]
        pos = _put_feature(buf, pos, ids[c], tags, xs, ys, first, npts, rings)
    pos = _put_raw(buf, pos, head)
    for j in range(g):
        pos = _put_h3_string(buf, pos, ids[r[order[gstart[j]]]])
    for v in used:
        pos = _put_number(buf, pos, values[v], whole[v])
    buf[pos] = 0x28  # extent (field 5, varint)
    return _put_varint(buf, pos + 1, extent)


@kernel
def _put_feature(
    buf: _U8,
    pos: int,
    fid: int,
    tags: _I64,
    xs: _I64,
    ys: _I64,
    first: _IDX,
    npts: _IDX,
    rings: _IDX,
) -> int:
    """Write one polygon feature (``Layer.features``): id, packed tags, type, its rings."""
    taglen = 0
    for t in tags:
        taglen += _varint_len(t)
    glen = _geometry_len(xs, ys, first, npts, rings)
    flen = 1 + _varint_len(fid) + 1 + _varint_len(taglen) + taglen + 2
    flen += 1 + _varint_len(glen) + glen
    buf[pos] = 0x12  # Layer.features
    pos = _put_varint(buf, pos + 1, flen)
    buf[pos] = 0x08  # Feature.id
    pos = _put_varint(buf, pos + 1, fid)
    buf[pos] = 0x12  # Feature.tags (packed)
    pos = _put_varint(buf, pos + 1, taglen)
    for t in tags:
        pos = _put_varint(buf, pos, t)
    buf[pos] = 0x18  # Feature.type = POLYGON
    buf[pos + 1] = 3
    buf[pos + 2] = 0x22  # Feature.geometry (packed)
    pos = _put_varint(buf, pos + 3, glen)
    return _put_geometry(buf, pos, xs, ys, first, npts, rings)


@kernel
def _geometry_len(xs: _I64, ys: _I64, first: _IDX, npts: _IDX, rings: _IDX) -> int:
    """Byte length of :func:`_put_geometry`'s output."""
    glen = 0
    cx, cy = 0, 0
    for i in rings:
        f, n = first[i], npts[i]
        glen += 2 + _zz_len(xs[f] - cx) + _zz_len(ys[f] - cy)
        glen += _varint_len(_LINE_TO | ((n - 1) << 3))
        for j in range(f + 1, f + n):
            glen += _zz_len(xs[j] - xs[j - 1]) + _zz_len(ys[j] - ys[j - 1])
        cx, cy = xs[f + n - 1], ys[f + n - 1]
    return glen


@kernel
def _put_geometry(
    buf: _U8, pos: int, xs: _I64, ys: _I64, first: _IDX, npts: _IDX, rings: _IDX
) -> int:
    """Write rings as ``MoveTo(x0, y0) LineTo(n - 1, zigzag deltas...) ClosePath`` each.

    The cursor starts at ``(0, 0)`` in each feature and carries over from one ring's last
    point to the next ring's ``MoveTo``; each ring is an exterior ring (clockwise on screen).
    """
    cx, cy = 0, 0
    for i in rings:
        f, n = first[i], npts[i]
        buf[pos] = _MOVE_TO_1
        pos = _put_varint(buf, pos + 1, _zigzag(xs[f] - cx))
        pos = _put_varint(buf, pos, _zigzag(ys[f] - cy))
        pos = _put_varint(buf, pos, _LINE_TO | ((n - 1) << 3))
        for j in range(f + 1, f + n):
            pos = _put_varint(buf, pos, _zigzag(xs[j] - xs[j - 1]))
            pos = _put_varint(buf, pos, _zigzag(ys[j] - ys[j - 1]))
        buf[pos] = _CLOSE_PATH
        pos += 1
        cx, cy = xs[f + n - 1], ys[f + n - 1]
    return pos


__all__ = ["FIELDS", "LAYER_NAME", "snapshot_to_mvt"]
