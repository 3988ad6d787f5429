"""Privacy rules 2-4 on generated data: nothing below k, no differencing leak, stable DP noise."""

from __future__ import annotations

import h3
import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.aggregate import rollup
from heatmap.config import Settings
from heatmap.privacy import DeviceHasher, suppress
from heatmap.publish import counts_to_published

CENTRE = h3.latlng_to_cell(31.2335, 121.4755, 7)
BASE_CELLS = (
    sorted(h3.cell_to_children(CENTRE, 10))[:400]
    + sorted(h3.cell_to_children(h3.grid_disk(CENTRE, 1)[1], 10))[:100]
)


def rule3_violations(published: dict[tuple[int, str], int], k: int) -> list[str]:
    """Brute force: P - sum(published cells of finer res inside P) must be 0 or >= k."""
    bad = []
    by_res: dict[int, dict[str, int]] = {}
    for (res, cell), v in published.items():
        by_res.setdefault(res, {})[cell] = v
    for (res, cell), v in published.items():
        for fine, cells in by_res.items():
            if fine <= res:
                continue
            inside = sum(c for x, c in cells.items() if h3.cell_to_parent(x, res) == cell)
            rem = v - inside
            if 0 < rem < k:
                bad.append(f"{cell}@{res} vs res {fine}: remainder {rem}")
    return bad


counts_strategy = st.dictionaries(
    st.sampled_from(BASE_CELLS), st.integers(1, 30), min_size=1, max_size=120
)


def _counts(d: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "w": [0] * len(d),
            "cell": pl.Series([h3.str_to_int(c) for c in d], dtype=pl.UInt64),
            "devices": list(d.values()),
        }
    )


@settings(max_examples=150, deadline=None)
@given(counts_strategy, st.integers(2, 12))
def test_rules_2_and_3_hold_for_every_published_cell(base: dict[str, int], k: int) -> None:
    rolled = rollup(_counts(base), 10, 6)
    mask = suppress(rolled, k)
    pub = rolled.filter(mask)
    published = {
        (r, h3.int_to_str(c)): d for r, c, d in pub.select("res", "cell", "devices").rows()
    }
    assert all(v >= k for v in published.values())
    assert rule3_violations(published, k) == []
    # Only cells with at least k devices may be withheld beyond rule 2.
    withheld = rolled.filter(~mask & (pl.col("devices") >= k))
    assert withheld.height <= rolled.filter(pl.col("devices") >= k).height


@settings(max_examples=100, deadline=None)
@given(counts_strategy, st.integers(2, 12))
def test_coarse_cells_count_everyone_inside(base: dict[str, int], k: int) -> None:
    rolled = rollup(_counts(base), 10, 6)
    pub = rolled.filter(suppress(rolled, k))
    coarse = {}
    for cell, n in base.items():
        parent = h3.cell_to_parent(cell, 6)
        coarse[parent] = coarse.get(parent, 0) + n
    want = {h3.str_to_int(c): n for c, n in coarse.items() if n >= k}
    got = dict(pub.filter(pl.col("res") == 6).select("cell", "devices").rows())
    assert got == want


def test_published_numbers_are_exact_without_dp() -> None:
    base = {c: 10 + i % 7 for i, c in enumerate(BASE_CELLS[:50])}
    s = Settings(db="/nonexistent/x.db", k_min=10, base_res=10, min_res=8, expansion=2.5)
    pub = counts_to_published(_counts(base), s)
    rolled = rollup(_counts(base), 10, 8)
    exact = {(r, c): d for r, c, d in rolled.select("res", "cell", "devices").rows()}
    for r, c, people in pub.select("res", "cell", "people").rows():
        assert people == exact[(r, c)] * 2.5


def test_dp_noise_is_reproducible_for_a_seed_and_never_negative() -> None:
    base = dict.fromkeys(BASE_CELLS[:80], 12)
    s = Settings(db="/nonexistent/x.db", k_min=10, base_res=10, min_res=8, dp_epsilon=0.5)
    a = counts_to_published(_counts(base), s, noise_seed=b"seed")
    b = counts_to_published(_counts(base), s, noise_seed=b"seed")
    assert a.equals(b)
    assert (a["people"] >= 0).all()
    exact = counts_to_published(_counts(base), s.model_copy(update={"dp_epsilon": None}))
    assert not np.allclose(a["people"].to_numpy(), exact["people"].to_numpy())


def test_device_hash_is_keyed_and_stable() -> None:
    h1, h2 = DeviceHasher(b"a" * 32), DeviceHasher(b"b" * 32)
    assert h1.hash_one("000") == DeviceHasher(b"a" * 32).hash_one("000")
    assert h1.hash_one("000") != h2.hash_one("000")
    frame = pl.DataFrame({"w": [1, 1], "device_id": ["x", "y"], "ts": [1, 2]})
    out = h1.replace_ids(frame)
    assert "device_id" not in out.columns
    assert out["device"].to_list() == [h1.hash_one("x"), h1.hash_one("y")]


def test_categorical_ids_hash_like_strings_across_chunks() -> None:
    hasher = DeviceHasher(b"k" * 32)
    for chunk in (["a", "b", "a"], ["c", "a", "d"]):
        cat = pl.DataFrame({"w": [1] * 3, "device_id": pl.Series(chunk).cast(pl.Categorical)})
        out = hasher.replace_ids(cat)
        assert out["device"].to_list() == [DeviceHasher(b"k" * 32).hash_one(d) for d in chunk]


def test_rule3_withholds_few_base_cells_at_city_density() -> None:
    """At the default k on a simulated Shanghai half hour (60,000 devices), complementary
    suppression withholds only a few per cent of the base cells that reach k on their own."""
    from datetime import UTC, datetime

    from heatmap.aggregate import cells_to_counts, pings_to_positions
    from heatmap.simulate import simulate_pings

    k = Settings().k_min
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # 18:00 in Shanghai
    tables = simulate_pings(devices=60_000, start=start, hours=0.5, interval_s=60, seed=5)
    pings = pl.concat([pl.DataFrame(pl.from_arrow(t)) for t in tables])
    pings = pings.with_columns(pl.col("device_id").cast(pl.Categorical))
    pos = pings_to_positions(pings, 300, 10).rename({"device_id": "device"})
    rolled = rollup(cells_to_counts(pos), 10, 5)
    published = suppress(rolled, k).to_numpy()
    base = (rolled["res"].to_numpy() == 10) & (rolled["devices"].to_numpy() >= k)
    withheld = int((base & ~published).sum())
    share = withheld / int(base.sum())
    print(f"k={k}: {withheld} of {int(base.sum())} base cells withheld for rule 3 ({share:.1%})")
    assert base.sum() > 1000
    assert share < 0.05
