"""Live path: CSV batches POSTed into one ``heatmap serve``, releases, a city run, the file path.

One run, one machine. Each case starts a fresh ``heatmap serve`` (uvicorn, as shipped) on a temp
store with ``HEATMAP_INGEST_TOKEN`` set, no basemap and the default release settings (release
60 s, horizon = window 300 s, grace 5 s); one client (httpx, keep-alive) POSTs CSV batches back
to back, the next batch encoded in a background thread while the current one is in flight.

The pings: ``N`` simulated devices standing around Shanghai (homes in a 40 km disc around
People's Square, denser near the centre, a few metres of GPS jitter per ping), each pinging every
300 s at its own random phase, in event-time order from a start a few hours ago (never in the
future). Batches are made with numpy and encoded with polars (no per-ping Python loop).

1. POST capacity and latency at 2,000 / 20,000 / 100,000-row batches (1 M devices by default),
   each case bounded in wall time; pings/s, p50 / p99 / max per batch.
2. Release lag: the answer of the batch that made a release names it (``release``); the lag is
   that batch's POST latency plus the time from its 200 until ``/api/v1/stats`` serves the new
   ``as_of``.
3. City run: Shanghai, 24 M devices pinging every 300 s (80 k pings/s in real time), replayed as
   fast as the service takes it in 20,000-row batches; sustained pings/s against the real-time
   need, batch latency, release lag, server peak RSS (VmHWM) per million live devices, store size.
4. Beside the file path: the same pings of each case as one Parquet file through
   ``heatmap ingest`` (the whole process timed).

Defaults keep the run to about 15 minutes: each batch case at most 75 s of wall time; the city
run 24 M devices for as much of 900 s of event time as 420 s of wall time allow (the report
says what was covered and what is extrapolated). ``--quick`` is a smoke run of about a minute
that writes nothing. Prints the tables (ratios first) and writes ``bench/out/live.md`` (and the
raw figures to ``bench/out/live.json``).

    .venv/bin/python bench/live.py [--quick] [--devices 1000000] [--case-wall-s 75]
        [--city-devices 24000000] [--city-seconds 900] [--city-wall-s 420]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
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
import polars as pl  # noqa: E402

from bench._procs import free_port, stop, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
TOKEN = "bench-live-token"
PEOPLES_SQUARE = (31.2335, 121.4755)
PERIOD_S = 300  # every device pings every 300 s
RELEASE_S, HORIZON_S, GRACE_S = 60, 300, 5  # the defaults, stated in the report
SHANGHAI = 24_000_000
REALTIME_NEED = SHANGHAI / PERIOD_S  # 80,000 pings/s


# -- the pings -------------------------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 ``x``: a deterministic per-ping random number (any chunking)."""
    with np.errstate(over="ignore"):
        z = x * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class Population:
    """``n`` devices standing around People's Square, pinging every 300 s at their own phase.

    Devices are held sorted by phase, so the pings in event-time order are simply ping ``j`` =
    device ``j % n`` in cycle ``j // n``: any batch ``[j0, j1)`` is a few vectorised lines.
    """

    def __init__(self, n: int, start: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.start = n, start
        self.phase = np.sort(rng.integers(0, PERIOD_S, n, dtype=np.int64)).astype(np.uint16)
        self.ident = rng.permutation(n).astype(np.uint32)  # ids do not follow the phase
        # Radial density ~ exp(-r / 7 km) (Gamma(2) in r), cut at 40 km (beyond: uniform disc).
        r = rng.gamma(2.0, 7.0, n)
        far = r > 40.0
        r[far] = 40.0 * np.sqrt(rng.random(int(far.sum())))
        a = rng.random(n) * 2 * np.pi
        lat0, lng0 = PEOPLES_SQUARE
        self.dlat = (r * np.sin(a) / 111.32).astype(np.float32)
        self.dlng = (r * np.cos(a) / (111.32 * np.cos(np.radians(lat0)))).astype(np.float32)

    def rate(self) -> float:
        """Pings per second of event time."""
        return self.n / PERIOD_S

    def ts_of(self, j: int) -> int:
        """Event time of ping ``j``."""
        return self.start + (j // self.n) * PERIOD_S + int(self.phase[j % self.n])

    def rows_until(self, t: int) -> int:
        """Number of pings with ``ts < t``."""
        cyc, rem = divmod(t - self.start, PERIOD_S)
        return cyc * self.n + int(np.searchsorted(self.phase, rem, side="left"))

    def frame(self, j0: int, j1: int) -> pl.DataFrame:
        """Pings ``[j0, j1)`` as ``device_id, ts, lat, lng``."""
        j = np.arange(j0, j1, dtype=np.int64)
        k = j % self.n
        ts = self.start + (j // self.n) * PERIOD_S + self.phase[k].astype(np.int64)
        h = _mix(j.astype(np.uint64))
        # ~10 m of jitter per axis (uniform), from the ping's own hash
        jlat = ((h & np.uint64(0xFFFF)).astype(np.float64) / 65535.0 - 0.5) * 2e-4
        jlng = (
            ((h >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.float64) / 65535.0 - 0.5
        ) * 2e-4
        lat = np.round(PEOPLES_SQUARE[0] + self.dlat[k].astype(np.float64) + jlat, 6)
        lng = np.round(PEOPLES_SQUARE[1] + self.dlng[k].astype(np.float64) + jlng, 6)
        return pl.DataFrame(
            {"device_id": self.ident[k], "ts": ts, "lat": lat, "lng": lng}
        ).with_columns(
            pl.concat_str(pl.lit("d"), pl.col("device_id").cast(pl.Utf8)).alias("device_id")
        )

    def csv(self, j0: int, j1: int) -> bytes:
        return self.frame(j0, j1).write_csv(float_precision=6).encode()

    def write_parquet(self, path: Path, rows: int, chunk: int = 1_000_000) -> None:
        """The pings ``[0, rows)`` as one Parquet file (the simulator's schema and codec)."""
        from heatmap.simulate import write_pings

        def chunks():  # type: ignore[no-untyped-def]
            for j0 in range(0, rows, chunk):
                yield self.frame(j0, min(rows, j0 + chunk)).to_arrow()

        write_pings(path, chunks())


# -- the server ------------------------------------------------------------------------------


def server_env(db: Path) -> dict[str, str]:
    """The caller's environment without any HEATMAP_ setting, plus the bench's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env.update(
        HEATMAP_DB=str(db),
        HEATMAP_SECRET="bench-live-secret",
        HEATMAP_INGEST_TOKEN=TOKEN,
        HEATMAP_BASEMAP_URL="",
    )
    return env


def start_server(tmp: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (tmp / "store").mkdir(parents=True, exist_ok=True)
    fh = log.open("ab")
    proc = subprocess.Popen(
        [str(BIN / "heatmap"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(tmp / "store" / "heatmap.db"),
        cwd=tmp,  # no .env of the checkout
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_up(f"{base}/healthz", proc)
    return proc, base


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process, kB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the feed --------------------------------------------------------------------------------


@dataclass
class Release:
    tick: str
    batch_ms: float
    served_ms: float | None  # from the 200 until /api/v1/stats serves it; None: never seen
    people: float | None = None
    live: int = 0  # devices with a ping in [t - horizon, t): 0 = a release before any ping


@dataclass
class Feed:
    rows_per_batch: int
    devices: int
    rows: int = 0
    batches: int = 0
    wall_s: float = 0.0
    lat_ms: list[float] = field(default_factory=list)
    rel_batch: list[bool] = field(default_factory=list)
    event_s: int = 0
    first_ts: int = 0
    last_ts: int = 0
    releases: list[Release] = field(default_factory=list)
    ticks_passed: int = 0
    windows_closed: int = 0
    rejected: int = 0
    late: int = 0
    shed: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    error_text: list[str] = field(default_factory=list)
    gen_s: float = 0.0
    client_cpu_s: float = 0.0
    rss_kb: dict[str, int] = field(default_factory=dict)
    store_bytes: int = 0
    final_people: float | None = None
    release_field: bool = True
    stopped_by: str = ""
    server_log_errors: int = 0
    live_at_last_release: int = 0
    first_due_ts: int = 0
    expected_releases: int = 0
    baseline_kb: int = 0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return float(np.percentile(np.asarray(xs), q))


def _stats_as_of(client: httpx.Client, base: str) -> tuple[str | None, float | None]:
    r = client.get(f"{base}/api/v1/stats")
    if r.status_code != 200:
        return None, None
    body = r.json()
    return body["window"]["as_of"], body.get("people")


def _latest_release(client: httpx.Client, base: str) -> str | None:
    r = client.get(f"{base}/api/v1/windows")
    if r.status_code != 200:
        return None
    rel = r.json().get("latest_release")
    return rel["as_of"] if rel else None


def feed(
    pop: Population,
    base: str,
    rows_per_batch: int,
    wall_s: float,
    event_s: int,
    pid: int,
) -> Feed:
    """POST batches back to back until ``wall_s`` or ``event_s`` of event time is used up."""
    res = Feed(rows_per_batch, pop.n)
    end_rows = pop.rows_until(pop.start + event_s)
    q: queue.Queue[tuple[int, int, bytes] | None] = queue.Queue(maxsize=3)
    halt = threading.Event()

    def produce() -> None:
        j = 0
        while j < end_rows and not halt.is_set():
            j1 = min(end_rows, j + rows_per_batch)
            t = time.perf_counter()
            body = pop.csv(j, j1)
            res.gen_s += time.perf_counter() - t
            while not halt.is_set():
                try:
                    q.put((j, j1, body), timeout=0.5)
                    break
                except queue.Full:
                    continue
            j = j1
        q.put(None)

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}
    cpu0 = time.process_time()
    prod = threading.Thread(target=produce, daemon=True)
    prod.start()
    last_release: str | None = None
    last_due: int | None = None
    res.baseline_kb = proc_status(pid).get("VmRSS", 0)
    with httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=2)) as client:
        t_run = time.perf_counter()
        while True:
            if time.perf_counter() - t_run >= wall_s:
                res.stopped_by = "wall bound"
                break
            item = q.get()
            if item is None:
                res.stopped_by = "event time reached"
                break
            j0, j1, body = item
            while True:
                t0 = time.perf_counter()
                r = client.post(f"{base}/api/v1/pings", content=body, headers=headers)
                t_ok = time.perf_counter()
                if r.status_code == 503:
                    res.shed += 1
                    time.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                break
            if r.status_code != 200:
                res.errors[r.status_code] = res.errors.get(r.status_code, 0) + 1
                if len(res.error_text) < 3:
                    res.error_text.append(f"{r.status_code}: {r.text[:200]}")
                if r.status_code >= 500 and sum(res.errors.values()) > 20:
                    res.stopped_by = "too many errors"
                    break
                continue
            ms = (t_ok - t0) * 1e3
            ans = r.json()
            res.rows += j1 - j0
            res.batches += 1
            res.lat_ms.append(ms)
            res.rejected += int(ans.get("rejected_total", 0))
            res.late += int(ans.get("late", 0))
            wc = ans.get("windows_closed", 0)
            res.windows_closed += len(wc) if isinstance(wc, list) else int(wc)
            if "release" in ans:
                made = ans["release"]
            else:  # an older service: detect the release by reading the window list
                res.release_field = False
                latest = _latest_release(client, base)
                made = latest if latest != last_release else None
            res.rel_batch.append(made is not None)
            if made is not None:
                last_release = made
                served, people = None, None
                while time.perf_counter() - t_ok < 5:
                    as_of, people = _stats_as_of(client, base)
                    if as_of == made:
                        served = (time.perf_counter() - t_ok) * 1e3
                        break
                    time.sleep(0.005)
                res.releases.append(Release(made, ms, served, people, live_devices(pop, made)))
            if not res.first_ts:
                res.first_ts = pop.ts_of(j0)
                res.first_due_ts = pop.ts_of(j1 - 1)
            due = (pop.ts_of(j1 - 1) - GRACE_S) // RELEASE_S
            if due != last_due:
                res.expected_releases += 1
                last_due = due
            res.last_ts = pop.ts_of(j1 - 1)
        res.wall_s = time.perf_counter() - t_run
        halt.set()
        try:  # let the producer finish
            while q.get(timeout=5) is not None:
                pass
        except queue.Empty:
            pass
        prod.join(5)
        res.client_cpu_s = time.process_time() - cpu0
        res.event_s = res.last_ts - pop.start + 1 if res.batches else 0
        first_tick = (res.first_due_ts - GRACE_S) // RELEASE_S
        last_tick = (res.last_ts - GRACE_S) // RELEASE_S
        res.ticks_passed = last_tick - first_tick + 1 if res.batches else 0
        res.rss_kb = proc_status(pid)
        try:
            _, res.final_people = _stats_as_of(client, base)
        except httpx.HTTPError:
            pass
    return res


def live_devices(pop: Population, tick_iso: str) -> int:
    """Devices with a ping in ``[t - horizon, t)`` (t an ISO tick)."""
    t = int(datetime.fromisoformat(tick_iso.replace("Z", "+00:00")).timestamp())
    lo = max(pop.start, t - HORIZON_S)
    return min(pop.n, max(0, pop.rows_until(t) - pop.rows_until(lo)))


def run_case(
    tmp: Path, pop: Population, rows_per_batch: int, wall_s: float, event_s: int, label: str
) -> Feed:
    case = tmp / label
    log = case / "server.log"
    case.mkdir(parents=True, exist_ok=True)
    proc, base = start_server(case, log)
    try:
        res = feed(pop, base, rows_per_batch, wall_s, event_s, proc.pid)
    finally:
        stop(proc)
    res.store_bytes = dir_bytes(case / "store")
    text = log.read_text(errors="replace")
    res.server_log_errors = sum(
        ln.startswith(("ERROR", "Traceback")) or " ERROR " in ln for ln in text.splitlines()
    )
    if res.server_log_errors:
        print(f"  server log of {label} has errors: {log}")
    return res


@dataclass
class FileRun:
    rows: int
    wall_s: float
    peak_mb: float
    summary: dict
    parquet_mb: float


def file_path(tmp: Path, pop: Population, rows: int, label: str) -> FileRun:
    """The same pings as one Parquet file through ``heatmap ingest`` (whole process timed)."""
    case = tmp / f"{label}-file"
    (case / "store").mkdir(parents=True, exist_ok=True)
    pq_path = case / "pings.parquet"
    pop.write_parquet(pq_path, rows)
    out_path, err_path = case / "ingest.out", case / "ingest.err"
    with out_path.open("wb") as out, err_path.open("wb") as errf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "heatmap"), "ingest", str(pq_path)],
            env=server_env(case / "store" / "heatmap.db"),
            cwd=case,
            stdout=out,
            stderr=errf,
        )
        _, status, ru = os.wait4(proc.pid, 0)  # its own peak RSS, not the other children's
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"heatmap ingest failed: {err_path.read_text()[-500:]}")
    peak = ru.ru_maxrss / 1024
    summary = json.loads(out_path.read_text().strip().splitlines()[-1])
    size = pq_path.stat().st_size / 1e6
    pq_path.unlink()
    return FileRun(rows, wall, peak, summary, size)


# -- report ----------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def release_cells(res: Feed) -> tuple[str, str, str, str]:
    """p50 / max of releasing-batch latency, of 200 -> served, of the sum; within 1 s.

    Releases made before the first ping (nobody live: the first batch's tick) are left out.
    """
    rels = [r for r in res.releases if r.live]
    empty = len(res.releases) - len(rels)
    rb = [r.batch_ms for r in rels]
    sv = [r.served_ms for r in rels if r.served_ms is not None]
    tot = [r.batch_ms + r.served_ms for r in rels if r.served_ms is not None]
    unseen = sum(r.served_ms is None for r in rels)
    within = sum(t < 1000 for t in tot)
    ok = f"{within}/{len(rels)}" + (f" ({unseen} never served)" if unseen else "")
    if empty:
        ok += f" (+{empty} empty, before the first ping)"
    return (
        f"{_f(pct(rb, 50))} / {_f(max(rb) if rb else None)}",
        f"{_f(pct(sv, 50), '.1f')} / {_f(max(sv) if sv else None, '.1f')}",
        f"{_f(pct(tot, 50))} / {_f(max(tot) if tot else None)}",
        ok,
    )


def notes_of(res: Feed) -> str:
    bad = []
    if res.errors:
        bad.append("HTTP " + ", ".join(f"{k} x{v}" for k, v in sorted(res.errors.items())))
    if res.shed:
        bad.append(f"{res.shed} shed (503)")
    if res.rejected:
        bad.append(f"{res.rejected:,} rejected rows")
    if res.late:
        bad.append(f"{res.late:,} late")
    if res.server_log_errors:
        bad.append(f"{res.server_log_errors} errors in the server log")
    if len(res.releases) != res.expected_releases:
        bad.append(f"{len(res.releases)} releases made, {res.expected_releases} due")
    return "; ".join(bad) or "none"


def report(
    args: argparse.Namespace,
    cases: list[tuple[Feed, FileRun | None]],
    city: tuple[Feed, FileRun | None, Population] | None,
    wall: float,
    loads: tuple[float, float],
) -> str:
    ts = datetime.now(UTC)
    lines = [
        f"# Live benchmark ({platform.machine()}, {os.cpu_count()} cores, {ts:%Y-%m-%d %H:%M} UTC)",
        "",
        f"One `heatmap serve` (uvicorn) per case on a fresh SQLite store, default release "
        f"settings (release {RELEASE_S} s, horizon {HORIZON_S} s, grace {GRACE_S} s, window "
        f"300 s, lateness 120 s); one client on 127.0.0.1 POSTs CSV batches back to back "
        f"(httpx, keep-alive; the next batch is encoded in a client thread meanwhile). Devices "
        f"stand around People's Square (40 km disc, denser near the centre) and ping every "
        f"{PERIOD_S} s at random phases, in event-time order. The client shares the 2 cores "
        f"with the server. Whole run {wall:.0f} s; 1-minute load average {loads[0]:.1f} before, "
        f"{loads[1]:.1f} after (other work shares the machine: absolute figures move with it).",
        "",
        "## POST capacity and latency",
        "",
        f"{args.devices:,} devices ({args.devices / PERIOD_S:,.0f} pings per second of event "
        f"time); each case bounded to {args.case_wall_s:g} s of wall time or "
        f"{args.case_event_s:,} s of event time. File path: the pings of the same case as one "
        "Parquet file through `heatmap ingest` (process start to exit, store opening included).",
        "",
        "| rows per batch | x file path | x 200 k/s target | pings/s | p50 ms | p99 ms | max ms "
        "| batches | event time covered | releases | windows closed | file path pings/s "
        "| server peak RSS MB | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res, fr in cases:
        rate = res.rows / res.wall_s if res.wall_s else 0
        frate = fr.rows / fr.wall_s if fr else None
        lines.append(
            f"| {res.rows_per_batch:,} | {_f(rate / frate if frate else None, '.2f')} "
            f"| {rate / 200_000:.2f} | {rate:,.0f} | {pct(res.lat_ms, 50):.0f} "
            f"| {pct(res.lat_ms, 99):.0f} | {max(res.lat_ms, default=0):.0f} | {res.batches:,} "
            f"| {res.event_s / 60:.1f} min ({res.stopped_by}) | {len(res.releases)} "
            f"| {res.windows_closed} | {_f(frate, ',.0f')} "
            f"| {res.rss_kb.get('VmHWM', 0) / 1024:,.0f} | {notes_of(res)} |"
        )
    lines += [
        "",
        "Target (issue 13): 20,000-row batches at >= 200 k pings/s with p99 <= 250 ms. "
        "Measured on 0.3.0 (issue 13): 2 k rows 23 k pings/s (p50 85 ms, p99 267 ms); 20 k rows "
        "67 k pings/s (p50 291 ms, p99 1.32 s); 100 k rows 131 k pings/s (p50 0.67 s, p99 "
        "1.69 s).",
        "",
        "## Release lag",
        "",
        "The service makes release `t` inside the commit of the batch whose pings pass "
        f"`t + {GRACE_S} s`, durable before that batch's 200, and its answer names the release. "
        "Lag = that batch's POST latency + the time from its 200 until `/api/v1/stats` serves "
        "the new `as_of`; in a real-time feed this is how late a release is past its tick plus "
        "grace (plus the batch's own collection time). The releasing batch against the other "
        "batches is the cost of making a release. A release made before the first ping (the "
        "first batch's tick: nobody live yet) is left out.",
        "",
        "| case | releases within 1 s | lag p50 / max ms | releasing batch p50 / max ms "
        "| other batches p50 ms | 200 -> stats serves it p50 / max ms "
        "| people in last release (public figure) / devices live |",
        "|---|---|---|---|---|---|---|",
    ]
    all_cases = [(f"{r.rows_per_batch:,}-row batches, {r.devices:,} devices", r) for r, _ in cases]
    if city is not None:
        all_cases.append((f"city run, {city[0].devices:,} devices", city[0]))
    for name, res in all_cases:
        rb, sv, tot, ok = release_cells(res)
        other = [ms for ms, rel in zip(res.lat_ms, res.rel_batch, strict=True) if not rel]
        people = ""
        if res.releases and res.releases[-1].people is not None:
            pop_live = res.live_at_last_release
            people = f"{res.releases[-1].people:,.0f} / {pop_live:,}"
        lines.append(f"| {name} | {ok} | {tot} | {rb} | {_f(pct(other, 50))} | {sv} | {people} |")
    if not all(r.release_field for _, r in all_cases):
        lines += ["", "(The answers had no `release` field: releases detected by reading "
                  "`/api/v1/windows` after each batch.)"]  # fmt: skip
    if city is not None:
        lines += ["", *city_section(args, *city)]
    text = "\n".join(lines) + "\n"
    return text


def city_section(
    args: argparse.Namespace, res: Feed, fr: FileRun | None, pop: Population
) -> list[str]:
    rate = res.rows / res.wall_s if res.wall_s else 0
    need = pop.n / PERIOD_S
    frate = fr.rows / fr.wall_s if fr else None
    hwm_mb = res.rss_kb.get("VmHWM", 0) / 1024
    base_mb = res.baseline_kb / 1024
    live = max(1, res.live_at_last_release)
    per_m = hwm_mb / (live / 1e6)
    marginal = (hwm_mb - base_mb) / (live / 1e6)
    full = args.city_full_seconds
    full_rows = full * REALTIME_NEED
    rb, sv, tot, ok = release_cells(res)
    ratio_rows = [
        f"| sustained pings/s / 80,000 pings/s (Shanghai, 24 M pinging every 300 s, real time) "
        f"| **{rate / REALTIME_NEED:.2f}x** |"
    ]
    if pop.n != SHANGHAI:
        ratio_rows.append(
            f"| sustained pings/s / {need:,.0f} pings/s (this run's devices in real time) "
            f"| {rate / need:.2f}x |"
        )
    same = "the same" if fr and fr.rows == res.rows else "the first"
    file_row = (
        f"| file path: {same} {fr.rows:,} pings as one Parquet file, `heatmap ingest` "
        f"| {fr.wall_s:.1f} s, {frate:,.0f} pings/s, peak RSS {fr.peak_mb:,.0f} MB |"
        if fr and frate
        else "| file path | not run |"
    )
    lines = [
        "## City run",
        "",
        f"Ran: {pop.n:,} devices pinging every {PERIOD_S} s ({need:,.0f} pings/s in real time), "
        f"{res.rows_per_batch:,}-row batches POSTed back to back (event time replayed as fast as "
        f"the service took it), bounded to {args.city_seconds:,} s of event time or "
        f"{args.city_wall_s:g} s of wall time: {res.rows:,} pings = {res.event_s:,} s of event "
        f"time ({res.event_s / HORIZON_S:.2f} horizons) in {res.wall_s:.0f} s "
        f"({res.stopped_by}). Live devices at the last release: {live:,}.",
        "",
        "| measure | value |",
        "|---|---|",
        *ratio_rows,
        f"| live path / file path (pings/s) | {_f(rate / frate if frate else None, '.2f')}x |",
        f"| sustained pings/s | {rate:,.0f} |",
        f"| batch p50 / p99 / max | {pct(res.lat_ms, 50):.0f} / {pct(res.lat_ms, 99):.0f} / "
        f"{max(res.lat_ms, default=0):.0f} ms |",
        f"| releases made / due (ticks passed) | {len(res.releases)} / {res.expected_releases} "
        f"({res.ticks_passed}) |",
        f"| releases within 1 s (releasing batch + until served) | {ok} |",
        f"| release lag p50 / max | {tot} ms |",
        f"| releasing batch p50 / max | {rb} ms |",
        f"| 200 -> `/api/v1/stats` serves it, p50 / max | {sv} ms |",
        f"| server peak RSS (VmHWM) | {hwm_mb:,.0f} MB (idle after start: {base_mb:,.0f} MB) |",
        f"| peak RSS per million live devices | {per_m:,.0f} MB ({marginal:,.0f} MB above the "
        f"idle server) |",
        f"| store size at the end | {res.store_bytes / 1e6:,.0f} MB "
        f"({res.store_bytes / 1e6 / (live / 1e6):,.0f} MB per million live devices, pending "
        f"pings included) |",
        f"| windows closed | {res.windows_closed} |",
        file_row,
        f"| client CPU (generating + encoding + HTTP) | {res.client_cpu_s:.1f} s in "
        f"{res.wall_s:.0f} s of wall time |",
        f"| problems | {notes_of(res)} |",
        "",
    ]
    extra = []
    if res.event_s < full or pop.n != SHANGHAI:
        extra.append(
            f"{full:,} s of event time ({full / HORIZON_S:.0f} horizons) of the full city is "
            f"{full_rows / 1e6:,.0f} M pings; at this run's sustained rate that replay takes "
            f"{full_rows / rate / 60:.0f} min"
            if rate
            else ""
        )
    if live < SHANGHAI:
        extra.append(
            f"peak RSS at {SHANGHAI / 1e6:.0f} M live devices, if it grows linearly from this "
            f"run: ~{(base_mb + marginal * SHANGHAI / 1e6) / 1024:,.1f} GB"
        )
    if extra:
        lines.append("Extrapolated (not measured): " + "; ".join(x for x in extra if x) + ".")
    if res.releases:
        lines += [
            "",
            "Each release of the city run:",
            "",
            "| release (tick) | releasing batch ms | 200 -> served ms | people | devices live |",
            "|---|---|---|---|---|",
        ]
        for r in res.releases:
            lines.append(
                f"| {r.tick} | {r.batch_ms:,.0f} | {_f(r.served_ms, '.1f')} "
                f"| {_f(r.people, ',.0f')} | {live_devices(pop, r.tick):,} |"
            )
    return lines


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (about a minute)")
    ap.add_argument("--devices", type=int, default=1_000_000, help="devices of the batch cases")
    ap.add_argument("--batches", default="2000,20000,100000", help="rows per batch, per case")
    ap.add_argument("--case-wall-s", type=float, default=75, help="wall bound of each case")
    ap.add_argument("--case-event-s", type=int, default=3 * 3600, help="event bound per case")
    ap.add_argument("--city-devices", type=int, default=SHANGHAI)
    ap.add_argument(
        "--city-seconds", type=int, default=900, help="event time of the city run (at most)"
    )
    ap.add_argument("--city-wall-s", type=float, default=420, help="wall bound of the city run")
    ap.add_argument("--city-batch", type=int, default=20_000)
    ap.add_argument("--city-full-seconds", type=int, default=900,
                    help="event time the report extrapolates the city run to")  # fmt: skip
    ap.add_argument("--no-file", action="store_true", help="skip the file-path runs")
    ap.add_argument(
        "--file-max-rows",
        type=int,
        default=20_000_000,
        help="the city's file path ingests at most this many of the pings fed (memory bound)",
    )
    ap.add_argument("--no-city", action="store_true")
    ap.add_argument("--hours-ago", type=float, default=5.0, help="event time starts this far back")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.quick:
        args.devices = min(args.devices, 30_000)
        args.case_wall_s = min(args.case_wall_s, 6)
        args.case_event_s = min(args.case_event_s, 1800)
        args.city_devices = min(args.city_devices, 300_000)
        args.city_seconds = min(args.city_seconds, 420)
        args.city_wall_s = min(args.city_wall_s, 20)
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    now = int(time.time())
    start = (now - int(args.hours_ago * 3600)) // PERIOD_S * PERIOD_S
    max_event = now - 60 - start  # never a ping in the future
    tmp = Path(tempfile.mkdtemp(prefix="heatmap-bench-live-"))
    cases: list[tuple[Feed, FileRun | None]] = []
    city = None
    try:
        t = time.perf_counter()
        pop = Population(args.devices, start, args.seed)
        print(f"{args.devices:,} devices in {time.perf_counter() - t:.1f} s; "
              f"start {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
        for rows in (int(x) for x in args.batches.split(",") if x.strip()):
            ev = min(args.case_event_s, max_event)
            res = run_case(tmp, pop, rows, args.case_wall_s, ev, f"b{rows}")
            res.live_at_last_release = (
                live_devices(pop, res.releases[-1].tick) if res.releases else 0
            )
            fr = None if args.no_file or not res.rows else file_path(tmp, pop, res.rows, f"b{rows}")
            cases.append((res, fr))
            print(f"  {rows:>7,} rows/batch: {res.rows / res.wall_s:9,.0f} pings/s, "
                  f"p50 {pct(res.lat_ms, 50):.0f} ms, p99 {pct(res.lat_ms, 99):.0f} ms, "
                  f"{res.event_s / 60:.1f} min of event time, {len(res.releases)} releases, "
                  f"file path {fr.rows / fr.wall_s if fr else 0:,.0f} pings/s; "
                  f"problems: {notes_of(res)}", flush=True)  # fmt: skip
        del pop
        if not args.no_city:
            t = time.perf_counter()
            cpop = Population(args.city_devices, start, args.seed + 1)
            print(f"city: {args.city_devices:,} devices in {time.perf_counter() - t:.1f} s",
                  flush=True)  # fmt: skip
            ev = min(args.city_seconds, max_event)
            res = run_case(tmp, cpop, args.city_batch, args.city_wall_s, ev, "city")
            res.live_at_last_release = (
                live_devices(cpop, res.releases[-1].tick) if res.releases else 0
            )
            # The file path holds every distinct device of the file in memory (~0.5 GB per
            # million in one run): bounded, so a faster live path cannot exhaust the machine.
            rows = min(res.rows, args.file_max_rows)
            fr = None if args.no_file or not rows else file_path(tmp, cpop, rows, "city")
            city = (res, fr, cpop)
            print(
                f"  city: {res.rows / res.wall_s:,.0f} pings/s over {res.wall_s:.0f} s, "
                f"{res.event_s} s of event time; problems: {notes_of(res)}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = report(args, cases, city, time.perf_counter() - t_start, (load_before, os.getloadavg()[0]))
    print()
    print(md)
    if args.quick:  # a smoke run leaves the page's figures alone
        return
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "live.md").write_text(md)
    raw = {
        "args": vars(args),
        "cases": [{"feed": asdict(r), "file": asdict(f) if f else None} for r, f in cases],
        "city": None if city is None else {"feed": asdict(city[0]),
                                           "file": asdict(city[1]) if city[1] else None},
    }  # fmt: skip
    (OUT / "live.json").write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
