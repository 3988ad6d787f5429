"""Domain errors mapped once to HTTP statuses, answered as JSON ``{"detail": reason}``.

Core code raises :mod:`heatmap.errors` and :mod:`tiles.errors`; only this module decides the
status. Anything unexpected becomes a 500 with a generic reason (logged, never echoed).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from heatmap.errors import (
    BadInput,
    HeatmapError,
    NotFound,
    StoreUnavailable,
    TooLarge,
    Unauthorized,
)
from tiles.errors import TileError, TileOutOfRange

log = logging.getLogger("heatmap.api")


class UnsupportedMediaType(HeatmapError):
    """The request body has a content type the endpoint does not read."""

    status = 415


class RequestTimeout(HeatmapError):
    """The request body did not arrive within ``HEATMAP_REQUEST_TIMEOUT_S`` (a slow client)."""

    status = 408


class IngestDisabled(NotFound):
    """``POST /api/v1/pings`` without ``HEATMAP_INGEST_TOKEN``: the endpoint does not exist."""


STATUS: dict[type[Exception], int] = {
    BadInput: 422,
    NotFound: 404,
    TooLarge: 413,
    Unauthorized: 401,
    UnsupportedMediaType: 415,
    RequestTimeout: 408,
    StoreUnavailable: 503,
    TileOutOfRange: 404,
    TileError: 422,
    HeatmapError: 500,
}
"""Status of each error class; the most specific class in an error's MRO wins."""


def status_of(exc: Exception) -> int:
    """Return the HTTP status of a domain error (500 for anything unknown)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Return the JSON error body every failure uses."""
    h = {"Cache-Control": "no-store", **(headers or {})}
    return JSONResponse({"detail": detail}, status_code=status, headers=h)


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="heatmap"'} if status == 401 else None
    if status in (408, 413):  # the rest of the body may still be coming: stop reading it
        headers = {"Connection": "close"}
    if status >= 500:
        log.error("request failed: %s %s: %s", request.method, request.url.path, exc)
    return error_response(status, str(exc) or type(exc).__name__, headers)


def validation_detail(exc: RequestValidationError) -> str:
    """Return one line naming each invalid parameter and why."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, validation_detail(exc))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-body (an aborted upload): not a server error, nothing to log
    # but one line; 499 (nginx's "client closed request") is what the metrics count.
    log.info("client closed the request: %s %s", request.method, request.url.path)
    return error_response(499, "client closed the request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error")


def add_exception_handlers(app: FastAPI) -> None:
    """Register the JSON handlers: domain errors, tile errors, validation, HTTP, a client gone
    mid-request, the rest."""
    app.add_exception_handler(HeatmapError, _domain)
    app.add_exception_handler(TileError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _disconnected)
    app.add_exception_handler(Exception, _unexpected)
