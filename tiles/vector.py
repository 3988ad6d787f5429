"""Mapbox Vector Tiles (MVT 2.1) of a density layer, encoded with whole-array numpy operations.

One layer, ``density``; one polygon feature per published cell that overlaps the tile plus its
buffer; feature id = the H3 index (uint64); properties ``cell`` (H3 string), ``people``,
``density_km2`` and ``band`` (name). ``mapbox-vector-tile`` is the decoding reference in tests.

Every feature is laid out as one row of a padded integer matrix (18 header tokens, then its
geometry commands), and the whole matrix becomes protobuf varints in one pass: the cost is a
fixed number of numpy calls per tile, not per feature.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import numpy.typing as npt

from tiles._pbf import encode_varints, field_bytes, varint, varint_len
from tiles.grid import ABS_MAX_ZOOM, check_tile, tile_bounds_m
from tiles.index import CellIndex, get_index
from tiles.source import CellLayer

LAYER_NAME = "density"
"""Name of the single layer in every tile."""

FIELDS = ("cell", "people", "density_km2", "band")
"""Property keys, in the order of the layer's ``keys`` table."""

_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]
_IDX = npt.NDArray[np.intp]
_BOOL = npt.NDArray[np.bool_]

_MOVE_TO_1 = 9  # (1 & 7) | (1 << 3)
_CLOSE_PATH = 15  # (7 & 7) | (1 << 3)
_HDR = 26
# Per-feature header tokens: features tag, feature length, id tag, the id's 9 varint bytes
# (raw), tags tag, tags length, 8 tag indexes (key, value pairs), type tag, POLYGON, geometry
# tag, geometry length. Then the geometry commands.
_TEMPLATE = np.array(
    [0x12, 0, 0x08] + [0] * 9 + [0x12, 0, 0, 0, 1, 0, 2, 0, 3, 0, 0x18, 3, 0x22, 0],
    dtype=np.int32,
)
_KEEP_BYTES = np.array([0x0000, 0x0001, 0x0101], dtype="<u2")  # keep 0, 1 or 2 bytes
_HEX_NIBBLES = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(56, -1, -4, dtype=np.uint64)  # 15 hex digits of a 60-bit index
_SMALL_TILE = 96  # below this many cells, every feature goes through the clipping path
_ATAN2_MAX = 4096  # candidate arrays up to this size sort by atan2 instead of a pseudo-angle
_CORNER_X = np.array([0.0, 1.0, 1.0, 0.0])
_CORNER_Y = np.array([0.0, 0.0, 1.0, 1.0])


