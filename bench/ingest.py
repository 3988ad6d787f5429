"""Ingest throughput: file -> durable counts, beside polars + polars-h3 on the same file.

Two data sets, each written four ways (``bench/_pingfiles.py``):

- the project's simulator (Shanghai, 60,000 devices pinging every ~45 s, 3 h);
- an independent generator (160,000 devices pinging every 30-60 s for an hour around 200
  centres, plain text ids, sorted by time, 13 row groups);

as Parquet with dictionary ids, Parquet with plain text ids (``pyarrow.parquet.write_table``
defaults), CSV and CSV.gz. For each file, interleaved and ``--repeat`` times:

- **whole process**: ``heatmap ingest FILE`` on a fresh store (start-up, imports, opening the
  store, loading the compiled kernels, reading, counting, committing) against
  ``python -c 'polars reads FILE, polars-h3 indexes every ping'`` as a process;
- **in-process**: ``Heatmap.ingest_paths`` in a process whose store is open and kernels loaded,
  against polars reading the file and polars-h3 indexing it, imports excluded.

Also start-up (``heatmap --help``, a one-row ingest), what opening a store and loading the
kernels cost, and (``--big-rows``) the peak RSS of one ~100 M-ping file.

Run: ``.venv/bin/python bench/ingest.py [--devices 60000] [--hours 3] [--repeat 3]``. Prints
the tables and writes bench/out/ingest.md (medians; every run in bench/out/ingest.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH

from bench._pingfiles import POLARS_H3, crowd_pings, write_variants  # noqa: E402

OUT = Path(__file__).parent / "out"
FORMATS = ("Parquet dictionary", "Parquet plain", "CSV", "CSV.gz")
HEATMAP = str(Path(sys.executable).with_name("heatmap"))


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a whole process; return its wall seconds and peak RSS (its own, from wait4)."""
    with tempfile.TemporaryFile() as errors:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, env=env)
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = status
        if status != 0:
            errors.seek(0)
            raise RuntimeError(f"{cmd[:3]} failed: {errors.read().decode()[-500:]}")
    return {
        "seconds": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
        "last": out.decode().strip().splitlines()[-1] if out.strip() else "",
    }


def ours_process(path: Path, store: Path) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "HEATMAP_DB": str(store / "h.db"), "HEATMAP_SECRET": "bench"}
    r = _run([HEATMAP, "ingest", str(path)], env)
    r["accepted"] = json.loads(r["last"])["accepted"]
    return r


def peer_process(path: Path) -> dict:
    r = _run([sys.executable, "-c", POLARS_H3, str(path)])
    r["accepted"] = int(r["last"])
    return r


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours_inproc(path: str, db: str, q: mp.Queue) -> None:
    from heatmap import _jit
    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap

    t0 = time.perf_counter()
    hm = Heatmap(Settings(db=db, secret="bench"))
    t1 = time.perf_counter()
    _jit.warmup(now=True)
    t2 = time.perf_counter()
    report = hm.ingest_paths([Path(path)], ParseOptions())
    dt = time.perf_counter() - t2
    hm.close()
    q.put(
        {
            "seconds": dt,
            "open_s": t1 - t0,
            "kernels_s": t2 - t1,
            "accepted": report.accepted,
            "peak_mb": _peak_mb(),
        }
    )


def peer_inproc(path: str, q: mp.Queue) -> None:
    import polars as pl
    import polars_h3 as plh3

    t0 = time.perf_counter()
    df = pl.read_parquet(path) if path.endswith(".parquet") else pl.read_csv(path)
    df.select(plh3.latlng_to_cell("lat", "lng", 10, return_dtype=pl.UInt64))
    q.put({"seconds": time.perf_counter() - t0, "accepted": df.height, "peak_mb": _peak_mb()})


def _child(fn, *args: str) -> dict:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    deadline = time.monotonic() + 1800
    while True:
        try:
            res = q.get(timeout=2)
            break
        except queue.Empty:
            if p.exitcode is None and time.monotonic() < deadline:
                continue
        try:  # exited (or out of time): its result may still be in the pipe
            res = q.get(timeout=5)
            break
        except queue.Empty:
            p.kill()
            raise RuntimeError(f"{fn.__name__} {args[0]}: no result (exit {p.exitcode})") from None
    p.join()
    return res


