"""The pages and crowd warnings (issue 18) in headless Chromium: a release event moves the
planner to the new release's tiles without a reload and without a blank frame, the planner
lists and maps open alerts, the widget shows and clears a place's warning, and a page whose
event stream is blocked still follows releases by polling.

The app runs in this process on its own small store (not the shared simulated city): crowds
at Xintiandi make its default watches ("red now", "forecast red within 2 h") open and close.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from web_harness import open_page, tile_ref, wait_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from alerts_testdata import (  # noqa: E402
    PLACE,
    Live,
    Story,
    alert_settings,
    crowd,
    live_app,
    wait_for,
)
from api_testdata import advance_clock, post  # noqa: E402

pytestmark = pytest.mark.browser

TRACK_PANE = """() => {
  // Count the density pane's loaded tiles after every change to it: a frame without any would
  // be a blank map (the old layer removed before the new one had loaded).
  const pane = document.querySelector('.leaflet-density-pane');
  const loaded = 'img.leaflet-tile-loaded, canvas.leaflet-tile-loaded';
  const count = () => pane.querySelectorAll(loaded).length;
  window.__tiles = [count()];
  new MutationObserver(() => window.__tiles.push(count()))
    .observe(pane, { childList: true, subtree: true, attributes: true,
                     attributeFilter: ['class'] });
}"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    s = alert_settings(tmp_path, alert_defaults=True)
    with live_app(s) as app:
        story = Story(app.client)
        # A first release for the pages to open on: a small crowd at People's Square (green,
        # drawn on the map), nobody at Xintiandi.
        near = crowd(story.t + 10, n=30, tag="square").with_columns(
            pl.lit(31.2312).alias("lat"), pl.lit(121.4697).alias("lng")
        )
        assert post(app.client, near).status_code == 200
        advance_clock(app.client, story.t + 10)
        story.t += 60
        app.story = story  # type: ignore[attr-defined]
        yield app


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Any]]:
    ctx, pg, watch = open_page(browser, 1280, 800)
    yield pg, watch
    ctx.close()
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"


def density_requests(watch: Any) -> list[tuple[str, str] | None]:
    return [tile_ref(u) for u in watch.requests if "/tiles/" in u]


def test_a_release_event_moves_the_planner_to_new_tiles_without_a_blank_frame(
    live: Live, page: tuple[Any, Any]
) -> None:
    pg, watch = page
    pg.goto(live.base + "/?lang=en")
    wait_ready(pg)
    pg.wait_for_function("() => document.body.dataset.events === 'open'")
    first = live.client.get("/api/v1/windows").json()["latest_release"]["as_of"]
    assert set(density_requests(watch)) == {("release", first)}
    pg.evaluate(TRACK_PANE)
    # From now on the page cannot poll: only the event stream can tell it of a release.
    pg.route("**/api/v1/windows*", lambda route: route.abort())
    story = live.story  # type: ignore[attr-defined]

    def moved(r: Any) -> bool:
        ref = tile_ref(r.url)
        return "/tiles/" in r.url and ref is not None and ref[1] != first

    with pg.expect_request(moved, timeout=30_000) as req:
        story.crowded()
    new = tile_ref(req.value.url)
    assert new is not None and new[0] == "release" and new[1] > first
    assert new[1] == live.client.get("/api/v1/windows").json()["latest_release"]["as_of"]
    pg.wait_for_function(
        "() => document.querySelectorAll('.leaflet-density-pane .leaflet-layer').length === 1",
        timeout=15_000,
    )
    counts = pg.evaluate("() => window.__tiles")
    assert min(counts) > 0, f"a frame without tiles: {counts}"
    assert pg.url == live.base + "/?lang=en"  # no reload
    assert pg.evaluate("() => window.__tiles !== undefined")  # the same document


def test_the_planner_lists_and_maps_open_alerts(live: Live, page: tuple[Any, Any]) -> None:
    pg, _ = page
    pg.goto(live.base + "/?lang=en")
    wait_ready(pg)
    assert pg.is_visible("#alerts-none")
    story = live.story  # type: ignore[attr-defined]
    story.crowded(), story.crowded()
    wait_for("the alerts", lambda: live.client.get("/api/v1/alerts").json()["open"] == 2)
    items = pg.locator(f"#alerts li[data-target={PLACE}]")
    items.first.wait_for(timeout=30_000)
    pg.wait_for_function(f"() => document.querySelectorAll('#alerts li[data-target={PLACE}]')"
                         ".length === 2", timeout=10_000)  # fmt: skip
    text = pg.inner_text("#alerts")
    assert "Xintiandi" in text and "Crowded now" in text and "expected within 2 h" in text
    assert not pg.is_visible("#alerts-none")
    assert pg.locator(".alert-marker").count() == 1  # one marker for the place's two alerts
    story.empty()
    pg.wait_for_selector("#alerts li", state="detached", timeout=30_000)
    assert pg.is_visible("#alerts-none")
    assert pg.locator(".alert-marker").count() == 0


def test_the_widget_shows_and_clears_a_places_warning(live: Live, browser: Any) -> None:
    ctx, pg, watch = open_page(browser, 360, 640)
    try:
        pg.goto(f"{live.base}/widget?place={PLACE}&lang=en")
        wait_ready(pg)
        pg.wait_for_selector(f"#card[data-place={PLACE}] .band-label")
        assert pg.locator("#card #warning").count() == 0
        story = live.story  # type: ignore[attr-defined]
        story.crowded(), story.crowded()
        warning = pg.locator("#card #warning")
        warning.wait_for(timeout=30_000)
        text = warning.inner_text()
        assert "Crowd warning" in text and "Crowded now" in text
        assert pg.get_attribute("#warning", "role") == "alert"
        assert "Crowd warning" in pg.inner_text(f"#areas button[data-place={PLACE}]")
        story.empty()
        pg.wait_for_selector("#card #warning", state="detached", timeout=30_000)
        assert pg.get_attribute("#card", "data-warning") == "none"
        assert not watch.page_errors, watch.page_errors
    finally:
        ctx.close()


def test_with_the_event_stream_blocked_the_planner_follows_releases_by_polling(
    live: Live, browser: Any
) -> None:
    ctx, pg, watch = open_page(browser, 1280, 800)
    try:
        pg.route("**/api/v1/events", lambda route: route.abort())
        pg.clock.install()  # real time flows; fast_forward fires the poll at once
        pg.goto(live.base + "/")
        wait_ready(pg)
        assert pg.evaluate("() => document.body.dataset.events") != "open"
        poll_ms = json.loads(pg.text_content("#heatmap-config"))["pollMs"]
        story = live.story  # type: ignore[attr-defined]
        story.crowded()
        new = live.client.get("/api/v1/windows").json()["latest_release"]["as_of"]
        with pg.expect_request(lambda r: "/tiles/" in r.url and tile_ref(r.url) == ("release",
                               new)):  # fmt: skip
            pg.clock.fast_forward(poll_ms + 1)
    finally:
        ctx.close()
    assert not watch.foreign
