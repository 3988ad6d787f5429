"""Overload and slow clients: shed load with ``503 + Retry-After``, bound request receipt.

:class:`LoadShedder` is a pure ASGI middleware (outermost). Above ``HEATMAP_MAX_INFLIGHT``
requests in flight it answers ``503`` with ``Retry-After`` at once, from prebuilt bytes, instead
of letting requests queue until clients time out. ``POST /api/v1/pings`` has its own limit
instead (``HEATMAP_MAX_INFLIGHT_INGEST``: each batch holds up to ``HEATMAP_MAX_BODY_BYTES`` in
memory), so a crowd of readers never starves the data path, nor the reverse. ``/healthz`` and
``/metrics`` are never shed, so operators still see an overloaded node. It also bounds the
time to receive a request body (``HEATMAP_REQUEST_TIMEOUT_S``): a client trickling its body
gets ``408`` and the connection is closed.

An ASGI app only sees a request once its headers are in, so a client trickling its headers (or
sending endless ones) is the server's concern: :func:`uvicorn_http_protocol` gives ``heatmap
serve`` a uvicorn protocol that closes a connection whose request line and headers take longer
than the same timeout (``408``) or exceed :data:`MAX_HEADER_BYTES` (``431``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heatmap.api.errors import RequestTimeout
from heatmap.config import Settings

EXEMPT = frozenset({"/healthz", "/metrics"})
"""Paths never shed (and not counted): operators must see an overloaded node."""

INGEST_PATH = "/api/v1/pings"
"""The path whose POSTs have their own in-flight limit."""

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})

MAX_HEADER_BYTES = 64 * 1024
"""Bound of a request line plus headers under ``heatmap serve`` (uvicorn): above it, ``431``."""


class LoadShedder:
    """Pure ASGI middleware: ``503 + Retry-After`` above the in-flight limits; body deadline.

    Reads and ingest batches are counted apart, each against its own limit.

    Parameters
    ----------
    app : ASGIApp
        The wrapped application.
    settings : Settings
        ``max_inflight``, ``max_inflight_ingest`` (0 = no limit), ``retry_after_s``,
        ``request_timeout_s`` and ``cors_origins`` (so a browser can read the 503).
    registry : CollectorRegistry, optional
        Where to export ``heatmap_http_inflight`` and ``heatmap_http_shed_total``.

    Notes
    -----
    The counters are plain integers: an ASGI app runs on one event loop, and the check and
    the increment happen without an ``await`` in between.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, registry: CollectorRegistry | None = None
    ) -> None:
        self.app = app
        self.max_inflight = settings.max_inflight
        self.max_ingest = settings.max_inflight_ingest
        self.body_timeout_s = settings.request_timeout_s
        self.inflight = 0
        self.ingest_inflight = 0
        self.shed_total = 0
        origins = settings.cors_origins
        self._any_origin = "*" in origins
        self._origins = frozenset(o.encode("latin-1") for o in origins)
        retry = str(settings.retry_after_s).encode()
        self._answers = {
            kind: self._prebuilt(retry, detail)
            for kind, detail in (
                ("busy", f"overloaded: more than {self.max_inflight} requests in flight"),
                ("ingest", f"overloaded: more than {self.max_ingest} ingest batches in flight"),
            )
        }
        self._shed: Counter | None = None
        if registry is not None:
            self._shed = Counter(
                "heatmap_http_shed",
                "Requests answered 503 + Retry-After by load shedding",
                ["limit"],
                registry=registry,
            )
            Gauge(
                "heatmap_http_inflight", "HTTP requests in flight (shed-able)", registry=registry
            ).set_function(lambda: self.inflight + self.ingest_inflight)

    @staticmethod
    def _prebuilt(retry: bytes, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        body = orjson.dumps({"detail": f"{detail}; retry after {int(retry)} s"})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", retry),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        return headers, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Shed, or run the request with a deadline on its body."""
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == INGEST_PATH:
            # The data path has its own budget: readers never crowd out a provider's batch.
            if self.max_ingest and self.ingest_inflight >= self.max_ingest:
                await self._reject(scope, send, "ingest")
                return
            self.ingest_inflight += 1
            try:
                await self.app(scope, self._with_deadline(receive), send)
            finally:
                self.ingest_inflight -= 1
            return
        if self.max_inflight and self.inflight >= self.max_inflight:
            await self._reject(scope, send, "busy")
            return
        if scope["method"] not in _BODYLESS:  # only a body can be trickled to the app
            receive = self._with_deadline(receive)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    def _with_deadline(self, receive: Receive) -> Receive:
        """Return ``receive`` raising :class:`RequestTimeout` once the body is overdue."""
        timeout = self.body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        done = False

        async def bounded() -> Message:
            nonlocal done
            if done:  # body complete: later calls only listen for a disconnect
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"request body not received within {timeout:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return bounded

    async def _reject(self, scope: Scope, send: Send, kind: str) -> None:
        self.shed_total += 1
        if self._shed is not None:
            self._shed.labels(kind).inc()
        headers, body = self._answers[kind]
        if any(
            k == b"transfer-encoding" or (k == b"content-length" and v != b"0")
            for k, v in scope["headers"]
        ):
            headers = [*headers, (b"connection", b"close")]  # do not wait for an unread body
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and (self._any_origin or origin in self._origins):
            headers = [
                *headers,
                (b"access-control-allow-origin", b"*" if self._any_origin else origin),
                (b"access-control-expose-headers", b"Retry-After"),
                (b"vary", b"Origin"),
            ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _raw_response(status: int, reason: bytes, detail: str) -> bytes:
    body = orjson.dumps({"detail": detail})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def uvicorn_http_protocol(settings: Settings) -> type[asyncio.Protocol] | str:
    """Return uvicorn's HTTP protocol bounded in header time and size (for ``heatmap serve``).

    uvicorn arms a timer only between requests (keep-alive), and its httptools parser accepts
    headers of any size: a client trickling or inflating its headers would hold a connection
    and memory for ever. This protocol answers ``408`` when a request's line and headers are
    not in within ``request_timeout_s`` of its first byte (or of the connection), and ``431``
    beyond :data:`MAX_HEADER_BYTES`, then closes the connection; and it closes a connection
    whose response went out before the request body was in (nobody will read the rest).
    Everything else is uvicorn's. Without httptools, uvicorn's h11 (16 KiB heads) is used.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without httptools: h11 bounds header size
        return "h11"

    timeout = settings.request_timeout_s
    too_slow = _raw_response(
        408, b"Request Timeout", f"request headers not received within {timeout:g} s"
    )
    too_big = _raw_response(
        431,
        b"Request Header Fields Too Large",
        f"request line and headers exceed {MAX_HEADER_BYTES:,} bytes",
    )

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a deadline and a size bound on request heads."""

        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = True

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout, self._head_overdue)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _refuse(self, answer: bytes) -> None:
            self._disarm()
            if not self.transport.is_closing():
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(answer)
                self.transport.close()

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self._in_head and self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # a connection that never sent a byte: just close it
            elif self._in_head:
                self._refuse(too_slow)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._in_head, self._head_bytes = True, 0
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                n = self._head_bytes + len(data)
                if n > MAX_HEADER_BYTES:  # unless the head ends early in this read
                    end = data.find(b"\r\n\r\n")
                    if end < 0 or self._head_bytes + end + 4 > MAX_HEADER_BYTES:
                        self._refuse(too_big)
                        return
                self._head_bytes = n
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0
            self._arm()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # what follows is the next request's

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle  # the latest request: a pipelined one would not be complete yet
            done = cycle is not None and cycle.response_complete
            if done and cycle.more_body and not self.transport.is_closing():
                # Answered before its body was in (413, 503, 408...): nobody will read the
                # rest, and a client trickling it must not hold the connection for ever.
                self.transport.close()

    return BoundedHttpToolsProtocol
