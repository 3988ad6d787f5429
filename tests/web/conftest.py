"""Browser-test fixtures: the real app on a simulated Shanghai, two parent-page servers, Chromium.

See ``web_harness`` for how the data is made and how requests are watched.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPANSION,
    PLANNER_TOKEN,
    SIM_DEVICES,
    SIM_HOURS,
    SIM_START,
    Site,
    Watch,
    free_port,
    open_page,
    parent_server,
)

import uvicorn

from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.service import Heatmap
from heatmap.simulate import simulate_pings, write_pings


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Start the real app on simulated data, and the two parent-page servers."""
    from heatmap.api import create_app

    root = tmp_path_factory.mktemp("web")
    app_port, ok_port, bad_port = free_port(), free_port(), free_port()
    settings = Settings(
        db=str(root / "store" / "heatmap.db"),
        basemap_url="",
        secret="browser-test-secret",
        k_min=3,
        expansion=EXPANSION,
        frame_ancestors=["'self'", f"http://127.0.0.1:{ok_port}"],
        planner_tokens=[PLANNER_TOKEN],
    )  # type: ignore[call-arg]
    pings = root / "pings.parquet"
    write_pings(
        pings,
        simulate_pings(
            city="shanghai",
            devices=SIM_DEVICES,
            start=SIM_START,
            hours=SIM_HOURS,
            interval_s=120,
            seed=7,
        ),
    )
    hm = Heatmap(settings)
    report = hm.ingest_paths([pings], ParseOptions())
    hm.close()
    # The pages show the latest release ("now") and the closed windows: the file makes both.
    if report.release is None or report.windows_closed < 3:
        raise RuntimeError(f"the simulated store has no release or too few windows: {report}")

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=app_port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{app_port}"
    widget = f"{base}/widget?place=the-bund&lang=en"
    parents = [parent_server(ok_port, widget), parent_server(bad_port, widget)]
    yield Site(base, settings, f"http://127.0.0.1:{ok_port}/", f"http://127.0.0.1:{bad_port}/")
    for p in parents:
        p.shutdown()
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Launch headless Debian Chromium through Playwright (skipped outside CI if absent)."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs it")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def desktop(browser: Any, site: Site) -> Iterator[tuple[Any, Watch]]:
    """A 1280x800 page; fails the test if a request left 127.0.0.1 or a cookie was set."""
    ctx, page, watch = open_page(browser, 1280, 800)
    yield page, watch
    ctx.close()
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"
    assert not watch.cookies_set, f"cookies set by {watch.cookies_set}"


@pytest.fixture(params=[(360, 640), (390, 844)], ids=["360x640", "390x844"])
def phones(browser: Any, site: Site, request: pytest.FixtureRequest) -> Iterator[tuple[Any, Watch]]:
    """A page of each phone size; fails the test if a request left 127.0.0.1 or set a cookie."""
    ctx, page, watch = open_page(browser, *request.param)
    yield page, watch
    ctx.close()
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"
    assert not watch.cookies_set, f"cookies set by {watch.cookies_set}"


@pytest.fixture
def phone(browser: Any, site: Site) -> Iterator[tuple[Any, Watch]]:
    """A 360x640 page; fails the test if a request left 127.0.0.1 or a cookie was set."""
    ctx, page, watch = open_page(browser, 360, 640)
    yield page, watch
    ctx.close()
    assert not watch.foreign, f"requests left 127.0.0.1: {watch.foreign}"
    assert not watch.cookies_set, f"cookies set by {watch.cookies_set}"
