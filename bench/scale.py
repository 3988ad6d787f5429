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


def child(engine_name: str, workers: int, data: Path, commit: bool) -> dict:
    """Run one engine over the dataset; return timings and memory as a dict."""
    t0 = time.perf_counter()
    engine: Engine = DaskEngine(workers=workers) if engine_name == "dask" else LocalEngine()
    startup = time.perf_counter() - t0
    parts = plan_partitions(expand_paths([str(data)]), 1 << 21)
    cfg = KernelConfig(window_s=300, base_res=10, key=KEY, opts=ParseOptions(now=2e9))
    try:
        agg = partitions_to_positions(parts, cfg, engine)
        worker_rss = (
            sorted(engine.worker_peak_rss().values()) if isinstance(engine, DaskEngine) else []
        )
    finally:
        engine.close()
    out = {
        "engine": engine_name,
        "workers": workers,
        "startup_s": startup,
        "seconds": agg.seconds,
        "pings": agg.stats.accepted,
        "positions": agg.positions.height,
        "partitions": agg.partitions,
        "windows": agg.positions["w"].n_unique(),
        "worker_rss": worker_rss,
    }
    if commit:
        out.update(_commit(agg.positions, agg.stats.max_ts))
    out["client_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _commit(positions: object, max_ts: int | None) -> dict:
    """Commit the positions to a temp SQLite store: counts, roll-up, suppression, blobs."""
    import polars as pl

    from heatmap.aggregate import cells_to_counts
    from heatmap.config import Settings
    from heatmap.store.sqlite import SQLiteStore

    assert isinstance(positions, pl.DataFrame)
    with tempfile.TemporaryDirectory(prefix="bench-scale-store-") as tmp:
        store = SQLiteStore(Settings(db=f"{tmp}/h.db", secret="bench", basemap_url=""))
        t0 = time.perf_counter()
        result = store.commit_unit(positions, max_ts, accepted=positions.height)
        seconds = time.perf_counter() - t0
        store.close()
    counts = cells_to_counts(positions)
    return {
        "commit_s": seconds,
        "windows_closed": len(result.windows_closed),
        "cells_per_window": counts.height / max(1, counts["w"].n_unique()),
    }


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
        "rows. Machine: "
        f"{os.cpu_count()} cores ({platform.machine()}), shared: load average {load[0]:.1f} "
        f"before, {load[1]:.1f} after. Times exclude cluster start-up (shown apart).",
        "",
        "| engine | speed vs local | pings/s | positions/s | wall s | start-up s | "
        "peak RSS per worker (MB) | client peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        name = "local" if r["engine"] == "local" else f"dask, {r['workers']} worker(s)"
        rss = ", ".join(_mb(x) for x in r["worker_rss"]) or "(in client)"
        lines.append(
            f"| {name} | {local['seconds'] / r['seconds']:.2f}x | "
            f"{r['pings'] / r['seconds'] / 1e6:.2f} M | "
            f"{r['positions'] / r['seconds'] / 1e6:.2f} M | {r['seconds']:.1f} | "
            f"{r['startup_s']:.1f} | {rss} | {_mb(r['client_rss'])} |"
        )
    lines += [
        "",
        f"Client commit of the local run's positions to SQLite (counts, roll-up to res 5, "
        f"suppression, blobs; {local['windows_closed']} windows closed, "
        f"{local['cells_per_window']:,.0f} base cells per window): {local['commit_s']:.1f} s.",
        "",
        f"One ping per device per window ({per_pos['pings'] / 1e6:.1f} M pings of "
        f"{per_pos['devices']:,} devices every ~300 s; local engine): "
        f"{per_pos['pings'] / per_pos['seconds'] / 1e6:.2f} M pings/s, "
        f"{per_pos['positions'] / per_pos['pings']:.2f} positions per ping.",
        "",
        projection(runs, per_pos),
    ]
    return "\n".join(lines) + "\n"


def projection(runs: list[dict], per_pos: dict) -> str:
    """Return the national-deployment paragraph computed from the measured figures."""
    local = next(r for r in runs if r["engine"] == "local")
    cores = os.cpu_count() or 1
    two = max((r for r in runs if r["engine"] == "dask"), key=lambda r: r["workers"])
    # Per-core rate at a 5-minute ping interval (every ping is a position): the local engine
    # used all cores of this machine, so divide by them.
    rate_core = per_pos["pings"] / per_pos["seconds"] / cores
    need = NATION_PEOPLE / NATION_INTERVAL_S  # pings per second, sustained
    day = need * 86_400
    kernel_cores = need / rate_core
    scaling = (local["seconds"] / two["seconds"]) / two["workers"]
    commit_rate = local["positions"] / local["commit_s"]
    return (
        "## Projection\n\n"
        f"National: {NATION_PEOPLE / 1e9:.1f} billion people, a ping every "
        f"{NATION_INTERVAL_S} s = {need / 1e6:.2f} M pings/s sustained, {day / 1e9:.0f} billion "
        "pings a day, and one position per ping (one ping per device per window). "
        f"Measured kernel rate at that ping rate: {rate_core / 1e6:.2f} M pings/s per core, so "
        f"the kernel alone needs ~{kernel_cores:.0f} cores busy; at the measured Dask efficiency "
        f"on {two['workers']} workers ({scaling:.0%} of linear) and a 2x margin for peaks and "
        f"parsing request bodies, ~{2 * kernel_cores / max(scaling, 0.1):.0f} cores. The client "
        f"commit ran at {commit_rate / 1e6:.2f} M positions/s on one core: a single committer "
        f"would need {need / commit_rate:.0f}x that, so the open-window state and the commit "
        "must be sharded by region (see docs/scale.md)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 M pings (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale.md"))
    ap.add_argument("--child", nargs=4, metavar=("ENGINE", "WORKERS", "DATA", "COMMIT"))
    args = ap.parse_args()
    if args.child:
        engine, workers, data, commit = args.child
        print(json.dumps(child(engine, int(workers), Path(data), commit == "1")))
        return
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        devices, hours = (50_000, 1.75) if args.quick else (250_000, 3.5)
        data = generate(tmp / "city", devices, hours, 60, files=8)
        print(f"generated {data['rows']:,} pings in {data['seconds']:.0f} s", flush=True)
        runs = []
        for engine, workers, commit in (("local", 0, "1"), ("dask", 1, "0"), ("dask", 2, "0")):
            r = run_child([engine, str(workers), str(tmp / "city"), commit])
            print(
                f"{engine} {workers}: {r['pings'] / r['seconds'] / 1e6:.2f} M pings/s", flush=True
            )
            runs.append(r)
        shutil.rmtree(tmp / "city")
        n = 200_000 if args.quick else 700_000
        generate(tmp / "sparse", n, 2.0 if args.quick else 1.5, 300, files=4)
        per_pos = run_child(["local", "0", str(tmp / "sparse"), "0"]) | {"devices": n}
        text = report(data, runs, per_pos, (load0, os.getloadavg()[0]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
