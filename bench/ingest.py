"""Ingest throughput: file -> durable counts, beside raw H3 indexing of the same pings.

Generates a simulated Shanghai (devices pinging every 30-60 s) once, then measures, each in a
fresh child process so that peak memory is its own:

- ours: ``Heatmap.ingest_paths`` on a fresh SQLite store (parse, validate, hash ids, positions,
  index, counts, publish, commit), from Parquet and from CSV;
- peers: H3 indexing of *every* ping with h3-py in a Python loop, h3ronpy (vectorised) and
  polars-h3, reading the same Parquet file; and, for scale, our own compiled indexer
  (``heatmap.cellindex``) on every ping likewise.

Run: ``.venv/bin/python bench/ingest.py [--devices 60000] [--hours 4]``. Prints a table with
ratios first and writes bench/out/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

OUT = Path(__file__).parent / "out"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(path: str, db: str, q: mp.Queue) -> None:
    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap

    t_open = time.perf_counter()
    hm = Heatmap(Settings(db=db, secret="bench"))  # opens the store, loads compiled kernels
    t0 = time.perf_counter()
    report = hm.ingest_paths([Path(path)], ParseOptions())
    dt = time.perf_counter() - t0
    q.put(
        {
            "seconds": dt,
            "open_s": t0 - t_open,
            "rows": report.accepted,
            "peak_mb": _peak_mb(),
            **report.summary(),
        }
    )


def h3py_loop(path: str, q: mp.Queue) -> None:
    import h3
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["lat", "lng"])
    lat, lng = t["lat"].to_numpy(), t["lng"].to_numpy()
    n = min(len(lat), 3_000_000)  # a Python loop over everything would take minutes
    t0 = time.perf_counter()
    f = h3.latlng_to_cell
    for a, b in zip(lat[:n].tolist(), lng[:n].tolist(), strict=True):
        f(a, b, 10)
    q.put(
        {
            "seconds": (time.perf_counter() - t0) * len(lat) / n,
            "rows": len(lat),
            "peak_mb": _peak_mb(),
            "note": f"timed on {n:,} rows, scaled",
        }
    )


def h3ronpy_vec(path: str, q: mp.Queue) -> None:
    import pyarrow.parquet as pq
    from h3ronpy.vector import coordinates_to_cells

    t = pq.read_table(path, columns=["lat", "lng"])
    lat, lng = t["lat"].to_numpy(), t["lng"].to_numpy()
    t0 = time.perf_counter()
    coordinates_to_cells(lat, lng, 10)
    q.put({"seconds": time.perf_counter() - t0, "rows": len(lat), "peak_mb": _peak_mb()})


def ours_indexer(path: str, q: mp.Queue) -> None:
    """Our compiled latLngToCell on every ping, one slice per core (as polars-h3 uses both)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow.parquet as pq

    from heatmap.cellindex import latlng_to_cells, warmup

    t = pq.read_table(path, columns=["lat", "lng"])
    lat, lng = t["lat"].to_numpy(), t["lng"].to_numpy()
    warmup()
    cores = os.cpu_count() or 1
    step = -(-len(lat) // cores)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        parts = pool.map(
            lambda i: latlng_to_cells(lat[i : i + step], lng[i : i + step], 10),
            range(0, len(lat), step),
        )
        np.concatenate(list(parts))
    q.put({"seconds": time.perf_counter() - t0, "rows": len(lat), "peak_mb": _peak_mb()})


def polars_h3(path: str, q: mp.Queue) -> None:
    import polars as pl
    import polars_h3 as plh3

    df = pl.read_parquet(path, columns=["lat", "lng"])
    t0 = time.perf_counter()
    df.select(plh3.latlng_to_cell("lat", "lng", 10, return_dtype=pl.UInt64))
    q.put({"seconds": time.perf_counter() - t0, "rows": df.height, "peak_mb": _peak_mb()})


