"""Privacy rules 2-4 on generated data: nothing below k, no differencing leak, stable DP noise."""

from __future__ import annotations

import dataclasses

import h3
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.aggregate import rollup
from heatmap.config import Settings
from heatmap.policy import PublishPolicy
from heatmap.privacy import DeviceHasher, suppress
from heatmap.publish import counts_to_published

PEOPLES_SQUARE = (31.2335, 121.4755)
CENTRE = h3.latlng_to_cell(*PEOPLES_SQUARE, 7)
BASE_CELLS = (
    sorted(h3.cell_to_children(CENTRE, 10))[:400]
    + sorted(h3.cell_to_children(h3.grid_disk(CENTRE, 1)[1], 10))[:100]
)


def atoms(published: dict[tuple[int, str], int]) -> dict[tuple[int, str], int]:
    """Brute force: each published cell minus its maximal published cells strictly inside.

    Every published cell is subtracted from its nearest published ancestor (h3-py parents).
    """
    out = dict(published)
    for (res, cell), v in published.items():
        for r in range(res - 1, -1, -1):
            anc = (r, h3.cell_to_parent(cell, r))
            if anc in published:
                out[anc] -= v
                break
    return out


def rule3_violations(published: dict[tuple[int, str], int], k: int) -> list[str]:
    """Rule 3 (the atom rule): every atom of a published cell must be 0 or >= k.

    Any number derivable by adding and subtracting published cells of any mix of resolutions
    is a sum of atoms, so this also covers the pairwise check (a parent minus the published
    cells of one finer resolution) that 0.3.0 made.
    """
    return [f"{cell}@{res}: atom {a}" for (res, cell), a in atoms(published).items() if 0 < a < k]


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
    pub = counts_to_published(_counts(base), PublishPolicy.from_settings(s))
    rolled = rollup(_counts(base), 10, 8)
    exact = {(r, c): d for r, c, d in rolled.select("res", "cell", "devices").rows()}
    for r, c, people in pub.select("res", "cell", "people").rows():
        assert people == exact[(r, c)] * 2.5


def test_dp_publication_is_decided_on_noisy_counts_and_never_negative() -> None:
    # 80 base cells of 150 devices: well above the noisy threshold (k + margin) at eps 2.
    base = dict.fromkeys(BASE_CELLS[:80], 150)
    s = Settings(db="/nonexistent/x.db", k_min=10, base_res=10, min_res=8, dp_epsilon=2.0)
    policy = PublishPolicy.from_settings(s)
    a = counts_to_published(_counts(base), policy)
    b = counts_to_published(_counts(base), policy)
    assert (a["people"] >= 0).all() and a.height > 40
    exact = counts_to_published(_counts(base), dataclasses.replace(policy, dp_epsilon=None))
    got = dict(zip(a["cell"].to_list(), a["people"].to_list(), strict=True))
    want = dict(zip(exact["cell"].to_list(), exact["people"].to_list(), strict=True))
    assert sum(got[c] != want[c] for c in got) > len(got) / 2  # the noise is there
    # Fresh noise each time: the caller must store what it publishes (it cannot be redrawn).
    assert not a.equals(b)
    # Presence is hidden: cells under k are not published on their exact count being >= k
    # nor withheld on it being < k; a cell of 9 devices is (almost) never published, one of 11
    # (almost) never either: the threshold is k plus the noise margin.
    small = counts_to_published(_counts(dict.fromkeys(BASE_CELLS[:40], 11)), policy)
    assert small.filter(pl.col("res") == 10).height == 0


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
    pub = rolled.filter(pl.Series(published))
    for w in pub["w"].unique().to_list():
        part = pub.filter(pl.col("w") == w).select("res", "cell", "devices").rows()
        assert rule3_violations({(r, h3.int_to_str(c)): d for r, c, d in part}, k) == []


def _reference_counts(base: dict[str, int], base_res: int, min_res: int) -> dict:
    """Plain h3-py roll-up: (res, cell) -> devices."""
    out: dict[tuple[int, str], int] = {}
    for cell, n in base.items():
        for r in range(min_res, base_res + 1):
            key = (r, h3.cell_to_parent(cell, r) if r < base_res else cell)
            out[key] = out.get(key, 0) + n
    return out


def _published(rolled: pl.DataFrame, mask: pl.Series) -> dict[tuple[int, str], int]:
    return {
        (r, h3.int_to_str(c)): d
        for r, c, d in rolled.filter(mask).select("res", "cell", "devices").rows()
    }


