"""Tile benchmark: our MVT and PNG renderers against PostGIS, mapbox-vector-tile and Pillow.

A simulated full-city Shanghai window (>= 100 k base-res cells, rolled up to res 5) is rendered
at zooms 8-16 on the same tiles by every contender, interleaved tile by tile so they share the
machine's noise. "Cold" means the tile cache is off: each call renders from the snapshot (whose
spatial index is built once per snapshot version; its build time is reported separately).
"Warm" is a hit in :class:`tiles.cache.TileCache`.

Usage::

    .venv/bin/python bench/tiles.py [--quick] [--no-postgis] [--out bench/out/tiles.md]

PostgreSQL + PostGIS come from Debian (installed with apt-get if missing); the cluster lives in a
temporary directory on a private port and socket, and is removed at the end.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._peers import (  # noqa: E402
    PEOPLES_SQUARE,
    PostGIS,
    mvt_python_objects,
    png_pillow_polygons,
    synthetic_city,
)
from tiles.cache import TileCache, TileKey  # noqa: E402
from tiles.grid import TMS, zoom_to_res  # noqa: E402
from tiles.index import IndexCache, build_index, cells_to_boundaries  # noqa: E402
from tiles.index import _boundaries_h3 as boundaries_h3_loop  # noqa: E402
from tiles.raster import snapshot_to_png  # noqa: E402
from tiles.vector import snapshot_to_mvt  # noqa: E402

ZOOMS = range(8, 17)


def pick_tiles(z: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Up to ``n`` distinct tiles whose centre lies within ~18 km of People's Square."""
    out: set[tuple[int, int, int]] = set()
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        r_km = 18.0 * math.sqrt(rng.random())
        a = rng.random() * 2 * math.pi
        lat = PEOPLES_SQUARE[0] + r_km * math.sin(a) / 111.0
        lng = PEOPLES_SQUARE[1] + r_km * math.cos(a) / (111.0 * math.cos(math.radians(lat)))
        t = TMS.tile(lng, lat, z)
        out.add((z, t.x, t.y))
    return sorted(out)


CPU: dict[str, list[float]] = {}


