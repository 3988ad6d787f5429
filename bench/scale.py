"""Scale benchmark: the aggregation kernel on the local engine and on 1 and 2 Dask workers.

The same >= 50 M simulated Shanghai pings (a Parquet dataset of several files, generated once in
a temp dir) are reduced to exact positions by each engine; every run happens in a fresh child
process, so each peak RSS is that run's own: the client's (``ru_maxrss`` of the child) and every
Dask worker's (``ru_maxrss`` of the worker processes, read with ``client.run``). The local run
also commits the positions to a temp SQLite store (the client-side cost every engine shares).
A second, smaller dataset with one ping per device per window (a ping every 5 minutes, the
national scenario) measures the cost per *position*, which is what a 5-minute ping rate makes of
every ping.

Usage::

    .venv/bin/python bench/scale.py [--quick] [--out bench/out/scale.md]

Writes a Markdown table (ratios first) and the projection for a national deployment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heatmap.engines import (  # noqa: E402
    DaskEngine,
    Engine,
    KernelConfig,
    LocalEngine,
    expand_paths,
    partitions_to_positions,
    plan_partitions,
)
from heatmap.ingest import ParseOptions  # noqa: E402
from heatmap.simulate import PING_SCHEMA, simulate_pings  # noqa: E402

START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, 08:00 in Shanghai
KEY = b"bench-scale-key-0123456789abcdef"
NATION_PEOPLE = 1.4e9
NATION_INTERVAL_S = 300


def generate(root: Path, devices: int, hours: float, interval_s: int, files: int) -> dict:
    """Simulate pings into ``files`` Parquet files (row groups of 1 M); return what was written."""
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    expected = int(devices * hours * 3600 / interval_s)
    per_file = expected // files + 1
    writer: pq.ParquetWriter | None = None
    rows = in_file = n_files = 0
    for table in simulate_pings(
        devices=devices, start=START, hours=hours, interval_s=interval_s, seed=1
    ):
        if writer is None or in_file >= per_file:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(
                root / f"part-{n_files:03d}.parquet", PING_SCHEMA, compression="zstd",
                compression_level=1, use_dictionary=False,
            )  # fmt: skip
            n_files += 1
            in_file = 0
        writer.write_table(table, row_group_size=1 << 20)
        rows += table.num_rows
        in_file += table.num_rows
    if writer is not None:
        writer.close()
    size = sum(p.stat().st_size for p in root.glob("*.parquet"))
    return {
        "rows": rows,
        "files": n_files,
        "bytes": size,
        "devices": devices,
        "interval_s": interval_s,
        "hours": hours,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# One run (in a child process)


def child(engine_name: str, workers: int, data: Path, extra: str) -> dict:
    """Run one engine over the dataset; return timings and memory as a dict.

    ``extra``: ``commit`` also commits the positions to SQLite; ``pg`` upserts the busiest
    window's positions into PostgreSQL device state.
    """
    t0 = time.perf_counter()
    engine: Engine = DaskEngine(workers=workers) if engine_name == "dask" else LocalEngine()
    startup = time.perf_counter() - t0
    parts = plan_partitions(expand_paths([str(data)]), 1 << 21)
    cfg = KernelConfig(window_s=300, base_res=10, key=KEY, opts=ParseOptions(now=2e9))
    dask = engine if isinstance(engine, DaskEngine) else None
    try:
        cpu0 = _cpu_s() + (sum(dask.client.run(_cpu_s).values()) if dask else 0.0)
        agg = partitions_to_positions(parts, cfg, engine)
        cpu = _cpu_s() + (sum(dask.client.run(_cpu_s).values()) if dask else 0.0) - cpu0
        worker_rss = sorted(dask.worker_peak_rss().values()) if dask else []
    finally:
        engine.close()
    out = {
        "engine": engine_name,
        "workers": workers,
        "startup_s": startup,
        "seconds": agg.seconds,
        "cpu_s": cpu,  # user + system, client and workers: what the run cost, whatever the load
        "pings": agg.stats.accepted,
        "positions": agg.positions.height,
        "partitions": agg.partitions,
        "windows": agg.positions["w"].n_unique(),
        "worker_rss": worker_rss,
    }
    if extra == "commit":
        out.update(_commit(agg.positions, agg.stats.max_ts))
    elif extra == "pg":
        out.update(_pg_log(agg.positions))
    out["client_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _cpu_s() -> float:
    """Return this process's user + system CPU seconds (all threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _commit(positions: object, max_ts: int | None) -> dict:
    """Commit the positions to a temp SQLite store: counts, roll-up, suppression, blobs."""
    import polars as pl

    from heatmap.aggregate import cells_to_counts
    from heatmap.commit import commit_unit
    from heatmap.config import Settings
    from heatmap.policy import PublishPolicy
    from heatmap.store.sqlite import SQLiteStore

    assert isinstance(positions, pl.DataFrame)
    with tempfile.TemporaryDirectory(prefix="bench-scale-store-") as tmp:
        settings = Settings(db=f"{tmp}/h.db", secret="bench", basemap_url="")
        store = SQLiteStore(settings)
        policy = PublishPolicy.from_settings(settings)
        t0, c0 = time.perf_counter(), _cpu_s()
        result = commit_unit(
            store,
            positions,
            max_ts,
            policy,
            lateness_s=settings.allowed_lateness_s,
            accepted=positions.height,
        )
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
        store.close()
    counts = cells_to_counts(positions)
    return {
        "commit_s": seconds,
        "commit_cpu_s": cpu,
        "windows_closed": len(result.windows_closed),
        "cells_per_window": counts.height / max(1, counts["w"].n_unique()),
    }


