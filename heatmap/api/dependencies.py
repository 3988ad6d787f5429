"""What a request handler receives: the app's services and small typed parameter objects.

Each parameter carries its description into OpenAPI (``Annotated[..., Query(...)]``).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap import publish
from heatmap.alerts import Alerting
from heatmap.api.caching import json_response
from heatmap.api.metrics import CacheUse, Metrics
from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound, StoreUnavailable, Unauthorized
from heatmap.maintenance import Compactor, MemoryTrimmer
from heatmap.read import LATEST, Reader, Ref
from heatmap.read.answers import parse_bbox
from heatmap.read.places import PlaceBook
from heatmap.service import Heatmap
from heatmap.store.base import StoreSize
from heatmap.tiling import TileService
from tiles.cache import TileCache
from tiles.fill import FILL_CACHE
from tiles.index import INDEX_CACHE


@dataclass(frozen=True)
class Audience:
    """What one audience reads: its reader and tile service, and whether answers are private.

    The public (citizens, the widget, anonymous calls) reads rounded people; planners (a bearer
    token) read the exact published values, answered ``Cache-Control: private``.
    """

    reader: Reader
    tiles: TileService
    private: bool


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
        # The renderers' process-wide caches take this service's bounds (the last one made).
        INDEX_CACHE.max_bytes = settings.index_cache_mb << 20
        FILL_CACHE.size = settings.fill_cache_entries
        self.extra_caches: dict[str, Callable[[], CacheUse]] = {}
        """Caches of the HTTP layer (the tile fast path...), reported with :meth:`cache_uses`."""
        self.write_lock = threading.Lock()
        self.started = time.time()
        self.closed = True
        self.compactor: Compactor | None = None
        self.trimmer = MemoryTrimmer(settings.memory_trim_s)
        self._alerting: Alerting | None = None
        self.open()
        self.metrics.watch_cache(self.cache, self._latest_age)
        self.metrics.watch_upkeep(self.cache_uses, self.store_size, lambda: self.compactor)

    def open(self) -> None:
        """Open the store and wire the reader and the tile service on it (if closed)."""
        with self.write_lock:
            if not self.closed:
                return
            hm = Heatmap(self.settings)
            exact = Reader.of(hm, on_build=self.metrics.snapshot_build.observe)
            exact.catalog.refresh(force=True)
            exact.catalog.start_refresher()
            public = exact.as_public()
            self._hm, self._reader = hm, public
            self._planner = Audience(exact, TileService(exact, self.cache, private=True), True)
            self._public = Audience(public, TileService(public, self.cache), private=False)
            self._tiles = self._public.tiles
            self.compactor = Compactor(hm.store, self.settings, lambda _: exact.invalidate())
            self.compactor.start()
            self.trimmer.start()
            # Crowd warnings: their threads are started by the app's lifespan (start_alerting).
            self._alerting = Alerting(hm.store, exact, public, self.settings, lambda: self.places)
            self.closed = False

    def close(self) -> None:
        """Wait for an in-flight commit, then release the store (graceful shutdown)."""
        self.trimmer.stop()
        if self.compactor is not None:
            self.compactor.stop()  # first: it writes outside the ingest lock
        if self._alerting is not None:
            self._alerting.stop()  # so does the alert engine
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
    def alerting(self) -> Alerting:
        """Return the crowd warnings: watches, alerts, events (``StoreUnavailable`` once closed)."""
        self._check_open()
        assert self._alerting is not None
        return self._alerting

    @property
    def reader(self) -> Reader:
        """Return the public audience's reader (``StoreUnavailable`` once closed)."""
        self._check_open()
        return self._reader

    def audience(self, authorization: str | None) -> Audience:
        """Return who is asking: the public (no ``Authorization``) or a planner (a token of
        ``HEATMAP_PLANNER_TOKENS``); a wrong or unknown credential is ``Unauthorized``."""
        self._check_open()
        if authorization is None:
            return self._public
        scheme, _, given = authorization.partition(" ")
        token = given.strip().encode("utf-8", "replace")
        ok = False
        for planner in self.settings.planner_tokens:  # compare with every one, constant time
            ok |= hmac.compare_digest(token, planner.encode())
        if scheme.lower() != "bearer" or not ok:
            raise Unauthorized("wrong planner token (omit Authorization for the public view)")
        return self._planner

    @property
    def tiles(self) -> TileService:
        """Return the tile service (``StoreUnavailable`` once closed)."""
        self._check_open()
        return self._tiles

    def _latest_age(self) -> float | None:
        if self.closed:
            return None
        latest = self._reader.catalog.cached().releases.latest()
        return None if latest is None else time.time() - latest.window.end

    @cached_property
    def places(self) -> PlaceBook:
        """Return the named places (loaded on first use)."""
        book = PlaceBook.load(self.settings)
        book.HISTORY_MEMO = self.settings.place_history_entries
        return book

    def store_size(self) -> StoreSize | None:
        """Return the store's size and free disk (None once closed)."""
        return None if self.closed else self._hm.store.size()

    def cache_uses(self) -> list[CacheUse]:
        """Return every read-side cache's size and bound (each one is bounded)."""
        s = self.settings
        memo_sets, memo_bytes = self._planner.reader.memo_stats()
        tiles = self.cache.stats()
        out = [
            CacheUse("tiles", tiles["entries"], tiles["bytes"], tiles["max_bytes"], "bytes"),
            CacheUse(
                "tile_indexes",
                len(INDEX_CACHE),
                int(getattr(INDEX_CACHE, "_bytes", 0)),
                INDEX_CACHE.max_bytes,
                "bytes",
            ),
            CacheUse(
                "fills", len(getattr(FILL_CACHE, "_items", ())), None, FILL_CACHE.size, "entries"
            ),
            CacheUse("snapshots", memo_sets, memo_bytes, s.snapshot_cache_entries, "entries"),
        ]
        if "places" in self.__dict__:  # loaded
            book = self.places
            n = len(getattr(book, "_history", ()))
            nbytes = n * 8 * len(book.places)
            out.append(CacheUse("place_history", n, nbytes, book.HISTORY_MEMO, "entries"))
        areas = getattr(publish, "_AREAS", None)  # cell areas already computed (publish)
        if areas is not None:
            n = len(getattr(areas, "_cells", ()))
            out.append(CacheUse("cell_areas", n, 16 * n, int(areas.limit), "entries"))
        out += [use() for use in self.extra_caches.values()]
        return out


