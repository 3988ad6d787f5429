"""``GET /api/v1/events``: Server-Sent Events of releases and alerts, resumable, capped.

Each stream opens with a ``ready`` event (its position; no id), then sends ``release`` events
(every new release, for everyone) and ``alert`` events (opened, closed) of the alerts its
audience may see (a planner's bearer token sees all); a ``heartbeat`` event every
``HEATMAP_SSE_HEARTBEAT_S`` of silence; and, on a reconnect with ``Last-Event-ID`` inside the
kept span, every event after that id exactly once, in order (outside it, one ``reset`` event:
reload and carry on). Events come from the process's feed
(:class:`heatmap.alerts.feed.EventFeed`), so streams cost no store read each.

Streams are long-lived: they are capped by ``HEATMAP_SSE_MAX_CLIENTS`` (503 + Retry-After
beyond) rather than by the in-flight limit of other reads, which one open stream would hold
for ever (:class:`StreamGate` routes them past :class:`~heatmap.api.shedding.LoadShedder`).
On shutdown every stream ends, so the server does not wait on them. An app run without its
lifespan (no live feed) answers each stream with the stored events after ``Last-Event-ID`` and
ends it: clients reconnect and still miss nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from heatmap.alerts.feed import EventFeed
from heatmap.api.dependencies import services
from heatmap.api.shedding import LoadShedder
from heatmap.config import Settings
from heatmap.errors import BadInput
from heatmap.model import epoch_to_iso

log = logging.getLogger("heatmap.api")

EVENTS_PATH = "/api/v1/events"
RETRY_MS = 3000
"""What a client waits before reconnecting (the stream's ``retry:``)."""

router = APIRouter(prefix="/api/v1", tags=["alerts"])


class EventHub:
    """The open streams of one app: how many (capped) and one wake-up they all wait on."""

    def __init__(self, settings: Settings) -> None:
        self.max_clients = settings.sse_max_clients
        self.heartbeat_s = settings.sse_heartbeat_s
        self.retry_after_s = settings.retry_after_s
        self.clients = 0
        self.closing = False
        self.feed: EventFeed | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def bind(self, feed: EventFeed) -> None:
        """Serve a feed's events on the running loop (at start-up)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.feed = feed
        self.closing = False
        feed.listeners.append(self.notify)

    @property
    def changed(self) -> asyncio.Event:
        """Return the event set at the next change (new events, or closing)."""
        return self._changed

    def notify(self) -> None:
        """Wake every stream (from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closing = True
        self.notify()


async def _once(feed: EventFeed, private: bool, resume: int | None) -> AsyncIterator[bytes]:
    """A stream without the live feed (an app run without its lifespan): what the store holds
    after ``Last-Event-ID``, then the end. ``EventSource`` reconnects after ``retry`` and so
    still gets every event, a few seconds late."""
    await run_in_threadpool(feed.load)
    frames: list[bytes] | None = []
    if resume is None:
        cursor = feed.last
    else:
        cursor, frames = await run_in_threadpool(feed.after, resume, private)
    hello = {"last_event_id": cursor, "heartbeat_s": None}
    yield _frame("ready", hello)[:-1] + f"retry: {RETRY_MS}\n\n".encode()
    if frames is None:
        reason = "Last-Event-ID is outside the kept span (HEATMAP_EVENTS_KEEP_S): reload"
        yield _frame("reset", {"reason": reason, "last_event_id": cursor}, cursor)
    elif frames:
        yield b"".join(frames)


def _frame(kind: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return (head + f"event: {kind}\ndata: ").encode() + orjson.dumps(data) + b"\n\n"


async def _stream(
    hub: EventHub, feed: EventFeed, private: bool, resume: int | None
) -> AsyncIterator[bytes]:
    hub.clients += 1
    try:
        frames: list[bytes] | None = []
        if resume is None:
            cursor = feed.last
        else:
            cursor, frames = await run_in_threadpool(feed.after, resume, private)
        # First the stream's position (it holds every event after it) and the retry delay.
        hello = {"last_event_id": cursor, "heartbeat_s": hub.heartbeat_s}
        yield _frame("ready", hello)[:-1] + f"retry: {RETRY_MS}\n\n".encode()
        if frames is None:
            reason = "Last-Event-ID is outside the kept span (HEATMAP_EVENTS_KEEP_S): reload"
            yield _frame("reset", {"reason": reason, "last_event_id": cursor}, cursor)
        elif frames:
            yield b"".join(frames)
        while not hub.closing:
            changed = hub.changed
            cursor, frames = feed.newer(cursor, private)
            if frames:
                yield b"".join(frames)
                continue
            try:
                await asyncio.wait_for(changed.wait(), hub.heartbeat_s)
            except TimeoutError:
                yield _frame("heartbeat", {"at": epoch_to_iso(int(time.time()))})
    finally:
        hub.clients -= 1


@router.get(
    "/events",
    summary="Server-Sent Events: releases and alerts",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`release` events (everyone), `alert` events (opened, closed) the "
            "audience may see, `heartbeat`, and `reset` when Last-Event-ID is too old",
        },
        401: {"description": "A credential that is not a planner token"},
        422: {"description": "Last-Event-ID is not an event id"},
        503: {"description": "Too many open streams (HEATMAP_SSE_MAX_CLIENTS): retry later"},
    },
)
async def events(
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event (sent by EventSource when it reconnects)",
            max_length=20,
        ),
    ] = None,
) -> StreamingResponse:
    """Stream releases and alerts as Server-Sent Events (``EventSource`` in a browser)."""
    svc = services(request)
    who = svc.audience(request.headers.get("authorization"))
    hub: EventHub = request.app.state.event_hub
    if hub.closing:
        raise HTTPException(503, "the service is shutting down", {"Retry-After": "5"})
    if hub.clients >= hub.max_clients:
        raise HTTPException(
            503,
            f"too many open event streams (more than {hub.max_clients}); retry later",
            {"Retry-After": str(hub.retry_after_s)},
        )
    resume = None
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit():
            raise BadInput("Last-Event-ID: an event id (a number) is required")
        resume = int(last_event_id)
    body = (
        _stream(hub, hub.feed, who.private, resume)
        if hub.feed is not None
        else _once(svc.alerting.feed, who.private, resume)
    )
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache" if not who.private else "private, no-cache",
            "X-Accel-Buffering": "no",  # proxies: pass each event on at once
        },
    )


