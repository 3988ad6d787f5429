"""Prometheus metrics of one app (its own registry) and the ASGI middleware that records them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiles.cache import TileCache

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


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
