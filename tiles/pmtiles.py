"""PMTiles v3 export: one file holding every non-empty tile of a window over a zoom range."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from tiles.errors import TileError
from tiles.grid import tiles_in_bounds
from tiles.tilejson import FIELDS
from tiles.vector import LAYER_NAME


def write_pmtiles(
    path: str | os.PathLike[str],
    render: Callable[[int, int, int], bytes],
    *,
    fmt: Literal["mvt", "png"],
    minzoom: int,
    maxzoom: int,
    bounds: Sequence[float],
    center: Sequence[float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write a PMTiles v3 archive of the tiles ``render`` returns; return how many were written.

    Parameters
    ----------
    path : path-like
        Output file (overwritten).
    render : callable
        ``render(z, x, y) -> bytes``, the same bytes the tile endpoint serves (``b""`` = empty).
    fmt : {"mvt", "png"}
        MVT tiles are stored gzip-compressed (``tile_compression = gzip``, the PMTiles
        convention); PNG tiles as they are.
    minzoom, maxzoom : int
        Zoom range to export.
    bounds : sequence of 4 floats
        ``[west, south, east, north]`` degrees; only tiles intersecting it are rendered.
    center : sequence of 3 numbers, optional
        ``[lng, lat, zoom]`` for the header; default the middle of ``bounds`` at ``minzoom``.
    metadata : mapping, optional
        JSON metadata (TileJSON-like: name, attribution, legend...). For MVT a
        ``vector_layers`` entry is added when missing.
    progress : callable, optional
        ``progress(done, total)`` after each tile.

    Returns
    -------
    int
        Number of non-empty tiles stored.

    Raises
    ------
    tiles.errors.TileError
        If no tile in the range has data (a PMTiles archive cannot be empty).
    """
    if fmt not in ("mvt", "png"):
        raise ValueError(f"format must be mvt or png, not {fmt!r}")
    w, s, e, n = (float(v) for v in bounds)
    # Clustered archives list tiles in tile-id (Hilbert) order.
    todo = sorted(tiles_in_bounds((w, s, e, n), range(minzoom, maxzoom + 1)),
                  key=lambda t: zxy_to_tileid(*t))  # fmt: skip
    meta: dict[str, Any] = dict(metadata or {})
    if fmt == "mvt":
        meta.setdefault(
            "vector_layers",
            [{"id": LAYER_NAME, "fields": dict(FIELDS), "minzoom": minzoom, "maxzoom": maxzoom}],
        )
    written = 0
    tmp = f"{os.fspath(path)}.part"
    try:
        with open(tmp, "wb") as f:
            written = _write(f, render, todo, fmt, progress, (w, s, e, n), center, minzoom, meta)
        if written == 0:
            raise TileError(f"no non-empty tile in zoom {minzoom}..{maxzoom} within {list(bounds)}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return written


def _write(
    f: Any,
    render: Callable[[int, int, int], bytes],
    todo: list[tuple[int, int, int]],
    fmt: str,
    progress: Callable[[int, int], None] | None,
    bounds: tuple[float, float, float, float],
    center: Sequence[float] | None,
    minzoom: int,
    meta: dict[str, Any],
) -> int:
    w, s, e, n = bounds
    writer = Writer(f)
    written = 0
    for i, (z, x, y) in enumerate(todo):
        data = render(z, x, y)
        if data:
            writer.write_tile(
                zxy_to_tileid(z, x, y), gzip.compress(data, mtime=0) if fmt == "mvt" else data
            )
            written += 1
        if progress is not None:
            progress(i + 1, len(todo))
    if written == 0:
        return 0
    cz = minzoom if center is None else int(center[2])
    clng = (w + e) / 2.0 if center is None else float(center[0])
    clat = (s + n) / 2.0 if center is None else float(center[1])
    writer.finalize(
        {
            "tile_type": TileType.MVT if fmt == "mvt" else TileType.PNG,
            "tile_compression": Compression.GZIP if fmt == "mvt" else Compression.NONE,
            "min_lon_e7": int(w * 1e7),
            "min_lat_e7": int(s * 1e7),
            "max_lon_e7": int(e * 1e7),
            "max_lat_e7": int(n * 1e7),
            "center_zoom": cz,
            "center_lon_e7": int(clng * 1e7),
            "center_lat_e7": int(clat * 1e7),
        },
        meta,
    )
    return written
