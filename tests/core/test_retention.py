"""Retention and roll-ups (#19): closed windows past their full-detail retention become hourly,
then daily roll-ups of their published values; history endpoints and named places read them."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.maintenance import HOUR_S, compact, day_of
from heatmap.read import Reader
from heatmap.read.places import PlaceBook
from heatmap.service import Heatmap
from heatmap.store import open_store
from heatmap.store.base import LEVEL_NAMES

T0 = int(datetime(2026, 11, 25, 16, 0, tzinfo=UTC).timestamp())  # midnight in Shanghai
HOURS = 60
CLUSTER = (31.2335, 121.4755)  # People's Square
LONE = (31.62, 121.40)  # Chongming: one device, never published
K = 3


def make_pings(hours: int = HOURS, devices: int = 40, seed: int = 5) -> pl.DataFrame:
    """Devices around People's Square pinging every 600 s, each active two hours in three (so
    counts move from hour to hour), and one lone device far away, always active."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int, float, float]] = []
    for d in range(devices):
        lat = CLUSTER[0] + rng.normal(0, 0.002)
        lng = CLUSTER[1] + rng.normal(0, 0.002)
        phase = int(rng.integers(0, 600))
        for ts in range(T0 + phase, T0 + hours * HOUR_S, 600):
            if ((ts - T0) // HOUR_S + d) % 3:
                rows.append((f"dev{d}", ts, round(lat, 6), round(lng, 6)))
    for ts in range(T0 + 7, T0 + hours * HOUR_S, 600):
        rows.append(("lone", ts, LONE[0], LONE[1]))
    return pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")


def retention(**kw: object) -> dict[str, object]:
    """Retention short enough for 60 hours of data: 6 h full, 24 h hourly, days for good."""
    base: dict[str, object] = {
        "k_min": K,
        "keep_full_days": 0.25,
        "keep_hourly_days": 1.0,
        "keep_daily_days": 0.0,
        "compact_every_s": 0,
        "tz": "Asia/Shanghai",
    }
    return base | kw


@pytest.fixture
def filled(make_settings, tmp_path: Path) -> Settings:
    """A store holding 60 hours of closed windows (not compacted yet)."""
    s = make_settings(**retention())
    path = tmp_path / "pings.csv"
    make_pings().write_csv(path)
    hm = Heatmap(s)
    try:
        hm.ingest_paths([path], ParseOptions())
    finally:
        hm.close()
    return s


def published_by_window(s: Settings) -> dict[int, dict[tuple[int, int], float]]:
    """Every closed window's published values ``(res, cell) -> people`` (before compaction)."""
    store = open_store(s)
    try:
        out = {}
        for info in store.windows():
            if info.closed:
                pub = store.read_published(info.w)
                assert pub is not None
                out[info.w] = {
                    (r, c): p for r, c, p in pub.frame.select("res", "cell", "people").rows()
                }
        return out
    finally:
        store.close()


def reference_mean(
    windows: dict[int, dict[tuple[int, int], float]], ws: list[int], max_res: int
) -> dict[tuple[int, int], float]:
    """Plain Python: mean over ``ws`` of published people (withheld = 0), res <= max_res, cells
    below k devices left out."""
    total: dict[tuple[int, int], float] = defaultdict(float)
    for w in ws:
        for (r, c), p in windows[w].items():
            if r <= max_res:
                total[(r, c)] += p
    return {key: v / len(ws) for key, v in total.items() if v / len(ws) >= K}


def stored_rollups(s: Settings) -> dict[tuple[str, int], dict[tuple[int, int], float]]:
    """Every roll-up's served values, by ``(level, start)``."""
    store = open_store(s)
    try:
        out = {}
        from heatmap.model import Window

        for level, start, end, _, _ in store.rollup_rows().tolist():
            name = LEVEL_NAMES[level]
            pub = store.read_rollup(name, start, Window(start, end))
            assert pub is not None
            rows = pub.frame.select("res", "cell", "people").rows()
            out[(name, start)] = {(r, c): p for r, c, p in rows}
        return out
    finally:
        store.close()


def test_compaction_rolls_windows_into_hourly_then_daily_means_of_published_values(
    filled: Settings,
) -> None:
    before = published_by_window(filled)
    newest_end = (max(before) + 1) * 300
    store = open_store(filled)
    try:
        report = compact(store, filled)
    finally:
        store.close()
    rolled = stored_rollups(filled)
    full_cut = newest_end - 6 * HOUR_S
    hourly_cut = newest_end - 24 * HOUR_S
    tz = ZoneInfo("Asia/Shanghai")
    by_hour: dict[int, list[int]] = defaultdict(list)
    for w in before:
        by_hour[w * 300 - w * 300 % HOUR_S].append(w)
    want: dict[tuple[str, int], dict[tuple[int, int], float]] = {}
    by_day: dict[tuple[int, int], list[int]] = defaultdict(list)
    for h, ws in by_hour.items():
        if h + HOUR_S > full_cut:
            continue  # still at full detail
        day = day_of(h, tz)
        if day[1] <= hourly_cut:
            by_day[day] += ws
        else:
            want[("hour", h)] = reference_mean(before, ws, filled.hour_res)
    for (start, _), ws in by_day.items():
        want[("day", start)] = reference_mean(before, ws, filled.day_res)
    assert {k for k, _ in want} == {"hour", "day"}  # the data reach both levels
    assert rolled.keys() == want.keys()
    for key, cells in want.items():
        got = rolled[key]
        assert got.keys() == cells.keys(), key
        assert all(got[c] == pytest.approx(v) for c, v in cells.items()), key
    assert report.days_made == len(by_day) and report.hours_rolled > 0
    # Windows past the cutoff are gone; the rest are untouched, byte for byte.
    after = published_by_window(filled)
    assert min(after) * 300 >= full_cut - HOUR_S
    assert all(after[w] == before[w] for w in after)
    assert set(before) - set(after) == {w for ws in by_hour.values() for w in ws} - set(after)


def test_rollups_hold_published_values_only_and_nothing_below_k(filled: Settings) -> None:
    import h3

    store = open_store(filled)
    try:
        compact(store, filled)
    finally:
        store.close()
    rolled = stored_rollups(filled)
    lone = {h3.str_to_int(h3.latlng_to_cell(*LONE, r)) for r in filled.resolutions}
    for (level, _), cells in rolled.items():
        # One device in every window: 12 (or 288) device-windows, but never published.
        assert not lone & {c for _, c in cells}
        assert all(p >= K for p in cells.values())
        top = filled.hour_res if level == "hour" else filled.day_res
        assert max(r for r, _ in cells) <= top


def test_compaction_is_idempotent_and_a_second_run_changes_nothing(filled: Settings) -> None:
    store = open_store(filled)
    try:
        first = compact(store, filled)
        rows = store.rollup_rows().copy()
        again = compact(store, filled)
        assert first.changed and not again.changed
        assert np.array_equal(store.rollup_rows(), rows)
    finally:
        store.close()


def test_an_hour_without_any_ping_is_in_the_history_too(make_settings, tmp_path: Path) -> None:
    """The history tells when the store began, not whether anyone pinged: a silent hour gets an
    empty roll-up, as a silent window is listed empty."""
    s = make_settings(**retention())
    pings = make_pings()
    silent = T0 + 5 * HOUR_S
    pings = pings.filter((pl.col("ts") < silent) | (pl.col("ts") >= silent + HOUR_S))
    path = tmp_path / "pings.csv"
    pings.write_csv(path)
    hm = Heatmap(s)
    try:
        hm.ingest_paths([path], ParseOptions())
        compact(hm.store, s)
        rows = hm.store.rollup_rows()
        hours = rows[rows[:, 0] == 1]
        days = rows[rows[:, 0] == 2]
        assert silent not in days[:, 1].tolist()  # inside day 1, rolled into it
        assert np.all(np.diff(np.concatenate([days[:, 2][-1:], hours[:, 1]])) >= 0)
        assert np.all(np.diff(hours[:, 1]) == HOUR_S)  # no hour missing after the days
        assert int(hours[0, 1]) == int(days[-1, 2])
    finally:
        hm.close()
    # A silent hour among the hourly roll-ups: listed, empty.
    s2 = make_settings(db=str(tmp_path / "two" / "heatmap.db"), **retention())
    silent = T0 + 40 * HOUR_S
    pings = make_pings().filter((pl.col("ts") < silent) | (pl.col("ts") >= silent + HOUR_S))
    pings.write_csv(path)
    hm = Heatmap(s2)
    try:
        hm.ingest_paths([path], ParseOptions())
        compact(hm.store, s2)
        rows = hm.store.rollup_rows()
        hour = rows[(rows[:, 0] == 1) & (rows[:, 1] == silent)]
        assert hour.shape[0] == 1 and hour[0, 3] == 0  # there, and made of no window
        assert np.all(np.diff(rows[rows[:, 0] == 1][:, 1]) == HOUR_S)
    finally:
        hm.close()


def test_history_endpoints_and_tiles_serve_rollups(filled: Settings) -> None:
    store = open_store(filled)
    try:
        compact(store, filled)
    finally:
        store.close()
    with TestClient(create_app(filled)) as client:
        page = client.get("/api/v1/windows", params={"limit": 1000}).json()
        kinds = [w["kind"] for w in page["windows"]][::-1]  # oldest first
        assert kinds[0] == "day" and "hour" in kinds and kinds[-1] == "window"
        assert kinds == sorted(kinds, key=["day", "hour", "window"].index)
        assert page["total"] == len(page["windows"]) and page["first"]["kind"] == "day"
        starts = [w["start"] for w in page["windows"]][::-1]
        assert starts == sorted(starts)
        paged, before = [], None  # paging walks windows, then hours, then days
        while True:
            params: dict[str, object] = {"limit": 7} | ({"before": before} if before else {})
            part = client.get("/api/v1/windows", params=params).json()
            paged += part["windows"]
            before = part["next_before"]
            if before is None:
                break
        assert paged == page["windows"]
        day = next(w for w in page["windows"] if w["kind"] == "day")
        hour = next(w for w in page["windows"] if w["kind"] == "hour")
        assert day["horizon_s"] == 86400 and hour["horizon_s"] == 3600 and day["complete"]
        # A time inside a rolled-up hour names the hour (the slider passes a stop's start).
        inside = datetime.fromisoformat(hour["start"].replace("Z", "+00:00")).timestamp() + 1234
        stats = client.get("/api/v1/stats", params={"window": str(int(inside))})
        assert stats.status_code == 200 and stats.json()["window"] == hour
        dens = client.get(
            "/api/v1/density",
            params={"lat": CLUSTER[0], "lng": CLUSTER[1], "window": day["start"]},
        )
        assert dens.status_code == 200 and dens.json()["window"] == day
        assert dens.json()["people"] is not None
        tile = client.get("/tiles/12/3430/1673.mvt", params={"window": day["start"]})
        assert tile.status_code == 200 and "immutable" in tile.headers["cache-control"]
        # GIS clients name a roll-up by its span (the paging links do).
        items = client.get(
            "/ogc/collections/density-r8/items",
            params={"datetime": f"{hour['start']}/{hour['end']}", "limit": 5},
        )
        assert items.status_code == 200, items.text
        feats = items.json()["features"]
        assert feats and all(f["properties"]["window_start"] == hour["start"] for f in feats)
        health = client.get("/healthz").json()
        assert health["oldest"] == day and health["rollups"]["day"] >= 1
        assert health["oldest_window"]["kind"] == "window"


def test_named_places_read_their_usual_level_from_hourly_rollups(filled: Settings) -> None:
    store = open_store(filled)
    try:
        compact(store, filled)
    finally:
        store.close()
    hm = Heatmap(filled)
    try:
        reader = Reader.of(hm)
        wl = reader.windows()
        book = PlaceBook.load(filled)
        hour = wl.rollups.info(int(np.flatnonzero(wl.rollups.rows[:, 0] == 1)[0]))
        assert not wl.between(hour.window.start, hour.window.end)  # only the roll-up is left
        level = book.hour_level(reader, wl, hour.window.start)
        pub = hm.store.read_rollup("hour", hour.w, hour.window)
        assert pub is not None and level is not None
        np.testing.assert_array_equal(level, book.from_published(pub.frame))
        assert np.isfinite(level).any()  # People's Square is one of the places
        reader.close()
    finally:
        hm.close()


def test_retention_settings_must_nest() -> None:
    with pytest.raises(ValueError, match="keep_hourly_days"):
        Settings(keep_full_days=30, keep_hourly_days=7)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="keep_daily_days"):
        Settings(keep_full_days=1, keep_hourly_days=7, keep_daily_days=3)  # type: ignore[call-arg]
    s = Settings(base_res=10, min_res=5)  # type: ignore[call-arg]
    assert (s.hour_res, s.day_res) == (9, 8)
