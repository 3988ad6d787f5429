"""A full round trip through HTTP only: POST a simulated stream, read JSON and tiles back, and
compare with the core's published snapshot and with a plain h3-py count of the posted pings."""

from __future__ import annotations

import io
import time
from typing import Any

import h3
import httpx
import mapbox_vector_tile
import morecantile
import numpy as np
import polars as pl
from api_testdata import (
    BASE_RES,
    K_MIN,
    PLANNER,
    WINDOW_S,
    Loaded,
    h3_counts,
    live_ts,
    post,
    release_after,
    services,
)
from PIL import Image

from heatmap.model import Snapshot
from heatmap.read import Ref
from tiles.grid import zoom_to_res

TMS = morecantile.tms.get("WebMercatorQuad")
PEOPLES_SQUARE = (31.2335, 121.4755)


def closed_window(loaded: Loaded) -> str:
    wins = planner_get(loaded, "/api/v1/windows", params={"limit": 1000}).json()["windows"]
    done = [w for w in wins if w["complete"]]
    assert len(done) >= 3
    return done[len(done) // 2]["start"]


def snapshot(loaded: Loaded, when: str | None, res: int) -> Snapshot:
    """The planners' (exact) snapshot: what a planner's request answers."""
    reader = services(loaded.client).audience(PLANNER["Authorization"]).reader
    return reader.snapshot(Ref.parse(when), res)


def planner_get(loaded: Loaded, url: str, **kw: Any) -> httpx.Response:
    """GET as a planner: these tests check exact published values against h3-py."""
    return loaded.client.get(url, headers={**PLANNER, **kw.pop("headers", {})}, **kw)


def test_every_posted_row_is_accepted(loaded: Loaded) -> None:
    assert sum(a["accepted"] for a in loaded.answers) == loaded.frame.height  # type: ignore[misc]
    assert all(a["rejected"] == [] and a["late"] == 0 for a in loaded.answers)


def test_cells_equal_the_snapshot_and_a_plain_h3_count(loaded: Loaded) -> None:
    when = closed_window(loaded)
    w = int(np.datetime64(when.rstrip("Z"), "s").astype(np.int64)) // WINDOW_S
    for bbox, res in (("120.8,30.6,122.2,31.9", 7), ("121.40,31.15,121.55,31.30", 9)):
        r = planner_get(loaded, "/api/v1/cells", params={"bbox": bbox, "res": res, "window": when})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["window"]["complete"] is True
        snap = snapshot(loaded, when, res)
        ref = h3_counts(loaded.frame, WINDOW_S, res)
        assert doc["count"] == len(doc["features"]) > 10
        for f in doc["features"]:
            p = f["properties"]
            row = int(snap.lookup(np.array([h3.str_to_int(p["cell"])], dtype=np.uint64))[0])
            assert row >= 0
            assert p["people"] == snap.people[row]
            assert p["density_km2"] == snap.density_km2[row]
            assert p["band"] == snap.bands[snap.band[row]].name
            assert p["people"] == ref[(w, p["cell"])] >= K_MIN
            ring = f["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) == 7
        # Every published cell whose centre is in the bbox is listed.
        west, south, east, north = (float(v) for v in bbox.split(","))
        inside = {
            h3.int_to_str(int(c))
            for c in snap.cells
            if south <= h3.cell_to_latlng(h3.int_to_str(int(c)))[0] <= north
            and west <= h3.cell_to_latlng(h3.int_to_str(int(c)))[1] <= east
        }
        assert {f["properties"]["cell"] for f in doc["features"]} == inside


def test_density_equals_the_snapshot(loaded: Loaded) -> None:
    snap = snapshot(loaded, None, 9)
    for c in snap.cells[:: max(1, len(snap) // 5)][:5]:
        lat, lng = h3.cell_to_latlng(h3.int_to_str(int(c)))
        r = planner_get(loaded, "/api/v1/density", params={"lat": lat, "lng": lng, "res": 9})
        d = r.json()
        row = int(snap.lookup(np.array([c], dtype=np.uint64))[0])
        assert d["cell"] == h3.int_to_str(int(c)) and d["res"] == 9
        assert d["people"] == snap.people[row] and d["density_km2"] == snap.density_km2[row]
        assert d["suppressed"] is False and d["label"]["zh"] and d["label"]["en"]
        assert d["window"]["complete"] is False and d["window"]["kind"] == "release"  # now
        assert d["trend"]["previous_window"] is not None


def test_density_without_res_uses_the_finest_published_cell(loaded: Loaded) -> None:
    d = planner_get(
        loaded, "/api/v1/density", params={"lat": PEOPLES_SQUARE[0], "lng": PEOPLES_SQUARE[1]}
    ).json()
    assert d["suppressed"] is False
    for finer in range(d["res"] + 1, BASE_RES + 1):
        snap = snapshot(loaded, None, finer)
        cell = h3.str_to_int(h3.latlng_to_cell(*PEOPLES_SQUARE, finer))
        assert snap.lookup(np.array([cell], dtype=np.uint64))[0] == -1


def test_mvt_over_http_decodes_to_the_snapshot(loaded: Loaded) -> None:
    z = 12
    t = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
    r = planner_get(loaded, f"/tiles/{z}/{t.x}/{t.y}.mvt")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    layer = mapbox_vector_tile.decode(r.content)["density"]
    assert layer["extent"] == 4096
    snap = snapshot(loaded, None, zoom_to_res(z, 5, BASE_RES))
    ids = {f["id"] for f in layer["features"]}
    for f in layer["features"]:
        # A withheld area shows its published parent (or coarser): the feature says its res.
        p = f["properties"]
        src = snapshot(loaded, None, p["res"])
        assert p["res"] <= snap.res and h3.get_resolution(p["cell"]) == p["res"]
        row = int(src.lookup(np.array([f["id"]], dtype=np.uint64))[0])
        assert row >= 0
        assert p["cell"] == h3.int_to_str(f["id"])
        assert p["people"] == src.people[row]
        assert p["band"] == src.bands[src.band[row]].name
    b = TMS.bounds(t)
    centred = {
        int(c)
        for c in snap.cells
        if b.left < h3.cell_to_latlng(h3.int_to_str(int(c)))[1] < b.right
        and b.bottom < h3.cell_to_latlng(h3.int_to_str(int(c)))[0] < b.top
    }
    assert centred and centred <= ids


def test_png_tiles_are_256_and_512_pixels(loaded: Loaded) -> None:
    t = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], 11)
    for suffix, size in ((".png", 256), ("@2x.png", 512)):
        r = planner_get(loaded, f"/tiles/11/{t.x}/{t.y}{suffix}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.size == (size, size)
        assert np.asarray(img.convert("RGBA"))[..., 3].max() > 0


def test_stats_people_sum_the_coarsest_snapshot(loaded: Loaded) -> None:
    s = planner_get(loaded, "/api/v1/stats").json()
    snap = snapshot(loaded, None, 5)
    assert s["people"] == float(snap.people.sum())
    assert s["by_res"][0]["res"] == 5
    assert sum(s["by_res"][-1]["cells_by_band"].values()) == s["by_res"][-1]["cells"]


def test_a_batch_is_visible_in_json_and_tiles_within_a_second(loaded: Loaded) -> None:
    ts = live_ts(loaded.client)
    lat, lng = 30.05, 119.95  # far from the simulated city: a cell of its own
    batch = pl.DataFrame(
        {"device_id": ["live-a", "live-b", "live-c"], "ts": [ts] * 3, "lat": [lat] * 3,
         "lng": [lng] * 3}
    )  # fmt: skip
    release_after(loaded.client, batch, "json")  # the batch, then the next tick's release
    acked = time.perf_counter()
    d = planner_get(loaded, "/api/v1/density", params={"lat": lat, "lng": lng, "res": BASE_RES})
    t = TMS.tile(lng, lat, 15)
    tile = planner_get(loaded, f"/tiles/15/{t.x}/{t.y}.mvt")
    elapsed = time.perf_counter() - acked
    assert d.json()["people"] == 3.0 and d.json()["suppressed"] is False
    feats = mapbox_vector_tile.decode(tile.content)["density"]["features"]
    cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, BASE_RES))
    assert [f["properties"]["people"] for f in feats if f["id"] == cell] == [3.0]
    assert elapsed < 1.0


def test_withheld_and_empty_cells_answer_alike(loaded: Loaded) -> None:
    ts = int(loaded.frame["ts"].max())  # type: ignore[arg-type]
    lonely = (29.5, 119.5)
    batch = pl.DataFrame(
        {"device_id": ["solo"], "ts": [ts], "lat": [lonely[0]], "lng": [lonely[1]]}
    )
    assert post(loaded.client, batch).status_code == 200
    answers = []
    for lat, lng in (lonely, (29.4, 119.3)):  # one device there / nobody there
        d = planner_get(loaded, "/api/v1/density", params={"lat": lat, "lng": lng, "res": 10})
        body = d.json()
        body.pop("cell")
        answers.append(body)
    assert answers[0] == answers[1]
    # Both are outside the city's outline: "outside the covered area", not a withheld value.
    assert answers[0]["people"] is None and answers[0]["coverage"] == "outside"
    assert answers[0]["band"] is None and answers[0]["trend"]["change"] is None


def test_windows_are_paged_newest_first(loaded: Loaded) -> None:
    first = planner_get(loaded, "/api/v1/windows", params={"limit": 3}).json()
    starts = [w["start"] for w in first["windows"]]
    assert starts == sorted(starts, reverse=True) and len(starts) == 3
    nxt = planner_get(
        loaded, "/api/v1/windows", params={"limit": 3, "before": first["next_before"]}
    ).json()
    assert nxt["windows"][0]["start"] < starts[-1]
    assert first["total"] == nxt["total"] >= 7  # closed windows: 40 minutes, the last filling
    assert first["latest"]["start"] == starts[0]


def test_places_rank_and_detail(loaded: Loaded) -> None:
    ranking = planner_get(loaded, "/api/v1/places").json()
    dens = [p["density_km2"] for p in ranking["places"] if p["density_km2"] is not None]
    assert dens == sorted(dens, reverse=True) and dens
    assert [p["rank"] for p in ranking["places"]] == list(range(1, len(ranking["places"]) + 1))
    top = ranking["places"][0]
    d = planner_get(loaded, f"/api/v1/places/{top['id']}").json()
    assert d["now"]["people"] == top["people"]
    assert [f["minutes"] for f in d["forecast"]] == [30, 60, 90, 120]
    assert len(d["today"]) == 24
    assert d["name"]["zh"] and d["name"]["en"]
    # Lookup by name works too.
    assert planner_get(loaded, "/api/v1/places/The Bund").json()["id"] == "the-bund"


def test_pmtiles_export_holds_the_served_tiles_of_a_closed_window(loaded: Loaded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import gzip

    from pmtiles.reader import MmapSource, all_tiles

    from heatmap.tiling import export_pmtiles

    when = closed_window(loaded)
    svc = services(loaded.client)
    out = tmp_path / "closed.pmtiles"
    info = export_pmtiles(svc.settings, out, Ref.parse(when), "mvt", 10, 12)
    assert info["tiles"] > 5 and info["window"]["start"] == when and out.stat().st_size > 0
    with out.open("rb") as fh:
        tiles = dict(all_tiles(MmapSource(fh)))
    for (z, x, y), data in list(tiles.items())[:5]:
        r = planner_get(loaded, f"/tiles/{z}/{x}/{y}.mvt", params={"window": when})
        assert r.status_code == 200 and gzip.decompress(data) == r.content
