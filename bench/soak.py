"""Soak: a long continuous feed with a reader, as an operator runs the service for months (#19).

One ``heatmap serve`` (uvicorn, as shipped) on a temp store. One client POSTs 20,000-row CSV
batches back to back: ``N`` simulated devices (``bench/live.py``'s population: 100,000 by
default, around People's Square) each pinging every 300 s, so a batch moves the event clock by
about 60 s and a window closes every ~5 batches. A second client reads in a loop what users read:
PNG and MVT tiles at zooms 9-14 (latest release), ``/api/v1/density`` at random points and
``/api/v1/stats``. Every few seconds the bench samples the server's RSS (``/proc``), the store's
size on disk, the caches' bytes and entries (``/metrics``) and the reads' latency.

Retention is short so that a run of minutes reaches the steady state a city reaches in weeks:
full detail for ``--keep-full-days`` (default 0.25 = 6 h of event time = 72 windows), hourly
roll-ups for ``--keep-hourly-days`` (1), then daily for good; the service compacts every
``--compact-every-s`` (60). Caches keep their defaults (the bench measures what ships).

``--sizes`` measures instead what history costs on disk per day, at 100,000 and 1,000,000
devices: a day of pings ingested as files (``heatmap ingest``), then ``heatmap compact`` with
full detail 0 h, so every hour becomes a roll-up and every day a daily one; bytes of the blobs
per window, per hourly and per daily roll-up, and peak RSS of the ingest (the README's figures).

Reported: RSS and store size against windows closed (a table and ``bench/out/soak.png``), the
RSS slope after warm-up in MB per window (0.3.0: ~0.47 MB per window, still rising) and whether
it stays within 10% of its level at the end of warm-up (the first third of the run), store
growth once compaction holds it, read latency over time, errors. ``--no-reader`` runs the feed
alone for comparison. Writes ``bench/out/soak.md`` and ``bench/out/soak.json``.

    .venv/bin/python bench/soak.py [--minutes 9] [--devices 100000] [--batch-rows 20000]
        [--no-reader] [--quick]
    .venv/bin/python bench/soak.py --sizes [--hours 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench._procs import free_port, stop, wait_up  # noqa: E402
from bench.live import PEOPLES_SQUARE, Population, dir_bytes, proc_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
TOKEN = "bench-soak-token"
OPS = "bench-soak-ops"
SAMPLE_S = 5.0
MB = 1 << 20
# Tiles around People's Square, zooms 9-14 (x, y at each zoom), PNG and MVT.
TILES = [
    (z, int((PEOPLES_SQUARE[1] + 180) / 360 * 2**z) + dx, _y + dy)
    for z in range(9, 15)
    for _y in [int((1 - np.arcsinh(np.tan(np.radians(PEOPLES_SQUARE[0]))) / np.pi) / 2 * 2**z)]
    for dx in (-1, 0, 1)
    for dy in (-1, 0, 1)
]


@dataclass
class Sample:
    t_s: float
    batches: int
    windows_closed: int
    rss_mb: float
    store_mb: float
    cache_mb: float
    reads: int
    read_p50_ms: float
    read_p99_ms: float
    errors: int


@dataclass
class Run:
    label: str
    devices: int
    batch_rows: int
    reader: bool
    settings: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    batches: int = 0
    windows_closed: int = 0
    reads: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_text: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cache_limits: dict[str, float] = field(default_factory=dict)
    health: dict[str, object] = field(default_factory=dict)


def _metrics(client: httpx.Client, base: str) -> dict[str, float]:
    """Return ``bytes:<cache>`` and ``limit:<cache>:<unit>`` of ``/metrics``."""
    r = client.get(f"{base}/metrics", headers={"Authorization": f"Bearer {OPS}"})
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        m = re.match(
            r'heatmap_cache_(bytes|limit)\{cache="([a-z_]+)"(?:,unit="([a-z]+)")?\} ([0-9.e+]+)',
            line,
        )
        if m:
            key = f"{m.group(1)}:{m.group(2)}" + (f":{m.group(3)}" if m.group(3) else "")
            out[key] = float(m.group(4))
    return out


def run(args: argparse.Namespace, tmp: Path, reader: bool, minutes: float) -> Run:
    settings = {
        "HEATMAP_KEEP_FULL_DAYS": str(args.keep_full_days),
        "HEATMAP_KEEP_HOURLY_DAYS": str(args.keep_hourly_days),
        "HEATMAP_KEEP_DAILY_DAYS": "0",
        "HEATMAP_COMPACT_EVERY_S": str(args.compact_every_s),
    }
    label = "reader" if reader else "ingest only"
    res = Run(label, args.devices, args.batch_rows, reader, settings)
    case = tmp / res.label.replace(" ", "-")
    (case / "store").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env.update(
        HEATMAP_DB=str(case / "store" / "heatmap.db"),
        HEATMAP_SECRET="bench-soak-secret",
        HEATMAP_INGEST_TOKEN=TOKEN,
        HEATMAP_METRICS_TOKEN=OPS,
        HEATMAP_BASEMAP_URL="",
        **settings,
    )
    port = free_port()
    log = (case / "server.log").open("ab")
    proc = subprocess.Popen(
        [str(BIN / "heatmap"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=case,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(f"{base}/healthz", proc)
    # Event time: enough history behind "now" for the whole run (pings may not be future).
    span_s = int(minutes * 60 * 6 * args.batch_rows / (args.devices / 300)) + 3 * 86400
    pop = Population(args.devices, int(time.time()) - span_s)
    halt = threading.Event()
    lat: list[tuple[float, float]] = []
    lock = threading.Lock()

    def feed() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}
        j = 0
        limit = pop.rows_until(int(time.time()))
        with httpx.Client(timeout=120) as c:
            while not halt.is_set() and j < limit:
                body = pop.csv(j, j + args.batch_rows)
                r = c.post(f"{base}/api/v1/pings", content=body, headers=headers)
                if r.status_code != 200:
                    with lock:
                        res.errors[f"POST {r.status_code}"] = (
                            res.errors.get(f"POST {r.status_code}", 0) + 1
                        )
                        if len(res.error_text) < 5:
                            res.error_text.append(r.text[:200])
                    if r.status_code == 503:
                        time.sleep(1)
                    continue
                j += args.batch_rows
                with lock:
                    res.batches += 1
                    res.windows_closed += int(r.json()["windows_closed"])

    def read() -> None:
        rng = random.Random(3)
        while not res.batches and not halt.is_set():  # reads before any data are 404s
            time.sleep(0.05)
        with httpx.Client(timeout=60) as c:
            while not halt.is_set():
                z, x, y = rng.choice(TILES)
                lat0 = PEOPLES_SQUARE[0] + rng.uniform(-0.1, 0.1)
                lng0 = PEOPLES_SQUARE[1] + rng.uniform(-0.1, 0.1)
                for url, params in (
                    (f"/tiles/{z}/{x}/{y}.png", None),
                    (f"/tiles/{z}/{x}/{y}.mvt", None),
                    ("/api/v1/density", {"lat": lat0, "lng": lng0}),
                    ("/api/v1/stats", None),
                ):
                    t0 = time.perf_counter()
                    try:
                        r = c.get(base + url, params=params)
                        code = r.status_code
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__  # type: ignore[assignment]
                    ms = (time.perf_counter() - t0) * 1e3
                    with lock:
                        res.reads += 1
                        lat.append((time.monotonic(), ms))
                        if code not in (200, 204):
                            res.errors[f"GET {code}"] = res.errors.get(f"GET {code}", 0) + 1

    threads = [threading.Thread(target=feed, daemon=True)]
    if reader:
        threads.append(threading.Thread(target=read, daemon=True))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        with httpx.Client(timeout=30) as c:
            while time.monotonic() - t0 < minutes * 60 and threads[0].is_alive():
                time.sleep(SAMPLE_S)
                now = time.monotonic()
                m = _metrics(c, base)
                with lock:
                    recent = [ms for at, ms in lat if at > now - SAMPLE_S]
                    sample = Sample(
                        round(now - t0, 1),
                        res.batches,
                        res.windows_closed,
                        proc_status(proc.pid).get("VmRSS", 0) / 1024,
                        dir_bytes(case / "store") / MB,
                        sum(v for k, v in m.items() if k.startswith("bytes:")) / MB,
                        res.reads,
                        float(np.percentile(recent, 50)) if recent else float("nan"),
                        float(np.percentile(recent, 99)) if recent else float("nan"),
                        sum(res.errors.values()),
                    )
                res.samples.append(sample)
                print(
                    f"  {res.label}: {sample.t_s:6.0f} s  windows {sample.windows_closed:5d}  "
                    f"RSS {sample.rss_mb:6.0f} MB  store {sample.store_mb:6.1f} MB  "
                    f"caches {sample.cache_mb:6.1f} MB  reads {sample.reads}",
                    flush=True,
                )
            res.cache_limits = {k: v for k, v in _metrics(c, base).items() if k.startswith("limit")}
            res.health = c.get(f"{base}/healthz").json()
    finally:
        halt.set()
        for t in threads:
            t.join(30)
        res.wall_s = time.monotonic() - t0
        stop(proc)
    return res


def summarise(r: Run) -> dict[str, float]:
    """Warm-up = the first third of the samples; slope of RSS against windows after it."""
    s = r.samples
    if len(s) < 6:
        return {}
    warm = s[len(s) // 3]
    after = s[len(s) // 3 :]
    w = np.array([x.windows_closed for x in after], dtype=float)
    rss = np.array([x.rss_mb for x in after])
    slope = float(np.polyfit(w, rss, 1)[0]) if np.ptp(w) > 0 else float("nan")
    store = np.array([x.store_mb for x in after])
    other = np.array([x.rss_mb - x.cache_mb for x in after])
    half = s[len(s) // 2]
    return {
        "rss_start_mb": s[0].rss_mb,
        "rss_warm_mb": warm.rss_mb,
        "rss_max_after_mb": float(rss.max()),
        "rss_end_mb": s[-1].rss_mb,
        "rss_over_warm_pct": 100 * (float(rss.max()) / warm.rss_mb - 1),
        "rss_mb_per_window": slope,
        "windows": s[-1].windows_closed,
        "store_half_mb": half.store_mb,
        "store_end_mb": s[-1].store_mb,
        "store_max_mb": float(store.max()),
        "reads": s[-1].reads,
        "other_warm_mb": warm.rss_mb - warm.cache_mb,
        "other_max_after_mb": float(other.max()),
        "other_mb_per_window": float(np.polyfit(w, other, 1)[0]) if np.ptp(w) > 0 else 0.0,
    }


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in runs:
        w = [x.windows_closed for x in r.samples]
        a.plot(w, [x.rss_mb for x in r.samples], label=f"RSS, {r.label}")
        if r.reader:
            a.plot(w, [x.rss_mb - x.cache_mb for x in r.samples], label="RSS - caches", ls="--")
        b.plot(w, [x.store_mb for x in r.samples], label=f"store, {r.label}")
    a.set(xlabel="windows closed", ylabel="MB", title="server RSS")
    b.set(xlabel="windows closed", ylabel="MB", title="store on disk (file + WAL)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(runs: list[Run], args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    main = runs[0]
    lines = [
        f"Soak, {when}: {args.devices:,} devices pinging every 300 s, {args.batch_rows:,}-row "
        f"batches POSTed back to back (~{args.batch_rows * 300 // args.devices} s of event time "
        f"each), retention: full detail {args.keep_full_days} d, hourly "
        f"{args.keep_hourly_days} d, then daily; compaction every {args.compact_every_s} s; "
        "caches at their defaults. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| run | wall | batches | windows closed | reads | errors | RSS start -> end of warm-up "
        "-> max after -> end | RSS after warm-up | slope | RSS - caches: warm -> max (slope) "
        "| store at half -> end (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        f = summarise(r)
        if not f:
            continue
        lines.append(
            f"| {r.label} | {r.wall_s / 60:.1f} min | {r.batches:,} | {r.windows_closed:,} | "
            f"{r.reads:,} | {sum(r.errors.values())} | {f['rss_start_mb']:.0f} -> "
            f"{f['rss_warm_mb']:.0f} -> {f['rss_max_after_mb']:.0f} -> {f['rss_end_mb']:.0f} MB "
            f"| within {f['rss_over_warm_pct']:+.1f}% | {f['rss_mb_per_window']:+.3f} MB/window "
            f"| {f['other_warm_mb']:.0f} -> {f['other_max_after_mb']:.0f} MB "
            f"({f['other_mb_per_window']:+.3f} MB/window) "
            f"| {f['store_half_mb']:.1f} -> {f['store_end_mb']:.1f} ({f['store_max_mb']:.1f}) MB |"
        )
    lines += [
        "",
        "0.3.0 on the same feed with a reader (issue #19): RSS 427 -> 589 MB in 9 min, "
        "still rising at ~0.47 MB per window; store 11 -> 38 MB, growing without bound.",
        "",
        f"Over time ({main.label}; every ~{max(1, len(main.samples) // 12) * SAMPLE_S:.0f} s):",
        "",
        "| t | windows | RSS MB | caches MB | RSS - caches MB | store MB | read p50 ms | "
        "read p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(main.samples) // 12)
    for x in main.samples[::step] + ([main.samples[-1]] if main.samples else []):
        lines.append(
            f"| {x.t_s:.0f} s | {x.windows_closed} | {x.rss_mb:.0f} | {x.cache_mb:.1f} | "
            f"{x.rss_mb - x.cache_mb:.0f} | {x.store_mb:.1f} | {x.read_p50_ms:.1f} | "
            f"{x.read_p99_ms:.1f} |"
        )
    bounds = []
    for key, v in main.cache_limits.items():
        _, name, unit = key.split(":")
        bounds.append(f"{name} {v / MB:.0f} MiB" if unit == "bytes" else f"{name} {v:,.0f}")
    lines += [
        "",
        "Cache bounds in force (`/metrics` `heatmap_cache_limit`, the defaults): "
        + ", ".join(bounds),
        "",
        f"Store at the end (`/healthz`): {main.health.get('store_bytes', 0) / MB:.1f} MB, "
        f"roll-ups {main.health.get('rollups')}, oldest "
        f"{(main.health.get('oldest') or {}).get('kind')} "
        f"{(main.health.get('oldest') or {}).get('start')}.",
    ]
    sizes = OUT / "soak_sizes.md"
    if sizes.exists():
        lines += ["", "### History on disk", "", sizes.read_text().strip()]
    for r in runs:
        if r.errors:
            lines += ["", f"Errors ({r.label}): {r.errors} {'; '.join(r.error_text)}"]
    return "\n".join(lines) + "\n"


def store_sizes(devices: int, hours: float, tmp: Path) -> dict[str, float]:
    """Bytes on disk of a day of history at ``devices``: per window, per hour and per day."""
    import sqlite3

    case = tmp / f"sizes-{devices}"
    (case / "store").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env.update(HEATMAP_DB=str(case / "store" / "heatmap.db"), HEATMAP_SECRET="bench-soak")
    start = int(time.time()) // 86400 * 86400 - 3 * 86400 - 8 * 3600  # a Shanghai midnight
    pop = Population(devices, start)
    rows = pop.rows_until(start + int(hours * 3600))
    out: dict[str, float] = {"devices": devices, "hours": hours}
    chunk = 5_000_000
    t0 = time.perf_counter()
    peak = 0.0
    for j0 in range(0, rows, chunk):  # a file per chunk, as a feed would deliver them
        path = case / f"pings-{j0}.parquet"
        _write_range(pop, path, j0, min(rows, j0 + chunk))
        r = subprocess.run(
            ["/usr/bin/time", "-f", "%M", str(BIN / "heatmap"), "ingest", str(path)],
            env=env, cwd=case, capture_output=True, text=True, check=True,
        )  # fmt: skip
        peak = max(peak, int(r.stderr.strip().splitlines()[-1]) / 1024)
        path.unlink()
    out["ingest_s"] = time.perf_counter() - t0
    out["ingest_peak_rss_mb"] = peak
    db = case / "store" / "heatmap.db"

    def blobs(sql: str) -> tuple[int, float]:
        con = sqlite3.connect(db)
        try:
            n, total = con.execute(sql).fetchone()
        finally:
            con.close()
        return int(n), float(total or 0)

    n, b = blobs("SELECT count(*), sum(length(data)) FROM published")
    _, raw = blobs("SELECT count(*), sum(length(data)) FROM base_counts")
    out["windows"] = n
    out["window_published_kb"] = b / max(n, 1) / 1024
    out["window_raw_kb"] = raw / max(n, 1) / 1024
    out["file_mb_full"] = dir_bytes(case / "store") / MB
    env.update(HEATMAP_KEEP_FULL_DAYS="0.0001", HEATMAP_KEEP_HOURLY_DAYS="0")
    subprocess.run([str(BIN / "heatmap"), "compact"], env=env, cwd=case, check=True)
    n, b = blobs("SELECT count(*), sum(length(data) + length(sums)) FROM rollups WHERE level = 1")
    out["hours"] = n
    out["hour_kb"] = b / max(n, 1) / 1024
    env.update(HEATMAP_KEEP_HOURLY_DAYS="0.0002")
    subprocess.run([str(BIN / "heatmap"), "compact"], env=env, cwd=case, check=True)
    n, b = blobs("SELECT count(*), sum(length(data) + length(sums)) FROM rollups WHERE level = 2")
    out["days"] = n
    out["day_kb"] = b / max(n, 1) / 1024
    return out


def _write_range(pop: Population, path: Path, j0: int, j1: int) -> None:
    from heatmap.simulate import write_pings

    def chunks():  # type: ignore[no-untyped-def]
        for a in range(j0, j1, 1_000_000):
            yield pop.frame(a, min(j1, a + 1_000_000)).to_arrow()

    write_pings(path, chunks())


def sizes_report(rows: list[dict[str, float]], window_s: int = 300) -> str:
    per_day = 86400 // window_s
    lines = [
        "History on disk (`bench/soak.py --sizes`): a day of pings ingested, then compacted "
        "(every hour rolled up, then the day). Blob bytes (zstd) per unit; a day at full "
        f"detail is {per_day} windows (published values and raw counts), an hourly roll-up "
        "keeps resolutions up to base_res - 1, a daily one up to base_res - 2.",
        "",
        "| devices | window (published + raw) | day at full detail | hourly roll-up | "
        "day of hourly roll-ups | daily roll-up | ingest peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["window_published_kb"] + r["window_raw_kb"]
        lines.append(
            f"| {int(r['devices']):,} | {w:,.0f} KB | {w * per_day / 1024:,.1f} MB | "
            f"{r['hour_kb']:,.0f} KB | {r['hour_kb'] * 24 / 1024:,.1f} MB | "
            + (f"{r['day_kb']:,.0f} KB" if r["days"] else "- (under a day ingested)")
            + f" | {r['ingest_peak_rss_mb']:,.0f} MB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=9.0)
    p.add_argument("--ingest-minutes", type=float, default=3.0)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--batch-rows", type=int, default=20_000)
    p.add_argument("--keep-full-days", type=float, default=0.25)
    p.add_argument("--keep-hourly-days", type=float, default=1.0)
    p.add_argument("--compact-every-s", type=int, default=60)
    p.add_argument("--no-reader", action="store_true")
    p.add_argument("--quick", action="store_true", help="a 1-minute smoke run, nothing written")
    p.add_argument("--sizes", action="store_true", help="bytes of history per day instead")
    p.add_argument("--report-only", action="store_true", help="rebuild soak.md from soak.json")
    p.add_argument("--hours", type=float, default=26.0, help="--sizes: hours at 100,000")
    p.add_argument("--big-hours", type=float, default=6.0, help="--sizes: hours at 1,000,000")
    args = p.parse_args()
    if args.sizes:
        tmp = Path(tempfile.mkdtemp(prefix="heatmap-sizes-"))
        try:
            rows = [
                store_sizes(100_000, args.hours, tmp),
                store_sizes(1_000_000, args.big_hours, tmp),
            ]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        text = sizes_report(rows)
        print(text)
        OUT.mkdir(exist_ok=True)
        (OUT / "soak_sizes.md").write_text(text)
        (OUT / "soak_sizes.json").write_text(json.dumps(rows, indent=1))
        return
    if args.report_only:
        raw = json.loads((OUT / "soak.json").read_text())
        runs = []
        for r in raw:
            r["samples"] = [Sample(**x) for x in r["samples"]]
            runs.append(Run(**r))
        args.devices, args.batch_rows = runs[0].devices, runs[0].batch_rows
        (OUT / "soak.md").write_text(report(runs, args))
        plot(runs, OUT / "soak.png")
        return
    if args.quick:
        args.minutes, args.ingest_minutes, args.devices, args.batch_rows = 1.0, 0.0, 20_000, 4_000
    tmp = Path(tempfile.mkdtemp(prefix="heatmap-soak-"))
    try:
        runs = [run(args, tmp, not args.no_reader, args.minutes)]
        if args.ingest_minutes and not args.no_reader:
            runs.append(run(args, tmp, False, args.ingest_minutes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(runs, args)
    print(text)
    if not args.quick:
        OUT.mkdir(exist_ok=True)
        (OUT / "soak.md").write_text(text)
        (OUT / "soak.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
        plot(runs, OUT / "soak.png")


if __name__ == "__main__":
    main()
