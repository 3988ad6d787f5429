"""Run every benchmark and rebuild BENCHMARKS.md from their tables (``make bench``).

Each script prints its table and writes ``bench/out/<name>.md``; this script runs them in turn
(bounded), then stitches the tables, the machine facts and the rerun commands into BENCHMARKS.md.
Plots where a curve says more than a table: ``bench/out/<name>*.png`` written by a script (load:
throughput and p99 vs concurrency) and tile time vs zoom drawn here from ``tiles.md``; they are
copied to ``docs/bench/``. Pass names to run a subset: ``python bench/run_all.py ingest tiles``;
``python bench/run_all.py --page`` only rebuilds the page from what ``bench/out`` holds.
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
    "live": ("Live: POSTed batches, releases", []),
    "privacy": ("Privacy: cells withheld, leaks and error of public values, 0.3.0 vs now", []),
    "soak": ("Soak: a continuous feed with a reader, memory and disk over time", []),
}
TIMEOUT_S = {
    "ingest": 1800,
    "tiles": 600,
    "serve": 300,
    "scale": 900,
    "load": 600,
    "live": 1500,
    "privacy": 600,
    "soak": 1800,
}


def main() -> None:
    if sys.argv[1:] == ["--page"]:
        write_benchmarks()
        return
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


_UNIT_MS = {"µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(cell: str) -> float | None:
    """Return milliseconds from a table cell such as ``769.8 µs`` or ``5.07 ms``."""
    parts = cell.replace(",", "").split()
    if len(parts) != 2 or parts[1] not in _UNIT_MS:
        return None
    try:
        return float(parts[0]) * _UNIT_MS[parts[1]]
    except ValueError:
        return None


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Return the tables of a markdown page by the heading above them: rows as header -> cell."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                tables[heading] = []
            elif not all(set(c) <= {"-", ":"} for c in cells):
                tables[heading].append(dict(zip(header, cells, strict=False)))
        else:
            header = None
    return tables


def plot_tiles(md: Path, out: Path) -> bool:
    """Plot tile render time vs zoom (ours and the peers) from ``bench/out/tiles.md``."""
    if not md.exists():
        return False
    tables = markdown_tables(md.read_text())
    mvt = next((rows for h, rows in tables.items() if h.startswith("MVT")), None)
    png = next((rows for h, rows in tables.items() if h.startswith("PNG")), None)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for rows, columns in (
        (mvt, {"ours p50": "MVT, ours", "PostGIS p50": "MVT, PostGIS ST_AsMVT",
               "mapbox-vector-tile p50": "MVT, mapbox-vector-tile"}),
        (png, {"ours p50": "PNG, ours", "Pillow polygons p50": "PNG, Pillow polygon per hex"}),
    ):  # fmt: skip
        for row in rows or []:
            for col, label in columns.items():
                v = _ms(row.get(col, ""))
                if v is not None and row.get("zoom", "").isdigit():
                    xs, ys = series.setdefault(label, ([], []))
                    xs.append(int(row["zoom"]))
                    ys.append(v)
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"MVT": "-", "PNG": "--"}
    for label, (xs, ys) in series.items():
        ours = "ours" in label
        ax.plot(xs, ys, styles[label[:3]], marker="o" if ours else ".", lw=2.2 if ours else 1.2,
                label=label)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("zoom")
    ax.set_ylabel("render time per tile, p50 (ms, log)")
    ax.set_title("Tile render time vs zoom, cold cache (bench/tiles.py)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def embed(text: str) -> str:
    """Return a script's page ready to sit under a ``##`` section of BENCHMARKS.md.

    Its own title (a leading ``#`` line) becomes an italic line and its headings move one
    level down, so the page keeps one outline.
    """
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = f"_{lines[0][2:].strip()}_"
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in lines)


def write_benchmarks() -> None:
    """Assemble BENCHMARKS.md from bench/out/*.md (and plot what a curve shows better)."""
    try:
        plot_tiles(OUT / "tiles.md", OUT / "tiles_zoom.png")
    except Exception as exc:  # noqa: BLE001 - a plot must never lose the page
        print(f"tile plot skipped: {exc}")
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
        parts.append(embed(md.read_text()) if md.exists() else "_not measured yet_")
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
