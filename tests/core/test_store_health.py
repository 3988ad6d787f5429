"""Store health (#19): ``/healthz`` tells the store's size, the free disk and the oldest
history; below ``HEATMAP_MIN_FREE_DISK_MB`` writes are refused with a clear 503 before the disk
is full, while reads and compaction go on; ``/metrics`` shows every cache against its bound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.errors import StoreUnavailable
from heatmap.ingest import ParseOptions
from heatmap.maintenance import compact
from heatmap.service import Heatmap

TOKEN = "ingest-token-1234"
OPS = "ops-token-1234"
T0 = 1_795_000_000 // 3600 * 3600 - 600  # ten minutes before an hour


def _csv(i: int, devices: int = 30) -> bytes:
    rows = ["device_id,ts,lat,lng"]
    for d in range(devices):
        rows.append(f"d{d},{T0 + i * 60 + d % 50},{31.2335 + d * 1e-5:.6f},121.475500")
    return ("\n".join(rows) + "\n").encode()


def _settings(make_settings, **kw: object):  # type: ignore[no-untyped-def]
    return make_settings(k_min=2, ingest_token=TOKEN, metrics_token=OPS, compact_every_s=0, **kw)


def _fill(make_settings, tmp_path: Path, batches: int = 20) -> None:
    s = _settings(make_settings)
    with TestClient(create_app(s)) as client:
        for i in range(batches):
            r = client.post(
                "/api/v1/pings",
                content=_csv(i),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"},
            )
            assert r.status_code == 200, r.text


def test_healthz_reports_size_free_disk_and_the_oldest_history(make_settings, tmp_path) -> None:
    _fill(make_settings, tmp_path)
    s = _settings(make_settings)
    with TestClient(create_app(s)) as client:
        h = client.get("/healthz")
        assert h.status_code == 200
        body = h.json()
        db = Path(s.db)
        assert body["store_bytes"] >= db.stat().st_size > 0
        assert 0 < body["disk_free_bytes"] and body["min_free_disk_bytes"] == 256 << 20
        assert body["oldest"]["kind"] == "window" and body["oldest"]["start"].startswith("2026")
        assert body["oldest_window"] == body["oldest"] and body["rollups"] == {"hour": 0, "day": 0}


def test_a_nearly_full_disk_refuses_writes_with_a_503_and_keeps_serving_reads(
    make_settings, tmp_path
) -> None:
    _fill(make_settings, tmp_path)
    s = _settings(make_settings, min_free_disk_mb=1 << 40)  # more than any disk has free
    with TestClient(create_app(s)) as client:
        stats = client.get("/api/v1/stats")
        assert stats.status_code == 200
        r = client.post(
            "/api/v1/pings",
            content=_csv(20),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"},
        )
        assert r.status_code == 503
        assert (
            "disk nearly full" in r.json()["detail"]
            and "HEATMAP_MIN_FREE_DISK_MB" in (r.json()["detail"])
        )
        assert client.get("/api/v1/stats").content == stats.content  # reads go on
        h = client.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "disk_low"
        assert "disk nearly full" in h.json()["reason"]
    # Compaction frees space, so it still runs (without the guard); ingest does not.
    hm = Heatmap(_settings(make_settings, min_free_disk_mb=1 << 40, keep_full_days=0.001))
    try:
        assert compact(hm.store, hm.settings).windows_rolled > 0
        with pytest.raises(StoreUnavailable, match="disk nearly full"):
            path = tmp_path / "more.csv"
            path.write_bytes(_csv(30))
            hm.ingest_paths([path], ParseOptions())
    finally:
        hm.close()


def test_metrics_show_every_cache_against_its_bound(make_settings, tmp_path) -> None:
    _fill(make_settings, tmp_path)
    s = _settings(make_settings, snapshot_cache_entries=5, index_cache_mb=7, tile_cache_mb=3)
    with TestClient(create_app(s)) as client:
        for z, x, y in ((12, 3429, 1672), (13, 6858, 3344)):
            client.get(f"/tiles/{z}/{x}/{y}.png")
        client.get("/api/v1/places")
        text = client.get("/metrics", headers={"Authorization": f"Bearer {OPS}"}).text
    limits = dict(re.findall(r'heatmap_cache_limit\{cache="(\w+)",unit="\w+"\} ([0-9.e+]+)', text))
    assert float(limits["snapshots"]) == 5
    assert float(limits["tile_indexes"]) == 7 << 20 and float(limits["tiles"]) == 3 << 20
    assert {"fills", "tile_answers", "place_history"} <= limits.keys()
    entries = dict(re.findall(r'heatmap_cache_entries\{cache="(\w+)"\} ([0-9.e+]+)', text))
    assert float(entries["snapshots"]) >= 1 and float(entries["tiles"]) >= 1
    assert re.search(r"^heatmap_store_bytes [0-9.e+]+$", text, re.M)
    assert re.search(r"^heatmap_disk_free_bytes [0-9.e+]+$", text, re.M)
    assert re.search(r"^process_resident_memory_bytes [0-9.e+]+$", text, re.M)
