"""OGC API - Features: the published hexagons of a collection as GeoJSON, paged.

``/ogc/collections/{id}/items`` lists the published cells of one resolution in one answer (the
latest release, or what ``datetime`` / ``release`` name: see :mod:`heatmap.api.ogc_common`),
in H3 index order, ``limit`` per page with ``next`` / ``prev`` links that pin the answer read.
``bbox`` keeps the hexagons whose polygon intersects the box (OGC's rule; ``/api/v1/cells``
keeps those whose centre is inside). Values are those of the caller's audience: the public gets
rounded people, a planner token the exact published values. A withheld cell is not a feature.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import h3
import numpy as np
import numpy.typing as npt
import shapely

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.dependencies import audience
from heatmap.api.ogc_common import (
    DENSITY,
    GEOJSON,
    JSON,
    Collection,
    CollectionId,
    DatetimeText,
    OgcRoute,
    ReleaseText,
    When,
    find_collection,
    link,
    ogc_json,
    parse_when,
    root_url,
    time_params,
    when_to_ref,
)
from heatmap.errors import BadInput, NotFound
from heatmap.model import Snapshot
from heatmap.read import Reader
from heatmap.read.answers import parse_bbox, window_json
from heatmap.store import WindowInfo
from tiles.index import cells_to_boundaries

router = APIRouter(prefix="/ogc", tags=["OGC API"], route_class=OgcRoute)

LIMIT_DEFAULT: Final = 100
LIMIT_MAX: Final = 10_000
"""Features per page: default and most (a larger ``limit`` is a 400)."""

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    400: {"description": "Invalid parameter (the reason says which)"},
    404: {"description": "No such collection, feature or window; or no data yet"},
}


@dataclass(frozen=True)
class ItemsQuery:
    """A parsed items request: resolution, optional bbox, time, page."""

    res: int
    bbox: tuple[float, float, float, float] | None
    when: When
    limit: int = LIMIT_DEFAULT
    offset: int = 0


@dataclass(frozen=True)
class ItemsPage:
    """One page of features and what it was read from."""

    info: WindowInfo
    res: int
    matched: int
    features: list[dict[str, Any]]


class _Outlines:
    """Hexagon outlines and their boxes per snapshot (small LRU: a page costs no recompute)."""

    def __init__(self, size: int = 6) -> None:
        self._items: OrderedDict[tuple[str, int, bool], tuple[F64, Any, F64]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, snap: Snapshot, public: bool) -> tuple[F64, Any, F64]:
        """Return ``(verts, nverts, boxes)``: vertices ``(n, V, 2)`` as (lng, lat), vertex
        counts, and each cell's ``(west, south, east, north)``."""
        key = (snap.version, snap.res, public)
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            return hit
        if len(snap):
            verts, nverts = cells_to_boundaries(snap.cells)
            boxes = np.column_stack(
                [verts[:, :, 0].min(1), verts[:, :, 1].min(1)]
                + [verts[:, :, 0].max(1), verts[:, :, 1].max(1)]
            )
        else:
            verts, nverts, boxes = np.zeros((0, 6, 2)), np.zeros(0, np.uint8), np.zeros((0, 4))
        hit = (verts, nverts, boxes)
        with self._lock:
            self._items[key] = hit
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return hit


_OUTLINES = _Outlines()


def rows_in_bbox(verts: F64, boxes: F64, bbox: tuple[float, float, float, float] | None) -> I64:
    """Return the rows (ascending) of the hexagons whose polygon intersects ``bbox``.

    Parameters
    ----------
    verts : ndarray, shape (n, V, 2)
        Hexagon vertices as (lng, lat) degrees (short rings padded with their last vertex).
    boxes : ndarray, shape (n, 4)
        Each hexagon's own ``(west, south, east, north)``.
    bbox : tuple or None
        The query box; None keeps every row.

    Notes
    -----
    A hexagon whose box does not overlap the query box cannot intersect it; one whose box lies
    inside it does. Only the rest (along the edges of the query box) get the exact polygon
    test, so the cost is about the perimeter of the box, not its area.
    """
    n = boxes.shape[0]
    if bbox is None:
        return np.arange(n, dtype=np.int64)
    w, s, e, nn = bbox
    overlap = (boxes[:, 0] <= e) & (boxes[:, 2] >= w) & (boxes[:, 1] <= nn) & (boxes[:, 3] >= s)
    inside = (boxes[:, 0] >= w) & (boxes[:, 2] <= e) & (boxes[:, 1] >= s) & (boxes[:, 3] <= nn)
    edge = np.flatnonzero(overlap & ~inside)
    keep = inside.copy()
    if edge.size:
        polys = shapely.polygons(verts[edge])
        keep[edge] = shapely.intersects(polys, shapely.box(w, s, e, nn))
    return np.flatnonzero(keep).astype(np.int64)


