"""The OGC API under ``/ogc``, driven by OWSLib (the OGC client library) against a real uvicorn
server on 127.0.0.1, and checked against a plain h3-py reference.

The data are isolated crowds, each standing on one point and each point in its own resolution-5
hexagon, so the published cells follow from the counts alone (no complementary suppression):
a crowd of at least ``k_min`` devices is one feature per resolution, with exactly its count
(planner) or its count rounded to ``k_min`` (public). Two closed windows hold different crowds;
the latest release holds those of the second.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h3
import httpx
import mapbox_vector_tile
import morecantile
import polars as pl
import pytest
import shapely
from api_testdata import AUTH, PLANNER, api_settings, encode
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from owslib.ogcapi.features import Features
from PIL import Image

import uvicorn

from heatmap.api import create_app
from heatmap.model import epoch_to_iso
from tiles.grid import zoom_to_res

K = 5
HTTP = httpx.Client(timeout=120)  # the first batch may wait for the ingest kernels to compile
TMS = morecantile.tms.get("WebMercatorQuad")
T0 = (int(time.time()) - 3600) // 300 * 300
W1 = (T0, T0 + 300)
W2 = (T0 + 300, T0 + 600)
CLOCK_TS = T0 + 730  # closes W2 (lateness 120) and makes the release at T0 + 720
RELEASE_TICK = T0 + 720

# name: (lat, lng, devices in W1, devices in W2); 30 km apart, so no two share a res-5 cell.
CROWDS: dict[str, tuple[float, float, int, int]] = {
    "A": (31.23, 121.47, 12, 20),
    "B": (31.23, 121.77, 7, 6),
    "C": (30.93, 121.47, 30, 25),
    "D": (30.93, 121.77, 5, 9),
    "E": (31.53, 121.47, 3, 3),  # below k: never published
    "F": (31.53, 121.17, 9, 0),  # gone in W2
    "G": (31.23, 121.17, 0, 14),  # new in W2
    "H": (30.93, 121.17, 6, 6),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iso(ts: int) -> str:
    return epoch_to_iso(ts)


def pings() -> pl.DataFrame:
    rows: list[tuple[str, int, float, float]] = []
    for name, (lat, lng, n1, n2) in CROWDS.items():
        rows += [(f"{name}-{i}", W1[0] + 100 + i, lat, lng) for i in range(n1)]
        rows += [(f"{name}-{i}", W2[0] + 290 - i, lat, lng) for i in range(n2)]
    rows.append(("clock", CLOCK_TS, -60.0, -150.0))  # alone in the southern ocean
    return pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")


def reference(window: tuple[int, int] | None, res: int) -> dict[str, int]:
    """Plain h3-py: devices per cell at ``res`` whose latest ping in the span lies there
    (published: at least ``K``).

    ``window`` None is the latest release: the span ``(tick - 300, tick]``.
    """
    lo, hi = window if window is not None else (RELEASE_TICK - 300 + 1, RELEASE_TICK + 1)
    latest: dict[str, tuple[int, float, float]] = {}
    for dev, ts, lat, lng in pings().iter_rows():
        if lo <= ts < hi and (dev not in latest or ts > latest[dev][0]):
            latest[dev] = (ts, lat, lng)
    out: dict[str, int] = {}
    for _, lat, lng in latest.values():
        cell = cell_at(lat, lng, res)
        out[cell] = out.get(cell, 0) + 1
    return {c: n for c, n in out.items() if n >= K}


def cell_at(lat: float, lng: float, res: int) -> str:
    """The cell a ping counts in at ``res``: the parent of its base-resolution (10) cell."""
    return h3.cell_to_parent(h3.latlng_to_cell(lat, lng, 10), res)


def public(n: int) -> float:
    return float(max(round(n / K), 1) * K)


@dataclass
class Server:
    url: str
    ogc: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ogc")
    app = create_app(api_settings(root, k_min=K))
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    body, ctype = encode(pings(), "csv")
    r = HTTP.post(f"{url}/api/v1/pings", content=body, headers={**AUTH, "Content-Type": ctype})
    assert r.status_code == 200, r.text
    latest = HTTP.get(f"{url}/api/v1/windows").json()["latest_release"]
    assert latest["as_of"] == iso(RELEASE_TICK), latest
    yield Server(url, f"{url}/ogc")
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server: Server) -> Features:
    return Features(server.ogc)


def cells_of(doc: dict[str, Any]) -> dict[str, float]:
    return {f["id"]: f["properties"]["people"] for f in doc["features"]}


def test_the_crowds_are_apart() -> None:
    # The premise of the reference: no two crowds share a cell at any published resolution.
    parents = {cell_at(lat, lng, 5) for lat, lng, _, _ in CROWDS.values()}
    assert len(parents) == len(CROWDS)


# -- Common: landing, conformance, API definition, collections ---------------------------------


def test_landing_page_links(client: Features, server: Server) -> None:
    rels = {link["rel"]: link for link in client.links}
    for rel in ("self", "service-desc", "service-doc", "conformance", "data"):
        assert rel in rels, rel
    assert rels["data"]["href"] == f"{server.ogc}/collections"
    assert rels["service-desc"]["type"] == "application/vnd.oai.openapi+json;version=3.0"


def test_conformance_declares_what_is_served(client: Features) -> None:
    classes = set(client.conformance()["conformsTo"])
    base = "http://www.opengis.net/spec/"
    assert base + "ogcapi-features-1/1.0/conf/core" in classes
    assert base + "ogcapi-features-1/1.0/conf/geojson" in classes
    assert base + "ogcapi-tiles-1/1.0/conf/mvt" in classes
    assert base + "ogcapi-tiles-1/1.0/conf/png" in classes
    # Not implemented, so not declared: HTML, other CRS, filtering, dataset tilesets.
    assert not any(c.endswith(("/html", "/crs", "/filter", "/dataset-tilesets")) for c in classes)


def test_api_definition_is_valid_openapi_30(client: Features) -> None:
    doc = client.api()  # follows the service-desc link of type OpenAPI 3.0
    assert doc["openapi"].startswith("3.0")
    validate_openapi(doc)
    items = doc["paths"]["/ogc/collections/{collectionId}/items"]["get"]
    names = {p["name"] for p in items["parameters"]}
    assert {"bbox", "datetime", "limit", "offset"} <= names
    assert "422" not in items["responses"] and "400" in items["responses"]
    assert "/ogc/collections/{collectionId}/tiles/{tileMatrixSetId}" in doc["paths"]


def test_the_raw_31_document_would_not_validate(server: Server) -> None:
    # The control of the test above: FastAPI's own 3.1 document of the same routes, labelled
    # 3.0, is rejected, so the validator does check what /ogc/api converts.
    raw = HTTP.get(f"{server.url}/openapi.json").json()
    raw["paths"] = {k: v for k, v in raw["paths"].items() if k.startswith("/ogc")}
    raw["openapi"] = "3.0.3"
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(raw)


def test_collections_per_resolution(client: Features) -> None:
    ids = [c["id"] for c in client.collections()["collections"]]
    assert ids == ["density"] + [f"density-r{r}" for r in range(5, 11)]
    assert client.feature_collections() == ids
    one = client.collection("density-r8")
    interval = one["extent"]["temporal"]["interval"][0]
    assert interval == [iso(W1[0]), iso(RELEASE_TICK)]
    w, s, e, n = one["extent"]["spatial"]["bbox"][0]
    assert w < 121.17 and e > 121.77 and s < 30.93 and n > 31.53
    rels = {link["rel"] for link in client.collection("density")["links"]}
    assert "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector" in rels
    assert "items" in rels


# -- Features: items against the h3-py reference ------------------------------------------------


@pytest.mark.parametrize("res", [5, 8, 10])
def test_items_match_the_reference_public(client: Features, res: int) -> None:
    doc = client.collection_items(f"density-r{res}", limit=100)
    ref = reference(None, res)
    assert cells_of(doc) == {c: public(n) for c, n in ref.items()}
    assert doc["numberMatched"] == doc["numberReturned"] == len(ref) == 6
    assert doc["window"]["kind"] == "release" and doc["timeStamp"] == iso(RELEASE_TICK)
    for f in doc["features"]:
        ring = f["geometry"]["coordinates"][0]
        want = [[lng, lat] for lat, lng in h3.cell_to_boundary(f["id"])]
        assert len(ring) == len(want) + 1 and ring[0] == ring[-1]
        for got, exp in zip(ring, want, strict=False):
            assert got == pytest.approx(exp, abs=1e-9)
        assert f["properties"]["band"] in ("blue", "green", "yellow", "red")
        assert f["properties"]["label_en"] and f["properties"]["label_zh"]


def test_items_planner_reads_exact_values(server: Server) -> None:
    r = HTTP.get(f"{server.ogc}/collections/density-r9/items", headers=PLANNER)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    assert cells_of(r.json()) == {c: float(n) for c, n in reference(None, 9).items()}
    assert r.headers["cache-control"].startswith("private")
    # ... and the rounding is real: the public view differs for the crowds of 6, 9 and 14.
    pub = HTTP.get(f"{server.ogc}/collections/density-r9/items").json()
    assert cells_of(pub) != cells_of(r.json())


def test_density_collection_takes_res(client: Features) -> None:
    doc = client.collection_items("density", res=7)
    assert cells_of(doc) == {c: public(n) for c, n in reference(None, 7).items()}
    coarse = client.collection_items("density")
    assert {h3.get_resolution(c) for c in cells_of(coarse)} == {5}


def test_one_item(client: Features) -> None:
    lat, lng = CROWDS["C"][:2]
    cell = cell_at(lat, lng, 8)
    f = client.collection_item("density-r8", cell)
    assert f["id"] == cell and f["properties"]["people"] == public(25)
    with pytest.raises(RuntimeError):  # E: 3 devices, not published
        client.collection_item("density-r8", cell_at(*CROWDS["E"][:2], 8))


def _bbox_reference(res: int, bbox: tuple[float, float, float, float]) -> set[str]:
    box = shapely.box(*bbox)
    out = set()
    for cell in reference(None, res):
        poly = shapely.Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)])
        if poly.intersects(box):
            out.add(cell)
    return out


def test_bbox_keeps_hexagons_that_intersect(client: Features) -> None:
    res = 8
    a_cell = cell_at(*CROWDS["A"][:2], res)
    lat, lng = h3.cell_to_latlng(a_cell)
    # East edge 200 m west of A's centre: A's hexagon (~460 m radius) still reaches into the box.
    bbox = (121.0, 30.8, lng - 0.0021, 31.4)
    want = _bbox_reference(res, bbox)
    assert a_cell in want and lng > bbox[2]  # the edge case is exercised
    doc = client.collection_items(f"density-r{res}", bbox=list(bbox))
    assert set(cells_of(doc)) == want
    assert doc["numberMatched"] == len(want)
    # A box that misses every hexagon by a few metres finds nothing.
    far = (lng + 0.01, lat - 0.001, lng + 0.02, lat + 0.001)
    assert client.collection_items(f"density-r{res}", bbox=list(far))["numberMatched"] == 0


def test_paging_with_next_links(server: Server) -> None:
    url: str | None = f"{server.ogc}/collections/density-r9/items?limit=4"
    seen: list[str] = []
    pages = 0
    while url is not None:
        doc = HTTP.get(url).json()
        pages += 1
        assert doc["numberMatched"] == 6
        seen += [f["id"] for f in doc["features"]]
        nxt = [link["href"] for link in doc["links"] if link["rel"] == "next"]
        if pages == 2:
            assert any(link["rel"] == "prev" for link in doc["links"])
        url = nxt[0] if nxt else None
        if url is not None:
            assert f"release={iso(RELEASE_TICK).replace(':', '%3A')}" in url  # pinned
    assert pages == 2
    assert len(seen) == len(set(seen)) == 6
    assert set(seen) == set(reference(None, 9))


def test_offset_past_the_end(client: Features) -> None:
    doc = client.collection_items("density-r9", offset=100)
    assert doc["numberReturned"] == 0 and doc["numberMatched"] == 6
    assert not [link for link in doc["links"] if link["rel"] == "next"]


# -- Features: datetime -------------------------------------------------------------------------


def test_datetime_instant_names_the_closed_window(client: Features) -> None:
    doc = client.collection_items("density-r6", datetime_=iso(W1[0] + 150))
    assert doc["window"]["kind"] == "window" and doc["window"]["start"] == iso(W1[0])
    assert cells_of(doc) == {c: public(n) for c, n in reference(W1, 6).items()}
    assert set(cells_of(doc)) != set(reference(W2, 6))  # F left, G came


def test_datetime_interval_of_a_window(client: Features) -> None:
    doc = client.collection_items("density-r6", datetime_=f"{iso(W2[0])}/{iso(W2[1])}")
    assert doc["window"]["start"] == iso(W2[0]) and doc["window"]["complete"] is True
    assert cells_of(doc) == {c: public(n) for c, n in reference(W2, 6).items()}


def test_datetime_interval_of_a_release(client: Features) -> None:
    span = f"{iso(RELEASE_TICK - 300)}/{iso(RELEASE_TICK)}"
    doc = client.collection_items("density-r6", datetime_=span)
    assert doc["window"]["kind"] == "release" and doc["window"]["as_of"] == iso(RELEASE_TICK)


def test_datetime_after_the_last_closed_window_is_the_release(client: Features) -> None:
    doc = client.collection_items("density-r6", datetime_=iso(RELEASE_TICK + 30))
    assert doc["window"]["kind"] == "release" and doc["window"]["as_of"] == iso(RELEASE_TICK)


def test_pinned_answers_are_immutable(server: Server) -> None:
    r = HTTP.get(f"{server.ogc}/collections/density-r6/items", params={"datetime": iso(W1[0])})
    assert "immutable" in r.headers["cache-control"]
    live = HTTP.get(f"{server.ogc}/collections/density-r6/items")
    assert "immutable" not in live.headers["cache-control"]
    again = HTTP.get(
        f"{server.ogc}/collections/density-r6/items",
        params={"datetime": iso(W1[0])},
        headers={"If-None-Match": r.headers["etag"]},
    )
    assert again.status_code == 304


# -- bad input: 400 with one line, never 500 ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("bbox=1,2,3", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("bbox=121.5,31,121.4,31.2", "bbox"),
        ("bbox=0,0,1,1&bbox-crs=http://www.opengis.net/def/crs/EPSG/0/3857", "bbox-crs"),
        ("datetime=yesterday", "datetime"),
        ("datetime=../2026-01-01T00:00:00Z", "datetime"),
        ("datetime=2026-01-02T00:00:00Z/2026-01-01T00:00:00Z", "datetime"),
        ("datetime=2026-01-01T00:00:00Z&release=2026-01-01T00:00:00Z", "datetime"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=10001", "limit"),
        ("offset=-1", "offset"),
        ("res=7", "resolution"),
    ],
)
def test_bad_input_is_400(server: Server, query: str, word: str) -> None:
    r = HTTP.get(f"{server.ogc}/collections/density-r9/items?{query}")
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert word in detail and "\n" not in detail


def test_datetime_spanning_windows_is_400(server: Server) -> None:
    span = f"{iso(W1[0])}/{iso(W2[1])}"
    r = HTTP.get(f"{server.ogc}/collections/density-r9/items", params={"datetime": span})
    assert r.status_code == 400 and "2 windows" in r.json()["detail"]


def test_unknown_things_are_404(server: Server) -> None:
    for path in (
        "/collections/nothing",
        "/collections/nothing/items",
        "/collections/density-r4/items",
        "/collections/density-r9/items/not-a-cell",
        "/collections/density-r9/tiles",
        "/collections/density/tiles/WorldCRS84Quad",
        "/tileMatrixSets/WorldCRS84Quad",
    ):
        r = HTTP.get(server.ogc + path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"]
    old = HTTP.get(f"{server.ogc}/collections/density-r9/items", params={"datetime": "2001-01-01"})
    assert old.status_code == 404


# -- Tiles --------------------------------------------------------------------------------------


def test_tileset_metadata(client: Features, server: Server) -> None:
    sets = client._request(path="collections/density/tiles")["tilesets"]
    assert [s["dataType"] for s in sets] == ["vector"]
    meta = client._request(path="collections/density/tiles/WebMercatorQuad")
    assert meta["tileMatrixSetURI"] == TMS.uri and meta["crs"].endswith("EPSG/0/3857")
    assert meta["layers"][0]["id"] == "density"
    item = [link for link in meta["links"] if link["rel"] == "item"][0]
    assert item["type"] == "application/vnd.mapbox-vector-tile" and item["templated"] is True
    limits = {m["tileMatrix"]: m for m in meta["tileMatrixSetLimits"]}
    lat, lng = CROWDS["C"][:2]
    t = TMS.tile(lng, lat, 12)
    lim = limits["12"]
    assert lim["minTileCol"] <= t.x <= lim["maxTileCol"]
    assert lim["minTileRow"] <= t.y <= lim["maxTileRow"]
    tms = client._request(path="tileMatrixSets/WebMercatorQuad")
    assert morecantile.TileMatrixSet.model_validate(tms).id == "WebMercatorQuad"
    maps = client._request(path="collections/density/map/tiles/WebMercatorQuad")
    assert maps["dataType"] == "map"


def _tile_of(name: str, z: int) -> morecantile.Tile:
    lat, lng = CROWDS[name][:2]
    return TMS.tile(lng, lat, z)


def test_vector_tile_is_the_services_mvt(client: Features, server: Server) -> None:
    z = 12
    t = _tile_of("C", z)
    path = f"collections/density/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}"
    data = client._request(path=path, as_dict=False)
    assert data == HTTP.get(f"{server.url}/tiles/{z}/{t.x}/{t.y}.mvt").content
    layer = mapbox_vector_tile.decode(data)["density"]
    cells = {f["properties"]["cell"] for f in layer["features"]}
    lat, lng = CROWDS["C"][:2]
    assert cell_at(lat, lng, zoom_to_res(z)) in cells
    for f in layer["features"]:
        assert f["properties"]["people"] == public(CROWDS["C"][3])


def test_vector_tile_of_a_window(server: Server) -> None:
    z = 12
    t = _tile_of("F", z)  # F was there in W1 only
    path = f"{server.ogc}/collections/density/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}"
    now = HTTP.get(path)
    assert now.status_code == 204
    then = HTTP.get(path, params={"datetime": f"{iso(W1[0])}/{iso(W1[1])}"})
    assert then.status_code == 200
    same = HTTP.get(f"{server.url}/tiles/{z}/{t.x}/{t.y}.mvt", params={"window": iso(W1[0])})
    assert then.content == same.content
    assert mapbox_vector_tile.decode(then.content)["density"]["features"]


def test_map_tile_is_the_services_png(server: Server) -> None:
    z = 13
    t = _tile_of("A", z)
    r = HTTP.get(f"{server.ogc}/collections/density/map/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == HTTP.get(f"{server.url}/tiles/{z}/{t.x}/{t.y}.png").content
    img = Image.open(io.BytesIO(r.content)).convert("RGBA")
    assert img.size == (256, 256)
    lat, lng = CROWDS["A"][:2]
    x, y = TMS.xy(lng, lat)
    box = TMS.xy_bounds(t)
    px = int((x - box.left) / (box.right - box.left) * 256)
    py = int((box.top - y) / (box.top - box.bottom) * 256)
    assert img.getpixel((px, py))[3] > 0  # the crowd's hexagon is painted
    far = TMS.tile(121.95, 31.80, z)  # 50 km from every crowd, inside the city's box
    empty = f"{server.ogc}/collections/density/map/tiles/WebMercatorQuad/{z}/{far.y}/{far.x}"
    assert HTTP.get(empty).status_code == 204


def test_tiles_outside_the_limits_are_404(server: Server) -> None:
    base = f"{server.ogc}/collections/density/tiles/WebMercatorQuad"
    assert HTTP.get(f"{base}/3/3/6").status_code == 404  # below the first data zoom
    assert HTTP.get(f"{base}/12/0/0").status_code == 404  # far from the city
    assert HTTP.get(f"{base}/12/x/0").status_code == 400