class StreamGate:
    """Pure ASGI middleware (outermost): event streams skip the in-flight limit of reads.

    A stream stays open for hours; counted as a read in flight it would hold one of
    ``HEATMAP_MAX_INFLIGHT`` slots for ever. Streams have their own cap (:class:`EventHub`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inner = app.app if isinstance(app, LoadShedder) else app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route an event stream past the load shedder."""
        if scope["type"] == "http" and scope["path"] == EVENTS_PATH:
            await self.inner(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _on_exit_signals(callback: Callable[[], None]) -> None:
    """Run ``callback`` before the server's own SIGINT/SIGTERM handler (main thread only).

    The server waits for open responses before it shuts the app down, and a stream never
    ends by itself: ending them when the signal comes lets a graceful shutdown finish.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            callback()
            previous(signum, frame)

        signal.signal(sig, handler)


def include(app: FastAPI, settings: Settings) -> None:
    """Add the event stream's route and hub to the app."""
    app.state.event_hub = EventHub(settings)
    app.include_router(router)


def start(app: FastAPI) -> None:
    """Start the crowd warnings (engine, feed, webhooks) and serve their events (lifespan)."""
    alerting = app.state.services.alerting
    alerting.start()
    hub: EventHub = app.state.event_hub
    hub.bind(alerting.feed)
    _on_exit_signals(hub.close)


async def stop(app: FastAPI) -> None:
    """End the streams, then stop the crowd warnings' threads (lifespan)."""
    app.state.event_hub.close()
    await asyncio.sleep(0)
    svc = app.state.services
    if not svc.closed:
        await run_in_threadpool(svc.alerting.stop)
