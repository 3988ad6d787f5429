"""The pages over HTTP without a browser: headers, configuration, assets, parameters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.web.routes import basemap_origin, frame_ancestors


@pytest.fixture
def client(make_settings: Any) -> Iterator[TestClient]:
    settings = make_settings(frame_ancestors=["'self'", "https://app.example.gov.cn"])
    with TestClient(create_app(settings)) as c:
        yield c


def config_of(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="heatmap-config">(.*?)</script>', html)
    assert m, "no page configuration"
    return json.loads(m.group(1))


@pytest.mark.parametrize("path", ["/", "/widget"])
def test_pages_send_a_strict_csp_and_no_cookie(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://app.example.gov.cn" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "set-cookie" not in r.headers
    # Every URL the page loads is on this server: no scheme, no host.
    for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert url.startswith(("/", "?", "#", "data:")), url


def test_inline_scripts_are_allowed_by_their_hash_only(client: TestClient) -> None:
    r = client.get("/")
    hashes = re.findall(r"'sha256-[^']+'", r.headers["content-security-policy"])
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(hashes) == len(inline) >= 1


def test_planner_knows_only_server_given_urls(client: TestClient) -> None:
    cfg = config_of(client.get("/").text)
    assert cfg["tilejson"] == {"png": "/tiles.json?format=png", "mvt": "/tiles.json?format=mvt"}
    assert cfg["api"]["density"] == "/api/v1/density"
    assert len(cfg["zoomToRes"]) == 19 and cfg["zoomToRes"][10] in range(5, 11)
    assert cfg["lang"] == "zh"
    assert config_of(client.get("/?lang=en").text)["lang"] == "en"


def test_widget_centres_on_a_place_by_id_or_name(client: TestClient) -> None:
    assert config_of(client.get("/widget?place=the-bund").text)["initial"]["place"] == "the-bund"
    by_name = config_of(client.get("/widget?place=外滩&lang=en").text)
    assert by_name["initial"]["place"] == "the-bund" and by_name["lang"] == "en"
    unknown = config_of(client.get("/widget?place=nowhere-at-all").text)["initial"]
    assert unknown["place"] is None and unknown["query"] == "nowhere-at-all"
    point = config_of(client.get("/widget?lat=31.23&lng=121.47&zoom=16").text)["initial"]
    assert (point["lat"], point["lng"], point["zoom"]) == (31.23, 121.47, 16)


@pytest.mark.parametrize(
    "query", ["lat=31.2", "lat=91&lng=121", "lat=31&lng=121&zoom=40", "place=" + "x" * 101]
)
def test_widget_rejects_bad_parameters_with_a_reason(client: TestClient, query: str) -> None:
    r = client.get("/widget?" + query)
    assert r.status_code == 422
    assert r.json()["detail"]


def test_assets_are_local_gzipped_and_revalidated(client: TestClient) -> None:
    html = client.get("/widget").text
    url = re.search(r'src="(/assets/vendor/leaflet/leaflet\.js\?v=\w+)"', html)
    assert url
    r = client.get(url.group(1), headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert "immutable" in r.headers["cache-control"]
    again = client.get(url.group(1), headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/assets/web/%2e%2e/%2e%2e/%2e%2e/node_modules/leaflet/dist/leaflet.js",
        "/assets/web/%2e%2e/routes.py",
        "/assets/vendor/leaflet/%2e%2e/package.json",
        "/assets/x.js",
    ],
)
def test_assets_outside_the_asset_folders_are_not_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_csp_helpers() -> None:
    assert basemap_origin("https://tile.openstreetmap.org/{z}/{x}/{y}.png") == (
        "https://tile.openstreetmap.org"
    )
    assert basemap_origin("https://{s}.basemaps.example.com/{z}/{x}/{y}.png") == (
        "https://*.basemaps.example.com"
    )
    assert basemap_origin("") is None
    assert frame_ancestors(["'self'", "https://a.example; script-src *"]) == "'self'"
    assert frame_ancestors([]) == "'none'"
