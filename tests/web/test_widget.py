"""The citizen widget in headless Chromium: phone size, zh and en, search, size, iframe CSP."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from web_harness import Site, local_clock, open_page, tile_ref, wait_ready

pytestmark = pytest.mark.browser

WIDGET_BUDGET_BYTES = 150_000
"""Transfer size the widget must stay under, tiles excluded."""


def clock(iso: str) -> str:
    """Return ``HH:MM`` of an ISO time with offset (the service's local time)."""
    return datetime.fromisoformat(iso).strftime("%H:%M")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_widget_shows_a_places_crowding_and_best_time(site: Site, phone: Any, lang: str) -> None:
    page, watch = phone
    page.goto(site.base + "/widget?place=the-bund" + ("&lang=en" if lang == "en" else ""))
    wait_ready(page)
    detail = site.get_json("/api/v1/places/the-bund")

    assert page.get_attribute("html", "lang") == {"zh": "zh-CN", "en": "en"}[lang]
    assert page.get_attribute("#card", "data-place") == "the-bund"
    assert detail["name"][lang] in page.inner_text("#card h2")
    # Crowding in words (both languages) beside its colour.
    now = detail["now"]
    assert page.inner_text("#card .band-label") == now["label"][lang]
    assert page.get_attribute("#card .now", "data-band") == now["band"]
    assert page.locator("#card .now .swatch").count() == 1
    best = detail["best_time_today"]
    assert best is not None
    assert f"{clock(best['start'])}–{clock(best['end'])}" in page.inner_text("#best-time")
    # The legend in text, and nothing wider than the phone.
    legend = site.get_json("/api/v1/legend")
    assert page.locator("#legend li").count() == 4
    assert all(b["label"][lang] in page.inner_text("#legend") for b in legend["bands"])
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert any("/tiles/" in u and u.split("?")[0].endswith(".png") for u in watch.requests)
    # "Updated" is the time the numbers hold for: the latest release's tick, whose tiles it shows.
    release = detail["window"]
    assert release["kind"] == "release"
    updated = page.inner_text("#card .updated")
    assert updated.endswith(local_clock(release["as_of"], site.settings.tz)), updated
    tiles = [u for u in watch.requests if "/tiles/" in u]
    assert {tile_ref(u) for u in tiles} == {("release", release["as_of"])}
    assert not watch.page_errors, watch.page_errors


def test_widget_transfer_size_without_tiles_is_small(site: Site, phone: Any) -> None:
    page, watch = phone
    page.goto(site.base + "/widget?place=the-bund")
    wait_ready(page)
    sizes = {u: n for u, n in watch.bytes_in.items() if "/tiles/" not in urlsplit(u).path}
    total = sum(sizes.values())
    report = ", ".join(f"{urlsplit(u).path}: {n}" for u, n in sorted(sizes.items()))
    print(f"widget transfer without tiles: {total} bytes ({report})")
    assert total < WIDGET_BUDGET_BYTES, report


def test_widget_search_works_from_the_keyboard(site: Site, phone: Any) -> None:
    page, _ = phone
    page.goto(site.base + "/widget?lang=en")
    wait_ready(page)
    page.focus("#q")
    page.keyboard.type("nanjing road")
    assert page.locator("#results button").count() >= 1
    page.keyboard.press("Enter")
    page.wait_for_selector("#card[data-place=nanjing-road]")
    assert page.inner_text("#card .band-label")


def test_widget_locate_me_shows_the_crowding_here(site: Site, browser: Any) -> None:
    here = {"latitude": 31.2397, "longitude": 121.4905}  # on the Bund
    ctx, page, watch = open_page(browser, 360, 640, geolocation=here, permissions=["geolocation"])
    try:
        page.goto(site.base + "/widget?lang=en")
        wait_ready(page)
        with page.expect_response(lambda r: "/api/v1/density" in r.url) as info:
            page.click("#locate")
        answer = info.value.json()
        page.wait_for_selector("#card .now")
        assert page.inner_text("#card h2") == "Near you"
        assert page.inner_text("#card .band-label") == answer["label"]["en"]
        assert not watch.foreign
    finally:
        ctx.close()


def test_widget_frames_only_in_allowed_origins(site: Site, desktop: Any) -> None:
    page, watch = desktop
    page.goto(site.allowed_parent)
    frame = page.frame_locator("#w")
    frame.locator("#card[data-place=the-bund] .band-label").wait_for(timeout=20_000)
    assert not any("frame-ancestors" in m for m in watch.console_errors)

    with page.expect_console_message(lambda m: "frame-ancestors" in m.text, timeout=10_000):
        page.goto(site.refused_parent)
    page.wait_for_timeout(300)
    assert page.frame_locator("#w").locator("#card").count() == 0