def _feature(snap: Snapshot, row: int, verts: F64, nverts: Any, info: WindowInfo) -> dict[str, Any]:
    ring = verts[row, : int(nverts[row])].tolist()
    ring.append(ring[0])
    cell = h3.int_to_str(int(snap.cells[row]))
    band = snap.bands[int(snap.band[row])]
    window = window_json(info)
    return {
        "type": "Feature",
        "id": cell,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "cell": cell,
            "res": snap.res,
            "people": float(snap.people[row]),
            "density_km2": float(snap.density_km2[row]),
            "band": band.name,
            "label_en": band.label_en,
            "label_zh": band.label_zh,
            "window_start": window["start"],
            "window_end": window["end"],
        },
    }


def items_page(reader: Reader, query: ItemsQuery) -> ItemsPage:
    """Return one page of the published cells a query names (may read the store)."""
    reader.check_res(query.res)
    info = reader.window(when_to_ref(reader, query.when))
    snap = reader.snapshots(info)[query.res]
    verts, nverts, boxes = _OUTLINES.get(snap, reader.public)
    rows = rows_in_bbox(verts, boxes, query.bbox)
    page = rows[query.offset : query.offset + query.limit]
    feats = [_feature(snap, int(r), verts, nverts, info) for r in page.tolist()]
    return ItemsPage(info, query.res, int(rows.size), feats)


def item_feature(reader: Reader, coll: Collection, cell: str, when: When) -> tuple[WindowInfo, Any]:
    """Return one published cell as a feature; ``NotFound`` when it is not published."""
    if not h3.is_valid_cell(cell):
        raise NotFound(f"no feature {cell!r}: feature ids are H3 cells (e.g. 8a309a...)")
    res = h3.get_resolution(cell)
    if (coll.res is not None and res != coll.res) or not (
        reader.settings.min_res <= res <= reader.settings.base_res
    ):
        raise NotFound(f"no feature {cell!r} in collection {coll.id!r} (resolution {res})")
    info = reader.window(when_to_ref(reader, when))
    snap = reader.snapshots(info)[res]
    row = int(snap.lookup(np.array([h3.str_to_int(cell)], dtype=np.uint64))[0])
    if row < 0:
        raise NotFound(f"cell {cell} is not published in this answer (not enough data)")
    verts, nverts, _ = _OUTLINES.get(snap, reader.public)
    return info, _feature(snap, row, verts, nverts, info)


# -- HTTP ---------------------------------------------------------------------------------------

BBoxText = Annotated[
    str | None,
    Query(
        description=(
            "west,south,east,north in WGS-84 degrees (CRS84); a 6-number 3D box is accepted and "
            "its heights ignored. Keeps hexagons that intersect the box."
        ),
        max_length=300,
        examples=["121.45,31.22,121.50,31.25"],
    ),
]
BBoxCrs = Annotated[
    str | None,
    Query(
        alias="bbox-crs",
        description="Only CRS84 (http://www.opengis.net/def/crs/OGC/1.3/CRS84)",
        max_length=200,
    ),
]
Limit = Annotated[int, Query(description=f"Features per page (1-{LIMIT_MAX})", ge=1, le=LIMIT_MAX)]
Offset = Annotated[int, Query(description="Features to skip (paging)", ge=0, le=10**9)]
ItemsRes = Annotated[
    int | None,
    Query(
        description="H3 resolution (collection `density` only; default its coarsest)",
        ge=0,
        le=15,
    ),
]
FeatureId = Annotated[str, Path(description="H3 cell index (hex string)", max_length=32)]


def parse_ogc_bbox(text: str | None, crs: str | None) -> tuple[float, float, float, float] | None:
    """Return the query box (CRS84), dropping heights of a 3D box; ``BadInput`` otherwise."""
    if crs is not None and crs.strip() not in (
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84h",
    ):
        raise BadInput(f"bbox-crs {crs!r} is not supported: use CRS84 (longitude, latitude)")
    if text is None or not text.strip():
        return None
    parts = text.split(",")
    if len(parts) == 6:
        parts = [parts[0], parts[1], parts[3], parts[4]]
    elif len(parts) != 4:
        raise BadInput("bbox must be 4 numbers (west,south,east,north) or 6 with heights")
    return parse_bbox(",".join(parts))