async def get_services(request: Request) -> Services:
    """Return the app's services."""
    return request.app.state.services  # type: ignore[no-any-return]


Svc = Annotated[Services, Depends(get_services)]
"""Handler parameter giving the app's services."""


def check_bearer(expected: str | None, authorization: str | None, what: str) -> None:
    """Allow a request only with ``Authorization: Bearer <expected>``.

    ``NotFound`` when no token is configured (the route is off), ``Unauthorized`` when the
    header is missing or wrong (compared in constant time).
    """
    if not expected:
        raise NotFound(f"{what} is not enabled on this server")
    scheme, _, given = (authorization or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized(f"{what} needs the operations bearer token")


def services(request: Request) -> Services:
    """Return the app's services (without a dependency: no resolver cost)."""
    return request.app.state.services  # type: ignore[no-any-return]


def context(request: Request) -> tuple[Services, str | None, str | None]:
    """Return the services, ``If-None-Match`` and ``Accept-Encoding`` of a request.

    Read here rather than declared as parameters: every declared parameter costs FastAPI's
    dependency resolver time on each request, and these are not part of the API's schema.
    """
    h = request.headers
    svc: Services = request.app.state.services
    return svc, h.get("if-none-match"), h.get("accept-encoding")


def audience(request: Request) -> Audience:
    """Return the audience of a request (see :meth:`Services.audience`)."""
    return services(request).audience(request.headers.get("authorization"))


async def call_core(reader: Reader, ref: Ref | None, fn: Any, *args: Any) -> Any:
    """Run a core query inline when it needs no store access or build, else in a thread.

    ``ref`` is the window the query reads (None: it reads no snapshot, only the window list).
    """
    if reader.warm(LATEST if ref is None else ref):
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def answer(
    request: Request,
    fn: Any,
    *args: Any,
    ref: Ref | None = None,
    max_age: int | None = None,
    history: bool = False,
    who: Audience | None = None,
) -> Response:
    """Run a read-side function and answer its JSON with ETag, ``304``, gzip, Cache-Control.

    The common steps of every JSON route: headers of the request, the core call (inline when
    warm, else in a thread), and the answer, ``immutable`` when the request named a closed
    window or a release (its answer can never change). ``history`` marks answers that
    read more than the named window (places: usual levels, forecast): always in a thread, and
    never ``immutable``. ``who`` is the audience the answer was built for (default the
    public); a planner's answer is ``private``.
    """
    svc, if_none_match, accept_encoding = context(request)
    who = who or svc.audience(None)
    if history:
        payload = await run_in_threadpool(fn, *args)
    else:
        payload = await call_core(who.reader, ref, fn, *args)
    window = payload.get("window") if isinstance(payload, dict) else None
    # A closed window and a release never change: named in the URL, their answer is final.
    final = isinstance(window, dict) and (window["complete"] or window["kind"] == "release")
    return json_response(
        payload,
        if_none_match=if_none_match,
        accept_encoding=accept_encoding,
        immutable=ref is not None and ref.pinned and final and not history,
        max_age=max_age,
        private=who.private,
    )


WindowText = Annotated[
    str | None,
    Query(
        description=(
            "A time inside the wanted closed window: ISO-8601 (UTC when no offset, e.g. "
            "2026-11-28T09:00:00Z), epoch seconds, or `latest`. Default: the latest release."
        ),
        max_length=64,
        examples=["2026-11-28T09:00:00Z"],
    ),
]
"""``?window=`` of every read endpoint, as written."""


ReleaseText = Annotated[
    str | None,
    Query(
        description=(
            "The tick of a kept release (ISO-8601 or epoch seconds; releases are made every "
            "HEATMAP_RELEASE_S and kept HEATMAP_RELEASE_KEEP_S). Default: the latest release."
        ),
        max_length=64,
        examples=["2026-11-28T09:00:00Z"],
    ),
]
"""``?release=`` of every read endpoint, as written."""


async def window_ref(window: WindowText = None, release: ReleaseText = None) -> Ref:
    """Return what a request names: the latest release, a closed window or a kept release.

    ``BadInput`` (a 422) when a value is not a time, or both are given.
    """
    if window is not None and release is not None:
        raise BadInput("use ?window= (a closed window) or ?release= (a release), not both")
    return Ref.parse(window) if release is None else Ref.parse_release(release)


WindowParam = Annotated[Ref, Depends(window_ref)]
"""``?window=`` parsed into a :class:`Ref`."""

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

    bbox: tuple[float, float, float, float]
    res: int


async def bbox_params(bbox: BBoxText, res: Res) -> BBoxParams:
    """Return the bbox (parsed: ``BadInput`` names what is wrong) and resolution of a request."""
    return BBoxParams(parse_bbox(bbox), res)


@dataclass(frozen=True)
class PageParams:
    """Paging of ``/api/v1/windows``: newest first."""

    limit: int = 100
    before: Ref = LATEST


async def page_params(limit: Limit = 100, before: Before = None) -> PageParams:
    """Return the page a request asks for."""
    return PageParams(limit, Ref.parse(before))


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
