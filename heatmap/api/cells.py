"""JSON routes about cells: density at a point, cells in a bbox, windows, legend, city stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from heatmap.api.dependencies import BBox, Page, Point, WindowParam, answer, audience, services
from heatmap.read import answers
from heatmap.read.shapes import (
    CellCollection,
    DensityAnswer,
    LegendAnswer,
    PrivacyAnswer,
    StatsAnswer,
    WindowsAnswer,
)

router = APIRouter(prefix="/api/v1", tags=["cells"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    404: {"description": "No data yet, or no such window"},
    422: {"description": "Invalid parameter (the reason says which)"},
}


@router.get(
    "/density",
    summary="Density at a point",
    responses={200: {"model": DensityAnswer}, **_ERRORS},
    response_class=Response,
)
async def density(
    request: Request,
    point: Point,
    window: WindowParam,
) -> Response:
    """Return the published people and density of the cell at a point, and the trend.

    Without ``res`` the finest resolution at which the point's cell is published answers.
    A withheld cell answers ``people: null, suppressed: true``.
    """
    who = audience(request)
    return await answer(
        request,
        answers.density_at,
        who.reader,
        point.lat,
        point.lng,
        point.res,
        window,
        ref=window,
        who=who,
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
    window: WindowParam,
) -> Response:
    """Return the published cells of a resolution whose centre lies in a bbox.

    Bounded: a bbox covering more than ``HEATMAP_MAX_CELLS`` cells of that resolution is a 422
    naming the limit.
    """
    who = audience(request)
    return await answer(
        request, answers.cells_geojson, who.reader, box.bbox, box.res, window, ref=window, who=who
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
    reader = services(request).reader
    return await answer(request, answers.windows_json, reader, page.limit, page.before)


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
    policy = services(request).reader.policy
    return await answer(request, answers.legend_json, policy, max_age=3600)


@router.get(
    "/privacy",
    summary="Privacy parameters and budget",
    responses={200: {"model": PrivacyAnswer}, **_ERRORS},
    response_class=Response,
)
async def privacy(
    request: Request,
) -> Response:
    """Return k, the expansion, and with differential privacy the epsilon spent per device per
    release, per window, per ping and per day, the noise a reader sees and the threshold."""
    policy = services(request).reader.policy
    return await answer(request, answers.privacy_json, policy, max_age=3600)


@router.get(
    "/stats",
    summary="City figures of a window",
    responses={200: {"model": StatsAnswer}, **_ERRORS},
    response_class=Response,
)
async def stats(
    request: Request,
    window: WindowParam,
) -> Response:
    """Return people seen and published cells by band, per resolution."""
    who = audience(request)
    return await answer(request, answers.stats_json, who.reader, window, ref=window, who=who)
