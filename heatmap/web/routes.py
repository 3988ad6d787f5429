"""Routes of the pages: ``GET /`` (planner), ``GET /widget`` (citizen widget), ``/assets/...``,
the API documentation pages (``/docs``, from local assets) and the planners' PMTiles download.

Each page gets a Content-Security-Policy that allows nothing from another origin but the optional
basemap's images, only the page's own inline scripts (by hash), and framing only by
``HEATMAP_FRAME_ANCESTORS``. No page sets a cookie.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from heatmap.config import Settings
from heatmap.errors import Unauthorized
from heatmap.places import Place, city_files, find_place, load_places, search_keys
from heatmap.publish import make_bands
from heatmap.read.reader import Reader
from heatmap.read.ref import Ref
from heatmap.tiling import snapshots_to_pmtiles
from heatmap.web.assets import AssetNotFound
from heatmap.web.i18n import Lang, parse_lang
from heatmap.web.pages import Basemap, PageSpec, asset_store, planner_html, widget_html
from tiles.grid import DATA_MIN_ZOOM, MAX_ZOOM, zoom_to_res

log = logging.getLogger("heatmap.web")

CITY_CENTER: Final = (31.2304, 121.4737)
"""People's Square: the centre of the planner's first view (lat, lng)."""

CITY_ZOOM: Final = 10
"""The planner's first zoom: the whole central city."""

WIDGET_ZOOM: Final = 15
"""The widget's zoom around a place or point (streets visible)."""

CITY_MIN_ZOOM: Final = 8
"""The lowest zoom of the pages' maps: the whole city, never the world."""

SWAGGER: Final = "vendor/swagger-ui-dist"
"""The Swagger UI assets (npm ``swagger-ui-dist``) of ``/docs``."""

ASSET_IMMUTABLE: Final = "public, max-age=31536000, immutable"
"""Cache-Control of an asset fetched by its versioned URL (the content hash is in it)."""

ASSET_SHORT: Final = "public, max-age=300"
"""Cache-Control of an asset fetched without (or with a stale) version."""

PLANNER_POLL_MS: Final = 15_000
WIDGET_POLL_MS: Final = 60_000

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_SOURCE = re.compile(
    r"^('self'|'none'|[a-z][a-z0-9+.-]*:|([a-z][a-z0-9+.-]*://)?[\w.*-]+(:\d+|:\*)?)$", re.I
)


# -- security headers ----------------------------------------------------------------------------