def _page_url(request: Request, pinned: dict[str, str], offset: int, limit: int) -> str:
    params = {
        k: v
        for k, v in request.query_params.items()
        if k not in ("offset", "limit", "datetime", "release")
    }
    params.update(pinned)
    params.update(offset=str(offset), limit=str(limit))
    return f"{root_url(request)}{request.url.path}?{urlencode(params)}"


def _items_json(request: Request, coll: Collection, q: ItemsQuery, page: ItemsPage) -> Any:
    root = root_url(request)
    window = window_json(page.info)
    pinned = time_params(window["kind"], window["start"], window["end"])
    links = [
        link(str(request.url), "self", GEOJSON, "this page"),
        link(f"{root}/ogc/collections/{coll.id}", "collection", JSON, coll.title()),
    ]
    returned = len(page.features)
    if q.offset + returned < page.matched:
        url = _page_url(request, pinned, q.offset + q.limit, q.limit)
        links.append(link(url, "next", GEOJSON, "next page"))
    if q.offset > 0:
        url = _page_url(request, pinned, max(0, q.offset - q.limit), q.limit)
        links.append(link(url, "prev", GEOJSON, "previous page"))
    return {
        "type": "FeatureCollection",
        # When the numbers were made (a release's tick, a window's end), not the request's
        # time: every public answer stays byte-identical until the next release.
        "timeStamp": window["as_of"],
        "numberMatched": page.matched,
        "numberReturned": returned,
        "res": page.res,
        "window": window,
        "links": links,
        "features": page.features,
    }


@router.get(
    "/collections/{collectionId}/items",
    summary="Features: published hexagons (GeoJSON, paged)",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}, "description": "A page of features"}, **_ERRORS},
)
async def items(
    request: Request,
    collectionId: CollectionId,  # noqa: N803 - the OGC API's parameter name
    bbox: BBoxText = None,
    bbox_crs: BBoxCrs = None,
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
    limit: Limit = LIMIT_DEFAULT,
    offset: Offset = 0,
    res: ItemsRes = None,
) -> Response:
    """Return a page of the published hexagons of a collection (GeoJSON FeatureCollection).

    ``numberMatched`` counts every hexagon the query selects; ``next`` / ``prev`` links page
    through them, pinned to the release or window this page was read from.
    """
    who = audience(request)
    reader = who.reader
    coll = find_collection(reader, collectionId)
    if coll.res is not None and res is not None and res != coll.res:
        raise BadInput(
            f"collection {coll.id} holds resolution {coll.res} only "
            f"(collection {DENSITY} takes ?res=)"
        )
    chosen = coll.res if coll.res is not None else res
    query = ItemsQuery(
        res=reader.settings.min_res if chosen is None else chosen,
        bbox=parse_ogc_bbox(bbox, bbox_crs),
        when=parse_when(datetime_text, release),
        limit=limit,
        offset=offset,
    )
    if limit > reader.settings.max_cells:
        raise BadInput(f"limit {limit} is above this server's most, {reader.settings.max_cells}")
    page = await run_in_threadpool(items_page, reader, query)
    payload = _items_json(request, coll, query, page)
    final = page.info.closed or page.info.is_release
    return ogc_json(
        request, payload, who, media_type=GEOJSON, immutable=query.when.pinned and final
    )


@router.get(
    "/collections/{collectionId}/items/{featureId}",
    summary="Feature: one published hexagon",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}, "description": "A feature"}, **_ERRORS},
)
async def item(
    request: Request,
    collectionId: CollectionId,  # noqa: N803 - the OGC API's parameter name
    featureId: FeatureId,  # noqa: N803
    datetime_text: DatetimeText = None,
    release: ReleaseText = None,
) -> Response:
    """Return one published hexagon (404 when it is not published in that answer)."""
    who = audience(request)
    coll = find_collection(who.reader, collectionId)
    when = parse_when(datetime_text, release)
    info, feature = await run_in_threadpool(item_feature, who.reader, coll, featureId, when)
    root = root_url(request)
    feature["links"] = [
        link(str(request.url), "self", GEOJSON),
        link(f"{root}/ogc/collections/{coll.id}", "collection", JSON, coll.title()),
    ]
    feature["window"] = window_json(info)
    final = info.closed or info.is_release
    return ogc_json(request, feature, who, media_type=GEOJSON, immutable=when.pinned and final)
