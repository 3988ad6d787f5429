"""The read side: window catalog, usual level by hour of week, forecast, paging at scale."""

from __future__ import annotations

import math
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.model import Window
from heatmap.places import load_places
from heatmap.read import LATEST, Reader, WindowList
from heatmap.read.answers import bbox_cell_estimate
from heatmap.read.places import FORECAST_TAU_H, PlaceBook, forecast_value
from heatmap.service import Heatmap
from heatmap.store import WindowInfo

ZONE = "Asia/Shanghai"
T0 = int(datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp())  # Tuesday 18:00 in Shanghai


def api_settings(tmp: Path, **kw: object) -> Settings:
    """Settings on a temp store with ingest enabled and a small k (as the HTTP tests use)."""
    kw.setdefault("db", str(tmp / "store" / "heatmap.db"))
    kw.setdefault("basemap_url", "")
    kw.setdefault("secret", "test-secret")
    kw.setdefault("k_min", 2)
    kw.setdefault("ingest_token", "test-token-1234")
    return Settings(**kw)  # type: ignore[arg-type]


# -- forecast ------------------------------------------------------------------------------------


def test_forecast_scales_the_usual_profile_by_the_current_ratio_and_decays() -> None:
    # Twice as busy as usual now; the usual level rises from 100 to 150 in the next hours.
    f0, m = forecast_value(100.0, 100.0, 200.0, 0.0)
    assert (f0, m) == (200.0, "profile_scaled")
    f1, _ = forecast_value(150.0, 100.0, 200.0, 1.0)
    f2, _ = forecast_value(150.0, 100.0, 200.0, 2.0)
    assert f1 == pytest.approx(150.0 * 2.0 ** math.exp(-1.0 / FORECAST_TAU_H))
    assert 150.0 < f2 < f1 < 300.0  # the departure decays towards the usual level
    far, _ = forecast_value(150.0, 100.0, 200.0, 48.0)
    assert far == pytest.approx(150.0, rel=1e-6)


def test_forecast_equals_the_usual_level_when_now_is_usual() -> None:
    assert forecast_value(80.0, 50.0, 50.0, 1.5) == (80.0, "profile_scaled")


def test_forecast_ratio_is_clipped() -> None:
    assert forecast_value(100.0, 1.0, 1000.0, 0.0)[0] == pytest.approx(400.0)
    assert forecast_value(100.0, 1000.0, 1.0, 0.0)[0] == pytest.approx(25.0)


def test_forecast_falls_back_to_usual_then_persistence() -> None:
    assert forecast_value(70.0, None, 10.0, 1.0) == (70.0, "usual")
    assert forecast_value(70.0, 50.0, None, 1.0) == (70.0, "usual")
    assert forecast_value(None, None, 10.0, 1.0) == (10.0, "persistence")
    assert forecast_value(None, None, None, 1.0) == (None, "none")


# -- usual level by hour of week -----------------------------------------------------------------


def make_book() -> PlaceBook:
    settings = api_settings(Path("/nonexistent"), tz=ZONE)
    return PlaceBook(load_places()[:2], settings)


