"""What a request handler receives: the app's services and small typed parameter objects.

Each parameter carries its description into OpenAPI (``Annotated[..., Query(...)]``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from heatmap.api.metrics import Metrics
from heatmap.config import Settings
from heatmap.query import PlaceBook, Reader
from heatmap.service import Heatmap
from heatmap.tiling import TileService

T = TypeVar("T")


@dataclass
class Services:
    """Everything the routes share: settings, core facade, reader, tiles, places, metrics.

    ``write_lock`` serialises ingest commits in this process (one writer at a time).
    """

    settings: Settings
    hm: Heatmap
    reader: Reader
    tiles: TileService
    metrics: Metrics
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)

    @cached_property
    def places(self) -> PlaceBook:
        """Return the named places (loaded on first use)."""
        return PlaceBook.load(self.settings)

    def close(self) -> None:
        """Wait for an in-flight commit, then release the store (graceful shutdown)."""
        with self.write_lock:
            self.reader.close()
            self.hm.close()


def get_services(request: Request) -> Services:
    """Return the app's services."""
    return request.app.state.services  # type: ignore[no-any-return]


Svc = Annotated[Services, Depends(get_services)]
"""Handler parameter giving the app's services."""


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


@dataclass(frozen=True)
class PointParams:
    """A WGS-84 point and an optional resolution (``/api/v1/density``)."""

    lat: Annotated[float, Query(description="Latitude, WGS-84 degrees", ge=-90, le=90)]
    lng: Annotated[float, Query(description="Longitude, WGS-84 degrees", ge=-180, le=180)]
    res: ResParam = None


@dataclass(frozen=True)
class BBoxParams:
    """A bbox and a resolution (``/api/v1/cells``)."""

    bbox: Annotated[
        str,
        Query(
            description="west,south,east,north in WGS-84 degrees",
            max_length=200,
            examples=["121.45,31.22,121.50,31.25"],
        ),
    ]
    res: Annotated[int, Query(description=_RES_DOC, ge=0, le=15)]


@dataclass(frozen=True)
class PageParams:
    """Paging of ``/api/v1/windows``: newest first."""

    limit: Annotated[int, Query(description="How many windows (newest first)", ge=1, le=1000)] = 100
    before: Annotated[
        str | None,
        Query(
            description="Only windows starting before this time (ISO-8601 or epoch s); "
            "pass the previous page's `next_before`",
            max_length=64,
        ),
    ] = None


@dataclass(frozen=True)
class IngestParams:
    """Options of ``POST /api/v1/pings``."""

    batch_id: Annotated[
        str | None,
        Query(
            description="Idempotency key: a batch id seen before is not applied twice "
            "(also accepted as the Idempotency-Key header)",
            min_length=1,
            max_length=128,
            pattern=r"^[\x21-\x7e]+$",
        ),
    ] = None
    crs: Annotated[
        Literal["wgs84", "gcj02", "bd09"], Query(description="Coordinate system of lat/lng")
    ] = "wgs84"
    strict: Annotated[
        bool, Query(description="Any bad row fails the whole batch (nothing written)")
    ] = False
