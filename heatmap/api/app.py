"""``create_app(settings)``: the FastAPI app assembled from one router per concern.

The store is opened here (so a ``TestClient`` without a lifespan works). On shutdown the
lifespan waits for an in-flight commit before closing the store, so no acknowledged batch is
lost and none is half-written (a batch is acknowledged only once durable); a restarted
lifespan reopens it. Cached tiles are answered by :class:`~heatmap.api.fastpath.TileFastPath`
before routing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

import heatmap
from heatmap import web
from heatmap._jit import warmup as warm_up_core_kernels
from heatmap.api import cells, events, export, ingest, ogc, ops, places, style, tiles, watches
from heatmap.api.dependencies import Services
from heatmap.api.errors import add_exception_handlers
from heatmap.api.fastpath import TileFastPath
from heatmap.api.metrics import MetricsMiddleware, SecurityHeadersMiddleware
from heatmap.api.shedding import LoadShedder
from heatmap.config import Settings
from heatmap.places import select_city
from tiles import warmup as warm_up_tile_kernels

DESCRIPTION = """\
People per H3 hexagon per time window for Shanghai, from anonymised pings, with k-anonymity
suppression (and optional differential privacy). Tiles (MVT, PNG) with TileJSON, JSON for
points, bboxes and named places, and live ingest.

Withheld cells are absent from tiles and answer `people: null, suppressed: true` in JSON.
"""


def _setup_logging() -> None:
    """Give the ``heatmap`` logger one stderr handler (JSON lines come from the callers)."""
    logger = logging.getLogger("heatmap")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the service's ASGI app for ``settings`` (default: from the environment).

    Routes: tiles and TileJSON, ``/api/v1`` JSON (density, cells, windows, legend, stats,
    places), ``POST /api/v1/pings``, watches, alerts and the event stream (``/api/v1/events``),
    ``/healthz``, ``/metrics``, and the pages of :mod:`heatmap.web`.
    """
    settings = settings or Settings()  # type: ignore[call-arg]
    _setup_logging()
    select_city(settings.places_file, settings.outline_file)  # the city's own files, if set
    warm_up_tile_kernels()  # compile or load the renderers' kernels now, not on a tile request
    warm_up_core_kernels(now=True)  # and the ingest's: the first POST pays nothing extra
    svc = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(svc.open)
        events.start(app)  # crowd warnings: alert engine, event feed, webhook sender
        yield
        await events.stop(app)
        await run_in_threadpool(svc.close)

    app = FastAPI(
        title="Crowd-density heatmap",
        version=heatmap.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Prometheus (/metrics) is the telemetry here; FastAPI's native OpenTelemetry hook would
        # otherwise cost tens of microseconds per request checking for providers.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = svc
    add_exception_handlers(app)
    app.include_router(tiles.router)
    app.include_router(cells.router)
    app.include_router(places.router)
    app.include_router(export.router)
    app.include_router(ingest.router)
    app.include_router(ops.router)
    app.include_router(watches.router)  # watches and alerts
    events.include(app, settings)  # GET /api/v1/events (Server-Sent Events)
    ogc.include(app)  # OGC API - Features and Tiles under /ogc, for GIS clients
    app.include_router(style.router)  # /style.json: MapLibre style of the vector tiles
    web.include(app, settings)
    # Added innermost first: metrics wrap the app, CORS answers preflights.
    app.add_middleware(SecurityHeadersMiddleware, frame_ancestors=settings.frame_ancestors)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match"],
        expose_headers=["ETag", "X-Heatmap-Window", "X-Heatmap-Complete"],
        max_age=600,
    )
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    app.add_middleware(TileFastPath, services=svc)  # cached tiles skip the rest
    app.add_middleware(LoadShedder, settings=settings, registry=svc.metrics.registry)  # outermost
    app.add_middleware(events.StreamGate)  # outside the shedder: streams have their own cap
    return app


def app_from_env() -> FastAPI:
    """Return ``create_app(Settings())``: a factory for ASGI servers (granian, uvicorn)."""
    return create_app(Settings())  # type: ignore[call-arg]
