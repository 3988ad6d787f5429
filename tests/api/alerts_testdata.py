"""Helpers of the crowd-warning tests: a live app, a webhook receiver, crowds (imported by name).

The app runs in this process under uvicorn on a free 127.0.0.1 port (event streams need a real
server); a receiver records every webhook it gets. Crowds stand at Xintiandi, a key place read
from one res-9 cell (0.08 km2): with the bands of :data:`BANDS` (red from 500 people per km2),
60 devices there make it red and nobody else in the city is near it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from api_testdata import PLANNER, advance_clock, api_settings, post

import uvicorn

from heatmap.api import create_app
from heatmap.config import Settings

PLACE = "xintiandi"
PLACE_LAT, PLACE_LNG = 31.2215, 121.4704
BANDS = "50,200,500"
"""Lower bounds of green, yellow, red: the place turns red from 40 people."""
CROWD = 60


def alert_settings(tmp: Path, **kw: Any) -> Settings:
    """Return API test settings with low bands and quick webhooks (defaults off unless asked)."""
    kw.setdefault("bands_km2", BANDS)
    kw.setdefault("alert_defaults", False)
    kw.setdefault("webhook_allow", "127.0.0.1")
    kw.setdefault("webhook_backoff_s", 0.2)
    kw.setdefault("webhook_timeout_s", 3)
    return api_settings(tmp, **kw)


def crowd(ts: int, n: int = CROWD, tag: str = "crowd") -> pl.DataFrame:
    """Return ``n`` devices standing at the place at ``ts``."""
    return pl.DataFrame(
        {
            "device_id": [f"{tag}-{i}" for i in range(n)],
            "ts": [ts] * n,
            "lat": [PLACE_LAT] * n,
            "lng": [PLACE_LNG] * n,
        }
    )


def start_ts() -> int:
    """Return the tick where a crowd's story starts: five past the hour two hours ago.

    A story lasts minutes of event time, so it never crosses into the next hour: the hour
    its crowd stood in is never over by any of its releases, so it never becomes a "usual
    level" that would keep the forecast rule holding after the crowd left.
    """
    return (int(time.time()) // 3600 - 2) * 3600 + 300


class Story:
    """Drive releases through HTTP: the crowd stays for some releases, then leaves."""

    def __init__(self, client: Any, t0: int | None = None) -> None:
        self.client = client
        self.t = start_ts() if t0 is None else t0

    def crowded(self) -> dict[str, object]:
        """POST the crowd just after the last tick, then make the next release (it holds them)."""
        r = post(self.client, crowd(self.t + 10))
        assert r.status_code == 200, r.text
        window = advance_clock(self.client, self.t + 10)
        self.t += 60
        return window

    def empty(self) -> dict[str, object]:
        """Make a release after everyone left (past the horizon)."""
        window = advance_clock(self.client, self.t + 400)
        self.t = (self.t + 400) // 60 * 60 + 60
        return window


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Return ``check()`` once it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    """A running app: its base URL, an HTTP client and its services."""

    base: str
    client: httpx.Client
    app: Any

    @property
    def alerting(self) -> Any:
        """Return the app's crowd warnings."""
        return self.app.state.services.alerting


@contextmanager
def live_app(settings: Settings) -> Iterator[Live]:
    """Serve ``create_app(settings)`` with uvicorn on a free port for the block."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the app to start", lambda: server.started or not thread.is_alive())
    assert thread.is_alive(), "the app did not start"
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        try:
            yield Live(base, client, app)
        finally:
            server.should_exit = True
            thread.join(timeout=20)


def make_watch(client: Any, url: str | None = None, **extra: Any) -> dict[str, Any]:
    """Create a planner's watch "red now" on the place; return the answer."""
    body: dict[str, Any] = {
        "name": "Xintiandi crowd",
        "target": {"place": PLACE},
        "rule": {"kind": "band", "band": "red"},
        **extra,
    }
    if url is not None:
        body["webhook"] = {"url": url}
    r = client.post("/api/v1/watches", json=body, headers=PLANNER)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@dataclass
class Hit:
    """One request a receiver got."""

    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers each request with the next status of
    ``script`` (then 200) and records it; ``stall`` holds the first request until set."""

    script: list[int] = field(default_factory=list)
    stall: threading.Event | None = None
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Return the hook's URL."""
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        """Listen (a thread per request)."""
        me = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    first = not me.hits
                    status = me.script.pop(0) if me.script else 200
                    me.hits.append(Hit(dict(self.headers.items()), body, status))
                if first and me.stall is not None:
                    me.stall.wait(60)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def delivered(self) -> list[Hit]:
        """Return the requests answered 2xx."""
        return [h for h in self.hits if 200 <= h.status < 300]


def settings_for(tmp: Path, name: str, **kw: Any) -> Settings:
    """Return alert test settings on a store of its own under ``tmp``."""
    return alert_settings(tmp / name, **kw)
