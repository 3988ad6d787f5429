"""OGC API under ``/ogc``: landing page, conformance, API definition, collections.

GIS clients (QGIS, ArcGIS, GDAL, OWSLib) open the service natively: OGC API - Features for the
published hexagons (:mod:`heatmap.api.ogc_features`) and OGC API - Tiles for the density layer's
vector and map tiles (:mod:`heatmap.api.ogc_tiles`). Collections: ``density`` (the map layer:
tiles, and items of ``?res=``) and ``density-r{res}`` for each published resolution (items).

Conformance is declared only for what is implemented here: Common core, landing page, JSON,
OpenAPI 3.0 (``/ogc/api``, a 3.0 rendering of these routes), collections; Features core and
GeoJSON; Tiles core, tileset, tilesets list, geodata tilesets, datetime, MVT and PNG; the
``WebMercatorQuad`` tile matrix set. Not implemented (and not declared): HTML, CRS other than
CRS84, filtering by properties, dataset tilesets.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api import ogc_features, ogc_tiles
from heatmap.api.dependencies import audience
from heatmap.api.ogc_common import (
    CRS84,
    DENSITY,
    GEOJSON,
    GREGORIAN,
    JSON,
    OPENAPI_JSON,
    REL,
    Collection,
    CollectionId,
    OgcRoute,
    collections_of,
    find_collection,
    link,
    ogc_json,
    root_url,
)
from heatmap.api.ogc_openapi import to_openapi30
from heatmap.read import Reader
from heatmap.read.answers import window_json
from heatmap.tiling import city_bounds

router = APIRouter(prefix="/ogc", tags=["OGC API"], route_class=OgcRoute)

CONFORMANCE: Final = (
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/landing-page",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/datetime",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/png",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
)
"""The conformance classes implemented (and only those)."""


@router.get("", summary="OGC API landing page")
async def landing(request: Request) -> Response:
    """Return the landing page: title and links to the API, conformance and collections."""
    root = root_url(request)
    payload = {
        "title": "Crowd-density heatmap (OGC API)",
        "description": (
            "People per H3 hexagon, k-anonymous (cells with too few devices are withheld), as "
            "OGC API - Features (hexagons) and OGC API - Tiles (vector and map tiles)."
        ),
        "links": [
            link(f"{root}/ogc", "self", JSON, "this document"),
            link(f"{root}/ogc/api", "service-desc", OPENAPI_JSON, "API definition (OpenAPI 3.0)"),
            link(f"{root}/docs", "service-doc", "text/html", "interactive API documentation"),
            link(f"{root}/ogc/conformance", "conformance", JSON, "conformance classes"),
            link(f"{root}/ogc/conformance", REL + "conformance", JSON, "conformance classes"),
            link(f"{root}/ogc/collections", "data", JSON, "collections"),
            link(f"{root}/ogc/collections", REL + "data", JSON, "collections"),
            link(f"{root}/ogc/tileMatrixSets", REL + "tiling-schemes", JSON, "tile matrix sets"),
            link(f"{root}/style.json", "stylesheet", JSON, "MapLibre style of the vector tiles"),
        ],
    }
    return ogc_json(request, payload, max_age=3600)


@router.get("/conformance", summary="Conformance classes")
async def conformance(request: Request) -> Response:
    """Return the conformance classes this service implements."""
    return ogc_json(request, {"conformsTo": list(CONFORMANCE)}, max_age=3600)


@router.get("/api", summary="API definition of /ogc (OpenAPI 3.0)")
async def api_definition(request: Request) -> Response:
    """Return the OpenAPI 3.0 document of the OGC API routes."""
    state = request.app.state
    doc = getattr(state, "ogc_openapi", None)
    if doc is None:
        doc = to_openapi30(
            request.app.openapi(),
            "/ogc",
            title="Crowd-density heatmap: OGC API",
            description="OGC API - Features and Tiles of the crowd-density service.",
        )
        state.ogc_openapi = doc
    doc = {**doc, "servers": [{"url": root_url(request)}]}
    return ogc_json(request, doc, media_type=OPENAPI_JSON, max_age=3600)


def _temporal(reader: Reader) -> list[list[str | None]]:
    wl = reader.windows()
    first = wl.closed().first()
    latest = wl.releases.latest() or wl.latest_closed()
    if latest is None:
        return [[None, None]]
    start = window_json(first if first is not None else latest)["start"]
    return [[start, window_json(latest)["end"]]]


def collection_json(request: Request, coll: Collection, interval: Any) -> dict[str, Any]:
    """Return the description of one collection (extent, links to items and tiles)."""
    root = root_url(request)
    base = f"{root}/ogc/collections/{coll.id}"
    s = audience(request).reader.settings
    if coll.res is None:
        desc = (
            "People per H3 hexagon. Items: the hexagons of one resolution (`res`, default "
            f"{s.min_res}); tiles: the resolution follows the zoom, as on the maps."
        )
    else:
        desc = f"People per H3 hexagon of resolution {coll.res}."
    desc += (
        " Properties: people, density_km2 (people per km2), band (blue < green < yellow < red) "
        "with its labels; hexagons with too few devices are not published. Without datetime: "
        "the latest release (the live answer)."
    )
    w, so, e, n = city_bounds()
    links = [
        link(base, "self", JSON, coll.title()),
        link(f"{base}/items", "items", GEOJSON, "hexagons (GeoJSON)"),
    ]
    if coll.id == DENSITY:
        links += [
            link(f"{base}/tiles", REL + "tilesets-vector", JSON, "vector tilesets (MVT)"),
            link(f"{base}/map/tiles", REL + "tilesets-map", JSON, "map tilesets (PNG)"),
            link(f"{root}/style.json", "stylesheet", JSON, "MapLibre style"),
        ]
    return {
        "id": coll.id,
        "title": coll.title(),
        "description": desc,
        "itemType": "feature",
        "crs": [CRS84],
        "extent": {
            "spatial": {"bbox": [[round(v, 6) for v in (w, so, e, n)]], "crs": CRS84},
            "temporal": {"interval": interval, "trs": GREGORIAN},
        },
        "links": links,
    }


@router.get("/collections", summary="Collections")
async def collections(request: Request) -> Response:
    """Return the collections: ``density`` and one per published resolution."""
    reader = audience(request).reader
    interval = await run_in_threadpool(_temporal, reader)
    root = root_url(request)
    payload = {
        "links": [link(f"{root}/ogc/collections", "self", JSON)],
        "collections": [collection_json(request, c, interval) for c in collections_of(reader)],
    }
    return ogc_json(request, payload)


@router.get("/collections/{collectionId}", summary="Collection")
async def collection(request: Request, collectionId: CollectionId) -> Response:  # noqa: N803
    """Return one collection: extent and links to its items (and tiles)."""
    reader = audience(request).reader
    coll = find_collection(reader, collectionId)
    interval = await run_in_threadpool(_temporal, reader)
    return ogc_json(request, collection_json(request, coll, interval))


def include(app: FastAPI) -> None:
    """Add the OGC API routes (landing, collections, features, tiles) to the app."""
    for r in (router, ogc_features.router, ogc_tiles.router):
        app.include_router(r)
