"""Run every benchmark and rebuild BENCHMARKS.md from their tables (``make bench``).

Each script prints its table and writes ``bench/out/<name>.md``; this script runs them in turn
(bounded), then stitches the tables, the machine facts and the rerun commands into BENCHMARKS.md.
Pass names to run a subset: ``python bench/run_all.py ingest tiles``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SCRIPTS = {
    "ingest": ("Ingest: file -> durable counts", ["--devices", "60000", "--hours", "3"]),
    "tiles": ("Tiles: PNG and MVT rendering", []),
    "serve": ("Serving over HTTP", []),
    "scale": ("Scale: Dask engine and the national estimate", []),
    "load": ("Load: mixed traffic at rising concurrency", []),
}
TIMEOUT_S = {"ingest": 600, "tiles": 600, "serve": 300, "scale": 900, "load": 600}


def main() -> None:
    wanted = sys.argv[1:] or list(SCRIPTS)
    OUT.mkdir(exist_ok=True)
    for name in wanted:
        script = ROOT / "bench" / f"{name}.py"
        if not script.exists():
            print(f"skip {name}: bench/{name}.py does not exist yet")
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            subprocess.run(
                [sys.executable, str(script), *SCRIPTS[name][1]],
                cwd=ROOT,
                check=True,
                timeout=TIMEOUT_S[name],
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            print(f"{name} failed: {exc}")
        print(f"   {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    write_benchmarks()


def write_benchmarks() -> None:
    """Assemble BENCHMARKS.md from bench/out/*.md."""
    parts = [
        "# Benchmarks",
        "",
        "Every figure below was measured on this project's 2-core machine, with the peers of",
        "ANCHORS.md measured in the same run; ratios matter more than absolute times, which drift",
        "on shared machines. Rerun everything with `make bench` (about 15 minutes), or one concern",
        "with `.venv/bin/python bench/<name>.py`; each script prints its table and writes",
        "`bench/out/<name>.md`, and `python bench/run_all.py` (no argument) rebuilds this page.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, page built {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    for name, (title, _args) in SCRIPTS.items():
        md = OUT / f"{name}.md"
        parts += [f"## {title}", "", f"Rerun: `.venv/bin/python bench/{name}.py`", ""]
        parts.append(md.read_text().strip() if md.exists() else "_not measured yet_")
        for png in sorted(OUT.glob(f"{name}*.png")):
            dest = ROOT / "docs" / "bench" / png.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(png.read_bytes())
            parts += ["", f"![{png.stem}](docs/bench/{png.name})"]
        parts.append("")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts) + "\n")
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
