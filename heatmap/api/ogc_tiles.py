"""OGC API - Tiles: the density layer's vector (MVT) and map (PNG) tiles in ``WebMercatorQuad``.

The tiles are the service's own (``/tiles/{z}/{x}/{y}.mvt|.png``, same bytes, cache and ETags),
addressed the OGC way (``{tileMatrix}/{tileRow}/{tileCol}``) and described by tileset metadata
whose tile matrix set comes from morecantile. Only the ``density`` collection has tiles: the
hexagons' resolution follows the zoom level, as on the pages. ``datetime`` / ``release`` pick
the answer as for features. Tiles outside the declared limits (the city's box, zooms
``DATA_MIN_ZOOM``-``MAX_ZOOM``) are a 404, as the standard asks.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.dependencies import audience
from heatmap.api.ogc_common import (
    CRS84,
    DENSITY,
    JSON,
    MVT,
    PNG,
    REL,
    CollectionId,
    DatetimeText,
    OgcRoute,
    ReleaseText,
    find_collection,
    link,
    ogc_json,
    parse_when,
    root_url,
    when_to_ref,
)
from heatmap.api.tiles import tile_answer
from heatmap.errors import NotFound
from heatmap.read import LATEST
from heatmap.tiling import TileRequest, city_bounds
from tiles.grid import DATA_MIN_ZOOM, MAX_ZOOM, TMS

router = APIRouter(prefix="/ogc", tags=["OGC API"], route_class=OgcRoute)

TMS_ID: Final = "WebMercatorQuad"
TMS_CRS: Final = "http://www.opengis.net/def/crs/EPSG/0/3857"

Kind = Literal["vector", "map"]
_MEDIA: Final[dict[str, str]] = {"vector": MVT, "map": PNG}
_FMT: Final[dict[str, Literal["mvt", "png"]]] = {"vector": "mvt", "map": "png"}
_PREFIX: Final[dict[str, str]] = {"vector": "tiles", "map": "map/tiles"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    400: {"description": "Invalid parameter (the reason says which)"},
    404: {"description": "No such collection, tile matrix set or tile; or no data yet"},
}

TmsId = Annotated[str, Path(description="Tile matrix set id (`WebMercatorQuad`)")]
TileMatrix = Annotated[int, Path(description="Zoom level (tile matrix id)")]
TileRow = Annotated[int, Path(description="Tile row from the north")]
TileCol = Annotated[int, Path(description="Tile column from the west")]


@cache
def tile_matrix_set_limits() -> tuple[dict[str, Any], ...]:
    """Return the tile ranges holding the city's box, per zoom from the first data zoom."""
    w, s, e, n = city_bounds()
    out = []
    for z in range(DATA_MIN_ZOOM, MAX_ZOOM + 1):
        ul, lr = TMS.tile(w, n, z), TMS.tile(e, s, z)
        out.append(
            {
                "tileMatrix": str(z),
                "minTileRow": ul.y,
                "maxTileRow": lr.y,
                "minTileCol": ul.x,
                "maxTileCol": lr.x,
            }
        )
    return tuple(out)


def _check_tile(z: int, row: int, col: int) -> None:
    """``NotFound`` unless the tile is inside the declared limits."""
    if not DATA_MIN_ZOOM <= z <= MAX_ZOOM:
        raise NotFound(f"tile matrix {z} is outside this tileset ({DATA_MIN_ZOOM}-{MAX_ZOOM})")
    lim = tile_matrix_set_limits()[z - DATA_MIN_ZOOM]
    if not (
        lim["minTileRow"] <= row <= lim["maxTileRow"]
        and lim["minTileCol"] <= col <= lim["maxTileCol"]
    ):
        raise NotFound(
            f"tile {z}/{row}/{col} is outside this tileset's limits at tile matrix {z} "
            f"(rows {lim['minTileRow']}-{lim['maxTileRow']}, "
            f"cols {lim['minTileCol']}-{lim['maxTileCol']})"
        )


def _tiles_collection(request: Request, collection_id: str) -> None:
    coll = find_collection(audience(request).reader, collection_id)
    if coll.id != DENSITY:
        raise NotFound(f"collection {coll.id} has no tiles: the tiles are those of {DENSITY}")


def _check_tms(tms_id: str) -> None:
    if tms_id != TMS_ID:
        raise NotFound(f"no tile matrix set {tms_id!r}: tiles are in {TMS_ID}")


def _time_query(request: Request) -> str:
    """Return ``?datetime=..`` / ``?release=..`` of the request, to carry into templates."""
    kept = {k: v for k, v in request.query_params.items() if k in ("datetime", "release")}
    return "?" + urlencode(kept) if kept else ""


