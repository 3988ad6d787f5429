"""Tiles of published snapshots for the service: pick, render, cache, tag; TileJSON; PMTiles.

The glue between :mod:`heatmap` (windows and snapshots) and the :mod:`tiles` library (renderers,
cache, TileJSON, PMTiles writer). No web framework: ``heatmap.api.tiles`` wraps what this returns.

A tile's bytes are a pure function of the snapshot version and the tile address, so the cache
is keyed by both: a new release misses and re-renders; nothing needs to be purged. The strong
ETag is a hash of the bytes sent (:func:`tiles.cache.etag`), so it tells nothing the bytes do
not: a tile that did not change between releases keeps its tag.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound
from heatmap.model import Snapshot, Window
from heatmap.places import load_outline
from heatmap.policy import PublishPolicy
from heatmap.publish import legend, legend_text, privacy_summary
from heatmap.read.answers import window_json
from heatmap.read.reader import Reader
from heatmap.read.ref import LATEST, Ref
from heatmap.service import Heatmap
from heatmap.store import WindowInfo
from tiles.cache import TileCache, TileKey, etag
from tiles.errors import TileError
from tiles.fill import fill_area, fill_size, filled
from tiles.grid import (
    DATA_MIN_ZOOM,
    MAX_ZOOM,
    MIN_ZOOM,
    check_tile,
    tile_bounds_lnglat,
    zoom_to_res,
)
from tiles.index import CellIndex, build_index
from tiles.pmtiles import write_pmtiles
from tiles.raster import snapshot_to_png
from tiles.source import CellLayer
from tiles.tilejson import data_bounds, round_bounds, tilejson
from tiles.vector import snapshot_to_mvt

Format = Literal["mvt", "png"]

MEDIA_TYPES: dict[str, str] = {"mvt": "application/vnd.mapbox-vector-tile", "png": "image/png"}
"""Content-Type of each tile format."""

FILL_LAYER_MAX = 150_000
"""Largest fill (cells) built once per snapshot set; larger ones are built per tile."""

FILLED = "+fill"
"""Suffix of a filled layer's version (:func:`tiles.fill.fill_layer`'s default)."""

GZIP_LEVEL = 6
"""zlib level of gzip-encoded MVT (compressed once per tile and cached)."""

ATTRIBUTION = "Crowd density: open heatmap service (k-anonymous counts)"
"""Attribution of the density layer in TileJSON."""


@dataclass(frozen=True)
class TileRequest:
    """What a tile request asks for (already parsed)."""

    fmt: Format
    z: int
    x: int
    y: int
    scale: int = 1
    ref: Ref = LATEST  # ``?window=``


@dataclass(frozen=True)
class Tile:
    """A rendered tile and what the HTTP layer needs to answer with it.

    ``data`` is empty for a tile without any published cell (204). ``pinned`` says the request
    named its window (so a closed window's tile may be cached for good).
    """

    data: bytes
    etag: str
    media_type: str
    window: Window
    complete: bool
    pinned: bool
    key: TileKey
    final: bool = False
    """True for a closed window or a release: their values never change."""

    @property
    def immutable(self) -> bool:
        """Return True when the URL can never answer anything else (a named, final answer)."""
        return self.final and self.pinned


class TileService:
    """Tiles of any window for the HTTP layer, via one bounded in-process cache.

    Parameters
    ----------
    reader : Reader
        Resolves ``?window=`` and hands out snapshots per version.
    cache : TileCache
        Rendered tiles (identity bytes, and gzip bytes of MVT) keyed by version and address.
    """

    def __init__(self, reader: Reader, cache: TileCache, private: bool = False) -> None:
        self.reader = reader
        self.private = private
        """True for an audience behind authentication (answers ``Cache-Control: private``)."""
        self.settings = reader.settings
        self.cache = cache
        self.render_seconds = 0.0
        self.renders = 0

    def _check(self, req: TileRequest) -> None:
        if req.fmt not in MEDIA_TYPES:
            raise BadInput(f"tile format {req.fmt!r}: use mvt or png")
        if req.scale not in (1, 2) or (req.scale == 2 and req.fmt != "png"):
            raise BadInput("@2x exists for PNG tiles only")
        check_tile(req.z, req.x, req.y, MIN_ZOOM, MAX_ZOOM)

    def _key(self, req: TileRequest, snap: Snapshot) -> TileKey:
        # The tile draws the filled layer of this resolution (its version names the whole
        # snapshot set: :func:`tiles.fill.filled`), known here without building it.
        return TileKey(snap.version + FILLED, req.fmt, req.z, req.x, req.y, req.scale)

    def _tile(self, req: TileRequest, info: WindowInfo, snap: Snapshot, data: bytes) -> Tile:
        key = self._key(req, snap)
        return Tile(
            data=data,
            etag=etag(data, key.fmt),
            media_type=MEDIA_TYPES[req.fmt],
            window=info.window,
            complete=info.closed,
            pinned=req.ref.pinned,
            final=info.closed or info.is_release,
            key=key,
        )

    def _snapshot(self, req: TileRequest, snaps: dict[int, Snapshot]) -> Snapshot:
        s = self.settings
        return snaps[zoom_to_res(req.z, s.min_res, s.base_res)]

    def lookup(self, req: TileRequest) -> Tile | None:
        """Return the tile if it can be answered from memory alone (never blocks), else None.

        Raises the same errors as :meth:`tile` for a bad address.
        """
        self._check(req)
        wl = self.reader.catalog.peek()
        if wl is None:
            return None
        try:
            info = self.reader.resolve(wl, req.ref)
        except NotFound:
            return None  # let the blocking path re-check the store before saying 404
        snaps = self.reader.peek(info)
        if snaps is None:
            return None
        snap = self._snapshot(req, snaps)
        data = self.cache.get(self._key(req, snap))
        if data is None:
            return None
        return self._tile(req, info, snap, data)

    def tile(self, req: TileRequest) -> Tile:
        """Return the tile, rendering and caching it if needed (may block: store, render)."""
        self._check(req)
        info = self.reader.window(req.ref)
        snaps = self.reader.snapshots(info)
        snap = self._snapshot(req, snaps)
        key = self._key(req, snap)
        data = self.cache.get(key)
        if data is None:
            t0 = time.perf_counter()
            data = render_filled(snaps, snap.res, req.fmt, req.z, req.x, req.y, req.scale)
            self.render_seconds += time.perf_counter() - t0
            self.renders += 1
            self.cache.put(key, data)
        return self._tile(req, info, snap, data)

    def gzipped(self, tile: Tile) -> bytes:
        """Return the gzip encoding of a tile's bytes (compressed once, then cached)."""
        key = tile.key._replace(fmt=tile.key.fmt + "+gzip")
        return self.cache.get_or_render(
            key, lambda: gzip.compress(tile.data, compresslevel=GZIP_LEVEL, mtime=0)
        )

    def tilejson(self, fmt: Format, base_url: str, ref: Ref = LATEST) -> dict[str, Any]:
        """Return the TileJSON 3.0.0 document of the density tiles of a window (default latest).

        ``base_url`` is the service's public root (``https://host/``).
        """
        if fmt not in MEDIA_TYPES:
            raise BadInput(f"format {fmt!r}: use mvt or png")
        info: WindowInfo | None = None
        if ref.pinned or len(self.reader.windows()):
            info = self.reader.window(ref)
        policy = self.reader.policy
        return service_tilejson(policy, fmt, base_url, info if ref.pinned else None, info)


@cache
def city_bounds() -> tuple[float, float, float, float]:
    """Return the city outline's ``(west, south, east, north)``, padded by 0.02 degrees."""
    w, s, e, n = load_outline().bounds
    return (w - 0.02, s - 0.02, e + 0.02, n + 0.02)


def service_tilejson(
    policy: PublishPolicy,
    fmt: Format,
    base_url: str,
    pinned: WindowInfo | None = None,
    latest: WindowInfo | None = None,
) -> dict[str, Any]:
    """Return the service's TileJSON: tile URL template, city bounds, zooms, legend, privacy.

    ``pinned`` adds ``?window=`` to the template (a closed window's tiles are immutable);
    ``latest`` describes the window the default template currently serves.
    """
    root = base_url.rstrip("/")
    suffix = "" if pinned is None else f"?window={pinned.window.isoformat()}"
    bounds = round_bounds(city_bounds(), 4)
    described = pinned or latest
    png = fmt == "png"
    return tilejson(
        fmt,
        f"{root}/tiles/{{z}}/{{x}}/{{y}}.{fmt}{suffix}",
        bounds=bounds,
        center=(121.4737, 31.2304, 10),
        minzoom=DATA_MIN_ZOOM,
        maxzoom=MAX_ZOOM,
        attribution=ATTRIBUTION,
        legend=legend_text(policy),
        name="Shanghai crowd density",
        description=(
            f"People per H3 hexagon per {policy.window_s // 60}-minute window; cells with "
            f"fewer than {policy.k_min} devices are withheld"
        ),
        extra={
            "window": None if described is None else window_json(described),
            "k_min": policy.k_min,
            "dp_epsilon": policy.dp_epsilon,
            "privacy": privacy_summary(policy),
            "legend_bands": legend(policy)["bands"],
            "tiles_2x": [f"{root}/tiles/{{z}}/{{x}}/{{y}}@2x.png{suffix}"] if png else None,
        },
    )


def render_tile(
    layer: CellLayer | CellIndex, fmt: str, z: int, x: int, y: int, scale: int = 1
) -> bytes:
    """Return the tile bytes of one layer (``b""`` when no published cell touches it)."""
    if fmt == "mvt":
        return snapshot_to_mvt(layer, z, x, y)
    return snapshot_to_png(layer, z, x, y, scale=scale)


def render_filled(
    snaps: dict[int, Snapshot], res: int, fmt: str, z: int, x: int, y: int, scale: int = 1
) -> bytes:
    """Return a tile of resolution ``res`` where every place shows its finest published level.

    Where the cells of ``res`` are withheld, their published parent (or a coarser ancestor)
    fills the gap (:mod:`tiles.fill`). A fill of at most :data:`FILL_LAYER_MAX` cells is built
    once per snapshot set and indexed like a snapshot; a larger one (the finest resolution
    over a whole city: hundreds of thousands of cells) is built per tile, for the cells near
    it only, so a street-zoom tile costs what it shows.
    """
    if fill_size(snaps, res) <= FILL_LAYER_MAX:
        return render_tile(filled(snaps, res), fmt, z, x, y, scale)
    w, s, e, n = tile_bounds_lnglat(z, x, y)
    pad = (e - w) * 64 / 4096  # the MVT buffer (and more than the PNG outline's pixel)
    local = fill_area(snaps, res, (w - pad, s - pad, e + pad, n + pad))
    return render_tile(build_index(local), fmt, z, x, y, scale)


def export_pmtiles(
    settings: Settings,
    out: Path,
    window: Ref | None = None,
    fmt: str = "mvt",
    min_zoom: int = 8,
    max_zoom: int = 13,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write one closed window's tiles as a PMTiles v3 archive; return a JSON summary.

    ``window`` names a time inside a closed window; None (or the latest) is the latest closed one.
    The tiles are the bytes the HTTP service serves for that window (same renderers).
    """
    if fmt not in MEDIA_TYPES:
        raise BadInput(f"format {fmt!r}: use mvt or png")
    hm = Heatmap(settings)
    try:
        reader = Reader.of(hm)
        try:
            if window is None or not window.pinned:
                info = reader.latest_closed()
            else:
                info = reader.window(window)
                if not info.closed:
                    raise BadInput(
                        f"window {info.window.isoformat()} is still open: export a closed window"
                    )
            snaps = reader.snapshots(info)
        finally:
            reader.close()
    finally:
        hm.close()
    n = snapshots_to_pmtiles(reader.policy, info, snaps, out, fmt, min_zoom, max_zoom, progress)
    return {
        "out": str(out),
        "tiles": n,
        "bytes": out.stat().st_size,
        "format": fmt,
        "window": window_json(info),
        "min_zoom": min_zoom,
        "max_zoom": max_zoom,
        "bounds": pmtiles_bounds(snaps, policy_res(reader.policy, min_zoom)),
    }


def policy_res(policy: PublishPolicy, z: int) -> int:
    """Return the resolution drawn at zoom ``z`` under a publishing policy."""
    return zoom_to_res(z, min(policy.resolutions), max(policy.resolutions))


def pmtiles_bounds(snaps: dict[int, Snapshot], res: int) -> tuple[float, float, float, float]:
    """Return the bounds of an archive: those of the published cells of ``res``."""
    return round_bounds(data_bounds(snaps[res]), 6)  # type: ignore[return-value]


def snapshots_to_pmtiles(
    policy: PublishPolicy,
    info: WindowInfo,
    snaps: dict[int, Snapshot],
    out: Path,
    fmt: str = "mvt",
    min_zoom: int = 8,
    max_zoom: int = 13,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the filled tiles of a release or window as a PMTiles v3 archive; return the count.

    The tiles are the bytes the HTTP service serves for it (same renderers, same fill), over
    the bounds of its published cells at ``min_zoom``.
    """
    if fmt not in MEDIA_TYPES:
        raise BadInput(f"format {fmt!r}: use mvt or png")
    coarse = policy_res(policy, min_zoom)
    if not len(snaps[coarse]):
        raise NotFound(f"window {info.window.isoformat()} has no published cell")

    def render(z: int, x: int, y: int) -> bytes:
        return render_filled(snaps, policy_res(policy, z), fmt, z, x, y)

    doc = service_tilejson(policy, fmt, "pmtiles://", info, info)  # type: ignore[arg-type]
    meta: dict[str, Any] = {
        k: doc[k] for k in ("name", "description", "attribution", "legend") if k in doc
    }
    meta.update(window=window_json(info), k_min=policy.k_min, dp_epsilon=policy.dp_epsilon)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_pmtiles(
            out,
            render,
            fmt=fmt,  # type: ignore[arg-type]
            minzoom=min_zoom,
            maxzoom=max_zoom,
            bounds=pmtiles_bounds(snaps, coarse),
            metadata=meta,
            progress=progress,
        )
    except TileError as exc:
        raise BadInput(str(exc)) from exc
