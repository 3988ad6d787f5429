"""Make the README screenshots: the planner (1280x800) and the widget (360x640, zh and en).

Builds a throw-away store from simulated pings (an evening in Shanghai), serves it with
``heatmap serve`` on a free local port, and photographs the pages in headless Chromium (Debian
``chromium``; ``fonts-wqy-microhei`` or ``fonts-noto-cjk`` for the Chinese text). Nothing is
fetched from outside: the basemap is off.

    .venv/bin/python docs/make_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("HEATMAP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START = "2026-11-26T10:00:00Z"  # 18:00 in Shanghai; a day of history up to the next evening peak
HOURS = "25"
DEVICES = 60_000
EXPANSION = "400"  # 60,000 devices x 400 = 24 million people


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_store(env: dict[str, str], work: Path) -> None:
    """Simulate a day of pings and ingest them."""
    pings = work / "pings.parquet"
    run = [str(BIN / "heatmap")]
    subprocess.run(
        [*run, "simulate", "--out", str(pings), "--devices", str(DEVICES), "--hours", HOURS,
         "--interval-s", "300", "--start", START, "--seed", "7"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([*run, "ingest", str(pings)], env=env, check=True, capture_output=True)


def wait_ready(page: Page) -> None:
    """Wait for the page's data and tiles."""
    page.wait_for_selector("body[data-ready=true]", state="attached", timeout=30_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)


def shoot(base: str, out: Path) -> None:
    """Photograph the pages."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(base + "/?lang=en")
        wait_ready(page)
        page.mouse.click(650, 385)  # a hexagon near People's Square: its popup
        page.wait_for_selector(".leaflet-popup .popup")
        page.wait_for_timeout(300)
        page.screenshot(path=out / "planner.png")
        page.close()
        for lang in ("zh", "en"):
            page = browser.new_page(viewport={"width": 360, "height": 640})
            page.goto(f"{base}/widget?place=the-bund&lang={lang}")
            wait_ready(page)
            page.screenshot(path=out / f"widget-{lang}.png")
            page.close()
        browser.close()


def main() -> None:
    """Build the data, serve it, take the screenshots."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "HEATMAP_DB": str(work / "heatmap.db"),
            "HEATMAP_EXPANSION": EXPANSION,
            "HEATMAP_BASEMAP_URL": "",
            "HEATMAP_SECRET": "screenshots",
        }
        build_store(env, work)
        port = free_port()
        server = subprocess.Popen(
            [str(BIN / "heatmap"), "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            shoot(base, args.out)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()