def _child(fn, *args: str) -> dict:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get(timeout=1800)
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=60_000)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--interval-s", type=int, default=45)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of the fast contenders")
    ap.add_argument(
        "--big-rows",
        type=float,
        default=100e6,
        help="pings of the memory-bound run (0 to skip): 200,000 devices, as many hours as needed",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    from heatmap.simulate import simulate_pings, write_pings

    pq_path, csv_path = tmp / "pings.parquet", tmp / "pings.csv"
    start = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 08:00 Shanghai, a Tuesday
    sim = {
        "devices": args.devices,
        "start": start,
        "hours": args.hours,
        "interval_s": args.interval_s,
        "seed": 1,
    }
    n = write_pings(pq_path, simulate_pings(**sim))
    write_pings(csv_path, simulate_pings(**sim))
    print(f"{n:,} pings, {args.devices:,} devices, {args.hours} h, ping every ~{args.interval_s} s")

    # The machine's speed drifts by 20-30 % from minute to minute: the fast contenders run
    # ``repeat`` times, interleaved, and the median run counts (every run is in ingest.json).
    fast = {
        "ours, Parquet -> durable counts": (ours, str(pq_path), "a"),
        "polars-h3, index every ping": (polars_h3, str(pq_path), None),
        "h3ronpy, index every ping": (h3ronpy_vec, str(pq_path), None),
        "ours, compiled H3 indexer, index every ping": (ours_indexer, str(pq_path), None),
    }
    runs: dict[str, list[dict]] = {name: [] for name in fast}
    for i in range(args.repeat):
        for name, (fn, path, db) in fast.items():
            extra = (str(tmp / f"{db}{i}.db"),) if db else ()
            runs[name].append(_child(fn, path, *extra))
    rows = {name: _median(rs) for name, rs in runs.items()}
    rows["ours, CSV -> durable counts"] = _child(ours, str(csv_path), str(tmp / "b.db"))
    rows["h3-py loop, index every ping"] = _child(h3py_loop, str(pq_path))
    order = [
        "ours, Parquet -> durable counts",
        "ours, CSV -> durable counts",
        "polars-h3, index every ping",
        "h3ronpy, index every ping",
        "h3-py loop, index every ping",
        "ours, compiled H3 indexer, index every ping",
    ]
    ref = rows["polars-h3, index every ping"]["seconds"]
    lines = [
        f"Ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {n:,} simulated pings "
        f"({args.devices:,} devices, ping every ~{args.interval_s} s, {args.hours:g} h).",
        f"Parquet, polars-h3, h3ronpy and our indexer: median of {args.repeat} interleaved runs "
        "(range in brackets); CSV and the h3-py loop: one run.",
        "",
        "| work | x polars-h3 throughput | pings/s | seconds | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for name in order:
        r = rows[name]
        rate = n / r["seconds"]
        spread = ""
        if name in runs and len(runs[name]) > 1:
            secs = [x["seconds"] for x in runs[name]]
            spread = f" [{min(secs):.2f}-{max(secs):.2f}]"
        lines.append(
            f"| {name} | {ref / r['seconds']:.2f} | {rate / 1e6:.2f} M | {r['seconds']:.2f}"
            f"{spread} | {r['peak_mb']:.0f} |"
        )
    ours_pq = rows["ours, Parquet -> durable counts"]
    with_open = ours_pq["seconds"] + ours_pq["open_s"]
    lines += [
        "",
        "Ours includes reading, validation, keyed hashing, one position per device per window,",
        "H3 indexing of positions only, roll-up, suppression and the SQLite commit. Not",
        "included, as the peers' reading of the file is not: opening the store once per process",
        f"({ours_pq['open_s']:.2f} s in the median Parquet run, mostly numba initialising and",
        "loading the cached kernels and H3 tables); counted in, that run is "
        f"{ref / with_open:.2f}x polars-h3 ({with_open:.2f} s).",
    ]
    if args.big_rows:
        lines += ["", *big_file(args.big_rows, tmp)]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "ingest.md").write_text(text + "\n")
    (OUT / "ingest.json").write_text(
        json.dumps({"median": rows, "runs": runs}, indent=1, default=str)
    )


def _median(results: list[dict]) -> dict:
    """The run with the median time."""
    return sorted(results, key=lambda r: r["seconds"])[len(results) // 2]


def big_file(rows: float, tmp: Path) -> list[str]:
    """Ingest a ~100 M-ping file once as Parquet and once as CSV: the memory bound."""
    from heatmap.simulate import simulate_pings, write_pings

    devices, interval = 200_000, 45
    hours = rows * interval / devices / 3600
    start = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    sim = {"devices": devices, "start": start, "hours": hours, "interval_s": interval, "seed": 3}
    out = []
    for suffix in ("parquet", "csv"):
        path = tmp / f"big.{suffix}"
        n = write_pings(path, simulate_pings(**sim))
        size_gb = path.stat().st_size / 1e9
        r = _child(ours, str(path), str(tmp / f"big-{suffix}.db"))
        path.unlink()
        out.append(
            f"Memory bound, {suffix}: one {n / 1e6:.0f} M-ping file ({size_gb:.1f} GB, "
            f"{devices:,} devices, {hours:.1f} h, {r['windows_closed']} windows closed) -> "
            f"durable counts in {r['seconds']:.1f} s ({n / r['seconds'] / 1e6:.2f} M pings/s), "
            f"**peak RSS {r['peak_mb']:,.0f} MB** (the issue's bound: ~2 GB for 100 M rows)."
        )
    return "\n\n".join(out).splitlines()


if __name__ == "__main__":
    main()
