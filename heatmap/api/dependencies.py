"""What a request handler receives: the app's services and small typed parameter objects.

Each parameter carries its description into OpenAPI (``Annotated[..., Query(...)]``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from heatmap.api.metrics import Metrics
from heatmap.config import Settings
from heatmap.errors import StoreUnavailable
from heatmap.query import PlaceBook, Reader
from heatmap.service import Heatmap
from heatmap.tiling import TileService
from tiles.cache import TileCache


class Services:
    """Everything the routes share: settings, core facade, reader, tiles, places, metrics.

    The store is opened at construction; :meth:`close` (graceful shutdown) waits for an
    in-flight commit, then closes it; :meth:`open` reopens it if the app is started again.
    ``write_lock`` serialises ingest commits in this process (one writer at a time).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.cache = TileCache(settings.tile_cache_mb << 20)
        self.write_lock = threading.Lock()
        self.started = time.time()
        self.closed = True
        self.open()
        self.metrics.watch_cache(self.cache, self._latest_age)

    def open(self) -> None:
        """Open the store and wire the reader and the tile service on it (if closed)."""
        with self.write_lock:
            if not self.closed:
                return
            hm = Heatmap(self.settings)
            reader = Reader(hm, on_build=self.metrics.snapshot_build.observe)
            reader.catalog.refresh(force=True)
            reader.catalog.start_refresher()
            self._hm, self._reader = hm, reader
            self._tiles = TileService(reader, self.cache)
            self.closed = False

    def close(self) -> None:
        """Wait for an in-flight commit, then release the store (graceful shutdown)."""
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            self._reader.close()
            self._hm.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("the service is shutting down")

    @property
    def hm(self) -> Heatmap:
        """Return the core facade (``StoreUnavailable`` once closed)."""
        self._check_open()
        return self._hm

    @property
    def reader(self) -> Reader:
        """Return the window/snapshot reader (``StoreUnavailable`` once closed)."""
        self._check_open()
        return self._reader

    @property
    def tiles(self) -> TileService:
        """Return the tile service (``StoreUnavailable`` once closed)."""
        self._check_open()
        return self._tiles

    def _latest_age(self) -> float | None:
        if self.closed:
            return None
        latest = self._reader.catalog.cached().latest()
        return None if latest is None else time.time() - latest.window.start

    @cached_property
    def places(self) -> PlaceBook:
        """Return the named places (loaded on first use)."""
        return PlaceBook.load(self.settings)


async def get_services(request: Request) -> Services:
    """Return the app's services."""
    return request.app.state.services  # type: ignore[no-any-return]


Svc = Annotated[Services, Depends(get_services)]
"""Handler parameter giving the app's services."""


def context(request: Request) -> tuple[Services, str | None, str | None]:
    """Return the services, ``If-None-Match`` and ``Accept-Encoding`` of a request.

    Read here rather than declared as parameters: every declared parameter costs FastAPI's
    dependency resolver time on each request, and these are not part of the API's schema.
    """
    h = request.headers
    svc: Services = request.app.state.services
    return svc, h.get("if-none-match"), h.get("accept-encoding")


async def call_core(svc: Services, when: str | None, fn: Any, *args: Any) -> Any:
    """Run a core query inline when it needs no store access or build, else in a thread."""
    if svc.reader.warm(when):
        return fn(*args)
    return await run_in_threadpool(fn, *args)


WindowParam = Annotated[
    str | None,
    Query(
        description=(
            "A time inside the wanted window: ISO-8601 (UTC when no offset, e.g. "
            "2026-11-28T09:00:00Z), epoch seconds, or `latest`. Default: the latest window."
        ),
        max_length=64,
        examples=["2026-11-28T09:00:00Z"],
    ),
]
"""``?window=`` of every read endpoint."""

_RES_DOC = "H3 resolution, within [HEATMAP_MIN_RES, HEATMAP_BASE_RES]"
ResParam = Annotated[int | None, Query(description=_RES_DOC, ge=0, le=15)]
"""Optional ``?res=``."""


Lat = Annotated[float, Query(description="Latitude, WGS-84 degrees", ge=-90, le=90)]
Lng = Annotated[float, Query(description="Longitude, WGS-84 degrees", ge=-180, le=180)]
BBoxText = Annotated[
    str,
    Query(
        description="west,south,east,north in WGS-84 degrees",
        max_length=200,
        examples=["121.45,31.22,121.50,31.25"],
    ),
]
Res = Annotated[int, Query(description=_RES_DOC, ge=0, le=15)]
Limit = Annotated[int, Query(description="How many windows (newest first)", ge=1, le=1000)]
Before = Annotated[
    str | None,
    Query(
        description="Only windows starting before this time (ISO-8601 or epoch s); "
        "pass the previous page's `next_before`",
        max_length=64,
    ),
]
BatchId = Annotated[
    str | None,
    Query(
        description="Idempotency key: a batch id seen before is not applied twice "
        "(also accepted as the Idempotency-Key header)",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
    ),
]
Crs = Annotated[
    Literal["wgs84", "gcj02", "bd09"], Query(description="Coordinate system of lat/lng")
]
Strict = Annotated[bool, Query(description="Any bad row fails the whole batch (nothing written)")]

# The parameter objects are built by ``async`` factories: FastAPI runs a plain class or ``def``
# dependency in a worker thread, which would cost a thread hop per request.


@dataclass(frozen=True)
class PointParams:
    """A WGS-84 point and an optional resolution (``/api/v1/density``)."""

    lat: float
    lng: float
    res: int | None = None


async def point_params(lat: Lat, lng: Lng, res: ResParam = None) -> PointParams:
    """Return the point of a request."""
    return PointParams(lat, lng, res)


@dataclass(frozen=True)
class BBoxParams:
    """A bbox and a resolution (``/api/v1/cells``)."""

    bbox: str
    res: int


async def bbox_params(bbox: BBoxText, res: Res) -> BBoxParams:
    """Return the bbox and resolution of a request."""
    return BBoxParams(bbox, res)


@dataclass(frozen=True)
class PageParams:
    """Paging of ``/api/v1/windows``: newest first."""

    limit: int = 100
    before: str | None = None


async def page_params(limit: Limit = 100, before: Before = None) -> PageParams:
    """Return the page a request asks for."""
    return PageParams(limit, before)


@dataclass(frozen=True)
class IngestParams:
    """Options of ``POST /api/v1/pings``."""

    batch_id: str | None = None
    crs: Literal["wgs84", "gcj02", "bd09"] = "wgs84"
    strict: bool = False


async def ingest_params(
    batch_id: BatchId = None, crs: Crs = "wgs84", strict: Strict = False
) -> IngestParams:
    """Return the ingest options of a request."""
    return IngestParams(batch_id, crs, strict)


Point = Annotated[PointParams, Depends(point_params)]
BBox = Annotated[BBoxParams, Depends(bbox_params)]
Page = Annotated[PageParams, Depends(page_params)]
Ingest = Annotated[IngestParams, Depends(ingest_params)]