def _tileset_link(request: Request, kind: Kind) -> dict[str, Any]:
    root = root_url(request)
    return {
        "title": f"Crowd density, {kind} tiles",
        "dataType": kind,
        "crs": TMS_CRS,
        "tileMatrixSetURI": TMS.uri,
        "links": [
            link(f"{root}/ogc/collections/{DENSITY}/{_PREFIX[kind]}/{TMS_ID}", "self", JSON),
            link(f"{root}/ogc/tileMatrixSets/{TMS_ID}", REL + "tiling-scheme", JSON, TMS_ID),
        ],
    }


def tileset_json(request: Request, kind: Kind) -> dict[str, Any]:
    """Return the tileset metadata of the density layer's vector or map tiles."""
    root = root_url(request)
    w, s, e, n = city_bounds()
    base = f"{root}/ogc/collections/{DENSITY}/{_PREFIX[kind]}/{TMS_ID}"
    template = f"{base}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}{_time_query(request)}"
    doc: dict[str, Any] = {
        "title": f"Crowd density, {kind} tiles",
        "description": (
            "H3 hexagons coloured by people per km2 (bands blue, green, yellow, red); the "
            "hexagons' resolution follows the zoom level. Cells with too few devices are absent."
        ),
        "dataType": kind,
        "crs": TMS_CRS,
        "tileMatrixSetURI": TMS.uri,
        "tileMatrixSetLimits": list(tile_matrix_set_limits()),
        "boundingBox": {
            "lowerLeft": [round(w, 6), round(s, 6)],
            "upperRight": [round(e, 6), round(n, 6)],
            "crs": CRS84,
        },
        "centerPoint": {"coordinates": [121.4737, 31.2304], "tileMatrix": "10", "crs": CRS84},
        "links": [
            link(str(request.url), "self", JSON, "this tileset"),
            link(f"{root}/ogc/tileMatrixSets/{TMS_ID}", REL + "tiling-scheme", JSON, TMS_ID),
            link(f"{root}/ogc/collections/{DENSITY}", REL + "geodata", JSON, "the collection"),
            link(template, "item", _MEDIA[kind], f"{kind} tiles", templated=True),
        ],
    }
    if kind == "vector":
        doc["layers"] = [
            {
                "id": "density",
                "title": "Crowd density",
                "dataType": "vector",
                "geometryDimension": 2,
                "minTileMatrix": str(DATA_MIN_ZOOM),
                "maxTileMatrix": str(MAX_ZOOM),
                "propertiesSchema": {
                    "type": "object",
                    "properties": {
                        "cell": {"type": "string", "description": "H3 cell index"},
                        "people": {"type": "number", "description": "people in the cell"},
                        "density_km2": {"type": "number", "description": "people per km2"},
                        "band": {"type": "string", "enum": ["blue", "green", "yellow", "red"]},
                    },
                },
            }
        ]
        doc["links"].append(
            link(f"{root}/style.json", "stylesheet", "application/json", "MapLibre style")
        )
    return doc


async def _tilesets(request: Request, collection_id: str, kind: Kind) -> Response:
    _tiles_collection(request, collection_id)
    root = root_url(request)
    payload = {
        "links": [
            link(str(request.url), "self", JSON),
            link(f"{root}/ogc/collections/{DENSITY}", REL + "geodata", JSON, "the collection"),
        ],
        "tilesets": [_tileset_link(request, kind)],
    }
    return ogc_json(request, payload, max_age=3600)


async def _tileset(request: Request, collection_id: str, tms_id: str, kind: Kind) -> Response:
    _tiles_collection(request, collection_id)
    _check_tms(tms_id)
    return ogc_json(request, tileset_json(request, kind), max_age=3600)


async def _tile(
    request: Request,
    collection_id: str,
    tms_id: str,
    z: int,
    row: int,
    col: int,
    kind: Kind,
    datetime_text: str | None,
    release: str | None,
) -> Response:
    _tiles_collection(request, collection_id)
    _check_tms(tms_id)
    _check_tile(z, row, col)
    when = parse_when(datetime_text, release)
    tiles = audience(request).tiles
    ref = LATEST if not when.pinned else await run_in_threadpool(when_to_ref, tiles.reader, when)
    req = TileRequest(_FMT[kind], z, col, row, 1, ref)
    tile = tiles.lookup(req)
    if tile is None:
        tile = await run_in_threadpool(tiles.tile, req)
    h = request.headers
    gzip_ok = h.get("accept-encoding") if kind == "vector" else None
    status, headers, body = tile_answer(tiles, tile, h.get("if-none-match"), gzip_ok)
    return Response(body, status_code=status, headers=headers)


