"""Serving over HTTP: cached tiles and /api/v1/density at 32 connections, beside nginx.

One run, one machine: a temp store filled with a simulated half hour of Shanghai; then, one at a
time (so they never share the CPU), nginx serving the same tile bytes as static files, our app
on uvicorn (what ``heatmap serve`` runs) and on granian, each with one server process. Load from
``wrk`` (Debian package, installed with apt-get if missing) or, failing that, a bounded Python
load generator. Prints the table (ratios first) and writes ``bench/out/serve.md``.

    .venv/bin/python bench/serve.py [--seconds 8] [--devices 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx
import morecantile
import polars as pl
import pyarrow as pa

from bench._procs import free_port, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
CONNECTIONS = 32
PEOPLES_SQUARE = (31.2335, 121.4755)
ZOOM = 12


@dataclass
class Result:
    target: str  # "tile" | "density"
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# -- data ------------------------------------------------------------------------------------


def build_store(tmp: Path, devices: int) -> dict[str, str]:
    """Fill a temp store with 30 simulated minutes of a morning; return the server environment."""
    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap
    from heatmap.simulate import simulate_pings

    env = {
        "HEATMAP_DB": str(tmp / "store" / "heatmap.db"),
        "HEATMAP_SECRET": "bench-secret",
        "HEATMAP_BASEMAP_URL": "",
    }
    # A busy half hour: 10:00 in Shanghai (02:00 UTC), today or yesterday.
    now = int(time.time())
    t0 = now // 86400 * 86400 + 2 * 3600
    start = datetime.fromtimestamp(t0 if t0 + 3600 < now else t0 - 86400, UTC)
    tables = simulate_pings(devices=devices, start=start, hours=0.5, seed=5)
    frame = pl.from_arrow(pa.concat_tables(list(tables)))
    assert isinstance(frame, pl.DataFrame)
    hm = Heatmap(Settings(db=env["HEATMAP_DB"], secret=env["HEATMAP_SECRET"]))  # type: ignore[call-arg]
    try:
        hm.ingest_frame(frame, ParseOptions())
    finally:
        hm.close()
    return env


# -- load generators -------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, seconds: float) -> tuple[float, float, float, int]:
    """Return (req/s, p50 ms, p99 ms, errors) of ``wrk`` at 32 connections."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(m.group(1)) if m else 0) + (sum(int(x) for x in e.groups()) if e else 0)
    return rps, p50, p99, errors


def run_python(url: str, seconds: float) -> tuple[float, float, float, int]:
    """Bounded asyncio + httpx load generator (used when wrk is unavailable)."""

    async def main() -> tuple[list[float], int]:
        lat: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    r = await client.get(url)
                    lat.append(time.perf_counter() - t)
                    errors += r.status_code >= 400

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return lat, errors

    t0 = time.perf_counter()
    lat, errors = asyncio.run(main())
    wall = time.perf_counter() - t0
    lat.sort()
    return len(lat) / wall, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, errors


def have_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk") is not None


def have_nginx() -> bool:
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return True
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nginx-light"], capture_output=True, check=False
    )
    return Path("/usr/sbin/nginx").exists()


# -- servers ---------------------------------------------------------------------------------


