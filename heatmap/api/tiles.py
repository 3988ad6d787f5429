"""Tile routes: ``/tiles/{z}/{x}/{y}.mvt|.png|@2x.png`` and ``/tiles.json``.

A cached tile is answered on the event loop (no thread hop); a miss renders in a thread.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.caching import accepts_gzip, cache_control, etag_matches, gzip_etag
from heatmap.api.dependencies import WindowParam, answer, audience, context
from heatmap.model import epoch_to_iso
from heatmap.tiling import Tile, TileRequest, TileService

router = APIRouter(tags=["tiles"])

Z = Annotated[int, Path(description="Zoom level (0-18)")]
X = Annotated[int, Path(description="Tile column, 0 .. 2^z - 1")]
Y = Annotated[int, Path(description="Tile row from the north, 0 .. 2^z - 1")]

_EMPTY: dict[int | str, dict[str, Any]] = {204: {"description": "No published cell in this tile"}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    404: {"description": "Tile address out of range, or no such window"},
    422: {"description": "Invalid parameter"},
}


@lru_cache(maxsize=1024)
def _iso(ts: int) -> str:
    return epoch_to_iso(ts)


def tile_answer(
    service: TileService, tile: Tile, if_none_match: str | None, accept_encoding: str | None
) -> tuple[int, dict[str, str], bytes]:
    """Return status, headers and body of a tile answer (200, 204 empty, 304 not modified).

    Shared by the routes and :mod:`heatmap.api.fastpath`, so both answer byte for byte alike.
    """
    headers = {
        "Cache-Control": cache_control(tile.immutable, private=service.private),
        "Vary": "Accept-Encoding",
        "X-Heatmap-Window": _iso(tile.window.start),
        "X-Heatmap-Complete": "true" if tile.complete else "false",
    }
    is_mvt = tile.key.fmt == "mvt"
    compress = is_mvt and bool(tile.data) and accepts_gzip(accept_encoding)
    headers["ETag"] = gzip_etag(tile.etag) if compress else tile.etag
    if etag_matches(if_none_match, tile.etag, gzip_etag(tile.etag)):
        return 304, headers, b""
    if not tile.data:
        return 204, headers, b""
    headers["Content-Type"] = tile.media_type
    if compress:
        headers["Content-Encoding"] = "gzip"
        return 200, headers, service.gzipped(tile)
    return 200, headers, tile.data


async def _serve(
    request: Request, req: TileRequest, if_none_match: str | None, accept_encoding: str | None
) -> Response:
    tiles = audience(request).tiles
    tile = tiles.lookup(req)
    if tile is None:
        tile = await run_in_threadpool(tiles.tile, req)
    status, headers, body = tile_answer(tiles, tile, if_none_match, accept_encoding)
    return Response(body, status_code=status, headers=headers)


@router.get(
    "/tiles/{z}/{x}/{y}@2x.png",
    summary="PNG tile, 512 px",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_EMPTY, **_ERRORS},
)
async def png_tile_2x(
    request: Request,
    z: Z,
    x: X,
    y: Y,
    window: WindowParam,
) -> Response:
    """Return a 512 px PNG tile of the density bands (same area as the 256 px tile)."""
    svc, if_none_match, accept_encoding = context(request)
    return await _serve(request, TileRequest("png", z, x, y, 2, window), if_none_match, None)


@router.get(
    "/tiles/{z}/{x}/{y}.png",
    summary="PNG tile, 256 px",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_EMPTY, **_ERRORS},
)
async def png_tile(
    request: Request,
    z: Z,
    x: X,
    y: Y,
    window: WindowParam,
) -> Response:
    """Return a 256 px PNG tile of the density bands (never re-compressed)."""
    svc, if_none_match, accept_encoding = context(request)
    return await _serve(request, TileRequest("png", z, x, y, 1, window), if_none_match, None)


@router.get(
    "/tiles/{z}/{x}/{y}.mvt",
    summary="Vector tile (MVT)",
    response_class=Response,
    responses={
        200: {"content": {"application/vnd.mapbox-vector-tile": {}}},
        **_EMPTY,
        **_ERRORS,
    },
)
async def mvt_tile(
    request: Request,
    z: Z,
    x: X,
    y: Y,
    window: WindowParam,
) -> Response:
    """Return an MVT tile: layer ``density``, one hexagon per published cell (gzip if accepted)."""
    svc, if_none_match, accept_encoding = context(request)
    req = TileRequest("mvt", z, x, y, 1, window)
    return await _serve(request, req, if_none_match, accept_encoding)


@router.get("/tiles.json", summary="TileJSON 3.0.0")
async def tilejson(
    request: Request,
    window: WindowParam,
    format: Annotated[Literal["mvt", "png"], Query(description="Tile format")] = "mvt",
) -> Response:
    """Return the TileJSON of the density tiles (URL template, bounds, zooms, legend)."""
    who = audience(request)
    return await answer(
        request, who.tiles.tilejson, format, str(request.base_url), window, ref=window, who=who
    )
