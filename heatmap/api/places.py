"""JSON routes about named places: ranking, and one place's now / usual / forecast."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.responses import Response

from heatmap.api.dependencies import WindowParam, answer, audience, services
from heatmap.read.places import place_detail, places_ranking
from heatmap.read.shapes import PlaceDetail, PlacesAnswer

router = APIRouter(prefix="/api/v1", tags=["places"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified (If-None-Match)"},
    404: {"description": "No data yet, no such window, or no such place"},
    422: {"description": "Invalid parameter"},
}


@router.get(
    "/places",
    summary="Places ranked by crowding",
    responses={200: {"model": PlacesAnswer}, **_ERRORS},
    response_class=Response,
)
async def places(
    request: Request,
    window: WindowParam,
) -> Response:
    """Return the named places, busiest first, with people, band and trend."""
    who, book = audience(request), services(request).places
    return await answer(
        request, places_ranking, who.reader, book, window, ref=window, history=True, who=who
    )


@router.get(
    "/places/{place_id}",
    summary="One place: now, trend, usual, forecast",
    responses={200: {"model": PlaceDetail}, **_ERRORS},
    response_class=Response,
)
async def place(
    request: Request,
    place_id: Annotated[
        str, PathParam(description="Place id (e.g. the-bund) or name", max_length=100)
    ],
    window: WindowParam,
) -> Response:
    """Return a place now, its trend, its usual level for this hour of the week, a forecast
    for the next two hours and the best time to go today."""
    who, book = audience(request), services(request).places
    return await answer(
        request, place_detail, who.reader, book, place_id, window, ref=window, history=True, who=who
    )