def snapshot_to_mvt(
    layer: CellLayer,
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
    ``k = extent / tile width`` and rounded to integers. Hexagons entirely inside the buffered
    tile keep their six vertices; the others are clipped to ``[-buffer, extent + buffer]^2``
    (:func:`clip_convex`). Exterior rings have a positive surveyor's area in tile coordinates
    (clockwise on screen), consecutive duplicate points are removed and zero-area rings
    dropped.
    """
    check_tile(z, x, y, 0, ABS_MAX_ZOOM)
    if extent <= 0 or buffer < 0:
        raise ValueError("extent must be > 0 and buffer >= 0")
    idx = get_index(layer)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    k = extent / (maxx - minx)
    bm = buffer / k
    rows = idx.query(minx - bm, miny - bm, maxx + bm, maxy + bm)
    if rows.size == 0:
        return b""
    feat, g, gtok = _geometry(idx, rows, minx, maxy, k, float(-buffer), float(extent + buffer))
    if feat.size == 0:
        return b""
    return _encode(idx, rows[feat], g, gtok, extent, layer_name)


def _geometry(
    idx: CellIndex, rows: _IDX, minx: float, maxy: float, k: float, lo: float, hi: float
) -> tuple[_IDX, _I64, _IDX]:
    """Return the kept features (positions into ``rows``), their command matrix and the
    number of commands of each.

    Arrays are vertex-major / token-major, ``(slot, feature)``: row ``j`` holds every feature's
    ``j``-th vertex or command, so each numpy operation runs over one long contiguous row
    instead of many six-element ones.
    """
    bb = np.take(idx.bounds, rows, axis=1)
    inside = (
        ((bb[0] - minx) * k >= lo)
        & ((bb[2] - minx) * k <= hi)
        & ((maxy - bb[3]) * k >= lo)
        & ((maxy - bb[1]) * k <= hi)
    )
    if idx.vxy.shape[1] >= 6 and rows.size > _SMALL_TILE:
        inside &= idx.nverts[rows] == 6
    else:  # few features: one general path costs fewer numpy calls than two
        inside[:] = False
    fast = np.flatnonzero(inside)
    other = np.flatnonzero(~inside)
    blocks: list[tuple[_IDX, _I64, _I64, _IDX]] = []
    if fast.size:
        p = np.take(idx.vxy[:, :6, :], rows[fast], axis=2)  # (2, 6, m)
        xi = np.rint((p[0] - minx) * k).astype(np.int64)
        yi = np.rint((maxy - p[1]) * k).astype(np.int64)
        xn = np.concatenate([xi[1:], xi[:1]])
        yn = np.concatenate([yi[1:], yi[:1]])
        # The index stores rings clockwise on screen: positive area unless rounding collapsed
        # the hexagon (a tile of a far too fine resolution), which the general path cleans.
        ok = ((xi * yn - xn * yi).sum(axis=0) > 0) & ((xi != xn) | (yi != yn)).all(axis=0)
        if not ok.all():
            other = np.concatenate([other, fast[~ok]])
            fast, xi, yi = fast[ok], xi[:, ok], yi[:, ok]
        blocks.append((fast, xi, yi, np.full(fast.size, 6, dtype=np.intp)))
    if other.size:
        v = np.take(idx.vxy, rows[other], axis=2)
        cx, cy, cnt = clip_convex((v[0] - minx) * k, (maxy - v[1]) * k, lo, hi)
        keep, xi, yi, cnt = _clean_rings(cx, cy, cnt)
        blocks.append((other[keep], xi, yi, cnt))
    blocks = [b for b in blocks if b[0].size]
    if not blocks:
        return np.zeros(0, dtype=np.intp), np.zeros((0, 0), dtype=np.int64), np.zeros(0, np.intp)
    if len(blocks) == 1:
        feat, xi, yi, cnt = blocks[0]
        return feat, _ring_commands(xi, yi, cnt), 2 * cnt + 3
    w = max(b[1].shape[0] for b in blocks)
    feat = np.concatenate([b[0] for b in blocks])
    g = np.zeros((2 * w + 3, feat.size), dtype=np.int64)
    at = 0
    for _, xi, yi, cnt in blocks:
        n = cnt.size
        g[: 2 * xi.shape[0] + 3, at : at + n] = _ring_commands(xi, yi, cnt)
        at += n
    return feat, g, 2 * np.concatenate([b[3] for b in blocks]) + 3


def clip_convex(px: _F64, py: _F64, lo: float, hi: float) -> tuple[_F64, _F64, _IDX]:
    """Clip convex rings to the square ``[lo, hi]^2``, all rings at once.

    Parameters
    ----------
    px, py : ndarray, shape (V, r)
        Vertex ``j`` of ring ``i`` at ``[j, i]``, in a y-down frame, rings clockwise on screen;
        shorter rings padded by repeating a vertex.
    lo, hi : float
        The clip square.

    Returns
    -------
    x, y : ndarray, shape (W, r)
        The clipped rings, clockwise on screen, valid in the first ``count`` rows.
    count : ndarray of intp, shape (r,)
        Points per clipped ring (0 where the ring misses the square).

    Notes
    -----
    The intersection of a convex polygon with a box is convex and its vertices are exactly
    (a) the polygon's vertices inside the box, (b) the box corners inside the polygon (every
    edge cross product ``(b - a) x (q - a) >= 0``), and (c) crossings of polygon edges with the
    box sides. Collecting the candidates and sorting them by angle about their mean (an
    interior point) yields each ring in order with no per-ring loop. The sort key is
    ``atan2(dy, dx)`` on small inputs and otherwise a pseudo-angle monotone in it but cheaper
    per element: with ``q = dx / (|dx| + |dy|)``, ``1 - q`` for ``dy >= 0`` and ``3 + q``
    otherwise; ascending in a y-down frame is clockwise on screen. Duplicate points (a vertex
    on a box side) are left for the caller to drop.
    """
    nv, r = px.shape
    c, h = (lo + hi) / 2.0, (hi - lo) / 2.0
    ex = np.concatenate([px[1:], px[:1]]) - px
    ey = np.concatenate([py[1:], py[:1]]) - py
    vin = np.maximum(np.abs(px - c), np.abs(py - c)) <= h
    cxs = (lo + (hi - lo) * _CORNER_X)[:, None, None]
    cys = (lo + (hi - lo) * _CORNER_Y)[:, None, None]
    cin = ((ex * (cys - py) - ey * (cxs - px)) >= 0).all(axis=1)  # (4, r)
    lines = np.array([lo, hi])[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = (lines - px) / ex  # (2, V, r): where each edge meets x = lo, x = hi
        ty = (lines - py) / ey
        yx = py + tx * ey
        xy = px + ty * ex
        okx = (tx > 0) & (tx < 1) & (np.abs(yx - c) <= h)
        oky = (ty > 0) & (ty < 1) & (np.abs(xy - c) <= h)
    k2 = 2 * nv
    lines_k = np.broadcast_to(lines, (2, nv, r)).reshape(k2, r)
    x = np.concatenate([px, np.broadcast_to(cxs[:, 0], (4, r)), lines_k, xy.reshape(k2, r)])
    y = np.concatenate([py, np.broadcast_to(cys[:, 0], (4, r)), yx.reshape(k2, r), lines_k])
    m = np.concatenate([vin, cin, okx.reshape(k2, r), oky.reshape(k2, r)])
    cnt = m.sum(axis=0)
    div = np.maximum(cnt, 1)
    dx = x - np.where(m, x, 0.0).sum(axis=0) / div
    dy = y - np.where(m, y, 0.0).sum(axis=0) / div
    if dx.size <= _ATAN2_MAX:  # one transcendental call beats six cheap ones on small arrays
        ang = np.arctan2(dy, dx)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            q = dx / (np.abs(dx) + np.abs(dy))
        ang = np.where(dy >= 0, 1.0 - q, 3.0 + q)
        ang[np.isnan(q)] = np.inf
    ang[~m] = np.inf
    w = max(int(cnt.max()), 1)
    order = np.argsort(ang.T, axis=1)[:, :w].T
    cols = np.arange(r)
    return x[order, cols], y[order, cols], cnt


def _clean_rings(x: _F64, y: _F64, cnt: _IDX) -> tuple[_IDX, _I64, _I64, _IDX]:
    """Round ``(W, r)`` rings to integers, drop repeated points and rings with no area.

    Returns the kept ring positions, their ``(W, k)`` integer coordinates (valid in the first
    ``count`` rows) and point counts.
    """
    w, r = x.shape
    ar = np.arange(r)
    row = np.arange(w)[:, None]
    xi = np.rint(x).astype(np.int64)
    yi = np.rint(y).astype(np.int64)
    last = np.maximum(cnt - 1, 0)
    px = np.concatenate([xi[last, ar][None], xi[:-1]])
    py = np.concatenate([yi[last, ar][None], yi[:-1]])
    keep = (row < cnt) & ((xi != px) | (yi != py))
    kept = keep.sum(axis=0)
    if (kept != cnt).any():
        order = np.argsort(~keep.T, axis=1, kind="stable").T
        xi, yi = xi[order, ar], yi[order, ar]
        cnt = kept
        last = np.maximum(cnt - 1, 0)
    nx = np.concatenate([xi[1:], xi[:1]])
    ny = np.concatenate([yi[1:], yi[:1]])
    nx[last, ar] = xi[0]
    ny[last, ar] = yi[0]
    area2 = np.where(row < cnt, xi * ny - nx * yi, 0).sum(axis=0)
    good = np.flatnonzero((cnt >= 3) & (area2 > 0))
    return good, xi[:, good], yi[:, good], cnt[good]


def _ring_commands(xi: _I64, yi: _I64, cnt: _IDX) -> _I64:
    """Encode one ring per column as MVT commands: ``2 n + 3`` integers for ``n`` points.

    ``xi, yi`` are ``(W, r)``, valid in the first ``cnt`` rows of each column. Each column
    becomes ``MoveTo(x0, y0)``, ``LineTo(n - 1)`` with zigzag deltas, ``ClosePath``; rows past
    ``2 n + 3`` are junk. Each feature's cursor starts at ``(0, 0)``.
    """
    w, r = xi.shape
    g = np.empty((2 * w + 3, r), dtype=np.int64)
    g[0] = _MOVE_TO_1
    g[1] = (xi[0] << 1) ^ (xi[0] >> 63)
    g[2] = (yi[0] << 1) ^ (yi[0] >> 63)
    g[3] = 2 | ((cnt - 1) << 3)
    dx = xi[1:] - xi[:-1]
    dy = yi[1:] - yi[:-1]
    g[4 : 2 * w + 2 : 2] = (dx << 1) ^ (dx >> 63)
    g[5 : 2 * w + 2 : 2] = (dy << 1) ^ (dy >> 63)
    g[2 * w + 2] = 0
    g[2 * cnt + 2, np.arange(r)] = _CLOSE_PATH
    return g


class _Tables:
    """Per-index encodings reused by every tile: id varints, H3 string values, value records."""

    def __init__(self, idx: CellIndex) -> None:
        n = len(idx)
        ids = encode_varints(idx.cells)
        if ids.size != 9 * n:  # pragma: no cover - every H3 index is in [2**59, 2**60)
            raise ValueError("unexpected H3 index width")
        self.id_bytes = ids.reshape(n, 9)
        self.cell_values = _cell_values(idx.cells).view("V19").ravel()
        self.integral = idx.people_integral
        if self.integral:
            p_values, self.p_rank = np.unique(idx.people, return_inverse=True)
            d_values, self.d_rank = np.unique(idx.density_km2, return_inverse=True)
            rec, lens = _uint_records(p_values.astype(np.uint64))
            self.p_bytes = [rec[i, :n].tobytes() for i, n in enumerate(lens.tolist())]
        else:
            both = np.concatenate([idx.people, idx.density_km2])
            d_values, rank = np.unique(both, return_inverse=True)
            self.p_rank, self.d_rank = rank[:n], rank[n:]
            self.p_bytes = []
        self.d_rec = _double_records(d_values).view("V11").ravel()
        self.d_distinct = self.integral and d_values.size == n
        self.head = b"".join(
            [field_bytes(3, f.encode()) for f in FIELDS]
            + [field_bytes(4, field_bytes(1, b.name.encode())) for b in idx.bands]
        )


_TABLES: weakref.WeakKeyDictionary[CellIndex, _Tables] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _tables(idx: CellIndex) -> _Tables:
    t = _TABLES.get(idx)
    if t is None:
        t = _Tables(idx)
        with _TABLES_LOCK:
            _TABLES[idx] = t
    return t


def _used(rank: _IDX, size: int) -> tuple[_IDX, _IDX]:
    """Return the distinct ranks used (ascending) and each element's position among them."""
    if rank.size * 16 < size:
        used, local = np.unique(rank, return_inverse=True)
        return used, local
    mark = np.zeros(size, dtype=np.bool_)
    mark[rank] = True
    used = np.flatnonzero(mark)
    remap = np.cumsum(mark) - 1
    return used, remap[rank]


