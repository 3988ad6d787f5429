"""The planner map in headless Chromium: offline, painted, time slider, popup with API numbers."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect
from web_harness import Site, Watch, add_pings, epoch, local_clock, tile_ref, wait_ready
from web_pixels import band_masks, interior_point

pytestmark = pytest.mark.browser

MAP_CLIP = {"x": 0, "y": 0, "width": 930, "height": 800}  # left of the side panel


def tile_requests(watch: Watch, fmt: str) -> list[str]:
    """Return the density tile URLs of a format requested so far."""
    return [u for u in watch.requests if "/tiles/" in u and urlsplit(u).path.endswith("." + fmt)]


def paint(page: Any, site: Site) -> dict[str, Any]:
    """Return the band masks of a screenshot of the map area."""
    cfg = json.loads(page.text_content("#heatmap-config"))
    bg = page.eval_on_selector(".leaflet-container", "e => getComputedStyle(e).backgroundColor")
    rgb = [int(v) for v in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
    colors = {b["band"]: b["color"] for b in site.get_json("/api/v1/legend")["bands"]}
    background = "#" + "".join(f"{v:02x}" for v in rgb)
    return band_masks(page.screenshot(clip=MAP_CLIP), colors, background, cfg["fillOpacity"])


def test_planner_loads_offline_without_console_errors(site: Site, desktop: Any) -> None:
    page, watch = desktop
    resp = page.goto(site.base + "/")
    assert resp.status == 200
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert f"frame-ancestors {' '.join(site.settings.frame_ancestors)}" in csp
    wait_ready(page)

    assert not watch.console_errors, watch.console_errors
    assert not watch.page_errors, watch.page_errors
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in watch.requests if u.startswith("http"))
    assert page.context.cookies() == []
    # The legend: every colour with its words in both languages and its thresholds.
    legend = site.get_json("/api/v1/legend")
    items = page.locator("#legend li")
    assert items.count() == len(legend["bands"]) == 4
    for li, band in zip(items.all(), legend["bands"], strict=True):
        text = li.inner_text()
        assert band["label"]["zh"] in text and band["label"]["en"] in text
        assert f"{band['min_km2']:,.0f}" in text
    # The slider's stops: every closed window, then "Now" (the latest release).
    windows = site.get_json("/api/v1/windows")
    assert windows["latest_release"] is not None
    assert page.get_attribute("#slider", "max") == str(windows["total"])
    stats = site.get_json("/api/v1/stats")
    assert f"{stats['people']:,.0f}" in page.inner_text("#totals")
    assert page.locator("#places li").count() >= 3
    # A top place opens its own popup with the place's numbers from the API.
    with page.expect_response(lambda r: "/api/v1/places/" in r.url) as info:
        page.click("#places li:first-child button")
    place = info.value.json()
    popup = page.locator(f".leaflet-popup .popup[data-place='{place['id']}']")
    popup.wait_for()
    assert f"{place['now']['people']:,.0f}" in popup.inner_text()
    assert not watch.console_errors and not watch.page_errors


def test_density_tiles_are_painted_in_the_four_band_colours(site: Site, desktop: Any) -> None:
    page, watch = desktop
    page.goto(site.base + "/")
    wait_ready(page)
    assert tile_requests(watch, "png"), "no PNG density tile requested"
    counts = {band: int(m.sum()) for band, m in paint(page, site).items()}
    assert min(counts.values()) >= 30, f"pixels per band colour (PNG): {counts}"

    with page.expect_request(lambda r: "/tiles/" in r.url and ".mvt" in r.url):
        page.check("input[name=format][value=mvt]")
    # The PNG layer leaves once every MVT tile has loaded (body[data-tiles] says when).
    page.wait_for_selector("body[data-tiles=mvt]", state="attached", timeout=20_000)
    page.wait_for_timeout(300)  # the canvas draws on the next animation frames
    assert tile_requests(watch, "mvt")
    counts = {band: int(m.sum()) for band, m in paint(page, site).items()}
    assert min(counts.values()) >= 30, f"pixels per band colour (MVT): {counts}"
    assert not watch.console_errors and not watch.page_errors


def test_time_slider_changes_the_tiles_window(site: Site, desktop: Any) -> None:
    page, watch = desktop
    page.goto(site.base + "/")
    wait_ready(page)
    listing = site.get_json("/api/v1/windows")
    windows = [w["start"] for w in listing["windows"]]  # closed windows, newest first
    assert len(windows) >= 3
    # The page opens on "Now": the latest release, its tiles named by its tick.
    now = ("release", listing["latest_release"]["as_of"])
    assert {tile_ref(u) for u in tile_requests(watch, "png")} == {now}
    label = page.inner_text("#window-label")

    def shows(start: str) -> Any:
        return lambda r: "/tiles/" in r.url and tile_ref(r.url) == ("window", start)

    with page.expect_request(shows(windows[-1])):
        page.focus("#slider")
        page.keyboard.press("Home")  # keyboard: the slider is a native range input
    assert page.input_value("#slider") == "0"
    assert page.inner_text("#window-label") != label

    with page.expect_request(shows(windows[-2])):
        page.click("#play")
    assert page.get_attribute("#play", "aria-pressed") == "true"
    page.click("#play")
    assert page.get_attribute("#play", "aria-pressed") == "false"


def test_click_on_a_hexagon_opens_its_popup_with_the_api_numbers(site: Site, desktop: Any) -> None:
    page, _ = desktop
    page.goto(site.base + "/")
    wait_ready(page)
    point = interior_point(paint(page, site)["red"])
    assert point is not None, "no red hexagon on screen"

    with page.expect_response(lambda r: "/api/v1/density" in r.url) as info:
        page.mouse.click(*point)
    resp = info.value
    answer = resp.json()
    popup = page.locator(".leaflet-popup .popup")
    popup.wait_for()
    text = popup.inner_text()

    assert answer["band"] == "red" and not answer["suppressed"]
    assert popup.get_attribute("data-cell") == answer["cell"]
    assert f"{answer['people']:,.0f}" in text
    assert f"{answer['density_km2']:,.0f}" in text
    assert answer["label"]["zh"] in text and answer["label"]["en"] in text
    assert answer["cell"] in text
    # The popup asked for the painted hexagon: the resolution drawn at this zoom, this release.
    query = parse_qs(urlsplit(resp.url).query)
    cfg = json.loads(page.text_content("#heatmap-config"))
    zoom = 10  # the planner opens at city zoom and the test did not zoom
    assert query["res"] == [str(cfg["zoomToRes"][zoom])]
    assert query["release"] == [site.get_json("/api/v1/windows")["latest_release"]["as_of"]]
    assert "window" not in query
    # ... and what it shows is the API's answer, unchanged.
    assert site.get_json(resp.url[len(site.base) :]) == answer

    # Without a mouse: Enter on the focused map opens the popup of the hexagon at the centre.
    page.keyboard.press("Escape")
    page.focus(".map")
    with page.expect_response(lambda r: "/api/v1/density" in r.url) as info:
        page.keyboard.press("Enter")
    centre = info.value.json()
    page.wait_for_selector(f".leaflet-popup .popup[data-cell='{centre['cell']}']")


def test_live_release_refreshes_without_reload(site: Site, desktop: Any) -> None:
    page, watch = desktop
    page.clock.install()  # real time flows; fast_forward fires the refresh timer at once
    page.goto(site.base + "/")
    wait_ready(page)
    poll_ms = json.loads(page.text_content("#heatmap-config"))["pollMs"]
    release = site.get_json("/api/v1/windows")["latest_release"]
    assert release is not None and release["kind"] == "release"
    before = site.get_json("/api/v1/stats")
    assert before["window"] == release
    assert local_clock(release["as_of"], site.settings.tz) in page.inner_text("#window-label")
    expect(page.locator("#totals")).to_contain_text(f"{before['people']:,.0f}")

    # Between ticks nothing changes: a poll finds the same release and loads nothing new.
    loads = len(watch.requests)
    with page.expect_response(lambda r: "/api/v1/windows" in r.url):
        page.clock.fast_forward(poll_ms + 1)
    page.wait_for_timeout(200)
    assert not [u for u in watch.requests[loads:] if "/tiles/" in u or "/api/v1/stats" in u]

    # Another writer streams pings: people arrive near People's Square just before the next
    # tick, and the input passes that tick plus the grace, so the service makes its release.
    # The file's release is the latest tick its input passed by the grace, so the next tick
    # is the first one pings after the input can pass (the crowd stays in its horizon).
    s = site.settings
    tick = epoch(release["as_of"]) + s.release_s
    add_pings(site, [tick - 30, tick + s.release_grace_s + 1], devices=400)
    # Another process's commit is seen within the catalog's check period (well under 1 s).
    deadline = time.monotonic() + 2.0
    while (
        site.get_json("/api/v1/windows")["latest_release"] == release
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    new = site.get_json("/api/v1/windows")["latest_release"]
    assert epoch(new["as_of"]) == tick
    after = site.get_json("/api/v1/stats")
    assert after["window"] == new and after["people"] != before["people"]

    # The page, without reload, moves to the new release: its tiles, label and totals.
    loads = len(watch.requests)
    now = ("release", new["as_of"])
    with page.expect_request(lambda r: "/tiles/" in r.url and tile_ref(r.url) == now):
        page.clock.fast_forward(poll_ms + 1)
    page.wait_for_load_state("networkidle")
    assert all(tile_ref(u) == now for u in tile_requests(watch, "png")[loads:])
    expect(page.locator("#window-label")).to_contain_text(local_clock(new["as_of"], s.tz))
    expect(page.locator("#totals")).to_contain_text(f"{after['people']:,.0f}")
    assert page.url == site.base + "/"  # no reload
