"""Retention and roll-ups on the shared PostgreSQL store (#19): the same roll-ups as SQLite,
history changes seen by another node, batch ids forgotten by age."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from heatmap.ingest import ParseOptions
from heatmap.maintenance import compact
from heatmap.model import Window
from heatmap.read import Reader
from heatmap.service import Heatmap
from heatmap.store.base import LEVEL_NAMES

pytestmark = pytest.mark.postgres

T0 = int(datetime(2026, 11, 25, 16, 0, tzinfo=UTC).timestamp())
RETENTION = {
    "k_min": 3,
    "keep_full_days": 0.25,
    "keep_hourly_days": 1.0,
    "compact_every_s": 0,
    "tz": "Asia/Shanghai",
}


def _pings(hours: int = 50) -> pl.DataFrame:
    rng = np.random.default_rng(8)
    rows = []
    for d in range(30):
        lat, lng = 31.2335 + rng.normal(0, 0.002), 121.4755 + rng.normal(0, 0.002)
        for ts in range(T0 + int(rng.integers(0, 600)), T0 + hours * 3600, 600):
            if ((ts - T0) // 3600 + d) % 3:
                rows.append((f"d{d}", ts, round(lat, 6), round(lng, 6)))
    return pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")


def _rollups(hm: Heatmap) -> dict[tuple[str, int], list[tuple[int, int, float]]]:
    out = {}
    for level, start, end, _, _ in hm.store.rollup_rows().tolist():
        pub = hm.store.read_rollup(LEVEL_NAMES[level], start, Window(start, end))
        assert pub is not None
        out[(LEVEL_NAMES[level], start)] = sorted(pub.frame.select("res", "cell", "people").rows())
    return out


def test_postgres_rolls_up_as_sqlite_and_other_nodes_see_it(
    pg_url: str, make_settings, tmp_path: Path
) -> None:
    path = tmp_path / "pings.csv"
    _pings().write_csv(path)
    results = []
    for db in (pg_url, str(tmp_path / "lite" / "heatmap.db")):
        hm = Heatmap(make_settings(db=db, **RETENTION))
        try:
            hm.ingest_paths([path], ParseOptions())
            other = Reader.of(Heatmap(make_settings(db=db, **RETENTION)))  # a second node
            before = len(other.windows().closed())
            report = compact(hm.store, hm.settings)
            assert report.changed and report.days_made >= 1
            hist = other.catalog.refresh().closed()  # it sees the rewritten history
            assert len(hist) < before and hist.info(0).kind == "day"
            other.close()
            other.store.close()
            results.append(_rollups(hm))
        finally:
            hm.close()
    assert results[0] == results[1] and results[0]


def test_postgres_forgets_old_batch_ids(pg_url: str, make_settings) -> None:
    hm = Heatmap(make_settings(db=pg_url, **RETENTION))
    try:
        with hm.store.transaction():
            hm.store.record_batch("old", "{}")
            hm.store.record_batch("new", "{}")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE batches SET created_at = now() - interval '30 days' WHERE batch_id = 'old'"
            )
        compact(hm.store, hm.settings)
        assert hm.store.batch_result("old") is None and hm.store.batch_result("new") == "{}"
    finally:
        hm.close()