def _median(runs: list[dict], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=60_000, help="simulator devices")
    ap.add_argument("--hours", type=float, default=3.0, help="simulator hours")
    ap.add_argument("--interval-s", type=int, default=45)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each contender")
    ap.add_argument("--crowd-devices", type=int, default=160_000, help="independent generator")
    ap.add_argument(
        "--big-rows",
        type=float,
        default=100e6,
        help="pings of the memory-bound run (0 to skip): 200,000 devices, as many hours as needed",
    )
    ap.add_argument("--data", type=Path, help="keep the generated files here (reused if there)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _datasets(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[dict[str, Path], str]]:
    folder = args.data or tmp
    index = folder / "datasets.json"
    if args.data and index.is_file():
        kept = json.loads(index.read_text())
        return {n: ({f: Path(p) for f, p in files.items()}, d) for n, (files, d) in kept.items()}
    out = _generate(args, folder)
    index.write_text(
        json.dumps({n: ({f: str(p) for f, p in fs.items()}, d) for n, (fs, d) in out.items()})
    )
    return out


def _generate(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[dict[str, Path], str]]:
    import pyarrow as pa

    from heatmap.simulate import simulate_pings

    start = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 08:00 Shanghai, a Tuesday
    sim = pa.concat_tables(
        simulate_pings(
            devices=args.devices,
            start=start,
            hours=args.hours,
            interval_s=args.interval_s,
            seed=1,
        )
    ).select(["device_id", "ts", "lat", "lng"])
    crowd = crowd_pings(devices=args.crowd_devices)
    return {
        "simulator": (
            write_variants(sim, tmp / "sim"),
            f"{sim.num_rows:,} pings, {args.devices:,} devices, ping every ~{args.interval_s} s, "
            f"{args.hours:g} h",
        ),
        "independent": (
            write_variants(crowd, tmp / "crowd"),
            f"{crowd.num_rows:,} pings, {args.crowd_devices:,} devices, ping every 30-60 s, "
            "1 h, 200 centres",
        ),
    }


def _byte_compile() -> None:
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("heatmap")
    if spec and spec.origin:
        compileall.compile_dir(Path(spec.origin).parent, quiet=1)


def run(args: argparse.Namespace, tmp: Path) -> None:
    data = _datasets(args, tmp)
    # Untimed: byte-compiles the package measured, as installing it does (a first run would
    # too, unless PYTHONDONTWRITEBYTECODE is set, as on this machine: then every run would
    # compile the sources again, which no installed copy does).
    _byte_compile()
    # Untimed: compiles the kernels if this install has not yet, and fills the page cache.
    ours_process(next(iter(data.values()))[0]["Parquet dictionary"], tmp / "store")
    # First, while the machine is quiet: the matrix's runs leave it busy for a while after.
    started = startup(tmp, args.repeat)
    runs: dict[str, dict[str, list[dict]]] = {}
    for name, (files, _) in data.items():
        for fmt in FORMATS:
            path = files[fmt]
            key = f"{name} / {fmt}"
            r: dict[str, list[dict]] = {"ours": [], "peer": [], "ours_in": [], "peer_in": []}
            # Interleaved: the machine's speed drifts; the median run of each counts.
            for i in range(args.repeat):
                r["ours"].append(ours_process(path, tmp / "store"))
                r["peer"].append(peer_process(path))
                r["ours_in"].append(_child(ours_inproc, str(path), str(tmp / f"in{i}" / "h.db")))
                r["peer_in"].append(_child(peer_inproc, str(path)))
                shutil.rmtree(tmp / f"in{i}", ignore_errors=True)
            runs[key] = r
            print(key, {k: round(_median(v), 2) for k, v in r.items()}, flush=True)
    lines = _matrix(data, runs, args.repeat)
    lines += ["", *started]
    lines += ["", *csv_parsers(next(iter(data.values()))[0]["CSV"], tmp)]
    if args.big_rows:
        lines += ["", *big_file(args.big_rows, tmp)]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "ingest.md").write_text(text + "\n")
    (OUT / "ingest.json").write_text(json.dumps(runs, indent=1, default=str))


def _matrix(data: dict, runs: dict[str, dict[str, list[dict]]], repeat: int) -> list[str]:
    sizes = {
        f"{n} / {f}": files[f].stat().st_size / 1e6
        for n, (files, _) in data.items()
        for f in FORMATS
    }
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, median of {repeat} "
        "interleaved runs of each contender (range in brackets); load average at the end "
        f"{load} (other work on the same 2 cores slows the peer, which uses both, more than "
        "it slows us: the CPU seconds, user + system of the whole process, are the steadier "
        "comparison).",
        "",
        *[f"- {n}: {desc}." for n, (_, desc) in data.items()],
        "",
        "Peer: polars reads the same file and polars-h3 indexes every ping (res 10). "
        "Ratio = peer time / our time (above 1: we are faster). Ours: parse, validate, hash "
        "ids, one position per device per window, index, count, publish, commit to SQLite.",
        "",
        "| data / format | MB | whole process: ours s | peer s | **ratio** | CPU s ours / peer "
        "| CPU ratio | in-process: ours s | peer s | ratio | peak RSS MB ours / peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        o, p, oi, pi = (_median(r[k]) for k in ("ours", "peer", "ours_in", "peer_in"))
        secs = [x["seconds"] for x in r["ours"]]
        spread = f"[{min(secs):.2f}-{max(secs):.2f}]"
        rss = f"{_median(r['ours'], 'peak_mb'):,.0f} / {_median(r['peer'], 'peak_mb'):,.0f}"
        oc, pc = _median(r["ours"], "cpu_s"), _median(r["peer"], "cpu_s")
        lines.append(
            f"| {key} | {sizes[key]:,.0f} | {o:.2f} {spread} | {p:.2f} | **{p / o:.2f}** "
            f"| {oc:.2f} / {pc:.2f} | {pc / oc:.2f} | {oi:.2f} | {pi:.2f} | {pi / oi:.2f} | {rss} |"
        )
    opens = [x["open_s"] for r in runs.values() for x in r["ours_in"]]
    kernels = [x["kernels_s"] for r in runs.values() for x in r["ours_in"]]
    lines += [
        "",
        f"In-process runs open the store first ({statistics.median(opens):.3f} s median: no "
        "kernel is loaded then) and load every compiled kernel and the H3 tables "
        f"({statistics.median(kernels):.2f} s median), neither counted in their time; the "
        "whole-process figures count both (a large file loads the kernels on a thread while "
        "its first chunks are read).",
    ]
    return lines