def _encode(idx: CellIndex, r: _IDX, g: _I64, gtok: _IDX, extent: int, name: str) -> bytes:
    """Assemble the layer: features (one varint pass), keys, values, extent."""
    tab = _tables(idx)
    m = r.size
    nb = len(idx.bands)

    # Values: band names, one H3 string per feature, then the distinct counts and densities.
    base = nb + m
    if tab.integral:
        p_used, p_loc = _used(tab.p_rank[r], len(tab.p_bytes))
        p_vals = b"".join([tab.p_bytes[i] for i in p_used.tolist()])
        if tab.d_distinct:
            d_used, d_loc = tab.d_rank[r], np.arange(m)
        else:
            d_used, d_loc = _used(tab.d_rank[r], tab.d_rec.size)
        pidx, didx = base + p_loc, base + p_used.size + d_loc
        values = p_vals + tab.d_rec[d_used].tobytes()
    else:
        used, loc = _used(np.concatenate([tab.p_rank[r], tab.d_rank[r]]), tab.d_rec.size)
        values = tab.d_rec[used].tobytes()
        pidx, didx = base + loc[:m], base + loc[m:]

    gh = g.shape[0]
    valid = np.arange(gh)[:, None] < gtok[None, :]
    big = max(int(g.max(initial=0)), int(pidx.max()), int(didx.max()), nb + m)
    if big >= 1 << 14:  # some token needs three varint bytes
        return _encode_general(g, valid, pidx, didx, tab, idx, r, values, name, extent)
    # Token-major stream: row j holds token j of every feature (see _TEMPLATE); the 9 id bytes
    # are raw tokens that pass through unchanged. Every token is below 2**14 here.
    s = np.empty((_HDR + gh, m), dtype=np.uint16)
    s[:_HDR] = _TEMPLATE[:, None]
    s[15] = np.arange(nb, nb + m)
    s[17] = pidx
    s[19] = didx
    s[21] = idx.band[r]
    np.multiply(g, valid, out=s[_HDR:], casting="unsafe")  # rows past a ring's end hold junk
    two = s >= 128
    taglen = 8 + two[14:22].sum(axis=0)
    glen = gtok + two[_HDR:].sum(axis=0)
    # id tag + 9 id bytes + tags tag + len + tags + type tag + type + geometry tag + len + geometry
    flen = 16 + taglen + glen + (taglen >= 128) + (glen >= 128)
    if int(flen.max()) >= 1 << 14:
        return _encode_general(g, valid, pidx, didx, tab, idx, r, values, name, extent)
    s[1] = flen
    s[13] = taglen
    s[25] = glen
    two[1] = flen >= 128
    two[13] = taglen >= 128
    two[25] = glen >= 128
    s[3:12] = np.take(tab.id_bytes, r, axis=0).T
    two[3:12] = False
    # A token below 2**14 is one or two varint bytes; as a little-endian uint16 word that is
    # s + 128 (1 + (s >> 7)) when it has two. Keep the first ``nbytes`` bytes of each word.
    words = s + (two * ((s >> 7) + 1) << 7).astype(np.uint16)
    nbytes = two.view(np.uint8) + np.uint8(1)
    nbytes[_HDR:] *= valid
    w16 = np.array(words.T, dtype="<u2", order="C").view(np.uint8).reshape(m, _HDR + gh, 2)
    # Byte masks as uint16 words too ([1, 0] or [1, 1]), so no array has a length-2 axis.
    keep = _KEEP_BYTES[np.array(nbytes.T, order="C")].view(np.bool_)
    out = np.compress(keep.ravel(), w16.ravel())
    return _layer(out.tobytes(), tab, r, values, name, extent)


