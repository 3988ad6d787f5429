"""Tiles of the density layer: zoom policy, MVT and PNG renderers, TileJSON, cache, PMTiles.

A library over published snapshots (anything shaped like :class:`tiles.source.CellLayer`): it
knows nothing of HTTP. ``heatmap.api`` picks the snapshot with :func:`zoom_to_res`, calls a
renderer and wraps the bytes. The renderers' per-tile work runs in numba kernels; a server calls
:func:`warmup` once at start-up so no request waits for them to compile or load.
"""

from tiles._jit import warmup  # the renderers imported below register what it runs
from tiles.cache import TileCache, TileKey, etag
from tiles.errors import TileError, TileOutOfRange
from tiles.grid import (
    DATA_MIN_ZOOM,
    MAX_ZOOM,
    MIN_ZOOM,
    check_tile,
    tile_bounds_lnglat,
    zoom_to_res,
)
from tiles.pmtiles import write_pmtiles
from tiles.raster import snapshot_to_png
from tiles.source import BandLike, CellLayer
from tiles.tilejson import data_bounds, legend_text, tilejson
from tiles.vector import snapshot_to_mvt

__all__ = [
    "DATA_MIN_ZOOM",
    "MAX_ZOOM",
    "MIN_ZOOM",
    "BandLike",
    "CellLayer",
    "TileCache",
    "TileError",
    "TileKey",
    "TileOutOfRange",
    "check_tile",
    "data_bounds",
    "etag",
    "legend_text",
    "snapshot_to_mvt",
    "snapshot_to_png",
    "tile_bounds_lnglat",
    "tilejson",
    "warmup",
    "write_pmtiles",
    "zoom_to_res",
]