def startup(tmp: Path, repeat: int) -> list[str]:
    """Whole-process start-up: ``heatmap --help`` and a one-row ingest into a new store
    (median of 9 runs)."""
    one = tmp / "one.csv"
    one.write_text("device_id,ts,lat,lng\nabc,1764000000,31.2,121.5\n")
    help_runs = [_run([HEATMAP, "--help"]) for _ in range(max(9, repeat))]
    ingest_runs = [ours_process(one, tmp / "one-store") for _ in range(max(9, repeat))]
    imports = _run([sys.executable, "-c", "import polars, polars_h3"])
    libs = "import numpy, pyarrow, polars, pydantic_settings, typer, os; os._exit(0)"
    ours = _run([sys.executable, "-c", libs])  # leaving as ``heatmap`` does: no teardown
    return [
        f"Start-up, whole process, median of {len(help_runs)} runs: "
        f"`heatmap --help` {_median(help_runs):.2f} s, a one-row CSV ingest into a new store "
        f"{_median(ingest_runs):.2f} s (min {min(r['seconds'] for r in ingest_runs):.2f} s); "
        f"importing polars and polars-h3 takes {imports['seconds']:.2f} s, and the libraries "
        f"the ingest needs (numpy, pyarrow, polars, pydantic-settings, typer; without the "
        f"interpreter's teardown, which `heatmap` skips too) {ours['seconds']:.2f} s.",
    ]


_PARSERS = {
    "pyarrow.csv": """
import pyarrow as pa, pyarrow.csv as pacsv
types = {"device_id": pa.string(), "ts": pa.int64(), "lat": pa.float64(), "lng": pa.float64()}
def parse(data):
    return pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(
        column_names=list(types), use_threads=False, block_size=4 << 20),
        convert_options=pacsv.ConvertOptions(column_types=types)).num_rows
""",
    "polars.read_csv": """
import polars as pl
types = {"device_id": pl.String, "ts": pl.Int64, "lat": pl.Float64, "lng": pl.Float64}
def parse(data):
    return pl.read_csv(data, has_header=False, schema=types).height
""",
}
_PARSE_RUN = """
import sys, time
data = open(sys.argv[1], "rb").read()
data = data[data.index(b"\\n") + 1 : data.rindex(b"\\n") + 1]
best = min((lambda t0: (parse(data), time.perf_counter() - t0)[1])(time.perf_counter())
           for _ in range(5))
print(best / data.count(b"\\n") * 1e9)
"""


def csv_parsers(csv: Path, tmp: Path) -> list[str]:
    """The CSV parser candidates on one block (~1 M rows) of ``csv``, one thread each (the
    ingest parses blocks on two threads itself): best of 5, ns a row."""
    block = tmp / "block.csv"
    with csv.open("rb") as fh:
        block.write_bytes(fh.read(70 << 20))
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    got = {}
    for name, code in _PARSERS.items():
        out = subprocess.run(
            [sys.executable, "-c", code + _PARSE_RUN, str(block)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        got[name] = float(out.stdout.strip().splitlines()[-1])
    block.unlink()
    ranked = ", ".join(f"{n} {v:.0f} ns" for n, v in sorted(got.items(), key=lambda kv: kv[1]))
    return [
        f"CSV parser candidates, one ~1 M-row block of `{csv.parent.name}/{csv.name}`, typed "
        f"columns, one thread each, best of 5, per row: {ranked}."
    ]


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
        r = ours_process(path, tmp / f"big-{suffix}")
        path.unlink()
        out.append(
            f"Memory bound, {suffix}: one {n / 1e6:.0f} M-ping file ({size_gb:.1f} GB, "
            f"{devices:,} devices, {hours:.1f} h), `heatmap ingest` as a whole process in "
            f"{r['seconds']:.1f} s ({n / r['seconds'] / 1e6:.2f} M pings/s), "
            f"**peak RSS {r['peak_mb']:,.0f} MB** (the bound: 2 GB for 100 M rows)."
        )
    return "\n\n".join(out).splitlines()


if __name__ == "__main__":
    main()
