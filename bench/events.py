"""Crowd warnings: release-to-SSE and release-to-webhook latency under load.

One run, one machine. A fresh ``heatmap serve`` (uvicorn, as shipped) on a temp store, with a
fast clock (releases every 10 s of event time over a 10 s horizon, windows of 60 s, grace 1 s)
so that releases can be driven as fast as the service makes them, low bands (green from 50
people per km2) and the default watches off. Then:

- ``--watches`` (100) planners' watches, one per key place, "green now", opening after one
  release, no cooldown, each with a webhook to a receiver in this process (127.0.0.1);
- ``--clients`` (1,000) open event streams (``GET /api/v1/events``), raw asyncio sockets in this
  process, each connected and past its ``ready`` event before the first release;
- ``--releases`` (20) releases, one POST each (its pings and a clock ping past the tick): odd
  ones hold a crowd at every watched place (every watch's alert opens), even ones hold nobody
  (every alert closes), so each release brings one ``release`` event to every stream and 100
  alert changes, each one webhook.

The clock starts when the POST that made a release returns (its answer names the release);
release-to-SSE latency is the ``release`` event's arrival at each stream, release-to-webhook
latency the arrival of each alert's webhook (its body names the release). Target: p99 under
1 s for both. Prints the table and writes ``bench/out/events.md`` (and ``events.json``).

    .venv/bin/python bench/events.py [--clients 1000] [--watches 100] [--releases 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench._procs import free_port, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
TOKEN = "bench-ingest"
PLANNER = "bench-planner"
RELEASE_S = 10


def _iso_to_epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


class Receiver:
    """Webhook receiver: the arrival time of each alert change, keyed by (release, watch)."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.count = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.time()
                msg = json.loads(body)
                alert = msg["data"]
                values = alert["closed"]["values"] if alert["closed"] else alert["opened"]
                me.arrivals.setdefault((values["release"], alert["watch"]["id"]), now)
                me.count += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def _stream(port: int, ready: asyncio.Event, arrivals: dict[str, float], n: list[int]):
    """One event stream on a raw socket: record when each ``release`` event arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    event = None
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: "):
                event = line[7:].strip().decode()
            elif line.startswith(b"data: ") and event == "ready":
                n[0] += 1
                if n[0] >= n[1]:
                    ready.set()
            elif line.startswith(b"data: ") and event == "release":
                now = time.time()
                tick = json.loads(line[6:])["release"]
                arrivals.setdefault(tick, now)
    finally:
        writer.close()


def _crowd_csv(places: list[tuple[float, float, int]], ts: int, tag: str) -> list[str]:
    rows = []
    for k, (lat, lng, n) in enumerate(places):
        rows += [f"{tag}-{k}-{i},{ts},{lat:.6f},{lng:.6f}" for i in range(n)]
    return rows


def run(clients: int, watches: int, releases: int) -> dict[str, object]:
    from heatmap.config import Settings
    from heatmap.read.places import PlaceBook

    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    receiver = Receiver()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env.update(
        HEATMAP_DB=str(tmp / "heatmap.db"), HEATMAP_SECRET="bench", HEATMAP_INGEST_TOKEN=TOKEN,
        HEATMAP_PLANNER_TOKENS=PLANNER, HEATMAP_BASEMAP_URL="", HEATMAP_K_MIN="2",
        HEATMAP_WINDOW_S="60", HEATMAP_RELEASE_S=str(RELEASE_S), HEATMAP_HORIZON_S=str(RELEASE_S),
        HEATMAP_RELEASE_GRACE_S="1", HEATMAP_BANDS_KM2="50,200,500",
        HEATMAP_ALERT_DEFAULTS="false", HEATMAP_WEBHOOK_ALLOW="127.0.0.1",
        HEATMAP_SSE_MAX_CLIENTS=str(clients + 10), HEATMAP_MAX_WATCHES=str(watches),
    )  # fmt: skip
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "heatmap"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base + "/healthz", proc)
        book = PlaceBook.load(Settings(db=str(tmp / "x.db"), secret="x"))  # type: ignore[call-arg]
        places = []
        auth = {"Authorization": f"Bearer {PLANNER}"}
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(watches):
                p, pc = book.places[i % len(book.places)], book.cells[i % len(book.places)]
                places.append((p.lat, p.lng, max(20, math.ceil(pc.area_km2 * 90))))
                r = c.post("/api/v1/watches", headers=auth, json={
                    "target": {"place": p.id}, "rule": {"kind": "band", "band": "green"},
                    "open_after": 1, "cooldown_s": 0,
                    "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook/{i}"},
                })  # fmt: skip
                assert r.status_code == 201, r.text

        per_client: list[dict[str, float]] = [{} for _ in range(clients)]
        made: dict[str, float] = {}
        done = threading.Event()

        async def main() -> None:
            ready = asyncio.Event()
            counter = [0, clients]
            tasks = [
                asyncio.create_task(_stream(port, ready, per_client[i], counter))
                for i in range(clients)
            ]
            await asyncio.wait_for(ready.wait(), 300)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, drive)
            await asyncio.sleep(3)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        def drive() -> None:
            t = (int(time.time()) - 3600) // RELEASE_S * RELEASE_S
            head = "device_id,ts,lat,lng\n"
            with httpx.Client(base_url=base, timeout=60) as c:
                for k in range(releases):
                    t += RELEASE_S
                    rows = _crowd_csv(places, t - 5, f"r{k}") if k % 2 == 0 else []
                    rows.append(f"clock-{k},{t + 2},-60.0,-150.0")
                    r = c.post("/api/v1/pings", content=head + "\n".join(rows) + "\n",
                               headers={"Authorization": f"Bearer {TOKEN}",
                                        "Content-Type": "text/csv"})  # fmt: skip
                    now = time.time()
                    assert r.status_code == 200, r.text
                    tick = r.json()["release"]
                    assert tick is not None, r.json()
                    made[tick] = now
                    time.sleep(1.5)  # let the release's events and webhooks settle
            done.set()

        asyncio.run(main())
        time.sleep(2)
        sse_lat = [arr[tick] - at for arr in per_client for tick, at in made.items() if tick in arr]
        missing_sse = sum(1 for arr in per_client for tick in made if tick not in arr)
        hook_lat = [
            got - made[tick] for (tick, _), got in receiver.arrivals.items() if tick in made
        ]
        want_hooks = watches * releases  # each release opens or closes every alert
        summary = {
            "clients": clients,
            "watches": watches,
            "releases": releases,
            "sse": _stats(sse_lat),
            "sse_missing": missing_sse,
            "webhook": _stats(hook_lat),
            "webhooks_received": len(receiver.arrivals),
            "webhooks_expected_at_least": want_hooks,
            "machine": (
                f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
        }
        return summary
    finally:
        stop(proc)
        receiver.server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _stats(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {
        "n": len(xs),
        "p50_s": round(float(np.percentile(a, 50)), 3),
        "p99_s": round(float(np.percentile(a, 99)), 3),
        "max_s": round(float(a.max()), 3),
    }


def report(s: dict[str, object]) -> str:
    sse, hook = s["sse"], s["webhook"]
    assert isinstance(sse, dict) and isinstance(hook, dict)
    lines = [
        "# Crowd warnings: release to SSE and to webhook",
        "",
        f"{s['clients']} open event streams, {s['watches']} watches with webhooks, "
        f"{s['releases']} releases (each flips every watch's alert); {s['machine']}.",
        "",
        "| path | events | p50 | p99 | max | target p99 |",
        "|---|---|---|---|---|---|",
        f"| release -> SSE `release` event | {sse.get('n')} | {sse.get('p50_s')} s | "
        f"{sse.get('p99_s')} s | {sse.get('max_s')} s | < 1 s |",
        f"| release -> webhook delivered | {hook.get('n')} | {hook.get('p50_s')} s | "
        f"{hook.get('p99_s')} s | {hook.get('max_s')} s | < 1 s |",
        "",
        f"Streams that missed a release event: {s['sse_missing']}; webhooks received "
        f"{s['webhooks_received']} (at least {s['webhooks_expected_at_least']} expected).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--watches", type=int, default=100)
    ap.add_argument("--releases", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="100 streams, 10 watches, 6 releases")
    a = ap.parse_args()
    if a.quick:
        a.clients, a.watches, a.releases = 100, 10, 6
    s = run(a.clients, a.watches, a.releases)
    text = report(s)
    print(text)
    if not a.quick:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "events.md").write_text(text)
        (OUT / "events.json").write_text(json.dumps(s, indent=2))


if __name__ == "__main__":
    main()
