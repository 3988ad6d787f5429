"""JSON routes about cells: density at a point, cells in a bbox, windows, legend, city stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap import query
from heatmap.api.caching import json_response
from heatmap.api.dependencies import BBox, Page, Point, WindowParam, call_core, context
from heatmap.api.schemas import (
    CellCollection,
    DensityAnswer,
    LegendAnswer,
    StatsAnswer,
    WindowsAnswer,
)

router = APIRouter(prefix="/api/v1", tags=["cells"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    404: {"description": "No data yet, or no such window"},
    422: {"description": "Invalid parameter (the reason says which)"},
}


def _pinned_closed(answer: dict[str, Any], window: str | None) -> bool:
    pinned = window is not None and window.strip() not in ("", "latest")
    return pinned and bool(answer.get("window", {}).get("complete"))


@router.get(
    "/density",
    summary="Density at a point",
    responses={200: {"model": DensityAnswer}, **_ERRORS},
    response_class=Response,
)
async def density(
    request: Request,
    point: Point,
    window: WindowParam = None,
) -> Response:
    """Return the published people and density of the cell at a point, and the trend.

    Without ``res`` the finest resolution at which the point's cell is published answers.
    A withheld cell answers ``people: null, suppressed: true``.
    """
    svc, if_none_match, accept_encoding = context(request)
    answer = await call_core(
        svc, window, query.density_at, svc.reader, point.lat, point.lng, point.res, window
    )
    return json_response(
        answer,
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
        immutable=_pinned_closed(answer, window),
    )


@router.get(
    "/cells",
    summary="Published cells in a bbox (GeoJSON)",
    responses={200: {"model": CellCollection}, **_ERRORS},
    response_class=Response,
)
async def cells(
    request: Request,
    box: BBox,
    window: WindowParam = None,
) -> Response:
    """Return the published cells of a resolution whose centre lies in a bbox.

    Bounded: a bbox covering more than ``HEATMAP_MAX_CELLS`` cells of that resolution is a 422
    naming the limit.
    """
    svc, if_none_match, accept_encoding = context(request)
    answer = await run_in_threadpool(query.cells_geojson, svc.reader, box.bbox, box.res, window)
    return json_response(
        answer,
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
        immutable=_pinned_closed(answer, window),
    )


@router.get(
    "/windows",
    summary="Windows, newest first (paged)",
    responses={200: {"model": WindowsAnswer}, **_ERRORS},
    response_class=Response,
)
async def windows(
    request: Request,
    page: Page,
) -> Response:
    """Return a page of windows (``limit``, newest first; ``before`` for older pages)."""
    svc, if_none_match, accept_encoding = context(request)
    answer = await call_core(svc, None, query.windows_json, svc.reader, page.limit, page.before)
    return json_response(answer, if_none_match=if_none_match, accept_encoding=accept_encoding)


@router.get(
    "/legend",
    summary="Legend: bands, colours, labels",
    responses={200: {"model": LegendAnswer}, **_ERRORS},
    response_class=Response,
)
async def legend(
    request: Request,
) -> Response:
    """Return the bands (colours, zh/en labels, thresholds) and the privacy parameters."""
    svc, if_none_match, accept_encoding = context(request)
    return json_response(
        query.legend_json(svc.settings),
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
        max_age=3600,
    )


@router.get(
    "/stats",
    summary="City figures of a window",
    responses={200: {"model": StatsAnswer}, **_ERRORS},
    response_class=Response,
)
async def stats(
    request: Request,
    window: WindowParam = None,
) -> Response:
    """Return people seen and published cells by band, per resolution."""
    svc, if_none_match, accept_encoding = context(request)
    answer = await call_core(svc, window, query.stats_json, svc.reader, window)
    return json_response(
        answer,
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
        immutable=_pinned_closed(answer, window),
    )
