"""Every publishing setting versions what clients cache.

Change any setting that changes published values and no client revalidating a resource gets
``304`` for bytes that changed: every ETag (tiles and JSON are tagged by a hash of their
bytes) stays only where the bytes are the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h3
import morecantile
from api_testdata import Loaded, api_settings, services

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.policy import PublishPolicy

TMS = morecantile.tms.get("WebMercatorQuad")
PEOPLES_SQUARE = (31.2335, 121.4755)

# Fixed per store (the store refuses other values), so they cannot change under a client's cache.
STORE_FIXED = {"window_s", "base_res"}

# One other value per setting that may change over the same store.
CHANGED: dict[str, object] = {
    "k_min": 3,
    "dp_epsilon": 2.0,
    "expansion": 2.5,
    "bands_km2": "1000,2000,3000",
    "min_res": 6,
    "horizon_s": 600,
    "release_s": 30,
}


def _tile_paths(res_zoom: int) -> list[str]:
    lat, lng = PEOPLES_SQUARE
    t = TMS.tile(lng, lat, res_zoom)
    return [f"/tiles/{t.z}/{t.x}/{t.y}.mvt", f"/tiles/{t.z}/{t.x}/{t.y}.png"]


def _etags(client: TestClient, window: str) -> dict[str, tuple[str, bytes]]:
    lat, lng = PEOPLES_SQUARE
    cell = h3.latlng_to_cell(lat, lng, 8)
    paths = [
        *_tile_paths(11),
        "/tiles.json",
        "/api/v1/legend",
        "/api/v1/stats",
        f"/api/v1/density?lat={lat}&lng={lng}&res=8",
        "/api/v1/cells?bbox=121.40,31.18,121.55,31.28&res=8",
    ]
    out = {}
    for path in paths:
        for w in (None, window):
            url = path if w is None else f"{path}{'&' if '?' in path else '?'}window={w}"
            r = client.get(url)
            assert r.status_code in (200, 204), (path, r.status_code, r.text[:200])
            out[f"{path} {w}"] = (r.headers["etag"], r.content)
    assert cell  # the density path asks for a real res-8 cell
    return out


def test_the_cases_cover_every_policy_field() -> None:
    fields = {f.name for f in dataclasses.fields(PublishPolicy)}
    assert fields == set(CHANGED) | STORE_FIXED, "a new publishing setting needs a case here"


def test_changing_any_publishing_setting_never_keeps_an_etag_for_other_bytes(
    loaded: Loaded,
) -> None:
    base = services(loaded.client).settings
    wins = loaded.client.get("/api/v1/windows", params={"limit": 1000}).json()["windows"]
    closed = next(w["start"] for w in wins if w["complete"])
    before = _etags(loaded.client, closed)
    for name, value in CHANGED.items():
        settings = api_settings(Path(base.db).parent.parent, **{name: value})
        with TestClient(create_app(settings)) as other:
            after = _etags(other, closed)
        stale = [k for k in before if before[k][0] == after[k][0] and before[k][1] != after[k][1]]
        assert not stale, f"changing {name} kept these ETags for other bytes: {stale}"
        changed = [k for k in before if before[k][0] != after[k][0]]
        assert changed, f"changing {name} changed no answer"
