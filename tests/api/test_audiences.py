"""Two audiences: the public reads rounded people, planners (a bearer token) the exact values."""

from __future__ import annotations

import h3
import mapbox_vector_tile
import morecantile
from api_testdata import AUTH, K_MIN, PLANNER, Loaded, services

from fastapi.testclient import TestClient

from heatmap.read import LATEST

TMS = morecantile.tms.get("WebMercatorQuad")
BBOX = {"bbox": "121.40,31.15,121.55,31.30", "res": 8}


def _step(client: TestClient) -> float:
    s = services(client).settings
    return s.k_min * s.expansion


def _cells(client: TestClient, **headers: str) -> dict[str, dict]:
    doc = client.get("/api/v1/cells", params=BBOX, headers=headers).json()
    return {f["properties"]["cell"]: f["properties"] for f in doc["features"]}


def test_the_public_sees_people_rounded_to_k_devices(loaded: Loaded) -> None:
    step = _step(loaded.client)
    public, exact = _cells(loaded.client), _cells(loaded.client, **PLANNER)
    assert public.keys() == exact.keys() and len(public) > 10  # the same cells are published
    moved = 0
    for cell, p in public.items():
        e = exact[cell]
        assert p["people"] % step == 0 and p["people"] >= step  # never below k devices
        assert abs(p["people"] - e["people"]) <= step / 2  # the nearest multiple
        area = h3.cell_area(cell, "km^2")
        assert abs(p["density_km2"] - p["people"] / area) < 1e-6 * p["density_km2"]
        moved += p["people"] != e["people"]
    assert moved, "rounding never changed a number: the test data cannot tell the views apart"


def test_planners_get_the_exact_values_privately(loaded: Loaded) -> None:
    r = loaded.client.get("/api/v1/stats", headers=PLANNER)
    assert r.status_code == 200 and r.headers["cache-control"].startswith("private")
    public = loaded.client.get("/api/v1/stats")
    assert public.headers["cache-control"].startswith("public")
    assert r.headers["etag"] != public.headers["etag"]
    snap = services(loaded.client).audience(PLANNER["Authorization"]).reader.snapshot

    assert r.json()["people"] == float(
        snap(LATEST, services(loaded.client).settings.min_res).people.sum()
    )


def test_tiles_follow_the_audience(loaded: Loaded) -> None:
    step = _step(loaded.client)
    t = TMS.tile(121.4755, 31.2335, 12)
    url = f"/tiles/12/{t.x}/{t.y}.mvt"
    public = mapbox_vector_tile.decode(loaded.client.get(url).content)["density"]["features"]
    planner = loaded.client.get(url, headers=PLANNER)
    assert planner.headers["cache-control"].startswith("private")
    exact = mapbox_vector_tile.decode(planner.content)["density"]["features"]
    assert {f["id"] for f in public} == {f["id"] for f in exact} and public
    assert all(f["properties"]["people"] % step == 0 for f in public)


def test_public_trend_never_shows_a_change_under_k_devices(loaded: Loaded) -> None:
    step = _step(loaded.client)
    ranking = loaded.client.get("/api/v1/places").json()["places"]
    changes = [p["trend"]["change"] for p in ranking if p["trend"]["change"] is not None]
    assert all(c % step == 0 for c in changes)
    for p in ranking:
        if p["people"] is not None:
            assert p["people"] >= K_MIN * services(loaded.client).settings.expansion


def test_credentials_decide_the_view(loaded: Loaded) -> None:
    assert loaded.client.get("/api/v1/stats").status_code == 200  # no token: the public view
    for bad in ("Bearer guess", "Basic cGxhbm5lcjp4", AUTH["Authorization"]):  # ingest != read
        r = loaded.client.get("/api/v1/stats", headers={"Authorization": bad})
        assert r.status_code == 401 and "planner token" in r.json()["detail"]
        t = loaded.client.get("/tiles/12/3430/1673.png", headers={"Authorization": bad})
        assert t.status_code == 401


def test_planners_export_the_exact_cells_and_the_public_cannot(loaded: Loaded) -> None:
    import io

    import polars as pl

    r = loaded.client.get("/api/v1/export/cells.csv", params={"res": 8})
    assert r.status_code == 401 and "planners" in r.json()["detail"]
    r = loaded.client.get("/api/v1/export/cells.csv", params={"res": 8}, headers=PLANNER)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.headers["cache-control"].startswith("private")
    frame = pl.read_csv(io.BytesIO(r.content))
    assert frame.columns == ["window_start", "window_end", "res", "cell", "people",
                             "density_km2", "band"]  # fmt: skip
    svc = services(loaded.client)
    exact = svc.audience(PLANNER["Authorization"]).reader.snapshot(LATEST, 8)
    want = {h3.int_to_str(int(c)): float(p) for c, p in zip(exact.cells, exact.people, strict=True)}
    assert dict(zip(frame["cell"].to_list(), frame["people"].to_list(), strict=True)) == want
    geo = loaded.client.get("/api/v1/export/cells.geojson", params={"res": 8}, headers=PLANNER)
    doc = geo.json()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(want)
    assert loaded.client.get("/api/v1/export/cells.xlsx", headers=PLANNER).status_code == 422
