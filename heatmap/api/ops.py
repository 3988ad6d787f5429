"""Operations: ``/healthz`` (store reachable, size, free disk, history) and ``/metrics``."""

from __future__ import annotations

import time

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import heatmap
from heatmap.api.caching import NO_STORE
from heatmap.api.dependencies import Services, Svc, check_bearer
from heatmap.api.schemas import Health
from heatmap.errors import HeatmapError
from heatmap.read.answers import window_json
from heatmap.store.base import LEVEL_NAMES

router = APIRouter(tags=["operations"])


def health(svc: Services) -> tuple[int, Health]:
    """Return the status code and body of ``/healthz``.

    503 when the store is unreachable, and before the disk is full: below
    ``HEATMAP_MIN_FREE_DISK_MB`` free the store refuses writes (ingest answers 503 with the same
    reason) while reads go on, and this says so first.
    """
    try:
        store = svc.hm.store
        store.ping()
        wl = svc.reader.windows()
        size = store.size()
    except HeatmapError as exc:
        return 503, {"status": "unavailable", "store": str(exc), "reason": str(exc)}
    latest = wl.latest()
    release = wl.releases.latest()
    history = wl.closed()
    closed = wl.rows[:, 3].nonzero()[0]
    oldest_window = wl.info(int(closed[0])) if closed.size else None
    counts = {"hour": 0, "day": 0}
    for level in wl.rollups.rows[:, 0].tolist():
        counts[LEVEL_NAMES[int(level)]] += 1
    need = svc.settings.min_free_disk_mb << 20
    body: Health = {
        "status": "ok",
        "store": "ok",
        "version": heatmap.__version__,
        "windows": len(wl.closed()),
        "latest_window": None if latest is None else window_json(latest),
        "latest_window_age_s": (
            None if latest is None else round(time.time() - latest.window.start, 1)
        ),
        "latest_release": None if release is None else window_json(release),
        "latest_release_age_s": (
            None if release is None else round(time.time() - release.window.end, 1)
        ),
        "ingest_enabled": bool(svc.settings.ingest_token),
        "uptime_s": round(time.time() - svc.started, 1),
        "store_bytes": size.bytes,
        "disk_free_bytes": size.free_bytes,
        "min_free_disk_bytes": need,
        "oldest": None if not len(history) else window_json(history.info(0)),
        "oldest_window": None if oldest_window is None else window_json(oldest_window),
        "rollups": counts,
    }
    if size.free_bytes is not None and need and size.free_bytes < need:
        body["status"] = "disk_low"
        body["reason"] = (
            f"disk nearly full: {size.free_bytes >> 20} MiB free beside {size.where}, below "
            f"HEATMAP_MIN_FREE_DISK_MB={svc.settings.min_free_disk_mb}: ingest is refused "
            "(503) until space is freed; reads go on"
        )
        return 503, body
    return 200, body


@router.get(
    "/healthz",
    summary="Health",
    response_class=Response,
    responses={
        200: {"model": Health},
        503: {"description": "Store unreachable, or the disk nearly full (see `reason`)"},
    },
)
async def healthz(svc: Svc) -> Response:
    """Return whether the store is reachable and writable, its size, the free disk, the oldest
    and latest history and the latest release."""
    status, body = await run_in_threadpool(health, svc)
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": NO_STORE},
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"description": "Missing or wrong operations token"},
        404: {"description": "No operations token configured"},
    },
    include_in_schema=False,  # operations, not the public API
)
async def metrics(svc: Svc, request: Request) -> Response:
    """Return the Prometheus text exposition of this process's metrics (operations token).

    Not public: request counts and cache hits tell what others looked at, and ingest counters
    how big each batch was. Without ``HEATMAP_METRICS_TOKEN`` the route does not exist (404).
    """
    check_bearer(svc.settings.metrics_token, request.headers.get("authorization"), "/metrics")
    return Response(
        generate_latest(svc.metrics.registry),
        media_type=CONTENT_TYPE_LATEST,
        headers={"Cache-Control": NO_STORE},
    )
