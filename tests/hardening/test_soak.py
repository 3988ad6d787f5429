"""Soak (#19): a real ``heatmap serve`` fed without pause while a reader loops over tiles,
density and stats keeps its memory flat once its caches are full, keeps every cache within its
bound, and keeps its store within the retention settings (compaction in the service).

Small scale, about a minute: 300 batches of 2,000 devices, each batch one 5-minute window of
event time (so 300 windows close), caches set small so that they fill in the first third.
``bench/soak.py`` runs the same at the issue's scale (100,000 devices, 20,000-row batches).
"""

from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from hardening_server import AUTH, OPS, Server

pytestmark = pytest.mark.slow

DEVICES = 2_000
BATCHES = 300
T0 = 1_795_000_000 - 300 * 400  # a window boundary, well in the past
TILES = [(z, x, y) for z, x, y in ((11, 1714, 836), (12, 3429, 1672), (13, 6858, 3344))]
TILES += [(14, 13717, 6688), (14, 13718, 6689), (10, 857, 418)]


def _batch(i: int, rng: random.Random, homes: list[tuple[float, float]]) -> bytes:
    """Every device pings once in window ``i`` (somewhere near its home)."""
    lines = ["device_id,ts,lat,lng"]
    for d, (lat, lng) in enumerate(homes):
        ts = T0 + i * 300 + rng.randrange(300)
        lines.append(f"d{d},{ts},{lat + rng.gauss(0, 2e-4):.6f},{lng + rng.gauss(0, 2e-4):.6f}")
    return ("\n".join(lines) + "\n").encode()


def _cache_rows(text: str) -> dict[str, dict[str, float]]:
    """Return ``cache -> {entries, bytes, limit, unit}`` from the Prometheus text."""
    out: dict[str, dict[str, float]] = {}
    for kind, name, unit, value in re.findall(
        r'heatmap_cache_(entries|bytes|limit)\{cache="(\w+)"(?:,unit="(\w+)")?\} ([0-9.e+]+)',
        text,
    ):
        row = out.setdefault(name, {})
        row[kind] = float(value)
        if unit:
            row["unit_bytes"] = float(unit == "bytes")
    return out


def test_memory_stays_flat_and_caches_bounded_under_a_continuous_feed(
    tmp_path: Path, servers
) -> None:
    server: Server = servers(
        tmp_path / "store" / "heatmap.db",
        name="soak",
        tile_cache_mb=4,
        index_cache_mb=8,
        fastpath_cache_mb=2,
        snapshot_cache_entries=6,
        fill_cache_entries=4,
        place_history_entries=50,
        keep_full_days=0.1,  # 2.4 h of event time: ~29 windows at full detail
        keep_hourly_days=0.3,
        compact_every_s=2,
        min_free_disk_mb=0,
    ).start()
    rng = random.Random(19)
    homes = [(31.2335 + rng.gauss(0, 0.01), 121.4755 + rng.gauss(0, 0.01)) for _ in range(DEVICES)]
    bodies = [_batch(i, rng, homes) for i in range(BATCHES)]
    stop = threading.Event()
    read_errors: list[str] = []
    reads = [0]

    def read() -> None:
        r = random.Random(3)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                z, x, y = r.choice(TILES)
                for url in (
                    f"/tiles/{z}/{x}/{y}.png",
                    f"/tiles/{z}/{x}/{y}.mvt",
                    f"/api/v1/density?lat={31.2335 + r.gauss(0, 0.01)}&lng=121.4755",
                    "/api/v1/stats",
                ):
                    resp = c.get(url)
                    reads[0] += 1
                    if resp.status_code not in (200, 204, 404):  # 404: before the first data
                        read_errors.append(f"{url}: {resp.status_code} {resp.text[:200]}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rss: list[int] = []
    sizes: list[int] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as http:
            for i, body in enumerate(bodies):
                r = http.post("/api/v1/pings", content=body, headers={"Content-Type": "text/csv"})
                assert r.status_code == 200, r.text
                if i % 10 == 9:
                    rss.append(server.rss_kb())
                    sizes.append(server.db.stat().st_size)
            time.sleep(3)  # one more compaction pass
            metrics = http.get("/metrics", headers=OPS).text
            health = http.get("/healthz").json()
    finally:
        stop.set()
        reader.join(30)
    assert not read_errors, read_errors[:5]
    assert reads[0] > 200  # the reader was busy throughout

    # Every cache is within its bound (bytes where byte-bounded, else entries).
    caches = _cache_rows(metrics)
    assert {"tiles", "tile_indexes", "fills", "snapshots", "tile_answers"} <= caches.keys()
    for name, row in caches.items():
        held = row["bytes"] if row.get("unit_bytes") else row["entries"]
        assert held <= row["limit"], (name, row)
    assert caches["snapshots"]["entries"] == 6  # full: the bound, not the data, limits it

    # Memory: flat within 10% once the caches are full (after the first third of the run).
    warm = rss[len(rss) // 3]
    assert max(rss[len(rss) // 3 :]) <= warm * 1.10, (warm, rss)

    # Disk: the service compacted; what is kept at full detail follows the retention.
    assert health["rollups"]["hour"] + health["rollups"]["day"] > 0
    kept = health["windows"] - health["rollups"]["hour"] - health["rollups"]["day"]
    assert kept <= 0.1 * 288 + 12 + 2, health  # full days + the hour not yet whole + open
    # The file stops growing once freed pages are reused (300 windows would take ~3x more).
    assert sizes[-1] <= sizes[len(sizes) // 2] * 1.25, sizes
    assert "Traceback" not in server.log()