def _pg_log(positions: object) -> dict:
    """Time appending one window's positions to the PostgreSQL ping log, and reading them back
    (what a restarted node does to rebuild its state)."""
    import polars as pl

    from heatmap.config import Settings
    from heatmap.live.state import log_rows
    from heatmap.store.codec import ping_entries
    from heatmap.store.postgres import PostgresStore
    from tests.pg import PgServer

    assert isinstance(positions, pl.DataFrame)
    busiest = positions["w"].value_counts(sort=True)["w"][0]
    window = positions.filter(pl.col("w") == busiest)
    server = PgServer().start()
    try:
        store = PostgresStore(Settings(db=server.create_database(), secret="bench"))
        t0 = time.perf_counter()
        with store.transaction():
            store.append_log(ping_entries(*log_rows(window), store.settings.release_s))
        t1 = time.perf_counter()
        n = sum(len(d) for _, (d, _, _) in store.read_log(0))
        t2 = time.perf_counter()
        assert n == window.height
        store.close()
    finally:
        server.stop()
    return {"pg_rows": window.height, "pg_insert_s": t1 - t0, "pg_update_s": t2 - t1}


def run_child(args: list[str]) -> dict:
    """Run ``child`` in a fresh interpreter (own peak RSS) and parse its JSON line."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# Report


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def report(data: dict, runs: list[dict], per_pos: dict, load: tuple[float, float]) -> str:
    """Return the Markdown report: the table (ratios first) and the national projection."""
    local = next(r for r in runs if r["engine"] == "local")
    lines = [
        "# Scale benchmark: local engine vs Dask",
        "",
        f"{data['rows'] / 1e6:.1f} M simulated pings ({data['devices']:,} devices, one ping per "
        f"~{data['interval_s']} s for {data['hours']} h; {data['files']} Parquet files, zstd, "
        f"{data['bytes'] / 2**30:.2f} GiB) reduced to {local['positions'] / 1e6:.2f} M exact "
        f"positions in {local['windows']} windows, {local['partitions']} partitions of <= 2 M "
        f"rows. Machine: {os.cpu_count()} cores ({platform.machine()}), shared with other jobs: "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after, so wall times and speed-ups "
        "depend on them; CPU seconds (user + system of the client and every worker) do not. "
        "Wall times exclude cluster start-up (shown apart).",
        "",
        "| engine | speed vs local (wall) | CPU vs local | pings/s (wall) | "
        "M pings per CPU-s | wall s | CPU s | start-up s | peak RSS per worker (MB) | "
        "client peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        name = "local" if r["engine"] == "local" else f"dask, {r['workers']} worker(s)"
        rss = ", ".join(_mb(x) for x in r["worker_rss"]) or "(in client)"
        lines.append(
            f"| {name} | {local['seconds'] / r['seconds']:.2f}x | "
            f"{r['cpu_s'] / local['cpu_s']:.2f}x | {r['pings'] / r['seconds'] / 1e6:.2f} M | "
            f"{r['pings'] / r['cpu_s'] / 1e6:.2f} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['startup_s']:.1f} | {rss} | {_mb(r['client_rss'])} |"
        )
    lines += [
        "",
        f"- Client commit of the local run's positions to SQLite (counts, roll-up to res 5, "
        f"suppression, blobs; {local['windows_closed']} windows closed, "
        f"{local['cells_per_window']:,.0f} base cells per window): {local['commit_s']:.1f} s "
        f"wall, {local['commit_cpu_s']:.1f} CPU s.",
        f"- One ping per device per window ({per_pos['pings'] / 1e6:.1f} M pings of "
        f"{per_pos['devices']:,} devices every ~300 s, local engine): "
        f"{per_pos['pings'] / per_pos['cpu_s'] / 1e6:.2f} M pings per CPU-s, "
        f"{per_pos['positions'] / per_pos['pings']:.2f} positions per ping.",
        f"- PostgreSQL ping log (one window of {per_pos['pg_rows']:,} devices as log entries; "
        f"test server with fsync off): "
        f"{per_pos['pg_rows'] / per_pos['pg_insert_s'] / 1e3:,.0f} k pings/s appended, "
        f"{per_pos['pg_rows'] / per_pos['pg_update_s'] / 1e3:,.0f} k pings/s read back.",
        "",
        projection(runs, per_pos),
    ]
    return "\n".join(lines) + "\n"


# Assumption of the projection (not measured): built-up land of China ~250,000 km2, over the
# mean res-10 cell area of 0.0150 km2, bounds the occupied base cells of a national window.
NATION_CELLS = 250_000 / 0.0150


def projection(runs: list[dict], per_pos: dict) -> str:
    """Return the national-deployment paragraph computed from the measured figures."""
    local = next(r for r in runs if r["engine"] == "local")
    two = max((r for r in runs if r["engine"] == "dask"), key=lambda r: r["workers"])
    need = NATION_PEOPLE / NATION_INTERVAL_S  # pings per second, sustained
    per_cpu = per_pos["pings"] / per_pos["cpu_s"]  # at one ping per device-window
    overhead = two["cpu_s"] / local["cpu_s"]  # Dask's serialisation, transfers, scheduling
    kernel_cores = need / per_cpu * overhead
    cell_cpu = local["commit_cpu_s"] / (local["windows_closed"] * local["cells_per_window"])
    window_cpu = NATION_CELLS * cell_cpu  # CPU-s to count, roll up, suppress one window
    append = per_pos["pg_rows"] / per_pos["pg_insert_s"]
    return (
        "## Projection\n\n"
        f"Cost grows linearly: the workers pay per ping (parse, validate, hash-group) and per "
        f"position (H3 index, keyed hash, merge); at one ping per device per window every ping "
        f"is a position, {per_cpu / 1e6:.2f} M pings per CPU-s, against "
        f"{local['pings'] / local['cpu_s'] / 1e6:.2f} M at ~5 pings per position. The client "
        f"pays per base cell per window: {cell_cpu * 1e6:.1f} CPU-us. A national deployment, "
        f"{NATION_PEOPLE / 1e9:.1f} billion people pinging every {NATION_INTERVAL_S} s, is "
        f"{need / 1e6:.2f} M pings/s sustained ({need * 86_400 / 1e9:.0f} billion a day), so "
        f"the kernel needs ~{kernel_cores:.0f} cores busy (Dask costs {overhead:.2f}x the "
        f"local CPU here); with 2x headroom for peaks and request parsing, "
        f"~{2 * kernel_cores:.0f} cores ({math.ceil(2 * kernel_cores / 32)} machine(s) of 32 "
        "cores). "
        f"Publishing one national window (~{NATION_CELLS / 1e6:.0f} M occupied base cells, an "
        f"assumption) costs ~{window_cpu:.0f} CPU-s every {NATION_INTERVAL_S} s: "
        f"~{window_cpu / NATION_INTERVAL_S:.1f} core(s) if spread over regional shards. The "
        f"ping log takes {need / 1e6:.2f} M pings/s; the test PostgreSQL here (2 shared cores) "
        f"appended {append / 1e3:,.0f} k pings/s "
        f"({'enough' if append >= need else f'~{math.ceil(need / append)}x too few'}), and the "
        "in-memory state (tens of bytes per device) must be sharded by device hash beyond one "
        "machine's memory (see docs/scale.md)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 M pings (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale.md"))
    ap.add_argument("--child", nargs=4, metavar=("ENGINE", "WORKERS", "DATA", "EXTRA"))
    args = ap.parse_args()
    if args.child:
        engine, workers, data, extra = args.child
        print(json.dumps(child(engine, int(workers), Path(data), extra)))
        return
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        devices, hours = (50_000, 1.75) if args.quick else (250_000, 3.5)
        data = generate(tmp / "city", devices, hours, 60, files=8)
        print(f"generated {data['rows']:,} pings in {data['seconds']:.0f} s", flush=True)
        runs = []
        for engine, workers, extra in (("local", 0, "commit"), ("dask", 1, "-"), ("dask", 2, "-")):
            r = run_child([engine, str(workers), str(tmp / "city"), extra])
            print(
                f"{engine} {workers}: {r['pings'] / r['seconds'] / 1e6:.2f} M pings/s", flush=True
            )
            runs.append(r)
        shutil.rmtree(tmp / "city")
        n = 200_000 if args.quick else 700_000
        generate(tmp / "sparse", n, 2.0 if args.quick else 1.0, 300, files=4)
        per_pos = run_child(["local", "0", str(tmp / "sparse"), "pg"]) | {"devices": n}
        text = report(data, runs, per_pos, (load0, os.getloadavg()[0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
