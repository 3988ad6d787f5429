"""Load: mixed traffic at rising concurrency against ``heatmap serve``; where is the knee?

The script fills a temp store with a simulated Shanghai (40 minutes of 20,000 devices), starts
``heatmap serve`` on 127.0.0.1 (uvicorn, as shipped, with the default overload settings) and
drives it with a bounded asyncio load generator (raw HTTP/1.1 keep-alive connections, uvloop):

- reads, from N connections at once, each request drawn at random: 72 % tiles (zooms 10-15
  around People's Square, 3 x 3 tiles per zoom, PNG and gzip MVT, 70 % of the live window and
  30 % of a closed one), 22 % ``/api/v1/density`` at random points, 6 % ``/api/v1/cells`` of
  a small bbox;
- ingest, beside them: one provider POSTing a batch of 1,000 pings (new positions of a pool of
  5,000 live devices) every second with a bearer token and a batch id; each batch changes the
  live window, so its tiles are re-rendered: the live service, not a static cache.

A client that gets ``503`` waits its ``Retry-After`` (a well-behaved client; the ingest client
resends the same batch id). Per level it reports goodput (2xx/304 per second), p50/p99 of the
served requests, shed requests (``503`` + ``Retry-After``) and errors (timeouts, resets, any
other 5xx). Then, beside the knee: the same top level with shedding off
(``HEATMAP_MAX_INFLIGHT=0``), and the peer of ANCHORS.md, a bare FastAPI app on uvicorn
answering 3 KB from memory. Writes ``bench/out/load.md``, ``load.json`` and ``load.png``.

    .venv/bin/python bench/load.py [--seconds 5] [--levels 1,4,16,64,256,1024] [--devices 20000]

Bounded: a few seconds per level, well under 3 minutes in all; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from typing import Any

import morecantile
import numpy as np

from bench._procs import free_port, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TOKEN = "load-bench-token"
PEOPLES_SQUARE = (31.2335, 121.4755)
CENTRE_BOX = (121.38, 31.15, 121.58, 31.32)  # w, s, e, n: central Shanghai
TIMEOUT_S = 10.0  # a request not answered by then is an error (a timeout)
WARMUP_S = 1.5
WEIGHTS = {"tile": 0.72, "density": 0.22, "cells": 0.06}
INGEST_EVERY_S = 1.0
INGEST_ROWS = 1000
LIVE_DEVICES = 5000

BARE_APP = """
from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
BODY = b"x" * 3072


@app.get("/tile")
async def tile() -> Response:
    return Response(BODY, media_type="application/vnd.mapbox-vector-tile")
"""


# -- servers -----------------------------------------------------------------------------------


def start_heatmap(
    env: dict[str, str], log: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    extra = {f"HEATMAP_{k.upper()}": v for k, v in settings.items()}
    cmd = [str(BIN / "heatmap"), "serve", "--host", HOST, "--port", str(port)]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env, **extra}, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    wait_up(f"http://{HOST}:{port}/healthz", proc)
    return proc, port


def start_bare(tmp: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [
        str(BIN / "uvicorn"), "bare_app:app", "--app-dir", str(tmp), "--host", HOST,
        "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    wait_up(f"http://{HOST}:{port}/tile", proc)
    return proc, port


def build_store(tmp: Path, devices: int) -> dict[str, str]:
    """Fill a temp store with 40 simulated minutes ending 5 minutes ago; return the env."""
    import polars as pl
    import pyarrow as pa

    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap
    from heatmap.simulate import simulate_pings

    env = {
        "HEATMAP_DB": str(tmp / "store" / "heatmap.db"),
        "HEATMAP_SECRET": "load-bench-secret",
        "HEATMAP_BASEMAP_URL": "",
        "HEATMAP_INGEST_TOKEN": TOKEN,
    }
    start = datetime.fromtimestamp((int(time.time()) - 45 * 60) // 300 * 300, UTC)
    tables = simulate_pings(devices=devices, start=start, hours=40 / 60, seed=3)
    frame = pl.from_arrow(pa.concat_tables(list(tables)))
    assert isinstance(frame, pl.DataFrame)
    hm = Heatmap(Settings(db=env["HEATMAP_DB"], secret=env["HEATMAP_SECRET"]))  # type: ignore[call-arg]
    try:
        hm.ingest_frame(frame, ParseOptions())
    finally:
        hm.close()
    return env


# -- traffic -----------------------------------------------------------------------------------


def tile_paths() -> list[str]:
    """Return tile paths: 3 x 3 tiles at zooms 10-15 around People's Square, PNG and MVT."""
    tms = morecantile.tms.get("WebMercatorQuad")
    out = []
    for z in range(10, 16):
        c = tms.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for ext in ("png", "mvt"):
                    out.append(f"/tiles/{z}/{c.x + dx}/{c.y + dy}.{ext}")
    return out


