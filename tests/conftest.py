"""Shared fixtures: settings on a temp store, the real GeoLife file, a plain h3-py reference."""

from __future__ import annotations

import csv
import gzip
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h3
import pytest

from heatmap.config import Settings
from tests.pg import PgServer, PgUnavailable

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GEOLIFE = SHARED / "geolife-beijing" / "pings.csv.gz"


@pytest.fixture
def make_settings(tmp_path: Path):
    """Return a factory of Settings on a fresh temp store (basemap off, small k by default)."""

    def make(**kw: object) -> Settings:
        kw.setdefault("db", str(tmp_path / "store" / "heatmap.db"))
        kw.setdefault("basemap_url", "")
        kw.setdefault("secret", "test-secret")
        return Settings(**kw)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def geolife() -> Path:
    """The real GeoLife pings; skipped (with the reason) where ../shared/data is absent."""
    if not GEOLIFE.exists():
        pytest.skip(
            f"real data not present at {GEOLIFE} (it is in CI; outside CI it may be absent)"
        )
    return GEOLIFE


def reference_counts(
    rows: list[tuple[str, int, float, float]], window_s: int, base_res: int, min_res: int
) -> dict[tuple[int, int, str], int]:
    """Plain h3-py reference: latest ping per device per window (ties: larger cell), rolled up.

    Returns ``(w, res, cell) -> devices``.
    """
    latest: dict[tuple[int, str], tuple[int, int]] = {}
    for dev, ts, lat, lng in rows:
        key = (ts // window_s, dev)
        cur = latest.get(key)
        if cur is not None and cur[0] > ts:
            continue
        cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, base_res))
        if cur is None or (ts, cell) > cur:
            latest[key] = (ts, cell)
    out: dict[tuple[int, int, str], int] = defaultdict(int)
    for (w, _dev), (_ts, cell) in latest.items():
        c = h3.int_to_str(cell)
        for res in range(min_res, base_res + 1):
            out[(w, res, h3.cell_to_parent(c, res) if res < base_res else c)] += 1
    return dict(out)


def published_counts(hm: Any, res: int) -> dict[tuple[int, str], int]:
    """What a store publishes per (window, cell) at ``res``, in whole people (``hm``: an open
    :class:`heatmap.service.Heatmap`)."""
    from heatmap.read import Reader

    reader = Reader.of(hm)
    out = {}
    for info in hm.store.windows():
        snap = reader.snapshots(info)[res]
        for cell, people in zip(snap.cells.tolist(), snap.people.tolist(), strict=True):
            out[(info.w, h3.int_to_str(cell))] = round(people)
    reader.close()
    return out


def read_geolife_rows() -> list[tuple[str, int, float, float]]:
    """Read the GeoLife file with the csv module (no project code)."""
    with gzip.open(GEOLIFE, "rt", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [(d, int(t), float(la), float(ln)) for d, t, la, ln in reader]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on a temp dir and free port, for the whole session.

    Skipped only where it cannot run at all (no binaries, no postgres user) and only outside
    CI: ``make test`` installs the server, so in CI a missing server is a failure.
    """
    try:
        server = PgServer()
    except PgUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and cannot run: {exc}")
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()