def start_nginx(
    tmp: Path, tile_path: str, data: bytes, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    root = tmp / f"nginx{workers}"
    (root / "html" / Path(tile_path).parent).mkdir(parents=True, exist_ok=True)
    (root / "html" / tile_path).write_bytes(data)
    (root / "logs").mkdir(exist_ok=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        f"""worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/vnd.mapbox-vector-tile mvt; }}
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp_body;
    proxy_temp_path {root}/tmp_proxy;
    fastcgi_temp_path {root}/tmp_fcgi;
    uwsgi_temp_path {root}/tmp_uwsgi;
    scgi_temp_path {root}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/html;
        etag on;
    }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(
        [nginx, "-p", str(root), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(f"{base}/{tile_path}", proc)
    return proc, base


def start_app(server: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if server == "heatmap serve":  # what users run: uvicorn, access log on
        cmd = [str(BIN / "heatmap"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    elif server == "uvicorn":
        cmd = [
            str(BIN / "uvicorn"), "--factory", "heatmap.api.app:app_from_env", "--host",
            "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    else:
        cmd = [
            str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning",
            "--factory", "heatmap.api.app:app_from_env",
        ]  # fmt: skip
    fh = log.open("ab")
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(f"{base}/healthz", proc)
    return proc, base


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each load run")
    ap.add_argument("--devices", type=int, default=20_000, help="simulated devices")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    use_wrk = have_wrk()
    load = run_wrk if use_wrk else run_python
    tmp = Path(tempfile.mkdtemp(prefix="heatmap-bench-serve-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user
    results: list[Result] = []
    try:
        t0 = time.perf_counter()
        env = build_store(tmp, args.devices)
        print(f"store: {args.devices:,} devices x 30 min in {time.perf_counter() - t0:.1f} s")
        t = morecantile.tms.get("WebMercatorQuad").tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], ZOOM)
        tile_path = f"tiles/{ZOOM}/{t.x}/{t.y}.mvt"
        density_path = f"api/v1/density?lat={PEOPLES_SQUARE[0]}&lng={PEOPLES_SQUARE[1]}"
        log = tmp / "servers.log"
        tile_bytes = b""
        for server in ("heatmap serve", "uvicorn", "granian"):
            if server == "granian" and not (BIN / "granian").exists():
                print("granian not installed: skipped")
                continue
            proc, base = start_app(server, env, log)
            try:
                r = httpx.get(f"{base}/{tile_path}")
                assert r.status_code == 200 and r.content, r.status_code
                tile_bytes = r.content
                httpx.get(f"{base}/{density_path}").raise_for_status()
                for target, path in (("tile", tile_path), ("density", density_path)):
                    rps, p50, p99, err = load(f"{base}/{path}", args.seconds)
                    results.append(Result(target, server, rps, p50, p99, err))
                    print(f"  {server:13s} {target:8s} {rps:9,.0f} req/s  p50 {p50:.2f} ms"
                          f"  p99 {p99:.2f} ms  errors {err}")  # fmt: skip
            finally:
                stop(proc)
        if have_nginx():
            for workers in (1, 2):
                proc, base = start_nginx(tmp, tile_path, tile_bytes, workers)
                name = "nginx" if workers == 1 else "nginx x2"
                try:
                    rps, p50, p99, err = load(f"{base}/{tile_path}", args.seconds)
                    results.append(Result("tile", name, rps, p50, p99, err))
                    print(f"  {name:13s} tile     {rps:9,.0f} req/s  p50 {p50:.2f} ms"
                          f"  p99 {p99:.2f} ms")  # fmt: skip
                finally:
                    stop(proc)
        else:
            print("nginx not available: no static-file peer")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads = (load_before, os.getloadavg()[0])
    md = report(results, len(tile_bytes), use_wrk, args, time.perf_counter() - t_start, loads)
    print()
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.md").write_text(md)


def report(
    results: list[Result],
    tile_size: int,
    use_wrk: bool,
    args: argparse.Namespace,
    wall: float,
    loads: tuple[float, float],
) -> str:
    by = {(r.server, r.target): r for r in results}
    lines = [
        f"# Serving benchmark ({platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"One server process each, {CONNECTIONS} connections on 127.0.0.1, "
        f"{'wrk -t2' if use_wrk else 'Python httpx/asyncio load generator'}, "
        f"{args.seconds:g} s per run, servers run one at a time. Cached tile: z{ZOOM} MVT over "
        f"People's Square ({tile_size:,} bytes, identity encoding); density: "
        f"`/api/v1/density` at the same point (computed per request from the live snapshot). "
        f"Store: {args.devices:,} simulated devices x 30 min. `heatmap serve` is uvicorn with "
        f"its access log (as shipped); `uvicorn` and `granian` run the same app factory "
        f"without access log. Whole run {wall:.0f} s; 1-minute load average {loads[0]:.1f} "
        f"before and {loads[1]:.1f} after (other work shares the 2 cores: absolute figures "
        f"and tail latencies move with it).",
        "",
        "## Ratios first",
        "",
        "| measure | ratio | target |",
        "|---|---|---|",
    ]
    for peer, label in (("nginx", "nginx static, 1 worker"), ("nginx x2", "nginx, 2 workers")):
        ref = by.get((peer, "tile"))
        if ref is None:
            continue
        for server in ("heatmap serve", "uvicorn", "granian"):
            r = by.get((server, "tile"))
            if r:
                lines.append(
                    f"| cached tile req/s, {server} / {label} | {r.rps / ref.rps:.3f} | >= 0.10 |"
                )
    for server in ("heatmap serve", "uvicorn", "granian"):
        r = by.get((server, "tile"))
        if r:
            lines.append(f"| cached tile p99, {server} | {r.p99_ms:.1f} ms | < 20 ms |")
    u, g = by.get(("uvicorn", "tile")), by.get(("granian", "tile"))
    if u and g:
        lines.append(f"| cached tile req/s, granian / uvicorn | {g.rps / u.rps:.2f} | |")
    ud, gd = by.get(("uvicorn", "density")), by.get(("granian", "density"))
    if ud and gd:
        lines.append(f"| density req/s, granian / uvicorn | {gd.rps / ud.rps:.2f} | |")
    lines += [
        "",
        "## Absolute figures (drift on a shared machine)",
        "",
        "| target | server | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.target} | {r.server} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.errors} |"
        )
    lines += [
        "",
        "Peers in ANCHORS.md (same machine class, quiet): nginx static 67,600 req/s, FastAPI "
        "on uvicorn 3,600 req/s, on granian 8,500 req/s. Cached tiles skip FastAPI's routing "
        "(`heatmap.api.fastpath`): a lookup in memory, same headers as the route.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