def history(book: PlaceBook, values: dict[int, list[float]]) -> WindowList:
    """Closed 5-minute windows at the given starts, each with the given place values."""
    infos = [WindowInfo(t // 300, Window(t, t + 300), True, 1, 10) for t in sorted(values)]
    table = {t // 300: np.array(v, dtype=float) for t, v in values.items()}
    book.closed_values = lambda reader, info: table[info.w]  # type: ignore[method-assign]
    return WindowList.of(infos)


def test_usual_is_the_mean_of_the_same_hour_of_week() -> None:
    book = make_book()
    week = 7 * 86400
    vals = {T0 - k * week + 1800: [10.0 * k, float("nan") if k == 2 else 1.0] for k in (1, 2, 3, 4)}
    vals[T0 - 86400 + 1800] = [999.0, 999.0]  # yesterday: ignored while weeks exist
    wl = history(book, vals)
    usual, basis = book.usual(None, wl, T0 + 900)  # type: ignore[arg-type]
    assert basis == "hour_of_week"
    assert usual[0] == pytest.approx(25.0)
    assert usual[1] == pytest.approx(1.0)  # a week without a value is left out


def test_usual_falls_back_to_the_same_hour_of_day() -> None:
    book = make_book()
    wl = history(book, {T0 - k * 86400 + 1800: [float(k), 2.0] for k in (1, 2, 3)})
    usual, basis = book.usual(None, wl, T0)  # type: ignore[arg-type]
    assert basis == "hour_of_day" and usual[0] == pytest.approx(2.0)


def test_usual_without_history_is_unknown() -> None:
    book = make_book()
    usual, basis = book.usual(None, history(book, {}), T0)  # type: ignore[arg-type]
    assert basis == "none" and np.isnan(usual).all()


def test_hour_level_takes_the_window_nearest_the_half_hour() -> None:
    book = make_book()
    wl = history(book, {T0: [1.0, 1.0], T0 + 1500: [2.0, 2.0], T0 + 3300: [3.0, 3.0]})
    level = book.hour_level(None, wl, T0)  # type: ignore[arg-type]
    assert level is not None and level[0] == 2.0


# -- catalog --------------------------------------------------------------------------------------


def frame(ts: int, n: int, lat: float = 31.23, tag: str = "d") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "device_id": [f"{tag}{i}" for i in range(n)],
            "ts": [ts] * n,
            "lat": [lat] * n,
            "lng": [121.47] * n,
        }
    )


def test_catalog_sees_every_commit_incrementally(tmp_path: Path) -> None:
    s = api_settings(tmp_path)
    hm = Heatmap(s)
    reader = Reader.of(hm)
    reader.catalog.check_every_s = 0.0
    opts = ParseOptions(now=2e9)
    base = 1_795_900_200
    assert len(reader.windows()) == 0
    for i in range(6):
        hm.ingest_frame(frame(base + 300 * i, 3 + i, tag=f"w{i}-"), opts)
        reader.invalidate()
        wl = reader.windows()
        assert wl.infos() == hm.store.windows()
    # Another writer (a CLI ingest in another process) is seen through the change token.
    other = Heatmap(s)
    other.ingest_frame(frame(base + 300 * 6, 4, tag="x"), opts)
    other.close()
    assert reader.windows().infos() == hm.store.windows()
    assert reader.windows().latest().w == (base + 1800) // 300
    # ... and so is the release that writer made (the tick its last ping passed by the grace).
    latest = reader.window(LATEST)
    assert latest.is_release and latest.w == (base + 1800 - s.release_grace_s) // 60 * 60
    reader.close()
    hm.close()


def test_windows_page_is_fast_with_100k_windows(tmp_path: Path) -> None:
    s = api_settings(tmp_path)
    Heatmap(s).close()
    con = sqlite3.connect(s.db)
    n, w0 = 100_000, 5_900_000
    con.executemany(
        'INSERT INTO windows(w, start, "end", closed, version, devices) VALUES (?, ?, ?, 1, 1, 5)',
        ((w, w * 300, w * 300 + 300) for w in range(w0, w0 + n)),
    )
    con.commit()
    con.close()
    with TestClient(create_app(s)) as client:
        client.get("/api/v1/windows")  # warm
        t = time.perf_counter()
        first = client.get("/api/v1/windows", params={"limit": 50}).json()
        mid = (w0 + n // 2) * 300
        older = client.get("/api/v1/windows", params={"limit": 50, "before": str(mid)}).json()
        elapsed = time.perf_counter() - t
    assert first["total"] == n and len(first["windows"]) == 50
    assert older["windows"][0]["start"] == Window(mid - 300, mid).isoformat()
    assert elapsed < 0.5


# -- bbox bound ----------------------------------------------------------------------------------


def test_bbox_estimate_matches_h3_polygon_fill() -> None:
    import h3

    bbox = (121.40, 31.15, 121.55, 31.30)
    poly = h3.LatLngPoly([(31.15, 121.40), (31.15, 121.55), (31.30, 121.55), (31.30, 121.40)])
    for res in (7, 8, 9):
        exact = len(h3.polygon_to_cells(poly, res))
        assert bbox_cell_estimate(bbox, res) == pytest.approx(exact, rel=0.15)
