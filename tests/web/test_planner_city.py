"""The planner over the whole city: painted at every zoom, kept to the city, search, exports."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from web_harness import PLANNER_TOKEN, Site, wait_ready
from web_pixels import band_masks

pytestmark = pytest.mark.browser

PLACES = {"the-bund": (31.2397, 121.4880), "peoples-square": (31.2312, 121.4697)}


def map_name(page: Any) -> str:
    return page.evaluate("() => Object.keys(window).find((k) => /^map_[0-9a-f]+$/.test(k))")


def painted(page: Any, site: Site, cx: int, cy: int, box: int = 24) -> tuple[float, str | None]:
    """Return the share of band-coloured pixels in a box around a screen point, and the band
    painted at the point (None if blank)."""
    cfg = json.loads(page.text_content("#heatmap-config"))
    colors = {b["band"]: b["color"] for b in site.get_json("/api/v1/legend")["bands"]}
    masks = band_masks(page.screenshot(), colors, "#eef0f2", cfg["fillOpacity"])
    region = np.zeros(next(iter(masks.values())).shape, dtype=bool)
    for m in masks.values():
        region |= m
    sub = region[cy - box : cy + box, cx - box : cx + box]
    # The band of most pixels around the point (at street zoom a hexagon outline may cross it).
    near = {b: int(m[cy - 4 : cy + 5, cx - 4 : cx + 5].sum()) for b, m in masks.items()}
    best = max(near, key=lambda b: near[b])
    return float(sub.mean()), best if near[best] >= 40 else None


@pytest.mark.parametrize("place", sorted(PLACES))
def test_named_places_are_painted_at_every_zoom(site: Site, desktop: Any, place: str) -> None:
    page, _ = desktop
    page.goto(site.base + "/")
    wait_ready(page)
    name = map_name(page)
    cfg = json.loads(page.text_content("#heatmap-config"))
    lat, lng = PLACES[place]
    page.evaluate("() => document.getElementById('panel').classList.add('collapsed')")
    for z in range(8, 17):
        # The map may not centre the point (it stays on the city): find where it is drawn.
        cx, cy = page.evaluate(
            f"""() => {{ const m = window[{json.dumps(name)}];
                 m.setView([{lat}, {lng}], {z}, {{animate: false}});
                 const p = m.latLngToContainerPoint([{lat}, {lng}]);
                 return [Math.round(p.x), Math.round(p.y)]; }}"""
        )
        page.wait_for_load_state("networkidle")
        for _ in range(20):  # tiles fade in after they arrive
            page.wait_for_timeout(150)
            share, band = painted(page, site, cx, cy)
            if share > 0.8:
                break
        res = cfg["zoomToRes"][z]
        answer = site.get_json(f"/api/v1/density?lat={lat}&lng={lng}&res={res}")
        where = f"{place} z{z} at {(cx, cy)}: {answer['coverage']} res {answer['res']}"
        assert share > 0.8, f"only {share:.0%} painted ({where})"
        # What the map paints there is what the point answer says (its resolution and why).
        assert band == answer["band"], (where, band, answer["band"])


def test_the_map_stays_on_the_city(site: Site, desktop: Any) -> None:
    page, watch = desktop
    page.goto(site.base + "/")
    wait_ready(page)
    name = map_name(page)
    page.evaluate(f"() => window[{json.dumps(name)}].setZoom(2, {{animate: false}})")
    page.wait_for_timeout(300)
    assert page.evaluate(f"() => window[{json.dumps(name)}].getZoom()") >= 8
    page.evaluate(f"() => window[{json.dumps(name)}].panTo([0, 0], {{animate: false}})")
    page.wait_for_timeout(300)
    lat, lng = page.evaluate(
        f"() => {{ const c = window[{json.dumps(name)}].getCenter(); return [c.lat, c.lng]; }}"
    )
    assert 30 < lat < 32.5 and 120 < lng < 123, (lat, lng)
    assert "leaflet-disabled" in (page.get_attribute(".leaflet-control-zoom-out", "class") or "")


@pytest.mark.parametrize(("query", "place"), [("迪斯尼", "disneyland"), ("njdl", "nanjing-road")])
def test_planner_place_search(site: Site, desktop: Any, query: str, place: str) -> None:
    page, _ = desktop
    page.goto(site.base + "/?lang=en")
    wait_ready(page)
    page.fill("#pq", query)
    page.press("#pq", "Enter")
    page.wait_for_selector(f".leaflet-popup .popup[data-place='{place}']")


def test_whole_city_export_needs_a_token_and_downloads(site: Site, desktop: Any) -> None:
    page, _ = desktop
    page.goto(site.base + "/?lang=en")
    wait_ready(page)
    page.click("#city-exports button[data-format=gpkg]")
    assert "token" in page.inner_text("#city-export-msg").lower()
    page.fill("#token", PLANNER_TOKEN)
    page.select_option("#export-res", "9")
    with page.expect_download() as info:
        page.click("#city-exports button[data-format=gpkg]")
    download = info.value
    assert download.suggested_filename.endswith(".gpkg") and "res9" in download.suggested_filename
    path = download.path()
    with open(path, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"
    # Every published res-9 cell of the release, not just the view.
    with page.expect_download() as info:
        page.click("#city-exports button[data-format=csv]")
    lines = open(info.value.path(), encoding="utf-8").read().splitlines()
    stats = site.get_json("/api/v1/stats")
    (row,) = [r for r in stats["by_res"] if r["res"] == 9]
    assert len(lines) - 1 == row["cells"] > 1000


def test_pmtiles_download_is_for_planners(site: Site) -> None:
    import urllib.error
    import urllib.request

    url = site.base + "/api/v1/export/tiles.pmtiles?min_zoom=8&max_zoom=9"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=30)
    assert err.value.code == 401
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {PLANNER_TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        assert r.headers["content-type"] == "application/vnd.pmtiles"
    assert body[:7] == b"PMTiles" and body[7] == 3