def timed(fn: Callable[[], object], cpu: str | None = None) -> tuple[float, object]:
    """Wall time of one call in microseconds (and its thread CPU time into CPU[cpu])."""
    c = time.thread_time_ns()
    t = time.perf_counter_ns()
    r = fn()
    wall = (time.perf_counter_ns() - t) / 1e3
    if cpu is not None:
        CPU.setdefault(cpu, []).append((time.thread_time_ns() - c) / 1e3)
    return wall, r


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def fmt_us(us: float) -> str:
    if math.isnan(us):
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def main() -> None:  # noqa: C901 - a linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tiles and repetitions")
    ap.add_argument("--no-postgis", action="store_true", help="skip the PostGIS peer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "tiles.md"))
    args = ap.parse_args()
    ntiles, reps = (4, 3) if args.quick else (12, 5)
    rng = np.random.default_rng(42)
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    t0 = time.perf_counter()
    city = synthetic_city()
    base = city[10]
    say(f"# Tiles benchmark ({platform.node()}, {platform.processor() or platform.machine()})")
    say()
    say(
        f"Synthetic Shanghai window: {len(base):,} res-10 cells (disc ~25 km around People's "
        f"Square), rolled up: "
        + ", ".join(f"res {r}: {len(s):,}" for r, s in sorted(city.items()))
        + f". Built in {time.perf_counter() - t0:.1f} s."
    )

    # --- index build (once per snapshot version) ---------------------------------------
    cells = np.asarray(base.cells)
    t_loop, _ = timed(lambda: boundaries_h3_loop(cells))
    t_vec, _ = timed(lambda: cells_to_boundaries(cells))
    t_build, idx10 = timed(lambda: build_index(base))
    newer = type(base)(
        base.window, base.res, "bench-10-v2", base.complete, base.cells,
        base.people + 1, base.density_km2, base.band, base.bands,
    )  # fmt: skip
    t_rebuild, _ = timed(lambda: build_index(newer, reuse=idx10))  # type: ignore[arg-type]
    cache = IndexCache()
    t_all, _ = timed(lambda: [cache.get(s) for s in city.values()])
    say()
    say("## Snapshot index (once per snapshot version)")
    say()
    say("| step | time |")
    say("|---|---|")
    say(f"| H3 boundaries of {len(base):,} cells, h3-py loop (`cell_to_boundary`) | "
        f"{fmt_us(t_loop)} |")  # fmt: skip
    say(f"| H3 boundaries, h3ronpy vectorised + numpy WKB parse | {fmt_us(t_vec)} |")
    say(f"| full index build, res 10 ({len(base):,} cells): boundaries, Mercator, Morton sort | "
        f"{fmt_us(t_build)} |")  # fmt: skip
    say(f"| rebuild for a new version of the same window (geometry reused) | {fmt_us(t_rebuild)} |")
    say(f"| all six resolutions (res 5-10), cold | {fmt_us(t_all)} |")
    say(f"| index memory, res 10 | {idx10.nbytes / 2**20:.1f} MiB |")

    pg: PostGIS | None = None
    if not args.no_postgis:
        try:
            pg = PostGIS()
            pg.start()
            say()
            say(f"PostGIS {pg.version} (PostgreSQL from Debian, temp cluster, jit off, "
                "geometries stored in EPSG:3857 with a GiST index):")  # fmt: skip
            for res in sorted({zoom_to_res(z) for z in ZOOMS}):
                t = pg.load(f"h{res}", city[res])
                say(f"- loaded res {res} ({len(city[res]):,} hexagons) in {t:.1f} s")
        except Exception as e:  # noqa: BLE001 - report and continue without the peer
            say(f"PostGIS unavailable ({type(e).__name__}: {e}); skipping that peer.")
            pg = None

    # --- per zoom ------------------------------------------------------------------------
    rows = []
    tile_cache = TileCache(256 << 20)
    mismatch = 0
    for z in ZOOMS:
        res = zoom_to_res(z)
        snap = city[res]
        cache.get(snap)
        tiles = pick_tiles(z, ntiles, rng)
        s: dict[str, list[float]] = {k: [] for k in (
            "mvt", "pg", "mvtpy", "png", "png2", "pil", "warm", "feat", "bytes_mvt", "bytes_png"
        )}  # fmt: skip
        for i, (zz, x, y) in enumerate(tiles):
            mvt = snapshot_to_mvt(snap, zz, x, y)
            png = snapshot_to_png(snap, zz, x, y)
            s["bytes_mvt"].append(len(mvt))
            s["bytes_png"].append(len(png))
            if mvt:
                import mapbox_vector_tile

                s["feat"].append(len(mapbox_vector_tile.decode(mvt)["density"]["features"]))
            for _ in range(reps):
                s["mvt"].append(
                    timed(lambda: snapshot_to_mvt(snap, zz, x, y), f"mvt{z}")[0]  # noqa: B023
                )
                if pg is not None:
                    t, pb = timed(lambda: pg.mvt(f"h{res}", zz, x, y))  # type: ignore[union-attr]  # noqa: B023
                    s["pg"].append(t)
                s["png"].append(
                    timed(lambda: snapshot_to_png(snap, zz, x, y), f"png{z}")[0]  # noqa: B023
                )
                s["png2"].append(
                    timed(lambda: snapshot_to_png(snap, zz, x, y, scale=2))[0]  # noqa: B023
                )
            if pg is not None and mvt:
                import mapbox_vector_tile

                n_pg = len(mapbox_vector_tile.decode(pb)["density"]["features"]) if pb else 0
                mismatch += int(abs(n_pg - s["feat"][-1]) > max(2, 0.02 * s["feat"][-1]))
            if i < (1 if z <= 10 else 2):  # slow peers: a couple of tiles, one run each
                s["mvtpy"].append(timed(lambda: mvt_python_objects(snap, zz, x, y))[0])  # noqa: B023
                s["pil"].append(timed(lambda: png_pillow_polygons(snap, zz, x, y))[0])  # noqa: B023
            key = TileKey(snap.version, "png", zz, x, y, 1)
            tile_cache.put(key, png)
            for _ in range(200):
                s["warm"].append(timed(lambda: tile_cache.get(key))[0])  # noqa: B023
        rows.append((z, res, len(tiles), s))
        print(f"z{z}: {len(tiles)} tiles, mvt p50 {fmt_us(pct(s['mvt'], 50))}, "
              f"pg p50 {fmt_us(pct(s['pg'], 50))}, png p50 {fmt_us(pct(s['png'], 50))}",
              file=sys.stderr, flush=True)  # fmt: skip
    if pg is not None:
        pg.stop()

    say()
    say("## Ratios first (ours / peer, p50 of the same tiles; below 1 = we are faster)")
    say()
    say("| zoom | res | MVT / PostGIS ST_AsMVT | MVT / mapbox-vector-tile | "
        "PNG / Pillow polygon-per-hex |")  # fmt: skip
    say("|---|---|---|---|---|")
    for z, res, _, s in rows:
        say(f"| {z} | {res} | {ratio(pct(s['mvt'], 50), pct(s['pg'], 50))} | "
            f"{ratio(pct(s['mvt'], 50), pct(s['mvtpy'], 50))} | "
            f"{ratio(pct(s['png'], 50), pct(s['pil'], 50))} |")  # fmt: skip
    say()
    say("## MVT (cold = cache off; p50 / p99 over tiles x repetitions)")
    say()
    say("| zoom | tiles | features/tile | bytes | ours p50 | ours CPU p50 | ours p99 | "
        "PostGIS p50 | PostGIS p99 | mapbox-vector-tile p50 |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|---|---|")
    for z, _, n, s in rows:
        say(f"| {z} | {n} | {statistics.mean(s['feat'] or [0]):.0f} | "
            f"{statistics.mean(s['bytes_mvt']):,.0f} | {fmt_us(pct(s['mvt'], 50))} | "
            f"{fmt_us(pct(CPU.get(f'mvt{z}', []), 50))} | "
            f"{fmt_us(pct(s['mvt'], 99))} | {fmt_us(pct(s['pg'], 50))} | "
            f"{fmt_us(pct(s['pg'], 99))} | {fmt_us(pct(s['mvtpy'], 50))} |")  # fmt: skip
    say()
    say("## PNG (cold; 256 px and 512 px @2x) and warm cache hits")
    say()
    say("| zoom | bytes | ours p50 | ours CPU p50 | ours p99 | @2x p50 | @2x p99 | "
        "Pillow polygons p50 | warm hit p50 | warm hit p99 |")  # fmt: skip
    say("|---|---|---|---|---|---|---|---|---|---|")
    for z, _, _, s in rows:
        say(f"| {z} | {statistics.mean(s['bytes_png']):,.0f} | {fmt_us(pct(s['png'], 50))} | "
            f"{fmt_us(pct(CPU.get(f'png{z}', []), 50))} | "
            f"{fmt_us(pct(s['png'], 99))} | {fmt_us(pct(s['png2'], 50))} | "
            f"{fmt_us(pct(s['png2'], 99))} | {fmt_us(pct(s['pil'], 50))} | "
            f"{fmt_us(pct(s['warm'], 50))} | {fmt_us(pct(s['warm'], 99))} |")  # fmt: skip
    say()
    targets = []
    mvt_ok = [pct(s["mvt"], 50) <= pct(s["pg"], 50) / 4 for _, _, _, s in rows if s["pg"]]
    if mvt_ok:
        targets.append(f"cold MVT p50 <= 1/4 of PostGIS: {sum(mvt_ok)}/{len(mvt_ok)} zooms")
    png_ok = [pct(s["png"], 50) < 2000 for z, _, _, s in rows if 12 <= z <= 16]
    targets.append(f"cold PNG p50 < 2 ms at z12-z16: {sum(png_ok)}/{len(png_ok)} zooms")
    warm = max(pct(s["warm"], 50) for _, _, _, s in rows)
    targets.append(f"warm hit p50 < 50 µs: worst zoom {fmt_us(warm)}")
    if pg is not None:
        targets.append(f"tiles whose feature count differs from PostGIS by > 2 %: {mismatch}")
    say("Targets: " + "; ".join(targets) + ".")
    say(
        "CPU p50 = thread CPU time of our render as the guest kernel counts it. This 2-vCPU VM "
        "is shared (steal time), so every contender's figures swing between runs: compare ratios "
        "from one run."
    )
    say(f"Total bench time {time.perf_counter() - t0:.0f} s.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