def basemap_origin(url: str) -> str | None:
    """Return the CSP source of a basemap template (``{s}`` subdomains become ``*``).

    >>> basemap_origin("https://{s}.tile.example.org/{z}/{x}/{y}.png")
    'https://*.tile.example.org'
    >>> basemap_origin("")
    """
    if not url:
        return None
    parts = urlsplit(url.replace("{s}", "x-sub"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.replace('x-sub', '*')}"


def frame_ancestors(sources: list[str]) -> str:
    """Return the ``frame-ancestors`` source list; malformed entries are dropped (and logged).

    >>> frame_ancestors(["'self'", "https://app.example.gov.cn", "bad; script-src *"])
    "'self' https://app.example.gov.cn"
    >>> frame_ancestors([])
    "'none'"
    """
    good = []
    for src in sources:
        if _SOURCE.match(src):
            good.append(src)
        else:
            log.warning("ignoring malformed HEATMAP_FRAME_ANCESTORS entry %r", src)
    return " ".join(good) or "'none'"


def content_security_policy(html: str, settings: Settings) -> str:
    """Return the page's CSP: own origin only, inline scripts by hash, framing from settings."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]
    img = ["'self'", "data:", "blob:"]
    origin = basemap_origin(settings.basemap_url)
    if origin:
        img.append(origin)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self' " + " ".join(hashes),
            "style-src 'self'",
            "img-src " + " ".join(img),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors " + frame_ancestors(settings.frame_ancestors),
        ]
    )


def _accepts_gzip(accept_encoding: str | None) -> bool:
    return accept_encoding is not None and "gzip" in accept_encoding.lower()


def page_response(html: str, settings: Settings, accept_encoding: str | None) -> Response:
    """Return an HTML page with its CSP, never cached without revalidation, gzip if accepted."""
    headers = {
        "Content-Security-Policy": content_security_policy(html, settings),
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    body = html.encode()
    if _accepts_gzip(accept_encoding):
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return HTMLResponse(body, headers=headers)


# -- page configuration ------------------------------------------------------------------------


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def api_urls(root: str) -> dict[str, str]:
    """Return the JSON API URLs a page uses (``place`` is a prefix for ``/places/{id}``)."""
    base = f"{root}/api/v1"
    return {
        "windows": f"{base}/windows",
        "legend": f"{base}/legend",
        "stats": f"{base}/stats",
        "places": f"{base}/places",
        "place": f"{base}/places/",
        "density": f"{base}/density",
        "cells": f"{base}/cells",
    }


def _lang_link(request: Request, lang: Lang) -> str:
    params = dict(request.query_params)
    params["lang"] = "zh" if lang == "en" else "en"
    return "?" + urlencode(params)


@cache
def _places() -> tuple[Place, ...]:
    return load_places()


@cache
def search_index() -> list[list[Any]]:
    """Return the places as the pages search them: ``[id, zh, en, lat, lng, keys]``.

    ``keys`` are the folded names, aliases and pinyin (:func:`heatmap.places.search_keys`).
    The pages get it in their configuration, so a search works before any request returns.
    """
    return [
        [p.id, p.name_zh, p.name_en, round(p.lat, 5), round(p.lng, 5), list(search_keys(p))]
        for p in _places()
    ]


class Pages:
    """The page handlers for one ``Settings`` (bands, zooms, time zone, basemap, framing)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.basemap = Basemap(settings.basemap_url, settings.basemap_attribution)
        self.zoom_to_res = [
            zoom_to_res(z, settings.min_res, settings.base_res) for z in range(MAX_ZOOM + 1)
        ]
        self.fill_opacity = round(make_bands(settings.bands_km2)[0].alpha / 255, 3)
        self.max_windows = max(12, min(1000, 86400 // settings.window_s))

    def _spec(
        self, lang: Lang, root: str, center: tuple[float, float], zoom: int, cfg: dict[str, Any]
    ) -> PageSpec:
        return PageSpec(
            lang=lang,
            root=root,
            center=center,
            zoom=zoom,
            min_zoom=max(DATA_MIN_ZOOM, CITY_MIN_ZOOM),
            max_zoom=MAX_ZOOM,
            basemap=self.basemap,
            config={"tz": self.settings.tz, "maxZoom": MAX_ZOOM, **cfg},
        )

    def planner(self, request: Request, lang: Lang) -> str:
        """Return the planner page's HTML."""
        root = _root(request)
        cfg = {
            "tilejson": {f: f"{root}/tiles.json?format={f}" for f in ("png", "mvt")},
            "outline": asset_store().url(root, "city/" + city_files().outline.name),
            "api": api_urls(root),
            "zoomToRes": self.zoom_to_res,
            "fillOpacity": self.fill_opacity,
            "pollMs": PLANNER_POLL_MS,
            "playMs": 1500,
            "maxWindows": self.max_windows,
            "topPlaces": 8,
            "otherLang": _lang_link(request, lang),
            "places": search_index(),
            "exports": {
                "cells": f"{root}/api/v1/export/cells.",
                "pmtiles": f"{root}/api/v1/export/tiles.pmtiles",
                "formats": ["csv", "geojson", "gpkg", "parquet"],
            },
            "resolutions": list(range(self.settings.min_res, self.settings.base_res + 1)),
            "cityMinZoom": CITY_MIN_ZOOM,
        }
        return planner_html(self._spec(lang, root, CITY_CENTER, CITY_ZOOM, cfg))

    def widget(
        self,
        request: Request,
        lang: Lang,
        lat: float | None,
        lng: float | None,
        zoom: int | None,
        place: str | None,
    ) -> str:
        """Return the widget's HTML, centred on a place, a point or the city."""
        root = _root(request)
        found = find_place(_places(), place) if place else None
        initial: dict[str, Any] = {
            "place": None,
            "lat": None,
            "lng": None,
            "zoom": zoom,
            "query": None,
        }
        center, z = CITY_CENTER, zoom or 11
        if found is not None:
            initial["place"] = found.id
            center, z = (found.lat, found.lng), zoom or WIDGET_ZOOM
        elif lat is not None and lng is not None:
            initial.update(lat=lat, lng=lng)
            center, z = (lat, lng), zoom or WIDGET_ZOOM
        if place and found is None:
            initial["query"] = place
        cfg = {
            "tilejson": f"{root}/tiles.json?format=png",
            "api": api_urls(root),
            "pollMs": WIDGET_POLL_MS,
            "suggestions": 6,
            "areas": 8,
            "initial": initial,
            "otherLang": _lang_link(request, lang),
            "places": search_index(),
        }
        return widget_html(self._spec(lang, root, center, z, cfg))


# -- router ------------------------------------------------------------------------------------

LangParam = Annotated[
    str | None, Query(description="Page language: zh (default, zh-CN) or en", max_length=10)
]
LatParam = Annotated[float | None, Query(description="Centre latitude (WGS-84)", ge=-90, le=90)]
LngParam = Annotated[float | None, Query(description="Centre longitude (WGS-84)", ge=-180, le=180)]
ZoomParam = Annotated[int | None, Query(description="Map zoom", ge=DATA_MIN_ZOOM, le=MAX_ZOOM)]
PlaceParam = Annotated[
    str | None, Query(description="Place id or name (e.g. the-bund, 外滩)", max_length=100)
]
AcceptEncoding = Annotated[str | None, Header(include_in_schema=False)]
IfNoneMatch = Annotated[str | None, Header(include_in_schema=False)]


def create_router(settings: Settings) -> APIRouter:
    """Return the router of the pages and their assets for ``settings``."""
    pages = Pages(settings)
    router = APIRouter(tags=["pages"])

    @router.get("/", response_class=HTMLResponse, summary="Planner map")
    def planner(
        request: Request, lang: LangParam = None, accept_encoding: AcceptEncoding = None
    ) -> Response:
        """Return the planner map: density layer, time slider, legend, totals, export."""
        return page_response(pages.planner(request, parse_lang(lang)), settings, accept_encoding)

    @router.get("/widget", response_class=HTMLResponse, summary="Citizen widget")
    def widget(
        request: Request,
        lang: LangParam = None,
        lat: LatParam = None,
        lng: LngParam = None,
        zoom: ZoomParam = None,
        place: PlaceParam = None,
        accept_encoding: AcceptEncoding = None,
    ) -> Response:
        """Return the citizen widget: a place's crowding in words and colour, trend, best time."""
        if (lat is None) != (lng is None):
            raise HTTPException(422, "lat and lng go together: give both or neither")
        html = pages.widget(request, parse_lang(lang), lat, lng, zoom, place)
        return page_response(html, settings, accept_encoding)

    @router.get("/assets/{path:path}", include_in_schema=False)
    def asset(
        path: str,
        v: str | None = None,
        accept_encoding: AcceptEncoding = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        """Return a static asset (Leaflet, plugins, the pages' JS/CSS), gzip when accepted."""
        try:
            a = asset_store().get(path)
        except (AssetNotFound, OSError):
            raise HTTPException(404, f"no asset {path!r}") from None
        packed = a.gzipped is not None and _accepts_gzip(accept_encoding)
        tag = a.etag[:-1] + '-gz"' if packed else a.etag
        versioned = v is not None and v == a.version
        headers = {
            "ETag": tag,
            "Cache-Control": ASSET_IMMUTABLE if versioned else ASSET_SHORT,
            "Vary": "Accept-Encoding",
        }
        if if_none_match and tag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        if packed:
            headers["Content-Encoding"] = "gzip"
        body = a.gzipped if packed and a.gzipped is not None else a.data
        return Response(body, media_type=a.media_type, headers=headers)

    @router.get(
        "/api/v1/export/tiles.pmtiles",
        tags=["export"],
        summary="Export the city's tiles as PMTiles (planners)",
        response_class=Response,
        responses={
            200: {"description": "A PMTiles v3 archive of the filled tiles, zooms min-max"},
            401: {"description": "Exports are for planners: send a planner token"},
            404: {"description": "No such window or release"},
            422: {"description": "Invalid parameter"},
        },
    )
    async def pmtiles(
        request: Request,
        window: Annotated[str | None, Query(description="A closed window (ISO time)")] = None,
        release: Annotated[str | None, Query(description="A kept release (ISO time)")] = None,
        fmt: Annotated[Literal["mvt", "png"], Query(alias="format")] = "mvt",
        min_zoom: Annotated[int, Query(ge=DATA_MIN_ZOOM, le=14)] = CITY_MIN_ZOOM,
        max_zoom: Annotated[int, Query(ge=DATA_MIN_ZOOM, le=14)] = 13,
    ) -> Response:
        """Return the tiles of the whole city for one release (default the latest) or closed
        window as one PMTiles file, the bytes the tile endpoints serve, for planners."""
        if min_zoom > max_zoom:
            raise HTTPException(422, "min_zoom must not exceed max_zoom")
        who = request.app.state.services.audience(request.headers.get("authorization"))
        if not who.private:
            raise Unauthorized("exports are for planners: send a token of HEATMAP_PLANNER_TOKENS")
        ref = Ref.parse_release(release) if release else Ref.parse(window)
        body, name = await run_in_threadpool(pmtiles_file, who.reader, ref, fmt, min_zoom, max_zoom)
        return Response(
            body,
            media_type="application/vnd.pmtiles",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "private, no-store",
            },
        )

    return router


def pmtiles_file(
    reader: Reader, ref: Ref, fmt: str, min_zoom: int, max_zoom: int
) -> tuple[bytes, str]:
    """Return a PMTiles archive of one release or closed window and its file name."""
    info = reader.window(ref)
    stamp = info.window.end if info.is_release else info.window.start
    name = f"heatmap-{fmt}-z{min_zoom}-{max_zoom}-{stamp}.pmtiles"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        snapshots_to_pmtiles(
            reader.policy, info, reader.snapshots(info), path, fmt, min_zoom, max_zoom
        )
        return path.read_bytes(), name


def docs_html(root: str, openapi_url: str, title: str) -> str:
    """Return the Swagger UI page of the API, every asset served by the app (works offline)."""
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title + " - API",
        swagger_js_url=asset_store().url(root, SWAGGER + "/swagger-ui-bundle.js"),
        swagger_css_url=asset_store().url(root, SWAGGER + "/swagger-ui.css"),
        swagger_favicon_url=asset_store().url(root, SWAGGER + "/favicon-32x32.png"),
    )
    return bytes(html.body).decode()


def _replace_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from local assets (FastAPI's default page loads Swagger UI from a CDN,
    so it stays blank offline); ``/redoc``, which needs a CDN too, points there instead."""
    drop = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in drop]
    openapi_url = app.openapi_url or "/openapi.json"

    async def docs(request: Request) -> HTMLResponse:
        root = _root(request)
        return HTMLResponse(docs_html(root, root + openapi_url, app.title))

    async def redoc(request: Request) -> RedirectResponse:
        return RedirectResponse(_root(request) + "/docs")

    app.add_route("/docs", docs, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)


def include(app: FastAPI, settings: Settings) -> None:
    """Add the pages and their assets to the app (the hook ``heatmap.api`` calls)."""
    missing = asset_store().missing()
    if missing:
        log.warning("front-end assets missing (run `make assets`): %s", ", ".join(missing))
    app.include_router(create_router(settings))
    _replace_docs(app)
    search_index()  # pinyin of every name, once at start-up rather than on the first page
