"""Prometheus metrics of one app (its own registry) and the ASGI middleware that records them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heatmap.maintenance import Compactor
from heatmap.store.base import StoreSize
from tiles.cache import TileCache

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class CacheUse:
    """What one in-memory cache holds and its bound."""

    name: str
    entries: int
    nbytes: int | None  # None where only entries are bounded (and counted)
    limit: int
    unit: Literal["bytes", "entries"]


class _UpkeepCollector(Collector):
    """Every cache's size and bound, the store's size and free disk, compaction: at scrape."""

    def __init__(
        self,
        caches: Callable[[], list[CacheUse]],
        store: Callable[[], StoreSize | None],
        compactor: Callable[[], Compactor | None],
    ) -> None:
        self.caches = caches
        self.store = store
        self.compactor = compactor

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        entries = GaugeMetricFamily(
            "heatmap_cache_entries", "Entries held by each in-memory cache", labels=["cache"]
        )
        nbytes = GaugeMetricFamily(
            "heatmap_cache_bytes", "Bytes held by each cache (where counted)", labels=["cache"]
        )
        limit = GaugeMetricFamily(
            "heatmap_cache_limit",
            "Bound of each cache, in its unit (HEATMAP_*_CACHE_* settings)",
            labels=["cache", "unit"],
        )
        try:
            uses = self.caches()
        except Exception:  # noqa: BLE001 - a closed service reports no caches
            uses = []
        for u in uses:
            entries.add_metric([u.name], u.entries)
            if u.nbytes is not None:
                nbytes.add_metric([u.name], u.nbytes)
            limit.add_metric([u.name, u.unit], u.limit)
        yield from (entries, nbytes, limit)
        try:
            size = self.store()
        except Exception:  # noqa: BLE001 - the store's fault shows in /healthz
            size = None
        if size is not None:
            yield GaugeMetricFamily("heatmap_store_bytes", "Store size on disk", value=size.bytes)
            if size.free_bytes is not None:
                yield GaugeMetricFamily(
                    "heatmap_disk_free_bytes", "Free disk beside the store", value=size.free_bytes
                )
        job = self.compactor()
        if job is not None:
            yield CounterMetricFamily("heatmap_compactions", "Compaction runs", value=job.runs)
            yield CounterMetricFamily(
                "heatmap_compaction_failures", "Failed compaction runs", value=job.failures
            )
            if job.last is not None and job.last_at is not None:
                yield GaugeMetricFamily(
                    "heatmap_compaction_last_timestamp_seconds",
                    "When the last compaction ended (epoch s)",
                    value=job.last_at,
                )
                yield GaugeMetricFamily(
                    "heatmap_compaction_last_seconds",
                    "How long the last compaction took",
                    value=job.last.seconds,
                )


class _CacheCollector(Collector):
    """Tile cache counters and size, read from the cache at scrape time."""

    def __init__(self, cache: TileCache, age: Callable[[], float | None]) -> None:
        self.cache = cache
        self.age = age

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self.cache.stats()
        yield CounterMetricFamily("heatmap_tile_cache_hits", "Tile cache hits", value=st["hits"])
        yield CounterMetricFamily(
            "heatmap_tile_cache_misses", "Tile cache misses", value=st["misses"]
        )
        yield GaugeMetricFamily("heatmap_tile_cache_bytes", "Bytes held", value=st["bytes"])
        yield GaugeMetricFamily("heatmap_tile_cache_entries", "Tiles held", value=st["entries"])
        age = self.age()
        if age is not None:
            yield GaugeMetricFamily(
                "heatmap_latest_release_age_seconds",
                "Seconds since the tick of the latest release (release lag plus feed delay)",
                value=age,
            )


class Metrics:
    """The app's Prometheus metrics (a private registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "heatmap_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "heatmap_http_request_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pings_accepted = Counter(
            "heatmap_pings_accepted", "Pings accepted by POST /api/v1/pings", registry=r
        )
        self.pings_rejected = Counter(
            "heatmap_pings_rejected", "Rows rejected by POST /api/v1/pings", registry=r
        )
        self.pings_late = Counter(
            "heatmap_pings_late", "Pings for already closed windows (reported)", registry=r
        )
        self.batches = Counter(
            "heatmap_ingest_batches", "POSTed batches by outcome", ["outcome"], registry=r
        )
        self.snapshot_build = Histogram(
            "heatmap_snapshot_build_seconds",
            "Time to build or load a window's snapshots",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def watch_upkeep(
        self,
        caches: Callable[[], list[CacheUse]],
        store: Callable[[], StoreSize | None],
        compactor: Callable[[], Compactor | None],
    ) -> None:
        """Export every cache's size and bound, the store's size and the compaction job."""
        self.registry.register(_UpkeepCollector(caches, store, compactor))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends

    def watch_cache(self, cache: TileCache, age: Callable[[], float | None]) -> None:
        """Export a tile cache's counters (and the latest window's age) at scrape time."""
        self.registry.register(_CacheCollector(cache, age))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(method, route, str(status)), self.latency.labels(route))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware: requests by route template and status, latency histograms."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time and count one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: ``nosniff`` everywhere, ``frame-ancestors`` on HTML pages."""

    def __init__(self, app: ASGIApp, frame_ancestors: list[str]) -> None:
        self.app = app
        self.csp = ("frame-ancestors " + " ".join(frame_ancestors)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.append((b"x-content-type-options", b"nosniff"))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html") and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", self.csp))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_headers)
