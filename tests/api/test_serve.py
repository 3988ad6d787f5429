"""The real ``heatmap serve`` on a free port: batches POSTed over TCP are in JSON and tiles
within one second of their 200, and a graceful shutdown loses no acknowledged batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h3
import httpx
import mapbox_vector_tile
import morecantile
import polars as pl
import pytest
from api_testdata import (
    AUTH,
    BASE_RES,
    GRACE_S,
    K_MIN,
    OPS,
    OPS_TOKEN,
    PLANNER,
    PLANNER_TOKEN,
    RELEASE_S,
    TOKEN,
    encode,
    slices,
)

from heatmap.config import Settings
from heatmap.model import epoch_to_iso
from heatmap.service import Heatmap

TMS = morecantile.tms.get("WebMercatorQuad")
HEATMAP = Path(sys.executable).parent / "heatmap"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    db = tmp_path / "store" / "heatmap.db"
    env = {
        **os.environ,
        "HEATMAP_DB": str(db),
        "HEATMAP_INGEST_TOKEN": TOKEN,
        "HEATMAP_METRICS_TOKEN": OPS_TOKEN,
        "HEATMAP_PLANNER_TOKENS": PLANNER_TOKEN,
        "HEATMAP_K_MIN": str(K_MIN),
        "HEATMAP_SECRET": "serve-secret",
        "HEATMAP_BASEMAP_URL": "",
    }
    proc = subprocess.Popen(
        [str(HEATMAP), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((tmp_path / "serve.log").read_text())
        time.sleep(0.1)
    try:
        yield base, proc, db
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_served_batches_are_visible_within_a_second(
    server: tuple[str, subprocess.Popen[bytes], Path], stream: pl.DataFrame
) -> None:
    base, proc, db = server
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/api/v1/stats").status_code == 404  # empty store
        posted = 0
        for i, part in enumerate(slices(stream, 4)):
            # Each batch adds a marker crowd far from the city, just before the tick the batch
            # releases (the latest one its last ping passes by the grace): "now" shows it.
            ts = int(part["ts"].max())  # type: ignore[arg-type]
            tick = (ts - GRACE_S) // RELEASE_S * RELEASE_S
            lat, lng = 30.0 + i * 0.1, 119.5
            marker = pl.DataFrame(
                {"device_id": [f"m{i}-{k}" for k in range(3 + i)], "ts": [tick - 1] * (3 + i),
                 "lat": [lat] * (3 + i), "lng": [lng] * (3 + i)}
            )  # fmt: skip
            body, ctype = encode(pl.concat([part, marker]), "csv")
            r = http.post("/api/v1/pings", content=body, headers={**AUTH, "Content-Type": ctype})
            acked = time.monotonic()
            assert r.status_code == 200 and r.json()["rejected"] == []
            posted += r.json()["accepted"]
            point = {"lat": lat, "lng": lng, "res": 10}
            d = http.get("/api/v1/density", params=point, headers=PLANNER)  # exact values
            t = TMS.tile(lng, lat, 14)
            tile = http.get(f"/tiles/14/{t.x}/{t.y}.mvt", headers=PLANNER)
            seen = time.monotonic() - acked
            assert d.json()["window"]["as_of"] == epoch_to_iso(tick)
            assert d.json()["people"] == 3 + i
            cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, BASE_RES))
            feats = mapbox_vector_tile.decode(tile.content)["density"]["features"]
            assert [f["properties"]["people"] for f in feats if f["id"] == cell] == [3.0 + i]
            assert seen < 1.0
        assert posted == stream.height + sum(3 + i for i in range(4))
        assert "heatmap_pings_accepted_total" in http.get("/metrics", headers=OPS).text
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (lifespan: in-flight commit, store closed), then re-raises
    # the signal, so the exit status is -SIGTERM.
    assert proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (db.parent.parent / "serve.log").read_text()
    hm = Heatmap(Settings(db=str(db), secret="serve-secret", k_min=K_MIN))  # type: ignore[call-arg]
    try:
        wins = hm.store.windows()
        assert sum(w.devices for w in wins) >= stream.n_unique("device_id")
        assert wins[-1].window.start <= int(stream["ts"].max()) < wins[-1].window.end  # type: ignore[arg-type]
    finally:
        hm.close()