@router.get("/collections/{collectionId}/tiles", summary="Vector tilesets of a collection")
async def vector_tilesets(request: Request, collectionId: CollectionId) -> Response:  # noqa: N803
    """Return the vector tilesets of a collection (``density``: MVT in WebMercatorQuad)."""
    return await _tilesets(request, collectionId, "vector")


@router.get("/collections/{collectionId}/map/tiles", summary="Map tilesets of a collection")
async def map_tilesets(request: Request, collectionId: CollectionId) -> Response:  # noqa: N803
    """Return the map tilesets of a collection (``density``: PNG in WebMercatorQuad)."""
    return await _tilesets(request, collectionId, "map")


@router.get(
    "/collections/{collectionId}/tiles/{tileMatrixSetId}",
    summary="Vector tileset metadata",
    responses=_ERRORS,
)
async def vector_tileset(
    request: Request,
    collectionId: CollectionId,  # noqa: N803
    tileMatrixSetId: TmsId,  # noqa: N803
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
) -> Response:
    """Return the vector tileset: tile matrix set, limits, layer ``density``, tile template."""
    parse_when(datetime_text, release)  # a bad value is a 400 here, not in every tile
    return await _tileset(request, collectionId, tileMatrixSetId, "vector")


@router.get(
    "/collections/{collectionId}/map/tiles/{tileMatrixSetId}",
    summary="Map tileset metadata",
    responses=_ERRORS,
)
async def map_tileset(
    request: Request,
    collectionId: CollectionId,  # noqa: N803
    tileMatrixSetId: TmsId,  # noqa: N803
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
) -> Response:
    """Return the map tileset: tile matrix set, limits and the PNG tile template."""
    parse_when(datetime_text, release)
    return await _tileset(request, collectionId, tileMatrixSetId, "map")


@router.get(
    "/collections/{collectionId}/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}",
    summary="Vector tile (MVT)",
    response_class=Response,
    responses={
        200: {"content": {MVT: {}}, "description": "A vector tile"},
        204: {"description": "No published cell in this tile"},
        **_ERRORS,
    },
)
async def vector_tile(
    request: Request,
    collectionId: CollectionId,  # noqa: N803
    tileMatrixSetId: TmsId,  # noqa: N803
    tileMatrix: TileMatrix,  # noqa: N803
    tileRow: TileRow,  # noqa: N803
    tileCol: TileCol,  # noqa: N803
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
) -> Response:
    """Return a vector tile: layer ``density``, the bytes of ``/tiles/{z}/{x}/{y}.mvt``."""
    return await _tile(
        request,
        collectionId,
        tileMatrixSetId,
        tileMatrix,
        tileRow,
        tileCol,
        "vector",
        datetime_text,
        release,
    )


@router.get(
    "/collections/{collectionId}/map/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}",
    summary="Map tile (PNG)",
    response_class=Response,
    responses={
        200: {"content": {PNG: {}}, "description": "A map tile"},
        204: {"description": "No published cell in this tile"},
        **_ERRORS,
    },
)
async def map_tile(
    request: Request,
    collectionId: CollectionId,  # noqa: N803
    tileMatrixSetId: TmsId,  # noqa: N803
    tileMatrix: TileMatrix,  # noqa: N803
    tileRow: TileRow,  # noqa: N803
    tileCol: TileCol,  # noqa: N803
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
) -> Response:
    """Return a 256 px map tile, the bytes of ``/tiles/{z}/{x}/{y}.png``."""
    return await _tile(
        request,
        collectionId,
        tileMatrixSetId,
        tileMatrix,
        tileRow,
        tileCol,
        "map",
        datetime_text,
        release,
    )


@router.get("/tileMatrixSets", summary="Tile matrix sets")
async def tile_matrix_sets(request: Request) -> Response:
    """Return the tile matrix sets the tiles use (``WebMercatorQuad``)."""
    root = root_url(request)
    payload = {
        "links": [link(str(request.url), "self", JSON)],
        "tileMatrixSets": [
            {
                "id": TMS_ID,
                "title": TMS.title,
                "uri": TMS.uri,
                "links": [link(f"{root}/ogc/tileMatrixSets/{TMS_ID}", "self", JSON, TMS_ID)],
            }
        ],
    }
    return ogc_json(request, payload, max_age=86400)


@cache
def _tms_json() -> dict[str, Any]:
    return TMS.model_dump(mode="json", exclude_none=True)


@router.get("/tileMatrixSets/{tileMatrixSetId}", summary="Tile matrix set definition")
async def tile_matrix_set(request: Request, tileMatrixSetId: TmsId) -> Response:  # noqa: N803
    """Return the definition of a tile matrix set (OGC TMS 2.0 JSON, from morecantile)."""
    _check_tms(tileMatrixSetId)
    return ogc_json(request, _tms_json(), max_age=86400)
