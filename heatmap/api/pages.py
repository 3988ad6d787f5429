"""The pages hook: ``GET /`` and ``GET /widget`` come from :mod:`heatmap.web` when it exists.

The web package plugs in with any one of (checked in this order):

- ``heatmap.web.include(app, settings)``: it adds its routes / static mounts itself;
- ``heatmap.web.create_router(settings) -> APIRouter``;
- ``heatmap.web.router`` (an ``APIRouter``).

Until then a small placeholder page answers both paths.
"""

from __future__ import annotations

import importlib
from html import escape

from fastapi import APIRouter, FastAPI
from starlette.responses import HTMLResponse

from heatmap.config import Settings

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto">
<h1>{title}</h1>
<p>The map pages are not installed in this build. The service is up:</p>
<ul>
<li><a href="/tiles.json">/tiles.json</a> (TileJSON for any map client)</li>
<li><a href="/api/v1/legend">/api/v1/legend</a>, <a href="/api/v1/places">/api/v1/places</a>,
<a href="/api/v1/stats">/api/v1/stats</a></li>
<li><a href="/docs">/docs</a> (OpenAPI)</li>
</ul></body></html>
"""


def placeholder_router() -> APIRouter:
    """Return the router of the placeholder pages (``/`` and ``/widget``)."""
    router = APIRouter(tags=["pages"])

    @router.get("/", response_class=HTMLResponse, summary="Planner map (placeholder)")
    async def index() -> HTMLResponse:
        """Return the placeholder of the planner map."""
        return HTMLResponse(
            _PLACEHOLDER.format(title=escape("Shanghai crowd density 上海人流密度"))
        )

    @router.get("/widget", response_class=HTMLResponse, summary="Citizen widget (placeholder)")
    async def widget() -> HTMLResponse:
        """Return the placeholder of the citizen widget."""
        return HTMLResponse(_PLACEHOLDER.format(title=escape("Crowding 拥挤程度")))

    return router


def include_pages(app: FastAPI, settings: Settings) -> bool:
    """Add the pages of :mod:`heatmap.web` if it is installed, else the placeholder.

    Returns True when the real pages were added. Errors inside ``heatmap.web`` propagate: only a
    missing package falls back to the placeholder.
    """
    try:
        web = importlib.import_module("heatmap.web")
    except ModuleNotFoundError as exc:
        if exc.name not in ("heatmap.web",):
            raise
        app.include_router(placeholder_router())
        return False
    if hasattr(web, "include"):
        web.include(app, settings)
    elif hasattr(web, "create_router"):
        app.include_router(web.create_router(settings))
    elif hasattr(web, "router"):
        app.include_router(web.router)
    else:
        app.include_router(placeholder_router())
        return False
    return True
