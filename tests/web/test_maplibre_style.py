"""``/style.json`` rendered by MapLibre GL JS (from npm, served from 127.0.0.1) in headless
Chromium: the vector tiles load, every rendered hexagon is drawn by the layer of its band, and
the band colours are on the screen."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from web_harness import Site, free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "node_modules" / "maplibre-gl" / "dist"
BUND = (121.4871, 31.2398)
SHOT = os.environ.get("HEATMAP_TEST_SCREENSHOT")
"""Where to keep the screenshot, to look at it (unset: not kept)."""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8">
<link rel="stylesheet" href="/maplibre-gl.css">
<style>html, body, #map {{ margin: 0; width: 100%; height: 100%; background: #fff; }}</style>
<script src="/maplibre-gl.js"></script></head>
<body><div id="map"></div><script>
window.errors = [];
window.map = new maplibregl.Map({{
  container: "map", style: "{style}", center: [{lng}, {lat}], zoom: 12,
  fadeDuration: 0, attributionControl: false,
  canvasContextAttributes: {{preserveDrawingBuffer: true}}
}});
map.on("error", (e) => window.errors.push(String(e.error && e.error.message || e)));
map.once("idle", () => {{ window.idle = true; }});
</script></body></html>
"""


@pytest.fixture(scope="module")
def page_server(site: Site) -> Iterator[str]:
    """A plain static server for the test page and MapLibre GL JS, on another port."""
    if not (DIST / "maplibre-gl.js").exists():
        pytest.fail(f"{DIST} missing: `make` installs the npm dev dependencies")
    html = PAGE.format(style=f"{site.base}/style.json?basemap=false", lng=BUND[0], lat=BUND[1])
    files = {
        "/": (html.encode(), "text/html; charset=utf-8"),
        "/maplibre-gl.js": ((DIST / "maplibre-gl.js").read_bytes(), "text/javascript"),
        "/maplibre-gl.css": ((DIST / "maplibre-gl.css").read_bytes(), "text/css"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body, ctype = files.get(self.path, (b"not found", "text/plain"))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/"
    server.shutdown()


@pytest.mark.browser
def test_maplibre_renders_the_style(desktop: Any, site: Site, page_server: str) -> None:
    page, watch = desktop
    page.goto(page_server)
    page.wait_for_function("window.idle === true || window.errors.length > 0", timeout=60_000)
    assert page.evaluate("window.errors") == []
    style = site.get_json("/style.json?basemap=false")
    bands = {
        layer["id"]: layer["metadata"]["heatmap:band"]
        for layer in style["layers"]
        if layer["type"] == "fill"
    }
    drawn = page.evaluate(
        "map.queryRenderedFeatures().map(f => [f.layer.id, f.properties.band, f.sourceLayer])"
    )
    assert len(drawn) > 10, drawn
    for layer_id, band, source_layer in drawn:
        assert bands[layer_id] == band and source_layer == "density"
    tiles = [u for u in watch.bytes_in if "/tiles/" in u and u.endswith(".mvt")]
    assert tiles, "no vector tile was fetched"

    # The colours on screen: each drawn band's colour over the white page, at its opacity.
    png = page.screenshot()
    if SHOT is not None:
        Path(SHOT).write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    seen = set(shot.get_flattened_data())
    for layer in style["layers"]:
        if layer["type"] != "fill" or layer["metadata"]["heatmap:band"] not in {
            b for _, b, _ in drawn
        }:
            continue
        c = layer["paint"]["fill-color"].lstrip("#")
        a = layer["paint"]["fill-opacity"]
        want = tuple(round(a * int(c[i : i + 2], 16) + (1 - a) * 255) for i in (0, 2, 4))
        near = [p for p in seen if max(abs(p[k] - want[k]) for k in range(3)) <= 3]
        assert near, f"{layer['id']}: no pixel near {want}"
