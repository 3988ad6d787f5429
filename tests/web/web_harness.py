"""Helpers of the browser tests: the app's data, the parent pages, request watching.

The app runs in-process (uvicorn in a thread) on a free 127.0.0.1 port, on a temporary store
filled with simulated pings at a busy hour (14:00 Shanghai), scaled to 24 million people so the
four bands all appear at city zoom. The file ingest closes four windows and makes one release
("now"), at the last window boundary its input has passed (14:00); the fifth window still fills
and is not served. Every browser request is checked: anything not addressed to
127.0.0.1 is aborted and recorded, and the test fails.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import orjson

from heatmap.config import Settings

CHROMIUM = os.environ.get("HEATMAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIM_START = datetime(2026, 11, 27, 5, 40, tzinfo=UTC)  # 13:40 in Shanghai: a busy afternoon
SIM_DEVICES = 30_000
SIM_HOURS = 0.4  # four closed 5-minute windows, the release at their end, one window filling
EXPANSION = 800.0  # 30,000 devices x 800 = 24 million people
PLANNER_TOKEN = "web-planner-token"


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Site:
    """The running app and the two parent-page origins (allowed and refused as frame parents)."""

    base: str
    settings: Settings
    allowed_parent: str
    refused_parent: str

    def get_json(self, path: str) -> Any:
        """Return the JSON answer of the running app at ``path``."""
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return orjson.loads(r.read())


def parent_server(port: int, widget_url: str) -> ThreadingHTTPServer:
    """Serve one page that embeds the widget in an iframe."""
    # The embed snippet of the README: the iframe follows the height the widget posts.
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>parent</title></head><body>"
        f"<h1>Gov app</h1><iframe id='w' src='{widget_url}' width='360' height='640'></iframe>"
        "<script>addEventListener('message', (e) => {"
        " const w = document.getElementById('w');"
        " if (e.source !== w.contentWindow || !e.data || e.data.type !== 'heatmap-widget:height')"
        " return;"
        " w.style.height = e.data.height + 'px'; document.body.dataset.height = e.data.height;"
        "});</script></body></html>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Watch:
    """What a page did: console errors, page errors, requests, refused foreign requests."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    cookies_set: list[str] = field(default_factory=list)
    bytes_in: dict[str, int] = field(default_factory=dict)


def open_page(browser: Any, width: int, height: int, **options: Any) -> tuple[Any, Any, Watch]:
    """Return ``(context, page, watch)``: a fresh context that lets only 127.0.0.1 through.

    ``options`` go to ``browser.new_context`` (e.g. ``geolocation`` and ``permissions``).
    """
    ctx = browser.new_context(
        viewport={"width": width, "height": height}, locale="zh-CN", **options
    )
    watch = Watch()

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            watch.foreign.append(url)
            route.abort()

    def on_response(resp: Any) -> None:
        if resp.header_value("set-cookie"):
            watch.cookies_set.append(resp.url)

    def on_finished(req: Any) -> None:
        try:
            watch.bytes_in[req.url] = int(req.sizes()["responseBodySize"])
        except Exception:  # a request torn down with its page has no sizes
            pass

    ctx.route("**/*", guard)
    page = ctx.new_page()
    page.on("console", lambda m: m.type == "error" and watch.console_errors.append(m.text))
    page.on("pageerror", lambda e: watch.page_errors.append(str(e)))
    page.on("request", lambda r: watch.requests.append(r.url))
    page.on("response", on_response)
    page.on("requestfinished", on_finished)
    return ctx, page, watch


def wait_ready(page: Any, timeout_ms: int = 20_000) -> None:
    """Wait until the page's script has loaded its data (``body[data-ready]``) and tiles."""
    page.wait_for_selector("body[data-ready=true]", state="attached", timeout=timeout_ms)
    page.wait_for_load_state("networkidle", timeout=timeout_ms)


def epoch(iso: str) -> int:
    """Return epoch seconds of an ISO-8601 time of the API (``...Z`` or with an offset)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def local_clock(iso: str, tz: str) -> str:
    """Return ``HH:MM`` of an ISO-8601 time in the service's time zone (what the pages show)."""
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return when.astimezone(ZoneInfo(tz)).strftime("%H:%M")


def tile_ref(url: str) -> tuple[str, str] | None:
    """Return what a tile URL names: ``("release", as_of)``, ``("window", start)`` or None."""
    query = parse_qs(urlsplit(url).query)
    for kind in ("release", "window"):
        if kind in query:
            return kind, query[kind][0]
    return None


def add_pings(site: Site, times: list[int], devices: int) -> None:
    """Commit one batch from another writer on the store (what ``POST /api/v1/pings`` does):
    ``devices`` new devices around People's Square, each pinging at every epoch time in
    ``times``. A batch makes the release of the latest tick its input has passed plus the grace.
    """
    import numpy as np
    import polars as pl

    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap

    rng = np.random.default_rng(5)
    lat = 31.2304 + rng.normal(0, 0.003, devices)
    lng = 121.4737 + rng.normal(0, 0.003, devices)
    frame = pl.DataFrame(
        {
            "device_id": [f"late-arrival-{i}" for i in range(devices)] * len(times),
            "ts": np.repeat(np.asarray(times, dtype=np.int64), devices),
            "lat": np.tile(lat, len(times)),
            "lng": np.tile(lng, len(times)),
        }
    )
    hm = Heatmap(site.settings)
    try:
        hm.ingest_frame(frame, ParseOptions())
    finally:
        hm.close()