def _encode_general(
    g: _I64,
    valid: _BOOL,
    pidx: _IDX,
    didx: _IDX,
    tab: _Tables,
    idx: CellIndex,
    r: _IDX,
    values: bytes,
    name: str,
    extent: int,
) -> bytes:
    """Slow path for huge tiles (a token >= 2**14): exact varint lengths everywhere."""
    m = r.size
    nb = len(idx.bands)
    su = np.zeros((m, 18 + g.shape[0]), dtype=np.uint64)  # feature-major, id as one token
    su[:, :18] = [0x12, 0, 0x08, 0, 0x12, 0, 0, 0, 1, 0, 2, 0, 3, 0, 0x18, 3, 0x22, 0]
    su[:, 3] = idx.cells[r]
    su[:, 7] = np.arange(nb, nb + m)
    su[:, 9] = pidx
    su[:, 11] = didx
    su[:, 13] = idx.band[r]
    su[:, 18:] = (g * valid).T
    lens = varint_len(su.ravel()).reshape(su.shape)
    taglen = lens[:, 6:14].sum(axis=1)
    glen = np.where(valid.T, lens[:, 18:], 0).sum(axis=1)
    flen = 3 + lens[:, 3] + varint_len(taglen.astype(np.uint64)) + taglen
    flen += 2 + varint_len(glen.astype(np.uint64)) + glen
    su[:, 1] = flen
    su[:, 5] = taglen
    su[:, 17] = glen
    mask = np.ones(su.shape, dtype=np.bool_)
    mask[:, 18:] = valid.T
    return _layer(encode_varints(su[mask]).tobytes(), tab, r, values, name, extent)


