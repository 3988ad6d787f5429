"""Aggregation kernel against plain h3-py: positions, counts, roll-up, chunk independence."""

from __future__ import annotations

import h3
import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap import aggregate
from heatmap.aggregate import (
    cells_to_counts,
    cells_to_parent,
    merge_positions,
    pings_to_positions,
    rollup,
    windows_of,
)
from tests.conftest import reference_counts

pings_strategy = st.lists(
    st.tuples(
        st.sampled_from([f"dev{i}" for i in range(25)]),
        st.integers(1_700_000_000, 1_700_000_000 + 1800),
        st.floats(31.15, 31.30),
        st.floats(121.40, 121.55),
    ),
    min_size=1,
    max_size=300,
)


def _frame(rows: list[tuple[str, int, float, float]], categorical: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")
    if categorical:  # the dense path taken by dictionary-encoded files
        frame = frame.with_columns(pl.col("device_id").cast(pl.Categorical))
    return frame


def _kernel_counts(frame: pl.DataFrame, window_s: int, base: int, low: int) -> dict:
    pos = pings_to_positions(frame, window_s, base).rename({"device_id": "device"})
    pos = pos.with_columns(pl.col("device").cast(pl.String).hash(1).reinterpret(signed=True))
    rolled = rollup(cells_to_counts(pos), base, low)
    return {
        (w, r, h3.int_to_str(c)): d
        for w, r, c, d in rolled.select("w", "res", "cell", "devices").iter_rows()
    }


def test_cells_to_parent_matches_h3() -> None:
    rng = np.random.default_rng(1)
    cells = [h3.latlng_to_cell(float(a), float(b), 10) for a, b in rng.uniform(-60, 60, (200, 2))]
    ints = np.array([h3.str_to_int(c) for c in cells], dtype=np.uint64)
    for res in range(0, 10):
        want = [h3.str_to_int(h3.cell_to_parent(c, res)) for c in cells]
        assert cells_to_parent(ints, res).tolist() == want


@settings(max_examples=60, deadline=None)
@given(pings_strategy, st.booleans())
def test_counts_equal_plain_h3_reference(rows: list, categorical: bool) -> None:
    got = _kernel_counts(_frame(rows, categorical), 300, 10, 7)
    assert got == reference_counts(rows, 300, 10, 7)


@settings(max_examples=60, deadline=None)
@given(pings_strategy)
def test_sum_over_cells_is_distinct_devices_per_window(rows: list) -> None:
    got = _kernel_counts(_frame(rows), 300, 10, 8)
    for res in (8, 9, 10):
        per_w: dict[int, int] = {}
        for (w, r, _c), d in got.items():
            if r == res:
                per_w[w] = per_w.get(w, 0) + d
        distinct = {}
        for dev, ts, _a, _b in rows:
            distinct.setdefault(ts // 300, set()).add(dev)
        assert per_w == {w: len(s) for w, s in distinct.items()}


@settings(max_examples=40, deadline=None)
@given(pings_strategy, st.integers(1, 5), st.randoms(use_true_random=False))
def test_chunking_and_row_order_do_not_change_positions(rows: list, parts: int, rnd) -> None:
    whole = pings_to_positions(_frame(rows), 300, 10).sort("w", "device_id")
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    chunks = [shuffled[i::parts] for i in range(parts)]
    pos = [pings_to_positions(_frame(c), 300, 10) for c in chunks if c]
    pos = [
        p.rename({"device_id": "device"}).with_columns(
            pl.col("device").hash(1).reinterpret(signed=True)
        )
        for p in pos
    ]
    merged = merge_positions(pos).sort("w", "device")
    want = (
        whole.with_columns(pl.col("device_id").hash(1).reinterpret(signed=True))
        .rename({"device_id": "device"})
        .sort("w", "device")
    )
    assert (
        merged.select("w", "device", "ts", "cell").rows()
        == want.select("w", "device", "ts", "cell").rows()
    )


def test_latest_ping_wins_and_ties_take_the_larger_cell() -> None:
    a = (31.2300, 121.4700)
    b = (31.2400, 121.4800)
    rows = [("d", 1000, *a), ("d", 1010, *b), ("d", 1005, *a)]
    pos = pings_to_positions(_frame(rows), 300, 10)
    assert pos["cell"].to_list() == [h3.str_to_int(h3.latlng_to_cell(*b, 10))]
    tie = [("e", 1000, *a), ("e", 1000, *b)]
    cells = sorted(h3.str_to_int(h3.latlng_to_cell(*p, 10)) for p in (a, b))
    for categorical in (False, True):
        pos = pings_to_positions(_frame(tie, categorical), 300, 10)
        assert pos["cell"].to_list() == [cells[-1]]


@settings(max_examples=40, deadline=None)
@given(pings_strategy)
def test_rollup_is_exact(rows: list) -> None:
    got = _kernel_counts(_frame(rows), 300, 10, 6)
    for (w, res, cell), d in got.items():
        if res < 10:
            kids = sum(
                v
                for (w2, r2, c2), v in got.items()
                if w2 == w and r2 == res + 1 and h3.cell_to_parent(c2, res) == cell
            )
            assert kids == d


@given(
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=300),
    st.integers(0, 2**41),
    st.booleans(),
)
def test_windows_of_are_the_distinct_windows_ascending(
    ws: list[int], spread: int, compiled: bool
) -> None:
    """Narrow ranges (marked in a table) and wide ones (sorted), compiled or with numpy."""
    from heatmap import _jit

    w = [x % (spread + 1) - spread // 2 for x in ws]
    frame = pl.DataFrame({"w": w}, schema={"w": pl.Int64})
    if compiled:
        assert windows_of(frame) == sorted(set(w))
        assert aggregate._distinct_windows(*_jit.readonly(np.array(w)), 8).tolist() == sorted(
            set(w)
        )
    else:
        real = aggregate.worth
        aggregate.worth = lambda rows: False  # the numpy path, as before kernels load
        try:
            assert windows_of(frame) == sorted(set(w))
        finally:
            aggregate.worth = real
