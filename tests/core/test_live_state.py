"""The in-memory live state against plain-Python models of the same rules.

Tables: per device the larger (ts, cell) of everything applied, counts per cell, expiry (with
backward-shift deletion over clusters of consecutive keys), growth. The state: releases count
each device at its latest ping in ``[t - horizon, t)`` whatever order the pings arrive in, open
windows count each device at its latest ping in the window, and a state rebuilt from the store's
log makes the same releases as the one that saw every unit.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heatmap.live.state import Clock, LiveState
from heatmap.live.tables import EMPTY, CellDict, DeviceTable

CELLS = [0x8A2A1072B407FFF + i for i in range(5)] + [0x8AFFFFFFFFFFFFF]
Pos = tuple[int, int]


def _arrays(rows: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dev = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    cell = np.array([r[2] for r in rows], dtype=np.uint64)
    return dev, ts, cell


def _counts(model: dict[int, Pos]) -> list[tuple[int, int]]:
    return sorted(Counter(cell for _, cell in model.values()).items())


def _table_counts(table: DeviceTable) -> list[tuple[int, int]]:
    cells, n = table.counts()
    return list(zip(cells.tolist(), n.tolist(), strict=True))


# Keys: the extremes, zero, consecutive small ints (clusters under linear probing), random.
keys = st.one_of(
    st.sampled_from([-(2**63), -(2**63) + 1, 2**63 - 1, 0]),
    st.integers(0, 40),
    st.integers(-(2**63), 2**63 - 1),
)
pings = st.tuples(keys, st.integers(0, 30), st.sampled_from(CELLS))


@pytest.fixture(params=["compiled", "python"])
def kernels(request, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    """Run a table test with the numba kernels, then with their Python originals (what a small
    input takes while numba is not loaded): both must follow the same rules."""
    import heatmap.live.tables as tables

    if request.param == "compiled":
        monkeypatch.setattr(tables, "_PY_ROWS", 0)
    else:
        monkeypatch.setattr(tables, "_PY_ROWS", 10**12)
        monkeypatch.setattr(tables, "loaded", lambda: False)
    return str(request.param)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.lists(pings, max_size=60), st.integers(0, 32)), min_size=1))
def test_a_table_keeps_the_latest_position_and_counts_cells(kernels: str, steps) -> None:
    cells = CellDict(bits=2)
    table = DeviceTable(cells, bits=2)  # tiny: growth happens all the time
    model: dict[int, Pos] = {}
    for rows, min_ts in steps:
        if rows:
            dev, ts, cell = _arrays(rows)
            table.apply(dev, ts, cells.ids(cell))
        for d, t, c in rows:
            d = int(EMPTY) + 1 if d == int(EMPTY) else d
            model[d] = max(model.get(d, (t, c)), (t, c))
        assert len(table) == len(model)
        assert _table_counts(table) == _counts(model)
        gone = table.expire(min_ts)
        expired = [d for d, (t, _) in model.items() if t < min_ts]
        assert gone == len(expired)
        for d in expired:
            del model[d]
        dev, ts, cell = table.rows()
        assert dev.tolist() == sorted(model)
        assert [(t, c) for t, c in zip(ts.tolist(), cell.tolist(), strict=True)] == [
            model[d] for d in sorted(model)
        ]
        assert _table_counts(table) == _counts(model)


def test_a_big_cluster_of_consecutive_keys_survives_expiry_of_every_other_one(kernels: str) -> None:
    cells = CellDict()
    table = DeviceTable(cells)
    n = 50_000 if kernels == "compiled" else 3_000
    dev = np.arange(n, dtype=np.int64)
    ts = (dev % 2) * 10
    table.apply(dev, ts, cells.ids(np.full(n, CELLS[0], dtype=np.uint64)))
    assert table.expire(5) == n // 2
    kept, _, _ = table.rows()
    assert kept.tolist() == list(range(1, n, 2))
    table.apply(dev[:10], np.full(10, 20), cells.ids(np.full(10, CELLS[1], dtype=np.uint64)))
    assert _table_counts(table) == [(CELLS[0], n // 2 - 5), (CELLS[1], 10)]


WINDOW, HORIZON, SLOT = 120, 90, 30
units = st.lists(
    st.tuples(st.integers(0, 12), st.integers(1_000, 1_600), st.sampled_from(CELLS)),
    max_size=30,
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(units, st.booleans()), min_size=1, max_size=12), st.booleans())
def test_releases_and_windows_equal_a_plain_count_whatever_the_order(steps, beside) -> None:
    """Units of pings in any order (late ones included), releases at rising ticks: each release
    counts every device once at its latest ping in ``[t - h, t)``, each window at its latest
    ping in the window. ``beside``: the windows' tables take each unit on another thread while
    the release is made (as a large unit's commit does)."""
    state = LiveState(Clock(WINDOW, SLOT, HORIZON))
    seen: list[tuple[int, int, int]] = []
    t = 1_000
    pool = ThreadPoolExecutor(1)
    for rows, release in steps:
        seen += rows
        tables = None
        if rows:
            dev, ts, cell = _arrays(rows)
            if beside:
                tables = state.apply_beside(pool, dev, ts, cell, set(range(0, 20)))
            else:
                state.apply(dev, ts, cell, set(range(0, 20)))
        if release:
            t += SLOT * (1 + len(rows) % 3)
            cells, n = state.release(t)
            model: dict[int, Pos] = {}
            for d, ts_, c in seen:
                if ts_ < t:
                    model[d] = max(model.get(d, (ts_, c)), (ts_, c))
            want = _counts({d: p for d, p in model.items() if p[0] >= t - HORIZON})
            assert list(zip(cells.tolist(), n.tolist(), strict=True)) == want
        if tables is not None:
            tables.result()
        for w in range(8, 14):
            per: dict[int, Pos] = {}
            for d, ts_, c in seen:
                if ts_ // WINDOW == w:
                    per[d] = max(per.get(d, (ts_, c)), (ts_, c))
            cells, n = state.window_counts(w)
            assert list(zip(cells.tolist(), n.tolist(), strict=True)) == _counts(per)


def test_a_state_rebuilt_from_the_log_makes_the_same_releases(make_settings) -> None:
    """Batches through the service, then a second process's state (synced from the store's log
    alone) and the first one's make the same next release."""
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap
    from heatmap.store.sqlite import SQLiteStore

    s = make_settings(k_min=1)
    hm = Heatmap(s)
    rng = np.random.default_rng(5)
    t0 = 1_764_000_000 // 300 * 300
    for i in range(12):
        n = 400
        frame = pl.DataFrame(
            {
                "device_id": [f"d{x}" for x in rng.integers(0, 300, n)],
                "ts": (t0 + i * 20 + rng.integers(0, 20, n)).astype(str),
                "lat": 31.23 + rng.normal(0, 0.01, n),
                "lng": 121.47 + rng.normal(0, 0.01, n),
            }
        ).with_columns(pl.col("lat", "lng").cast(pl.String))
        hm.ingest_frame(frame, ParseOptions(now=t0 + 86_400.0))
    from heatmap.live.state import state_of

    clock = Clock(s.window_s, s.release_s, s.horizon)
    first = state_of(hm.store, clock)
    other = SQLiteStore(s)
    second = LiveState(clock)
    with other.transaction():
        second.sync(other)
    assert first.applied_seq == second.applied_seq > 0
    tick = t0 + 240
    a, b = first.release(tick), second.release(tick)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    assert a[1].sum() > 100  # positive control: devices counted
    for w in first.windows:
        assert [x.tolist() for x in first.window_counts(w)] == [
            x.tolist() for x in second.window_counts(w)
        ]
    other.close()
    hm.close()


def test_a_large_unit_commits_what_a_small_one_would(make_settings, monkeypatch, tmp_path) -> None:
    """A unit large enough for the commit's helper threads (its windows' tables updated beside
    the release) leaves the store and its state as the serial commit does: same release, same
    open windows, same published windows; into a new store and into one with a release."""
    from heatmap import commit
    from heatmap.ingest import ParseOptions
    from heatmap.live.state import state_of
    from heatmap.service import Heatmap
    from tests.conftest import published_counts

    rng = np.random.default_rng(11)
    t0 = 1_764_000_000 // 300 * 300

    def frame(start: int, n: int) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "device_id": [f"d{x}" for x in rng.integers(0, 3000, n)],
                "ts": np.sort(start + rng.integers(0, 900, n)),
                "lat": 31.23 + rng.normal(0, 0.01, n),
                "lng": 121.47 + rng.normal(0, 0.01, n),
            }
        )

    units = [frame(t0, 20_000), frame(t0 + 700, 20_000)]
    seen = []
    for big_unit in (1, 1 << 62):  # every unit on helper threads, then none
        monkeypatch.setattr(commit, "_BIG_UNIT", big_unit)
        s = make_settings(k_min=1, db=str(tmp_path / str(big_unit) / "heatmap.db"))
        hm = Heatmap(s)
        for i, unit in enumerate(units):
            path = tmp_path / f"u{i}.parquet"
            unit.write_parquet(path)
            hm.ingest_paths([path], ParseOptions(now=t0 + 86_400.0))
        state = state_of(hm.store, Clock(s.window_s, s.release_s, s.horizon))
        release = [x.tolist() for x in state.release(int(hm.store.get_meta("release_t")))]
        windows = {w: [x.tolist() for x in state.window_counts(w)] for w in state.windows}
        seen.append((release, windows, published_counts(hm, 10), hm.store.open_window_ids()))
        hm.close()
    assert seen[0] == seen[1]
    assert sum(seen[0][0][1]) > 1000 and seen[0][1]  # positive controls: counted, windows open