class Traffic:
    """Draws prebuilt read requests (raw bytes) by the weights of the module docstring."""

    def __init__(self, port: int, closed: list[str], seed: int = 1) -> None:
        self.rng = random.Random(seed)
        host = f"Host: {HOST}:{port}\r\n"
        self.tiles = tile_paths()
        self.closed = closed
        self.host = host
        w, s, e, n = CENTRE_BOX
        self.points = [
            (round(self.rng.uniform(s, n), 5), round(self.rng.uniform(w, e), 5)) for _ in range(400)
        ]

    def _get(self, path: str, gzip: bool = False) -> bytes:
        enc = "Accept-Encoding: gzip\r\n" if gzip else ""
        return f"GET {path} HTTP/1.1\r\n{self.host}{enc}\r\n".encode()

    def draw(self) -> tuple[str, bytes]:
        """Return ``(kind, raw request)``."""
        r = self.rng.random()
        if r < WEIGHTS["tile"]:
            path = self.rng.choice(self.tiles)
            if self.closed and self.rng.random() < 0.3:
                path += f"?window={self.rng.choice(self.closed)}"
            return "tile", self._get(path, gzip=".mvt" in path)
        if r < WEIGHTS["tile"] + WEIGHTS["density"]:
            lat, lng = self.rng.choice(self.points)
            return "density", self._get(f"/api/v1/density?lat={lat}&lng={lng}", gzip=True)
        lat, lng = self.rng.choice(self.points)
        bbox = f"{lng - 0.015:.4f},{lat - 0.015:.4f},{lng + 0.015:.4f},{lat + 0.015:.4f}"
        return "cells", self._get(f"/api/v1/cells?bbox={bbox}&res=9", gzip=True)


