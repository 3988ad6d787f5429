"""Load shedding and the body deadline of :mod:`heatmap.api.shedding`, in process.

Requests are held "in flight" deterministically (no timing): an ASGI app that waits on an event,
or the real app's ingest waiting on the write lock the test holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from starlette.types import Receive, Scope, Send

from heatmap.api import create_app
from heatmap.api.shedding import LoadShedder
from heatmap.config import Settings

TOKEN = "shed-token"
OPS_TOKEN = "shed-ops-token"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
CSV = b"device_id,ts,lat,lng\na,1795900000,31.23,121.47\n"


def _settings(tmp: Path, **kw: object) -> Settings:
    kw.setdefault("db", str(tmp / "store" / "heatmap.db"))
    kw.setdefault("basemap_url", "")
    kw.setdefault("secret", "shed-secret")
    kw.setdefault("ingest_token", TOKEN)
    kw.setdefault("metrics_token", OPS_TOKEN)
    return Settings(**kw)  # type: ignore[arg-type]


class Gate:
    """An ASGI app whose requests wait until the gate opens; counts what reached it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        if scope["path"] not in ("/healthz", "/metrics"):
            await self.open.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _until(cond: object, limit: float = 10.0) -> None:
    """Yield to the loop until ``cond()`` holds (bounded; not a timing assertion)."""
    for _ in range(int(limit / 0.005)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_above_the_limit_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    gate = Gate()
    shed = LoadShedder(gate, _settings(tmp_path, max_inflight=3, retry_after_s=7))

    async def run() -> None:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.get(f"/tiles/1/0/{i}.png")) for i in range(3)]
            await _until(lambda: gate.entered == 3)
            r = await c.get("/api/v1/density?lat=31.2&lng=121.4")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "7"
            assert r.headers["content-type"] == "application/json"
            assert "in flight" in r.json()["detail"]
            assert gate.entered == 3  # the shed request never reached the app
            # Operators still see the node.
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
            gate.open.set()
            assert [(await t).status_code for t in held] == [200, 200, 200]
            assert shed.inflight == 0
            assert (await c.get("/api/v1/legend")).status_code == 200  # capacity is back

    asyncio.run(run())
    assert shed.shed_total == 1


def test_a_browser_can_read_the_503(tmp_path: Path) -> None:
    gate = Gate()
    shed = LoadShedder(gate, _settings(tmp_path, max_inflight=1, cors_origins="https://gov.cn"))

    async def run() -> None:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = asyncio.create_task(c.get("/widget"))
            await _until(lambda: gate.entered == 1)
            r = await c.get("/tiles.json", headers={"Origin": "https://gov.cn"})
            assert r.status_code == 503
            assert r.headers["access-control-allow-origin"] == "https://gov.cn"
            assert "Retry-After" in r.headers["access-control-expose-headers"]
            other = await c.get("/tiles.json", headers={"Origin": "https://evil.example"})
            assert other.status_code == 503 and "access-control-allow-origin" not in other.headers
            gate.open.set()
            await held

    asyncio.run(run())


def test_zero_means_no_limit(tmp_path: Path) -> None:
    gate = Gate()
    shed = LoadShedder(gate, _settings(tmp_path, max_inflight=0, max_inflight_ingest=0))

    async def run() -> None:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.get(f"/x/{i}")) for i in range(50)]
            await _until(lambda: gate.entered == 50)
            gate.open.set()
            assert {(await t).status_code for t in held} == {200}

    asyncio.run(run())
    assert shed.shed_total == 0


def test_the_real_app_limits_ingest_on_its_own_and_exports_metrics(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, max_inflight=3, max_inflight_ingest=1))
    svc = app.state.services
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            svc.write_lock.acquire()  # the first batch waits for the lock: in flight
            try:
                first = asyncio.create_task(c.post("/api/v1/pings", content=CSV, headers=headers))
                await _until(lambda: svc.write_lock.locked() and _inflight(app) == 1)
                second = await c.post("/api/v1/pings", content=CSV, headers=headers)
                assert second.status_code == 503 and second.headers["retry-after"] == "1"
                assert "ingest" in second.json()["detail"]
                assert (await c.get("/api/v1/legend")).status_code == 200  # reads still pass
            finally:
                await asyncio.to_thread(svc.write_lock.release)
            assert (await first).status_code == 200
            text = (await c.get("/metrics", headers=OPS)).text
            assert 'heatmap_http_shed_total{limit="ingest"} 1.0' in text
            assert "heatmap_http_inflight 0.0" in text

    asyncio.run(run())
    svc.close()


def _inflight(app: object) -> int:
    """Return the in-flight count of the app's shedder (0 before the stack is built)."""
    layer = app.middleware_stack  # type: ignore[attr-defined]
    while layer is not None and not isinstance(layer, LoadShedder):
        layer = getattr(layer, "app", None)
    return 0 if layer is None else layer.inflight + layer.ingest_inflight


def test_a_trickled_body_gets_408_and_the_connection_closed(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, request_timeout_s=0.3))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}
    stop = threading.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield CSV[:10]
        for _ in range(200):  # would take 20 s; the deadline cuts it
            if stop.is_set():
                return
            await asyncio.sleep(0.1)
            yield b"a"

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/api/v1/pings", content=slow_body(), headers=headers)

    r = asyncio.run(run())
    stop.set()
    assert r.status_code == 408
    assert r.headers["connection"] == "close"
    assert "0.3 s" in r.json()["detail"]
    app.state.services.close()


def test_a_complete_body_is_not_bounded_afterwards(tmp_path: Path) -> None:
    """Once the body is in, a slow handler is not cut by the body deadline."""

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await asyncio.sleep(0.3)  # longer than the deadline below
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": orjson.dumps(len(body))})

    shed = LoadShedder(slow_app, _settings(tmp_path, request_timeout_s=0.1))

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/x", content=b"12345")

    r = asyncio.run(run())
    assert r.status_code == 200 and r.json() == 5


def test_readers_at_their_limit_do_not_starve_ingest(tmp_path: Path) -> None:
    gate = Gate()
    shed = LoadShedder(gate, _settings(tmp_path, max_inflight=2, max_inflight_ingest=1))

    async def run() -> None:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            reads = [asyncio.create_task(c.get(f"/tiles/1/0/{i}.png")) for i in range(2)]
            await _until(lambda: gate.entered == 2)
            assert (await c.get("/api/v1/stats")).status_code == 503  # readers are full
            batch = asyncio.create_task(c.post("/api/v1/pings", content=CSV))
            await _until(lambda: gate.entered == 3)  # ...yet the batch reached the app
            again = await c.post("/api/v1/pings", content=CSV)
            assert again.status_code == 503 and again.headers["connection"] == "close"
            gate.open.set()
            assert [(await t).status_code for t in (*reads, batch)] == [200, 200, 200]

    asyncio.run(run())


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_operations_endpoints_are_never_counted(tmp_path: Path, path: str) -> None:
    gate = Gate()
    shed = LoadShedder(gate, _settings(tmp_path, max_inflight=1))

    async def run() -> None:
        transport = httpx.ASGITransport(app=shed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(5):
                assert (await c.get(path)).status_code == 200
            assert shed.inflight == 0

    asyncio.run(run())
