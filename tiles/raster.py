"""PNG tiles of a density layer: exact hexagon scanline fill, indexed-colour PNG.

Each pixel belongs to exactly one hexagon (or none): the one whose polygon contains the pixel
centre under a half-open rule that neighbours evaluate identically on their shared edge, so
there are no gaps and no double-painted seams. The fill, the optional outline and the PNG
scanlines are compiled kernels (no Python loop over hexagons or pixels), and the image is
written as a 4-bit palette PNG with a ``tRNS`` alpha table.
"""

from __future__ import annotations

import struct
import threading
import weakref
import zlib

import numpy as np
import numpy.typing as npt

from tiles._jit import kernel, warms
from tiles.grid import ABS_MAX_ZOOM, check_tile, tile_bounds_m
from tiles.index import CellIndex, get_index
from tiles.source import CellLayer, band_rgba

TILE_PX = 256
"""Pixel size of a scale-1 tile; ``@2x`` tiles are 512."""

OUTLINE_MIN_PX = 24.0
"""With ``outline=None``, hexagons at least this wide (scale-1 pixels) get an outline."""

PNG_COMPRESS_LEVEL = 1
"""Default zlib level of the IDAT stream: ~5x faster than 6 for ~30-50 % more bytes."""

_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_IDX = npt.NDArray[np.intp]
_SNAP = 65536.0  # vertices snap to 1/65536 px: shared ones stay bit-identical even if noisy
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def snapshot_to_png(
    layer: CellLayer | CellIndex,
    z: int,
    x: int,
    y: int,
    *,
    scale: int = 1,
    outline: bool | None = None,
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """Return the PNG of tile ``z/x/y``, or ``b""`` if no hexagon covers a pixel of it.

    Parameters
    ----------
    layer : CellLayer
        Published cells of one resolution (pick it with :func:`tiles.grid.zoom_to_res`), or a
        filled layer (:func:`tiles.fill.filled`) whose withheld areas show their parent.
    z, x, y : int
        XYZ tile address.
    scale : {1, 2}
        1 for a 256 px tile, 2 for a 512 px ``@2x`` tile of the same area.
    outline : bool or None
        Draw a thin darker outline (``scale`` px) around each hexagon. ``None`` draws it when
        hexagons are at least :data:`OUTLINE_MIN_PX` wide, i.e. at street zoom.
    compress_level : int
        zlib level of the PNG (exports may prefer 6 or 9).

    Returns
    -------
    bytes
        An 8-bit-per-channel RGBA-equivalent palette PNG (colour type 3 with ``tRNS``):
        transparent background, band colours with their alpha.

    Raises
    ------
    tiles.errors.TileOutOfRange
        If ``z/x/y`` is not a tile of zoom 0-24.
    """
    check_tile(z, x, y, 0, ABS_MAX_ZOOM)
    if scale not in (1, 2):
        raise ValueError("scale must be 1 or 2")
    idx = layer if isinstance(layer, CellIndex) else get_index(layer)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    size = TILE_PX * scale
    k = size / (maxx - minx)
    if outline is None:
        # bbox width of the widest cell, times ~0.87 for a hexagon's flat-to-flat width
        outline = 2.0 * idx.half_extent * TILE_PX / (maxx - minx) * 0.87 >= OUTLINE_MIN_PX
    m = 1.0 / k if outline else 0.0  # one pixel of margin to see the neighbouring tile
    rows = idx.query(minx - m, miny - m, maxx + m, maxy + m)
    if rows.size == 0:
        return b""
    nb = len(idx.bands)
    img: npt.NDArray[np.integer]
    if outline:
        # Label = feature number * 2**bits + fill's palette index (1..nb): distinct per
        # published cell for the outline test (the pieces of a filled gap share their
        # source's, so no outline runs between them), with the fill colour in its low bits.
        bits = nb.bit_length()
        fill = idx.band[rows].astype(np.int32) + 1
        _, feature = np.unique(idx.source[rows], return_inverse=True)
        labels = ((feature.astype(np.int32) + 1) << bits) | fill
        lab = rasterize(idx, rows, minx - m, maxy + m, k, size + 2, labels=labels)
        img = _outline(lab, bits, nb, scale)
    else:
        img = rasterize(idx, rows, minx, maxy, k, size, labels=idx.band[rows] + np.uint8(1))
    return encode_png(img, _palette(idx), compress_level)


@warms
def _warm(layer: CellLayer, z: int, x: int, y: int) -> None:
    """Render the fill, the outline and the ``@2x`` variant: every raster kernel's types."""
    snapshot_to_png(layer, z, x, y, outline=False)
    snapshot_to_png(layer, z, x, y, outline=True, scale=2)


def rasterize(
    idx: CellIndex,
    rows: _IDX,
    minx: float,
    maxy: float,
    k: float,
    size: int,
    labels: npt.NDArray[np.integer] | None = None,
) -> npt.NDArray[np.integer]:
    """Fill hexagons into a ``size x size`` label image.

    Parameters
    ----------
    idx : CellIndex
        The layer's index.
    rows : ndarray
        Positions of the hexagons to draw.
    minx, maxy : float
        Web Mercator coordinates of the image's top-left corner.
    k : float
        Pixels per metre.
    size : int
        Image width and height.
    labels : ndarray, optional
        Value painted for each hexagon (default ``1 + position in rows``, int32); 0 is
        background. The image has the labels' dtype (the renderers use uint8 and int32; another
        dtype compiles the kernel once more, on first use).

    Returns
    -------
    ndarray, shape (size, size)

    Notes
    -----
    See :func:`_fill` for the sampling and seam rule.
    """
    if labels is None:
        labels = np.arange(1, rows.size + 1, dtype=np.int32)
    img = np.zeros((size, size), dtype=labels.dtype)
    _fill(idx.verts, idx.nverts, rows, np.ascontiguousarray(labels), minx, maxy, k, img)
    return img


@kernel
def _fill(
    verts: _F64,
    nverts: _U8,
    rows: _IDX,
    labels: npt.NDArray[np.integer],
    minx: float,
    maxy: float,
    k: float,
    img: npt.NDArray[np.integer],
) -> None:
    """Paint ``labels[i]`` into the pixels of hexagon ``rows[i]``, for every ``i``.

    Pixel ``(i, j)`` (row, column) has its centre at ``(j + 0.5, i + 0.5)``, in a frame with
    vertices at ``((X - minx) k, (maxy - Y) k)`` snapped to 1/65536 px. A scanline at ``yc``
    crosses edge ``a -> b`` when ``min(ay, by) <= yc < max(ay, by)``, at
    ``x = x_lo + (yc - y_lo) (x_hi - x_lo) / (y_hi - y_lo)`` with the endpoints ordered by y,
    so the two hexagons sharing an edge compute bit-identical crossings. Rings are clockwise on
    screen, so a downward edge bounds its hexagon on the right and an upward one on the left:
    each scanline of a (convex) hexagon gets exactly one left and one right crossing. The
    hexagon owns columns ``ceil(left - 0.5) .. ceil(right - 0.5) - 1`` of that row, a half-open
    rule under which neighbours neither overlap nor leave a gap (so storing a label, which the
    compiler turns into a ``memset``-like loop, loses nothing to painting order).
    """
    h, w = img.shape
    nvmax = verts.shape[1]
    px = np.empty(nvmax)
    py = np.empty(nvmax)
    left = np.empty(h)
    right = np.empty(h)
    sx, sy = k * _SNAP, -k * _SNAP
    for i in range(rows.size):
        c = rows[i]
        n = int(np.intp(nverts[c]))  # numba: int(uint8) is a uint64, and uint64 + int a float
        y0, y1 = np.inf, -np.inf
        for j in range(n):
            px[j] = np.rint((verts[c, j, 0] - minx) * sx) / _SNAP
            py[j] = np.rint((verts[c, j, 1] - maxy) * sy) / _SNAP
            y0, y1 = min(y0, py[j]), max(y1, py[j])
        r0, r1 = _pixel_edge(y0, h), _pixel_edge(y1, h)
        if r1 <= r0:
            continue
        for s in range(r0, r1):
            left[s], right[s] = np.inf, -np.inf
        for j in range(n):
            jn = j + 1 if j + 1 < n else 0
            down = py[jn] > py[j]
            a, b = (j, jn) if down else (jn, j)  # a: the upper end on screen
            if py[a] == py[b]:
                continue
            slope = (px[b] - px[a]) / (py[b] - py[a])
            cross = right if down else left
            for s in range(_pixel_edge(py[a], h), _pixel_edge(py[b], h)):
                cross[s] = px[a] + (s + 0.5 - py[a]) * slope
        lab = labels[i]
        for s in range(r0, r1):
            img[s, _pixel_edge(left[s], w) : _pixel_edge(right[s], w)] = lab


@kernel
def _pixel_edge(v: float, size: int) -> int:
    """First pixel whose centre is at or past ``v``: ``ceil(v - 0.5)``, clamped to ``[0, size]``."""
    return int(min(max(np.ceil(v - 0.5), 0.0), float(size)))


def _outline(lab: npt.NDArray[np.integer], bits: int, nb: int, scale: int) -> _U8:
    """Turn a hexagon-label image with a 1 px margin into palette indexes with outlines.

    Labels carry their fill's palette index in the low ``bits`` bits. A pixel of hexagon ``h``
    is outline when its right or lower neighbour is not ``h``, or its left or upper neighbour
    is empty (scale 1: one pixel, drawn inside the left/upper hexagon); at scale 2 any
    differing 4-neighbour counts, giving two pixels on the boundary. Outline pixels take the
    fill's dark twin, ``nb`` entries further; background stays 0.
    """
    out = np.empty((lab.shape[0] - 2, lab.shape[1] - 2), dtype=np.uint8)
    _outline_kernel(lab, (1 << bits) - 1, nb, scale == 1, out)
    return out


@kernel
def _outline_kernel(lab: npt.NDArray[np.integer], mask: int, nb: int, thin: bool, out: _U8) -> None:
    """Kernel of :func:`_outline` (``thin``: scale 1), branch-free so that it vectorises."""
    h, w = out.shape
    for i in range(h):
        up, mid, down, row = lab[i], lab[i + 1], lab[i + 2], out[i]
        for j in range(w):
            c = mid[j + 1]
            edge = (mid[j + 2] != c) | (down[j + 1] != c)
            if thin:
                edge |= (mid[j] == 0) | (up[j + 1] == 0)
            else:
                edge |= (mid[j] != c) | (up[j + 1] != c)
            row[j] = np.uint8(((c & mask) + nb * edge) * (c != 0))


class _Palette:
    """A layer's PNG palette chunks: background, band colours, then their outline twins."""

    def __init__(self, idx: CellIndex) -> None:
        rgba = band_rgba(idx.bands)
        dark = rgba.copy()
        dark[:, :3] = (rgba[:, :3].astype(np.float64) * 0.55).astype(np.uint8)
        dark[:, 3] = np.maximum(rgba[:, 3], 230)
        self.rgba = np.vstack([np.zeros((1, 4), np.uint8), rgba, dark])


_PALETTES: weakref.WeakKeyDictionary[CellIndex, _Palette] = weakref.WeakKeyDictionary()
_PALETTES_LOCK = threading.Lock()


def _palette(idx: CellIndex) -> npt.NDArray[np.uint8]:
    p = _PALETTES.get(idx)
    if p is None:
        p = _Palette(idx)
        with _PALETTES_LOCK:
            _PALETTES[idx] = p
    return p.rgba


def encode_png(
    img: npt.NDArray[np.integer],
    palette: npt.NDArray[np.uint8],
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """Encode a palette-index image as a PNG (colour type 3, 4 or 8 bits, with ``tRNS``).

    Parameters
    ----------
    img : ndarray, shape (h, w)
        Palette indexes (0-255).
    palette : ndarray of uint8, shape (n, 4)
        RGBA entries; the alpha column becomes the ``tRNS`` chunk.
    compress_level : int
        zlib level, 0-9.

    Returns
    -------
    bytes
        The PNG file: IHDR, PLTE, tRNS, one IDAT (scanlines with filter type 0), IEND; or
        ``b""`` if every pixel is 0 (background).

    Notes
    -----
    Filter type 0 (None) on every scanline, as the PNG specification recommends for palette
    images; on these tiles it gave smaller files than Sub or Up at the same zlib level, and
    level 1 deflates a 256 px tile in ~50-300 µs.
    """
    h, w = img.shape
    n = palette.shape[0]
    depth = 4 if n <= 16 and w % 2 == 0 else 8
    raw = np.empty((h, w * depth // 8 + 1), dtype=np.uint8)
    if not _scanlines(np.ascontiguousarray(img, dtype=np.uint8), depth == 4, raw):
        return b""
    idat = zlib.compress(raw.data, compress_level)
    return b"".join(
        (
            _PNG_SIG,
            _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 3, 0, 0, 0)),
            _chunk(b"PLTE", palette[:, :3].tobytes()),
            _chunk(b"tRNS", palette[:, 3].tobytes()),
            _chunk(b"IDAT", idat),
            _chunk(b"IEND", b""),
        )
    )


@kernel
def _scanlines(img: _U8, nibbles: bool, raw: _U8) -> bool:
    """Write PNG scanlines into ``raw``: filter byte 0, then the pixels (two per byte if
    ``nibbles``, high nibble first). Return whether any pixel is not 0."""
    h, w = img.shape
    seen = 0
    for i in range(h):
        raw[i, 0] = 0
        if nibbles:
            for j in range(w // 2):
                v = (img[i, 2 * j] << 4) | img[i, 2 * j + 1]
                raw[i, j + 1] = v
                seen |= v
        else:
            for j in range(w):
                raw[i, j + 1] = img[i, j]
                seen |= img[i, j]
    return seen != 0


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
