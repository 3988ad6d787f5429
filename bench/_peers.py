"""Shared benchmark helpers: a synthetic full-city window and the peers we compare against.

- :func:`synthetic_city` builds published-like snapshots (res 5-10) of a Shanghai window.
- :class:`PostGIS` runs a throw-away PostgreSQL + PostGIS cluster (Debian packages, installed
  with apt-get if missing) and serves ``ST_AsMVT`` tiles of the same hexagons.
- :func:`mvt_python_objects` encodes a tile with ``mapbox-vector-tile`` from Python objects.
- :func:`png_pillow_polygons` draws one ``ImageDraw.polygon`` call per hexagon.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h3
import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image, ImageDraw

from heatmap.model import Band, Snapshot, Window
from tiles.grid import tile_bounds_m
from tiles.index import get_index

PEOPLES_SQUARE = (31.2335, 121.4755)

BANDS = (
    Band("blue", "#3b6fd4", 180, 0.0, "Quiet", "宽松"),
    Band("green", "#5cd699", 180, 5_000.0, "Moderate", "适中"),
    Band("yellow", "#fde725", 180, 15_000.0, "Busy", "较挤"),
    Band("red", "#d7191c", 180, 30_000.0, "Crowded", "拥挤"),
)


def parent_cells(cells: npt.NDArray[np.uint64], res: int) -> npt.NDArray[np.uint64]:
    """Return the parent at ``res`` of each H3 cell (bit arithmetic; same as h3.cell_to_parent)."""
    c = cells.astype(np.uint64)
    c = (c & ~np.uint64(0xF << 52)) | np.uint64(res << 52)
    unused = np.uint64((1 << (3 * (15 - res))) - 1)  # digits res+1..15 are all 7 (binary 111)
    return c | unused


def synthetic_city(
    base_res: int = 10, min_res: int = 5, k: int = 190, seed: int = 7, version: str = "bench"
) -> dict[int, Snapshot]:
    """Return snapshots of one simulated Shanghai window, one per resolution.

    Base-res cells fill a disc of ``k`` rings (~25 km at res 10) around People's Square; 5 % are
    dropped (suppressed / empty), counts fall off with distance from the centre and are >= 10.
    Coarser resolutions are exact roll-ups (sums of their children).
    """
    rng = np.random.default_rng(seed)
    centre = h3.latlng_to_cell(*PEOPLES_SQUARE, base_res)
    cells = np.array(sorted(h3.str_to_int(c) for c in h3.grid_disk(centre, k)), dtype=np.uint64)
    cells = cells[rng.random(cells.size) > 0.05]
    latlng = np.array([h3.cell_to_latlng(h3.int_to_str(int(c))) for c in cells])
    d_km = np.hypot(
        (latlng[:, 0] - PEOPLES_SQUARE[0]) * 111.0,
        (latlng[:, 1] - PEOPLES_SQUARE[1]) * 111.0 * np.cos(np.radians(PEOPLES_SQUARE[0])),
    )
    mean = 12.0 + 600.0 * np.exp(-d_km / 6.0)
    people = np.maximum(10.0, np.round(rng.lognormal(np.log(mean), 0.6)))
    out: dict[int, Snapshot] = {}
    for res in range(base_res, min_res - 1, -1):
        if res == base_res:
            c, p = cells, people
        else:
            par = parent_cells(cells, res)
            c, inv = np.unique(par, return_inverse=True)
            p = np.bincount(inv, weights=people)
        area = np.array([h3.cell_area(h3.int_to_str(int(x)), "km^2") for x in c])
        dens = p / area
        lower = np.array([b.lower_km2 for b in BANDS])
        band = (np.searchsorted(lower, dens, side="right") - 1).astype(np.uint8)
        out[res] = Snapshot(
            Window(1_764_320_400, 1_764_320_700), res, f"{version}-{res}", True,
            c, p.astype(np.float64), dens, band, BANDS,
        )  # fmt: skip
    return out


def mvt_python_objects(snap: Snapshot, z: int, x: int, y: int) -> bytes:
    """Encode a tile with mapbox-vector-tile from Python objects (shapely polygons + dicts).

    The cells of the tile come from our spatial index (so the peer is not charged for a
    full scan); geometry is passed in tile pixels with ``quantize_bounds`` doing the transform.
    """
    import mapbox_vector_tile

    idx = get_index(snap)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    b = (maxx - minx) * 64 / 4096
    rows = idx.query(minx - b, miny - b, maxx + b, maxy + b)
    names = [bd.name for bd in idx.bands]
    feats = []
    for i in rows.tolist():
        nv = int(idx.nverts[i])
        ring = idx.verts[i, :nv]
        feats.append(
            {
                "geometry": shapely.Polygon(ring),
                "properties": {
                    "cell": h3.int_to_str(int(idx.cells[i])),
                    "people": int(idx.people[i]),
                    "density_km2": float(idx.density_km2[i]),
                    "band": names[int(idx.band[i])],
                },
                "id": int(idx.cells[i]),
            }
        )
    if not feats:
        return b""
    return bytes(
        mapbox_vector_tile.encode(
            [{"name": "density", "features": feats}],
            default_options={"quantize_bounds": (minx, miny, maxx, maxy), "extents": 4096},
        )
    )


def png_pillow_polygons(snap: Snapshot, z: int, x: int, y: int, size: int = 256) -> bytes:
    """Draw a tile with one ``ImageDraw.polygon`` call per hexagon (no spatial index: all cells)."""
    idx = get_index(snap)
    minx, miny, maxx, maxy = tile_bounds_m(z, x, y)
    k = size / (maxx - minx)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    rgba = [
        (int(b.color[1:3], 16), int(b.color[3:5], 16), int(b.color[5:7], 16), b.alpha)
        for b in idx.bands
    ]
    px = (idx.verts[:, :, 0] - minx) * k
    py = (maxy - idx.verts[:, :, 1]) * k
    visible = (px.max(1) > 0) & (px.min(1) < size) & (py.max(1) > 0) & (py.min(1) < size)
    for i in np.flatnonzero(visible).tolist():
        nv = int(idx.nverts[i])
        draw.polygon(
            list(zip(px[i, :nv].tolist(), py[i, :nv].tolist(), strict=True)),
            fill=rgba[int(idx.band[i])],
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass
class PostGIS:
    """A temporary PostgreSQL + PostGIS cluster serving ``ST_AsMVT`` tiles."""

    port: int = 55433
    root: Path | None = None

    def start(self) -> None:
        """Install (if needed), initdb and start the cluster; create the postgis extension."""
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins or not glob.glob("/usr/share/postgresql/*/extension/postgis.control"):
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "postgresql", "postgis"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        os.chmod(self.root, 0o777)
        data = self.root / "data"
        self._as_postgres([str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U",
                           "postgres", "--no-sync"])  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c jit=off "
            "-c shared_buffers=512MB -c work_mem=64MB"
        )
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                           "-l", str(self.root / "log"), "start"])  # fmt: skip
        import psycopg

        self.conn = psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres",
            autocommit=True,
        )  # fmt: skip
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        self.version = self.conn.execute("SELECT postgis_lib_version()").fetchone()[0]

    def _as_postgres(self, cmd: list[str]) -> None:
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(runner + cmd, check=True, stdout=subprocess.DEVNULL)

    def load(self, table: str, snap: Snapshot) -> float:
        """Load a snapshot's hexagons (EPSG:3857 polygons, GiST index); return seconds taken."""
        t0 = time.perf_counter()
        idx = get_index(snap)
        n = len(idx)
        names = [b.name for b in idx.bands]
        rings = [idx.verts[i, : int(idx.nverts[i])] for i in range(n)]
        polys = shapely.polygons([np.vstack([r, r[:1]]) for r in rings])
        wkb = shapely.to_wkb(shapely.set_srid(polys, 3857), hex=True, include_srid=True)
        cur = self.conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id bigint primary key, cell text, people double precision,"
            " density_km2 double precision, band text, geom geometry(Polygon, 3857))"
        )
        with cur.copy(f"COPY {table} (id, cell, people, density_km2, band, geom) FROM STDIN") as cp:
            for i in range(n):
                c = int(idx.cells[i])
                cp.write_row(
                    (c, h3.int_to_str(c), float(idx.people[i]), float(idx.density_km2[i]),
                     names[int(idx.band[i])], wkb[i])
                )  # fmt: skip
        cur.execute(f"CREATE INDEX ON {table} USING gist (geom)")
        cur.execute(f"ANALYZE {table}")
        return time.perf_counter() - t0

    def mvt(self, table: str, z: int, x: int, y: int) -> bytes:
        """Return ``ST_AsMVT`` of one tile (extent 4096, buffer 64, clipped)."""
        sql = (
            "SELECT ST_AsMVT(q, 'density', 4096, 'geom', 'id') FROM ("
            " SELECT id, cell, people, density_km2, band,"
            "  ST_AsMVTGeom(geom, ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 64, true) AS geom"
            f" FROM {table}"
            " WHERE geom && ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => 64.0 / 4096)) q"
        )
        row = self.conn.execute(sql, {"z": z, "x": x, "y": y}, prepare=True).fetchone()
        return bytes(row[0]) if row and row[0] is not None else b""

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - best effort teardown
            pass
        if self.root is not None:
            subprocess.run(
                (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                + [str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"],
                check=False,
                stdout=subprocess.DEVNULL,
            )
            shutil.rmtree(self.root, ignore_errors=True)