def _layer(features: bytes, tab: _Tables, r: _IDX, values: bytes, name: str, extent: int) -> bytes:
    body = b"".join(
        (
            b"\x78\x02",  # version = 2, first as the spec recommends
            field_bytes(1, name.encode()),
            features,
            tab.head,  # keys, then the band-name values
            tab.cell_values[r].tobytes(),  # 19-byte void records: one gather
            values,
            b"\x28" + varint(extent),
        )
    )
    return field_bytes(3, body)


def _cell_values(cells: _U64) -> npt.NDArray[np.uint8]:
    """Encode each cell's H3 string as a layer value: 0x22 17 0x0A 15 <15 hex digits>."""
    m = cells.size
    rec = np.empty((m, 19), dtype=np.uint8)
    rec[:, 0] = 0x22
    rec[:, 1] = 17
    rec[:, 2] = 0x0A
    rec[:, 3] = 15
    nib = (cells[:, None] >> _NIBBLE_SHIFTS[None, :]) & np.uint64(0xF)
    rec[:, 4:] = _HEX_NIBBLES[nib]
    return rec


def _double_records(v: _F64) -> npt.NDArray[np.uint8]:
    """Encode doubles as layer values: 0x22 9 0x19 <8 bytes little-endian>."""
    rec = np.empty((v.size, 11), dtype=np.uint8)
    rec[:, 0] = 0x22
    rec[:, 1] = 9
    rec[:, 2] = 0x19
    rec[:, 3:] = np.ascontiguousarray(v, dtype="<f8").view(np.uint8).reshape(v.size, 8)
    return rec


def _uint_records(v: _U64) -> tuple[npt.NDArray[np.uint8], _IDX]:
    """Encode unsigned integers as layer values 0x22 len 0x28 <varint>, padded to 13 bytes."""
    vl = varint_len(v)
    tok = np.empty((v.size, 4), dtype=np.uint64)
    tok[:, 0] = 0x22
    tok[:, 1] = 1 + vl
    tok[:, 2] = 0x28
    tok[:, 3] = v
    flat = encode_varints(tok.ravel())
    lens = 3 + vl
    start = np.zeros(v.size, dtype=np.intp)
    np.cumsum(lens[:-1], out=start[1:])
    rec = np.zeros((v.size, 13), dtype=np.uint8)
    row = np.repeat(np.arange(v.size), lens)
    rec[row, np.arange(flat.size) - start[row]] = flat
    return rec, lens


__all__ = ["FIELDS", "LAYER_NAME", "clip_convex", "snapshot_to_mvt"]
