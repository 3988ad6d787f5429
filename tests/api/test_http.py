"""HTTP behaviour: TileJSON schema, ETag/304, Cache-Control, Vary, gzip, CORS, ops routes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import jsonschema
import mapbox_vector_tile
import morecantile
import polars as pl
from api_testdata import OPS, Loaded, api_settings, live_ts, post, release_after

from fastapi.testclient import TestClient

from heatmap.api import create_app

TMS = morecantile.tms.get("WebMercatorQuad")
SCHEMA = json.loads(
    (Path(__file__).parents[1] / "tiles" / "tilejson-3.0.0.schema.json").read_text()
)
PEOPLES_SQUARE = (31.2335, 121.4755)
LIVE = "public, max-age=5, must-revalidate"
IMMUTABLE = "public, max-age=86400, immutable"


def tile_url(z: int, suffix: str = ".mvt", at: tuple[float, float] = PEOPLES_SQUARE) -> str:
    t = TMS.tile(at[1], at[0], z)
    return f"/tiles/{z}/{t.x}/{t.y}{suffix}"


def closed_start(loaded: Loaded) -> str:
    wins = loaded.client.get("/api/v1/windows").json()["windows"]
    return next(w["start"] for w in wins if w["complete"])


def raw_get(loaded: Loaded, url: str, **headers: str) -> httpx.Response:
    """GET without transparent decoding, to see the bytes on the wire."""
    with loaded.client.stream("GET", url, headers=headers) as r:
        r.raw = b"".join(r.iter_raw())  # type: ignore[attr-defined]
        return r


def test_tilejson_validates_against_the_3_0_0_schema(loaded: Loaded) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    for fmt in ("mvt", "png"):
        doc = loaded.client.get("/tiles.json", params={"format": fmt}).json()
        jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft7Validator)
        assert doc["tilejson"] == "3.0.0"
        assert doc["tiles"] == [f"http://testserver/tiles/{{z}}/{{x}}/{{y}}.{fmt}"]
        assert doc["minzoom"] <= doc["center"][2] <= doc["maxzoom"]
        assert "#d7191c" in doc["legend"] and doc["attribution"]
        if fmt == "mvt":
            (layer,) = doc["vector_layers"]
            assert layer["id"] == "density"
            assert set(layer["fields"]) == {"cell", "people", "density_km2", "band", "res"}
        else:
            assert "vector_layers" not in doc


def test_tilejson_of_a_closed_window_pins_it_and_is_immutable(loaded: Loaded) -> None:
    when = closed_start(loaded)
    r = loaded.client.get("/tiles.json", params={"window": when})
    jsonschema.validate(r.json(), SCHEMA, cls=jsonschema.Draft7Validator)
    assert r.json()["tiles"][0].endswith(f".mvt?window={when}")
    assert r.headers["cache-control"] == IMMUTABLE


def test_tile_etag_answers_304(loaded: Loaded) -> None:
    url = tile_url(12)
    first = loaded.client.get(url)
    tag = first.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"')
    for inm in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        again = loaded.client.get(url, headers={"If-None-Match": inm})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == tag
        assert again.headers["cache-control"] == first.headers["cache-control"]
    assert loaded.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_json_etag_answers_304(loaded: Loaded) -> None:
    params = {"lat": PEOPLES_SQUARE[0], "lng": PEOPLES_SQUARE[1]}
    first = loaded.client.get("/api/v1/density", params=params)
    again = loaded.client.get(
        "/api/v1/density", params=params, headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


def test_cache_control_latest_is_short_and_closed_is_immutable(loaded: Loaded) -> None:
    when = closed_start(loaded)
    latest = loaded.client.get(tile_url(12))
    assert latest.headers["cache-control"] == LIVE
    assert latest.headers["x-heatmap-complete"] == "false"
    closed = loaded.client.get(tile_url(12), params={"window": when})
    assert closed.headers["cache-control"] == IMMUTABLE
    assert closed.headers["x-heatmap-window"] == when
    params = {"lat": PEOPLES_SQUARE[0], "lng": PEOPLES_SQUARE[1]}
    assert loaded.client.get("/api/v1/density", params=params).headers["cache-control"] == LIVE
    pinned = loaded.client.get("/api/v1/density", params={**params, "window": when})
    assert pinned.headers["cache-control"] == IMMUTABLE
    # A release named by its tick never changes either; a window still filling is not served.
    listed = loaded.client.get("/api/v1/windows").json()
    named = loaded.client.get(tile_url(12), params={"release": listed["latest_release"]["as_of"]})
    assert named.headers["cache-control"] == IMMUTABLE
    filling = loaded.client.get(tile_url(12), params={"window": listed["latest"]["end"]})
    assert filling.status_code == 404


def test_mvt_is_gzipped_when_accepted_and_png_never(loaded: Loaded) -> None:
    url = tile_url(12)
    plain = raw_get(loaded, url, **{"Accept-Encoding": "identity"})
    zipped = raw_get(loaded, url, **{"Accept-Encoding": "gzip, br"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.raw) == plain.raw  # type: ignore[attr-defined]
    assert mapbox_vector_tile.decode(plain.raw)["density"]["features"]  # type: ignore[attr-defined]
    assert zipped.headers["etag"] != plain.headers["etag"]
    for r in (plain, zipped):
        assert "Accept-Encoding" in r.headers["vary"]
    png = raw_get(loaded, tile_url(12, ".png"), **{"Accept-Encoding": "gzip"})
    assert "content-encoding" not in png.headers and png.raw[:4] == b"\x89PNG"  # type: ignore[attr-defined]
    assert "Accept-Encoding" in png.headers["vary"]


def test_empty_tile_is_204_with_validators(loaded: Loaded) -> None:
    r = loaded.client.get(tile_url(10, at=(-30.0, -140.0)))  # South Pacific
    assert r.status_code == 204 and r.content == b""
    assert r.headers["etag"] and r.headers["cache-control"] == LIVE


def test_a_new_batch_changes_the_live_tile_and_its_etag(loaded: Loaded) -> None:
    url = tile_url(12)
    before = loaded.client.get(url)
    ts = live_ts(loaded.client)
    batch = pl.DataFrame(
        {
            "device_id": [f"etag-{i}" for i in range(5)],
            "ts": [ts] * 5,
            "lat": [PEOPLES_SQUARE[0]] * 5,
            "lng": [PEOPLES_SQUARE[1]] * 5,
        }
    )
    release_after(loaded.client, batch)
    after = loaded.client.get(url, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200
    assert after.headers["etag"] != before.headers["etag"]


def test_cors_and_security_headers(loaded: Loaded) -> None:
    r = loaded.client.get("/api/v1/legend", headers={"Origin": "https://gov.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["x-content-type-options"] == "nosniff"
    pre = loaded.client.options(
        "/api/v1/pings",
        headers={
            "Origin": "https://gov.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]


def test_pages_answer_html_with_frame_ancestors(loaded: Loaded) -> None:
    for path in ("/", "/widget"):
        r = loaded.client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'self'" in r.headers["content-security-policy"]


def test_pages_get_the_configured_frame_ancestors(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, frame_ancestors="'self',https://gov.example")
    with TestClient(create_app(settings)) as client:
        for path in ("/", "/widget"):
            r = client.get(path)
            assert r.status_code == 200 and "/tiles.json" in r.text
            csp = r.headers["content-security-policy"]
            assert csp.endswith("; frame-ancestors 'self' https://gov.example")


def test_healthz(loaded: Loaded) -> None:
    h = loaded.client.get("/healthz")
    assert h.status_code == 200 and h.headers["cache-control"] == "no-store"
    body = h.json()
    assert body["status"] == "ok" and body["store"] == "ok" and body["windows"] >= 7
    assert body["latest_window"]["complete"] is False and body["latest_window_age_s"] >= 0


def test_metrics_count_requests_pings_cache_and_builds(loaded: Loaded) -> None:
    loaded.client.get(tile_url(13))
    loaded.client.get(tile_url(13))
    loaded.client.get("/tiles/99/0/0.mvt")
    text = loaded.client.get("/metrics", headers=OPS).text
    assert 'route="/tiles/{z}/{x}/{y}.mvt",status="200"' in text
    assert 'route="/tiles/{z}/{x}/{y}.mvt",status="404"' in text
    assert 'heatmap_http_request_seconds_bucket{le="0.005",route="/api/v1/density"}' in text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["heatmap_pings_accepted_total"] >= loaded.frame.height
    assert values["heatmap_tile_cache_hits_total"] >= 1
    assert values["heatmap_tile_cache_misses_total"] >= 1
    assert values["heatmap_snapshot_build_seconds_count"] >= 1
    assert values['heatmap_ingest_batches_total{outcome="committed"}'] >= 4


def test_fast_path_answers_exactly_like_the_route(loaded: Loaded) -> None:
    for suffix, enc in ((".mvt", "gzip"), (".mvt", "identity"), (".png", "gzip")):
        url = tile_url(11, suffix)
        loaded.client.get(url)  # render and cache
        fast = raw_get(loaded, url, **{"Accept-Encoding": enc})
        # An Origin header sends the request through the app (CORS), i.e. the route.
        routed = raw_get(loaded, url, **{"Accept-Encoding": enc, "Origin": "https://x.example"})
        assert fast.status_code == routed.status_code == 200
        assert fast.raw == routed.raw  # type: ignore[attr-defined]
        skip = {"access-control-allow-origin", "vary", "access-control-expose-headers"}
        assert {k: v for k, v in fast.headers.items() if k not in skip} == {
            k: v for k, v in routed.headers.items() if k not in skip
        }
        tag = fast.headers["etag"]
        assert loaded.client.get(url, headers={"If-None-Match": tag}).status_code == 304


def test_a_memoised_fast_tile_follows_a_new_batch(loaded: Loaded) -> None:
    # Out at sea, where no simulated device ever is: the batch alone decides the tile (in the
    # city, complementary suppression could withhold the new cell, depending on its neighbours).
    at = (30.50, 123.50)
    url = tile_url(14, at=at)
    first = [loaded.client.get(url) for _ in range(3)][-1]  # rendered, cached, memoised
    ts = live_ts(loaded.client)
    n = 7
    batch = pl.DataFrame(
        {"device_id": [f"memo-{i}" for i in range(n)], "ts": [ts] * n, "lat": [at[0]] * n,
         "lng": [at[1]] * n}
    )  # fmt: skip
    release_after(loaded.client, batch)
    after = loaded.client.get(url)
    assert after.status_code == 200 and after.headers["etag"] != first.headers.get("etag")
    assert after.content != first.content


def test_metrics_are_for_operations_only(loaded: Loaded, tmp_path: Path) -> None:
    # What others looked at (requests, cache hits) and how big each batch was are not public.
    anonymous = loaded.client.get("/metrics")
    assert anonymous.status_code == 401 and "heatmap_" not in anonymous.text
    wrong = loaded.client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and "heatmap_" not in wrong.text
    assert loaded.client.get("/metrics", headers=OPS).status_code == 200
    # Without an operations token the route does not exist at all.
    with TestClient(create_app(api_settings(tmp_path, metrics_token=None))) as client:
        off = client.get("/metrics", headers=OPS)
        assert off.status_code == 404 and "heatmap_" not in off.text


def test_privacy_states_k_and_the_budget_per_device(loaded: Loaded, tmp_path: Path) -> None:
    off = loaded.client.get("/api/v1/privacy").json()
    assert off["dp"] is None and off["unit"] == "device"
    assert "one person" in off["temporal_limit"]["en"]  # the limit of k-anonymity, plainly
    eps = 1.0
    with TestClient(create_app(api_settings(tmp_path, dp_epsilon=eps))) as client:
        doc = client.get("/api/v1/privacy").json()
        dp = doc["dp"]
        releases, windows = 86400 // doc["release_s"], 86400 // doc["window_s"]
        assert dp["epsilon_per_release"] == dp["epsilon_per_window"] == eps
        assert dp["epsilon_per_day"] == eps * (releases + windows)  # basic composition
        assert dp["releases_per_ping"] == doc["horizon_s"] // doc["release_s"]
        assert dp["threshold"] > doc["k_min"] and dp["noise"]["half_width"] > 0
        assert client.get("/api/v1/legend").json()["privacy"] == doc
        assert client.get("/tiles.json").json()["privacy"] == doc
        assert (
            f"{dp['epsilon_per_day']:g} per device-day"
            in client.get("/tiles.json").json()["legend"]
        )


def test_the_window_list_does_not_tell_whether_anyone_pinged(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    t0 = 1_795_900_200 // 300 * 300
    # One lone device pings in windows 0, 3 and 6 only; a far crowd moves the clock on.
    lone = [("lone", t0 + 300 * k + 10, 31.23, 121.47) for k in (0, 3, 6)]
    clock = [(f"c{k}", t0 + 300 * 8 + k, -60.0, -150.0) for k in range(3)]
    frame = pl.DataFrame(lone + clock, schema=["device_id", "ts", "lat", "lng"], orient="row")
    assert post(client, frame).status_code == 200
    listed = client.get("/api/v1/windows", params={"limit": 100}).json()
    starts = [w["start"] for w in listed["windows"]][::-1]
    assert len(starts) == listed["total"] >= 7  # every window of the clock, none skipped
    from heatmap.model import epoch_to_iso

    assert starts[:7] == [epoch_to_iso(t0 + 300 * k) for k in range(7)]
    # A window nobody pinged in answers like one whose only device was withheld.
    empty = client.get("/api/v1/stats", params={"window": epoch_to_iso(t0 + 300)}).json()
    lonely = client.get("/api/v1/stats", params={"window": epoch_to_iso(t0)}).json()
    assert empty["people"] == lonely["people"] == 0.0
    assert empty["published_cells"] == lonely["published_cells"] == 0