def test_mixed_resolution_differencing_crafted_at_peoples_square() -> None:
    """Issue 14 item 1: A (res 9) = 20 with a1 = 10, B (res 9) = 10 all in b1, C (res 9) = 1,
    under one res-8 P = 31. Pairwise remainders were all 0 or >= 10 (B withheld), yet
    P - A - b1 = 1 revealed C's lone device."""
    k = 10
    p8 = h3.latlng_to_cell(*PEOPLES_SQUARE, 8)
    a, b, c = sorted(h3.cell_to_children(p8, 9))[:3]
    a10 = sorted(h3.cell_to_children(a, 10))
    a1, b1 = a10[0], sorted(h3.cell_to_children(b, 10))[0]
    base = {a1: 10, **dict(zip(a10[1:7], [2, 2, 2, 2, 1, 1], strict=True))}
    base |= {b1: 10, sorted(h3.cell_to_children(c, 10))[0]: 1}
    rolled = rollup(_counts(base), 10, 5)
    published = _published(rolled, suppress(rolled, k))
    assert rule3_violations(published, k) == []
    assert all(v >= k for v in published.values())
    # Coarse cells still count everyone (31 at every res 5-8).
    for r in range(5, 9):
        assert published[(r, h3.cell_to_parent(p8, r))] == 31
    # P - A - b1 = 1 is no longer derivable: A and b1 are not both published.
    assert not {(9, a), (10, b1)} <= published.keys()
    assert published[(8, p8)] - rolled_count(rolled, 9, a) - rolled_count(rolled, 10, b1) == 1
    # Every number derivable under P is a sum of atoms, none of them in 1..9.
    assert all(v == 0 or v >= k for (r, _), v in atoms(published).items() if r >= 8)


def rolled_count(rolled: pl.DataFrame, res: int, cell: str) -> int:
    row = rolled.filter((pl.col("res") == res) & (pl.col("cell") == h3.str_to_int(cell)))
    return int(row["devices"].item())


# A few clustered res-10 cells around Shanghai: near neighbours share res-9/8 parents, the far
# ones split res 7-5.
_OFFSETS = [(0, 0), (0.003, 0.002), (-0.004, 0.006), (0.02, -0.01), (-0.06, 0.05), (0.15, 0.1)]
CLUSTERS = [
    sorted(h3.grid_disk(h3.latlng_to_cell(PEOPLES_SQUARE[0] + dy, PEOPLES_SQUARE[1] + dx, 10), 2))
    for dy, dx in _OFFSETS
]
clustered = st.lists(
    st.tuples(st.integers(0, len(CLUSTERS) - 1), st.integers(0, 18), st.integers(1, 12)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(clustered, st.integers(2, 12), st.integers(5, 7))
def test_atom_rule_against_a_brute_force_reference(
    devices: list[tuple[int, int, int]], k: int, min_res: int
) -> None:
    base: dict[str, int] = {}
    for cluster, i, n in devices:
        cell = CLUSTERS[cluster][i]
        base[cell] = base.get(cell, 0) + n
    ref = _reference_counts(base, 10, min_res)
    rolled = rollup(_counts(base), 10, min_res)
    assert {
        (r, h3.int_to_str(c)): d for r, c, d in rolled.select("res", "cell", "devices").rows()
    } == ref
    published = _published(rolled, suppress(rolled, k))
    # Rule 2, and every atom of every published cell is 0 or >= k.
    assert all(v >= k for v in published.values())
    assert rule3_violations(published, k) == []
    # Withholding only where needed: a cell with >= k devices is absent only when it lies
    # strictly inside a cell whose atom, before suppression, was in 1..k-1.
    eligible = {key: v for key, v in ref.items() if v >= k}
    offending = {key for key, a in atoms(eligible).items() if 0 < a < k}
    withheld = eligible.keys() - published.keys()
    for r, cell in withheld:
        assert any((s, h3.cell_to_parent(cell, s)) in offending for s in range(min_res, r)), (
            r,
            cell,
        )
    # Coarse cells count everyone; nothing is withheld when the rule already holds.
    assert all((r, c) in published for r, c in eligible if r == min_res)
    if not offending:
        assert withheld == set()


def test_suppress_is_aligned_with_unsorted_input() -> None:
    base = {c: 3 + i % 11 for i, c in enumerate(BASE_CELLS[:200])}
    rolled = rollup(_counts(base), 10, 6)
    mask = suppress(rolled, 10)
    shuffled = rolled.with_columns(pl.Series("m", mask)).sample(fraction=1.0, shuffle=True, seed=3)
    assert suppress(shuffled.drop("m"), 10).to_list() == shuffled["m"].to_list()
    assert rule3_violations(_published(rolled, mask), 10) == []


def test_device_hashes_are_keyed_blake2b_as_hashlib_computes_them() -> None:
    """The vectorised hash equals ``hashlib.blake2b(id, key, digest_size=8)`` (little-endian,
    signed) for every length across block boundaries, non-ASCII ids and keys of any size; the
    string and categorical paths of DeviceHasher agree with it."""
    import hashlib

    import pyarrow as pa

    from heatmap.devicehash import KeyedHasher

    ids = ["", "a", "设备-１２３", "dev0001", *("x" * n for n in range(300))]
    for key in (bytes(range(32)), b"k", bytes(64)):
        got = KeyedHasher(key).hash_strings(pa.array(ids)).tolist()
        want = [
            int.from_bytes(
                hashlib.blake2b(i.encode(), key=key, digest_size=8).digest(), "little", signed=True
            )
            for i in ids
        ]
        assert got == want
    key = bytes(range(32))
    frame = pl.DataFrame({"w": list(range(len(ids))), "device_id": ids})
    plain = DeviceHasher(key).replace_ids(frame)["device"].to_list()
    cat = DeviceHasher(key).replace_ids(
        frame.with_columns(pl.col("device_id").cast(pl.Categorical))
    )
    assert plain == cat["device"].to_list() == [DeviceHasher(key).hash_one(i) for i in ids]