def ingest_request(port: int, batch_id: str, rng: random.Random) -> bytes:
    """Return a raw POST of one batch: new positions of live devices, now."""
    now = int(time.time())
    w, s, e, n = CENTRE_BOX
    lines = ["device_id,ts,lat,lng"]
    for dev in rng.sample(range(LIVE_DEVICES), INGEST_ROWS):
        lat, lng = rng.uniform(s, n), rng.uniform(w, e)
        lines.append(f"live-{dev},{now - rng.randint(0, 5)},{lat:.6f},{lng:.6f}")
    body = ("\n".join(lines) + "\n").encode()
    head = (
        f"POST /api/v1/pings?batch_id={batch_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Tally:
    """What one level saw, per request kind."""

    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    shed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    shed_latency: list[float] = field(default_factory=list)
    shed_without_retry_after: int = 0


class Broken(Exception):
    """The connection failed or the server answered out of protocol."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, float | None, bool]:
    """Read one HTTP/1.1 response; return (status, Retry-After, connection closes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise Broken(f"bad status line {lines[0][:60]!r}") from None
    length, chunked, close, retry = None, False, False, None
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif k == b"connection":
            close = v.lower() == b"close"
        elif k == b"retry-after":
            retry = float(v)
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    elif length is None and status not in (204, 304):
        await reader.read()
        close = True
    return status, retry, close


class Load:
    """Connections issuing requests back to back until a deadline, tallying the answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.measure_from = 0.0
        self.stop_at = 0.0
        self.tally = Tally()

    def _record(self, kind: str, t0: float, t1: float, status: int, retry: float | None) -> None:
        if t0 < self.measure_from or t1 > self.stop_at:
            return  # warm-up, or finished after the window
        tl = self.tally
        if status == 503 and retry is not None:
            tl.shed[kind] += 1
            tl.shed_latency.append(t1 - t0)
        elif status < 400 or (kind == "density" and status == 404):
            tl.served[kind] += 1
            tl.latency[kind].append(t1 - t0)
        else:
            tl.errors[kind] += 1
            tl.shed_without_retry_after += status == 503

    def _error(self, kind: str, t0: float) -> None:
        if self.measure_from <= t0 <= self.stop_at:
            self.tally.errors[kind] += 1

    async def _exchange(
        self, conn: list[asyncio.StreamReader | asyncio.StreamWriter | None], raw: bytes
    ) -> tuple[int, float | None, bool]:
        if conn[0] is None:
            conn[0], conn[1] = await asyncio.open_connection(HOST, self.port)
        reader, writer = conn  # type: ignore[misc]
        writer.write(raw)  # type: ignore[union-attr]
        async with asyncio.timeout(TIMEOUT_S):
            return await read_response(reader)  # type: ignore[arg-type]

    @staticmethod
    def _drop(conn: list[asyncio.StreamReader | asyncio.StreamWriter | None]) -> None:
        if conn[1] is not None:
            conn[1].close()  # type: ignore[union-attr]
        conn[0] = conn[1] = None

    async def reader_conn(self, draw: Callable[[], tuple[str, bytes]]) -> None:
        conn: list[asyncio.StreamReader | asyncio.StreamWriter | None] = [None, None]
        while time.perf_counter() < self.stop_at:
            kind, raw = draw()
            t0 = time.perf_counter()
            try:
                status, retry, close = await self._exchange(conn, raw)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, Broken, ValueError):
                self._error(kind, t0)
                self._drop(conn)
                continue
            self._record(kind, t0, time.perf_counter(), status, retry)
            if close:
                self._drop(conn)
            if status == 503 and retry is not None:
                await asyncio.sleep(min(retry, max(0.0, self.stop_at - time.perf_counter())))
        self._drop(conn)

    async def ingest_conn(self, seq: list[int], rng: random.Random) -> None:
        conn: list[asyncio.StreamReader | asyncio.StreamWriter | None] = [None, None]
        batch_id = None
        next_at = time.perf_counter()
        while time.perf_counter() < self.stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if batch_id is None:
                seq[0] += 1
                batch_id = f"load-{os.getpid()}-{seq[0]}"
            raw = ingest_request(self.port, batch_id, rng)
            t0 = time.perf_counter()
            try:
                status, retry, close = await self._exchange(conn, raw)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, Broken, ValueError):
                self._error("ingest", t0)
                self._drop(conn)
                next_at = time.perf_counter() + INGEST_EVERY_S
                continue  # resend the same batch id
            self._record("ingest", t0, time.perf_counter(), status, retry)
            if close:
                self._drop(conn)
            if status == 503 and retry is not None:
                next_at = time.perf_counter() + retry  # resend the same batch id
            else:
                batch_id = None
                next_at = t0 + INGEST_EVERY_S
        self._drop(conn)

    async def run(self, connections: int, seconds: float, traffic: Traffic, ingest: bool) -> Tally:
        self.tally = Tally()
        self.measure_from = time.perf_counter() + WARMUP_S
        self.stop_at = self.measure_from + seconds
        tasks = [asyncio.create_task(self.reader_conn(traffic.draw)) for _ in range(connections)]
        if ingest:
            tasks.append(asyncio.create_task(self.ingest_conn(SEQ, random.Random(connections))))
        await asyncio.gather(*tasks)
        return self.tally


SEQ = [0]


async def bare_run(port: int, connections: int, seconds: float) -> Tally:
    """The peer: the same connections fetching one fixed 3 KB answer from a bare FastAPI app."""
    raw = f"GET /tile HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    load = Load(port)
    load.measure_from = time.perf_counter() + WARMUP_S
    load.stop_at = load.measure_from + seconds
    await asyncio.gather(*(load.reader_conn(lambda: ("tile", raw)) for _ in range(connections)))
    return load.tally


# -- results -----------------------------------------------------------------------------------


@dataclass
class Level:
    """One measured level."""

    label: str
    connections: int
    seconds: float
    goodput: float
    shed_per_s: float
    errors: int
    served: int
    shed: int
    p50_ms: float
    p99_ms: float
    shed_p50_ms: float
    shed_p99_ms: float
    by_kind: dict[str, dict[str, float]]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else float("nan")


def summarise(label: str, n: int, seconds: float, t: Tally) -> Level:
    lat = [x for v in t.latency.values() for x in v]
    served, shed, errors = sum(t.served.values()), sum(t.shed.values()), sum(t.errors.values())
    kinds = sorted(set(t.served) | set(t.shed) | set(t.errors))
    by_kind = {
        k: {
            "served": t.served[k],
            "shed": t.shed[k],
            "errors": t.errors[k],
            "p50_ms": pct(t.latency[k], 50),
            "p99_ms": pct(t.latency[k], 99),
        }
        for k in kinds
    }
    return Level(
        label, n, seconds, served / seconds, shed / seconds, errors, served, shed,
        pct(lat, 50), pct(lat, 99), pct(t.shed_latency, 50), pct(t.shed_latency, 99), by_kind,
    )  # fmt: skip


def knee(levels: list[Level]) -> Level:
    """Return the first level whose goodput is within 10 % of the best one."""
    best = max(lv.goodput for lv in levels)
    return next(lv for lv in levels if lv.goodput >= 0.9 * best)


def report(
    levels: list[Level],
    off: Level | None,
    peer: Level | None,
    args: argparse.Namespace,
    wall: float,
    loads: tuple[float, float],
    limits: dict[str, str],
) -> str:
    k = knee(levels)
    top = levels[-1]
    below = [lv for lv in levels if lv.connections <= k.connections]
    above = [lv for lv in levels if lv.connections > k.connections]
    shedding = [lv for lv in above if lv.shed]
    shed_p50 = max((lv.shed_p50_ms for lv in shedding), default=float("nan"))
    shed_p99 = max((lv.shed_p99_ms for lv in shedding), default=float("nan"))
    lines = [
        f"# Load benchmark ({platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"`heatmap serve` (uvicorn, one process) on 127.0.0.1 over a store of {args.devices:,} "
        f"simulated devices x 40 min; overload settings as shipped: "
        f"`HEATMAP_MAX_INFLIGHT={limits['max_inflight']}`, "
        f"`HEATMAP_MAX_INFLIGHT_INGEST={limits['max_inflight_ingest']}`, "
        f"`HEATMAP_RETRY_AFTER_S={limits['retry_after_s']}`. Mixed reads from N keep-alive "
        f"connections (72 % tiles at z10-15, PNG and gzip MVT, live and closed windows; 22 % "
        f"density look-ups; 6 % bbox cells) plus one provider POSTing {INGEST_ROWS:,} pings "
        f"every {INGEST_EVERY_S:g} s with a token (each batch changes the live window, so its "
        f"tiles re-render; batches have their own in-flight budget, so readers never crowd "
        f"them out). {args.seconds:g} s measured per level after {WARMUP_S:g} s of "
        f"warm-up; clients honour `Retry-After`; a request unanswered after {TIMEOUT_S:g} s "
        f"counts as an error. Load generator: Python asyncio + uvloop, raw HTTP/1.1, on the "
        f"same 2 cores as the server. Whole run {wall:.0f} s; 1-minute load average "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after (other work shares the machine).",
        "",
        "## Ratios first",
        "",
        "| measure | value | target |",
        "|---|---|---|",
    ]
    if peer is not None:
        lines.append(
            f"| mixed goodput at the knee / bare FastAPI on uvicorn (3 KB from memory, "
            f"{peer.connections} conn.) | {k.goodput / peer.goodput:.2f} | |"
        )
    if off is not None:
        lines += [
            f"| p99 of served requests at {top.connections} conn., shedding off / on "
            f"| {off.p99_ms / top.p99_ms:.1f} | > 1 |",
            f"| goodput at {top.connections} conn., shedding on / off "
            f"| {top.goodput / max(off.goodput, 1e-9):.2f} | >= 0.9 |",
        ]
    lines += [
        f"| errors (timeouts, resets, 5xx) at or below the knee ({k.connections} conn.) "
        f"| {sum(lv.errors for lv in below)} | 0 |",
        f"| errors above the knee (overload answered 503 + Retry-After instead) "
        f"| {sum(lv.errors for lv in above)} | 0 |",
        f"| shed answers above the knee, p50 / p99 | {shed_p50:.1f} / {shed_p99:.1f} ms "
        f"| below served p99 |",
        "",
        f"**Knee: {k.connections} connections**, {k.goodput:,.0f} served req/s (the first level "
        f"within 10 % of the best goodput; beyond it more connections only add latency, until "
        f"the in-flight limit turns the excess into `503 + Retry-After`).",
        "",
        "## Per level",
        "",
        "| connections | served req/s | p50 ms | p99 ms | shed (503) /s | shed p99 ms "
        "| errors | error rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [*levels, *([off] if off else []), *([peer] if peer else [])]
    for lv in rows:
        total = lv.served + lv.shed + lv.errors
        shed_p99 = f"{lv.shed_p99_ms:.1f}" if lv.shed else "-"
        lines.append(
            f"| {lv.label} | {lv.goodput:,.0f} | {lv.p50_ms:.1f} | {lv.p99_ms:.1f} "
            f"| {lv.shed_per_s:,.1f} | {shed_p99} | {lv.errors} "
            f"| {lv.errors / max(total, 1):.2%} |"
        )
    lines += [
        "",
        f"## Per request kind, at the knee and at {top.connections} connections",
        "",
        "| connections | kind | served | shed | errors | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in (k, top) if top is not k else (k,):
        for kind, v in lv.by_kind.items():
            lines.append(
                f"| {lv.connections} | {kind} | {v['served']:,.0f} | {v['shed']:,.0f} "
                f"| {v['errors']:,.0f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} |"
            )
    lines += [
        "",
        "Peer in ANCHORS.md (quiet machine): FastAPI `async def` on uvicorn, one cached 3 KB "
        "tile at 32 connections, 3,600 req/s. A shed answer is built from prebuilt bytes by a "
        "pure ASGI middleware (`heatmap.api.shedding`) before any routing; `/healthz` and "
        "`/metrics` are never shed. Plot: `load.png` (served req/s and p99 vs connections).",
        "",
    ]
    return "\n".join(lines)


def plot(levels: list[Level], off: Level | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv.connections for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    ax.plot(x, [lv.goodput for lv in levels], "o-", color="#1f77b4", label="served req/s")
    ax.bar(x, [lv.shed_per_s for lv in levels], width=[v * 0.35 for v in x], color="#ff7f0e",
           alpha=0.45, label="shed 503 /s")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    k = knee(levels)
    ax.axvline(k.connections, color="grey", ls=":", lw=1)
    ax.text(k.connections, ax.get_ylim()[1] * 0.95, " knee", color="grey", va="top")
    ax2 = ax.twinx()
    ax2.plot(x, [lv.p99_ms for lv in levels], "s--", color="#d62728", label="p99 ms (served)")
    if off is not None:
        ax.plot([off.connections], [off.goodput], "x", ms=10, mew=2, color="#1f77b4",
                label="served req/s, shedding off")  # fmt: skip
        ax2.plot([off.connections], [off.p99_ms], "x", ms=10, mew=2, color="#d62728",
                 label="p99 ms, shedding off")  # fmt: skip
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 latency, ms")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3,
              fontsize=8, frameon=False)  # fmt: skip
    ax.set_title("heatmap serve, mixed traffic: throughput and p99 vs concurrency", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------


def closed_windows(port: int) -> list[str]:
    import httpx

    wins = httpx.get(f"http://{HOST}:{port}/api/v1/windows?limit=20").json()["windows"]
    return [w["start"] for w in wins if w["complete"]][:6]


def run_levels(port: int, levels: list[int], seconds: float, closed: list[str]) -> list[Level]:
    out = []
    for n in levels:
        traffic = Traffic(port, closed, seed=n)
        tally = run(_run(port, n, seconds, traffic))
        lv = summarise(str(n), n, seconds, tally)
        out.append(lv)
        print(f"  {n:4d} conn: {lv.goodput:8,.0f} served/s  p50 {lv.p50_ms:7.1f} ms  "
              f"p99 {lv.p99_ms:7.1f} ms  shed {lv.shed_per_s:7,.0f}/s  errors {lv.errors}",
              flush=True)  # fmt: skip
        time.sleep(0.5)
    return out


async def _run(port: int, n: int, seconds: float, traffic: Traffic) -> Tally:
    return await Load(port).run(n, seconds, traffic, ingest=True)


def run(coro: Coroutine[Any, Any, Tally]) -> Tally:
    """Run a coroutine on uvloop when installed (a cheaper client), else asyncio."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    ap.add_argument("--levels", default="1,4,16,64,256,1024", help="connection counts")
    ap.add_argument("--devices", type=int, default=20_000, help="simulated devices")
    ap.add_argument("--no-peers", action="store_true", help="skip shedding-off and bare FastAPI")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    from heatmap.config import Settings

    defaults = Settings(db="unused")  # type: ignore[call-arg]
    limits = {
        k: str(getattr(defaults, k))
        for k in ("max_inflight", "max_inflight_ingest", "retry_after_s")
    }
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="heatmap-bench-load-"))
    log = tmp / "servers.log"
    off = peer = None
    try:
        t0 = time.perf_counter()
        env = build_store(tmp, args.devices)
        print(f"store: {args.devices:,} devices x 40 min in {time.perf_counter() - t0:.1f} s")
        proc, port = start_heatmap(env, log)
        try:
            closed = closed_windows(port)
            print(f"heatmap serve on :{port}, {len(closed)} closed windows in the traffic")
            results = run_levels(port, levels, args.seconds, closed)
        finally:
            stop(proc)
        if not args.no_peers:
            top = levels[-1]
            proc, port = start_heatmap(env, log, max_inflight="0", max_inflight_ingest="0")
            try:
                traffic = Traffic(port, closed, seed=top)
                tally = run(_run(port, top, args.seconds, traffic))
                off = summarise(f"{top}, shedding off", top, args.seconds, tally)
                print(f"  {top} conn, shedding off: {off.goodput:,.0f} served/s  "
                      f"p99 {off.p99_ms:.1f} ms  errors {off.errors}")  # fmt: skip
            finally:
                stop(proc)
            proc, port = start_bare(tmp, log)
            try:
                n = 64
                tally = run(bare_run(port, n, args.seconds))
                peer = summarise(f"{n}, bare FastAPI (peer)", n, args.seconds, tally)
                print(f"  peer bare FastAPI, {n} conn: {peer.goodput:,.0f} req/s")
            finally:
                stop(proc)
    except Exception:
        if log.exists():
            print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t_start
    md = report(results, off, peer, args, wall, (load_before, os.getloadavg()[0]), limits)
    print()
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.md").write_text(md)
    (OUT / "load.json").write_text(
        json.dumps(
            {"levels": [asdict(lv) for lv in results], "shedding_off": off and asdict(off),
             "peer": peer and asdict(peer), "limits": limits},
            indent=1,
        )
    )  # fmt: skip
    plot(results, off, OUT / "load.png")
    print(f"wrote {OUT / 'load.md'} and load.png in {wall:.0f} s")


if __name__ == "__main__":
    main()
