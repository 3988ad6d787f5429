"""Store semantics: units, watermark, late rows, closing, durability and what stays on disk."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.errors import StoreUnavailable
from heatmap.ingest import ParseOptions
from heatmap.model import Window
from heatmap.read import Reader
from heatmap.service import Heatmap
from heatmap.store import Store
from heatmap.store.codec import arrays_to_blob
from heatmap.store.sqlite import SQLiteStore

T0 = 1_764_000_000 // 300 * 300  # a window boundary
NOW = T0 + 86_400.0


def _pings(
    n_dev: int, t0: int, t1: int, seed: int, step: int = 40, prefix: str = "dev"
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_dev):
        ts = np.arange(t0 + rng.integers(0, step), t1, step)
        lat = 31.22 + rng.normal(0, 0.004, len(ts))
        lng = 121.47 + rng.normal(0, 0.004, len(ts))
        rows.append(
            pl.DataFrame({"device_id": f"{prefix}{d:04d}", "ts": ts, "lat": lat, "lng": lng})
        )
    return pl.concat(rows)


def _write(frame: pl.DataFrame, path: Path) -> Path:
    frame.write_csv(path)
    return path


def _published(hm: Heatmap) -> dict:
    out = {}
    reader = Reader.of(hm)
    for info in hm.store.windows():
        for res, snap in reader.snapshots(info).items():
            out[(info.w, res)] = (snap.cells.tolist(), snap.people.tolist(), info.closed)
    return out


OPTS = ParseOptions(now=NOW)


def test_a_then_b_equals_a_and_b_together(make_settings, tmp_path: Path) -> None:
    a = _pings(40, T0, T0 + 900, seed=1)
    b = _pings(40, T0 + 600, T0 + 1500, seed=2)  # overlaps A's last open window
    pa_, pb = _write(a, tmp_path / "a.csv"), _write(b, tmp_path / "b.csv")
    both = _write(pl.concat([a, b]), tmp_path / "ab.csv")
    s1 = make_settings(db=str(tmp_path / "one" / "h.db"), k_min=3, allowed_lateness_s=400)
    s2 = make_settings(db=str(tmp_path / "two" / "h.db"), k_min=3, allowed_lateness_s=400)
    h1, h2 = Heatmap(s1), Heatmap(s2)
    r1 = h1.ingest_paths([pa_], OPTS)
    r2 = h1.ingest_paths([pb], OPTS)
    r3 = h2.ingest_paths([both], OPTS)
    assert r1.late == r2.late == r3.late == 0
    assert _published(h1) == _published(h2)
    assert r1.accepted + r2.accepted == r3.accepted == a.height + b.height


def test_late_rows_of_a_closed_window_are_rejected_and_reported(make_settings, tmp_path) -> None:
    hm = Heatmap(make_settings(k_min=2, allowed_lateness_s=0))
    hm.ingest_paths([_write(_pings(10, T0, T0 + 1200, seed=3), tmp_path / "a.csv")], OPTS)
    closed_before = [w.w for w in hm.store.windows() if w.closed]
    assert closed_before  # windows ended before the watermark closed
    late = _pings(5, T0, T0 + 100, seed=4)
    report = hm.ingest_paths([_write(late, tmp_path / "late.csv")], OPTS)
    assert report.late == late.height and report.accepted == 0
    assert report.summary()["late"] == late.height


def test_a_file_never_rejects_its_own_rows_whatever_the_order(make_settings, tmp_path) -> None:
    frame = _pings(20, T0, T0 + 3000, seed=5).sort("device_id")  # sorted by device, not time
    hm = Heatmap(make_settings(k_min=2, allowed_lateness_s=0))
    report = hm.ingest_paths([_write(frame, tmp_path / "d.csv")], OPTS)
    assert report.late == 0 and report.accepted == frame.height


def test_closed_windows_lose_their_device_state(make_settings, tmp_path) -> None:
    s = make_settings(k_min=2, allowed_lateness_s=60)
    hm = Heatmap(s)
    hm.ingest_paths([_write(_pings(15, T0, T0 + 299, seed=6), tmp_path / "a.csv")], OPTS)
    con = sqlite3.connect(s.db)
    assert con.execute("SELECT count(*) FROM device_state").fetchone()[0] == 15
    hm.ingest_paths([_write(_pings(15, T0 + 600, T0 + 900, seed=7), tmp_path / "b.csv")], OPTS)
    first = T0 // 300
    assert con.execute("SELECT count(*) FROM device_state WHERE w = ?", (first,)).fetchone()[0] == 0
    assert [w.closed for w in hm.store.windows() if w.w == first] == [True]


def test_store_files_hold_no_hash_of_a_closed_window(make_settings, tmp_path) -> None:
    """While a window is open its hashes are on disk; once it closes they are gone."""
    s = make_settings(k_min=2, allowed_lateness_s=0)
    hm = Heatmap(s)
    frame = _pings(12, T0, T0 + 299, seed=8)
    hm.ingest_paths([_write(frame, tmp_path / "a.csv")], OPTS)
    # SQLite records store integers big-endian; numpy blobs are little-endian: look for both.
    hashes = [
        h.to_bytes(8, order, signed=True) for h in _hashes(hm, frame) for order in ("big", "little")
    ]
    files = Path(s.db).parent.glob
    before = b"".join(p.read_bytes() for p in files("heatmap.db*"))
    assert sum(h in before for h in hashes) == len(hashes) // 2  # positive control: open, on disk
    later = _pings(3, T0 + 900, T0 + 1000, seed=9, prefix="other")  # other devices: the same
    hm.ingest_paths([_write(later, tmp_path / "b.csv")], OPTS)  # device keeps its hash
    # A running service never closes its store: the WAL must be clean while it is open too.
    for when in ("open", "closed"):
        blobs = b"".join(p.read_bytes() for p in files("heatmap.db*"))
        for h in hashes:
            assert h not in blobs, f"a closed window's hash is on disk (store {when})"
        hm.close()
    for raw in frame["device_id"].unique().to_list():
        assert raw.encode() not in blobs


def _hashes(hm: Heatmap, frame: pl.DataFrame) -> list[int]:
    from heatmap.privacy import DeviceHasher

    hasher = DeviceHasher(hm.key)
    return [hasher.hash_one(d) for d in frame["device_id"].unique().to_list()]


def test_foreign_files_are_refused(make_settings, tmp_path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello, not a database")
    with pytest.raises(StoreUnavailable, match="not a heatmap store"):
        Heatmap(make_settings(db=str(text)))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(StoreUnavailable, match="another application"):
        Heatmap(make_settings(db=str(other)))


def test_window_length_is_fixed_per_store(make_settings) -> None:
    Heatmap(make_settings(window_s=300)).close()
    with pytest.raises(StoreUnavailable, match="window_s=300"):
        Heatmap(make_settings(window_s=600))


def test_duplicate_batch_id_is_counted_once(make_settings) -> None:
    hm = Heatmap(make_settings(k_min=2))
    frame = _pings(5, T0, T0 + 200, seed=10).with_columns(pl.col("ts").cast(pl.String))
    one = hm.ingest_frame(frame, OPTS, batch_id="b-1")
    two = hm.ingest_frame(frame, OPTS, batch_id="b-1")
    assert two.duplicate and one.accepted == two.accepted
    assert hm.store.windows()[-1].devices == 5


def test_blobs_are_compressed_and_old_uncompressed_blobs_still_read() -> None:
    from heatmap.store.codec import arrays_to_blob, blob_to_arrays

    rng = np.random.default_rng(3)
    base = 0x8A2A1072B4000000  # res-10 cells around Shanghai, as stored (int64)
    offsets = rng.integers(0, 1 << 28, 50_000).astype(np.uint64)
    cells = np.sort(np.uint64(base) + offsets).view(np.int64)
    people = rng.integers(10, 400, cells.size).astype(np.float64)
    blob = arrays_to_blob(cells, people)
    assert len(blob) < 0.5 * 16 * cells.size  # sorted cells and small counts compress
    got = list(blob_to_arrays(blob, (np.int64, np.float64)))
    assert got[0].tolist() == cells.tolist() and got[1].tolist() == people.tolist()
    # The layout before compression: n, then each array, little-endian.
    old = np.int64(cells.size).tobytes() + cells.tobytes() + people.tobytes()
    again = list(blob_to_arrays(old, (np.int64, np.float64)))
    assert again[0].tolist() == cells.tolist() and again[1].tolist() == people.tolist()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 11),  # device
                st.integers(0, 599),  # seconds into two windows
                st.sampled_from([(31.2300, 121.4700), (31.2400, 121.4800), (31.2350, 121.4750)]),
            ),
            min_size=1,
            max_size=20,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_live_counts_follow_every_batch(batches: list) -> None:
    """Batches move devices between cells of open windows: after each one, the live counts
    equal a plain h3-py count of every device's latest ping so far."""
    import tempfile

    import h3

    from heatmap.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(
            db=f"{tmp}/h.db",
            secret="t",
            basemap_url="",
            k_min=1,
            min_res=10,
            allowed_lateness_s=3600,
        )
        hm = Heatmap(s)
        seen: list[tuple[str, int, float, float]] = []
        for batch in batches:
            rows = [(f"d{d}", T0 + t, lat, lng) for d, t, (lat, lng) in batch]
            seen += rows
            frame = pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")
            hm.ingest_frame(frame.with_columns(pl.col("ts").cast(pl.String)), OPTS)
            latest: dict[tuple[int, str], tuple[int, int]] = {}
            for dev, ts, lat, lng in seen:
                cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, 10))
                key = (ts // 300, dev)
                latest[key] = max(latest.get(key, (ts, cell)), (ts, cell))
            want: dict[tuple[int, int], int] = {}
            for (w, _d), (_t, cell) in latest.items():
                want[(w, cell)] = want.get((w, cell), 0) + 1
            got = {}
            reader = Reader.of(hm)
            for info in hm.store.windows():
                assert not info.closed
                snap = reader.snapshots(info)[10]
                for cell, people in zip(snap.cells.tolist(), snap.people.tolist(), strict=True):
                    got[(info.w, cell)] = int(people)
                assert info.devices == len({d for (w, d) in latest if w == info.w})
            assert got == want
        hm.close()


# -- release state: one contract, checked on both backends (tests/scale/test_pg_store.py) ------
CELL0 = 0x8A2A1072B407FFF  # a res-10 cell around Shanghai
BIG_CELL = 0x8AFFFFFFFFFFFFF  # bit 63 clear, like every H3 index
Key = tuple[int, int]  # (device, k)
Pos = tuple[int, int]  # (ts, cell): the larger one is the latest


def _pending_frame(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"device": pl.Int64, "k": pl.Int64, "ts": pl.Int64, "cell": pl.UInt64},
        orient="row",
    )


def _random_pings(rng: np.random.Generator, devices: list[int], ks: range, n: int) -> list:
    """``n`` pings of the devices in ticks ``ks`` (60 s): few ts values per tick and few cells,
    so (device, k) repeats, ts ties with other cells, and exact duplicates all occur."""
    cells = [CELL0 + i for i in range(4)] + [BIG_CELL]
    rows = []
    for _ in range(n):
        k = int(rng.choice(ks))
        rows.append(
            (
                int(rng.choice(devices)),
                k,
                k * 60 + int(rng.integers(0, 3)),
                int(rng.choice(cells)),
            )
        )
    return rows + rows[: n // 10]  # exact duplicates


def check_release_state(store: Store, sql: Callable[[str], list[tuple]]) -> None:
    """Pending, fold, live, expire and counts against a plain-Python model of the same rules;
    ``sql`` reads the store's tables directly (the same SQL on both backends). After every step
    ``live_counts()`` and the per-cell counter equal a plain count of the model's live rows. The
    store may hold release state already (a migrated one): the model starts from its tables."""
    rng = np.random.default_rng(13)
    devices = [-(2**63), 2**63 - 1, 0, *rng.integers(-(2**62), 2**62, 60).tolist()]
    pending: dict[Key, Pos] = {
        (d, k): (ts, cell) for d, k, ts, cell in sql("SELECT device, k, ts, cell FROM pending")
    }
    live: dict[int, Pos] = {
        d: (ts, cell) for d, ts, cell in sql("SELECT device, ts, cell FROM live")
    }

    def tables_match() -> None:
        got = sorted(sql("SELECT device, k, ts, cell FROM pending"))
        assert got == sorted((d, k, *v) for (d, k), v in pending.items())
        assert sorted(sql("SELECT device, ts, cell FROM live")) == sorted(
            (d, *v) for d, v in live.items()
        )
        counts_match()

    def counts_match(want: dict[int, int] | None = None) -> None:
        """``live_counts()`` and ``live_cells`` (no cell kept at zero) are a plain count of the
        model's live rows, which is ``want`` where the test spells it out."""
        plain = Counter(cell for _, cell in live.values())
        if want is not None:
            assert plain == want
        cells, n = store.live_counts()
        assert cells.dtype == np.uint64 and n.dtype == np.int64
        assert list(zip(cells.tolist(), n.tolist(), strict=True)) == sorted(plain.items())
        assert sorted(sql("SELECT cell, devices FROM live_cells")) == sorted(plain.items())

    def add(rows: list[tuple[int, int, int, int]]) -> None:
        with store.transaction():
            store.add_pending(_pending_frame(rows))
        for d, k, ts, cell in rows:
            pending[(d, k)] = max(pending.get((d, k), (ts, cell)), (ts, cell))
        tables_match()

    def fold(below: int, want: dict[int, int] | None = None) -> None:
        with store.transaction():
            n = store.fold_pending(below)
        moved = [key for key in pending if key[1] < below]
        assert n == len(moved)
        for d, k in moved:
            pos = pending.pop((d, k))
            live[d] = max(live.get(d, pos), pos)
        tables_match()
        counts_match(want)

    def expire(min_ts: int, want: dict[int, int] | None = None) -> None:
        with store.transaction():
            n = store.expire_live(min_ts)
        gone = [d for d, (ts, _) in live.items() if ts < min_ts]
        assert n == len(gone)
        for d in gone:
            del live[d]
        tables_match()
        counts_match(want)

    counts_match()
    add(_random_pings(rng, devices, range(100, 104), 400))
    add(_random_pings(rng, devices, range(101, 105), 400))  # overlaps stored (device, k)
    add([])
    fold(102)
    # Pings of ticks already folded (late) and of older times than live: they merge by max.
    add(_random_pings(rng, devices, range(99, 106), 400))
    fold(104)
    assert live and pending
    fold(104)  # nothing left below: a no-op
    expire(103 * 60 + 1)
    fold(106)
    expire(104 * 60)
    expire(10**9)
    assert not live and not pending

    # Spelled out: devices enter, move, tie and expire; cells empty and leave the counter.
    a, b, c = CELL0 + 10, CELL0 + 11, BIG_CELL  # a < b < c
    d1, d2, d3, d4 = -(2**63), 2**63 - 1, 0, 4
    add([(d1, 200, 12_000, a), (d2, 200, 12_000, a), (d3, 200, 12_001, b)])
    fold(201, {a: 2, b: 1})
    add(
        [
            (d1, 201, 12_060, b),  # d1 moves a -> b ...
            (d1, 200, 12_010, c),  # ... its late ping of a folded tick is older: two ticks fold
            (d2, 200, 12_000, c),  # same ts as its live row, larger cell: moves a -> c
            (d3, 200, 12_001, a),  # same ts, smaller cell: stays in b
            (d4, 201, 12_070, a),  # a new device, a tie within one tick: b
            (d4, 201, 12_070, b),
            (d4, 202, 12_130, a),  # not folded yet
        ]
    )
    fold(202, {b: 3, c: 1})  # a emptied: gone from the counter
    expire(12_002, {b: 2})  # d2, d3 expire; d1 moved away from its expired position, stays
    fold(203, {a: 1, b: 1})  # one tick: d4 moves b -> a
    add([(d4, 201, 12_065, c)])  # late and older than d4's live row: one tick, no move
    fold(203, {a: 1, b: 1})
    expire(12_120, {a: 1})  # d1's bucket expires whole
    add([(d1, 203, 12_180, b), (d3, 203, 12_181, b)])  # back into the emptied cell
    fold(204, {a: 1, b: 2})
    expire(10**9, {})
    assert not sql("SELECT * FROM live_cells")


# Release state as a schema-3 store holds it (before live_cells): devices the contract above
# moves too, on cells it uses, in ticks around its own.
V3_LIVE = [
    (-(2**63), 100 * 60 + 1, CELL0),
    (2**63 - 1, 101 * 60, BIG_CELL),
    (0, 99 * 60 + 5, CELL0),
    (7, 102 * 60, CELL0 + 1),
    (8, 102 * 60 + 2, CELL0 + 1),
]
V3_PENDING = [(0, 104, 104 * 60 + 2, BIG_CELL), (9, 101, 101 * 60, CELL0)]  # (device, k, ts, cell)


def check_releases(store: Store) -> None:
    """Releases are written once, read back, listed in order, deleted by age; writing one moves
    the change token."""
    window = Window(T0, T0 + 300)

    def blob(people: float) -> bytes:
        cells = np.array([CELL0, BIG_CELL], dtype=np.uint64).view(np.int64)
        return arrays_to_blob(np.array([10, 10]), cells, np.array([people, 2 * people]))

    assert store.release_rows().shape == (0, 2)
    assert store.read_release(T0, window) is None
    token = store.change_token()
    with store.transaction():
        store.write_release(T0 + 120, blob(11.0), 33)
    assert store.change_token() != token
    with store.transaction():
        store.write_release(T0 + 60, blob(10.0), 30)
        store.write_release(T0 + 180, blob(12.0), 36)
        store.write_release(T0 + 120, blob(99.0), 99)  # immutable: the first one stays
    rows = store.release_rows()
    assert rows.dtype == np.int64
    assert rows.tolist() == [[T0 + 60, 30], [T0 + 120, 33], [T0 + 180, 36]]
    pub = store.read_release(T0 + 120, window)
    assert pub is not None and pub.window == window
    assert pub.frame.rows() == [(10, CELL0, 11.0), (10, BIG_CELL, 22.0)]
    assert pub.frame.schema == {"res": pl.Int8, "cell": pl.UInt64, "people": pl.Float64}
    with store.transaction():
        store.delete_releases_before(T0 + 180)
    assert store.release_rows().tolist() == [[T0 + 180, 36]]
    assert store.read_release(T0 + 60, window) is None


def _sqlite_sql(path: str) -> Callable[[str], list[tuple]]:
    def run(query: str) -> list[tuple]:
        con = sqlite3.connect(path)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    return run


def test_release_state_follows_the_rules(make_settings) -> None:
    s = make_settings()
    store = SQLiteStore(s)
    check_release_state(store, _sqlite_sql(s.db))
    store.close()


def test_releases_are_kept_once_and_listed(make_settings) -> None:
    store = SQLiteStore(make_settings())
    check_releases(store)
    store.close()


def _varint(v: int) -> bytes:
    """SQLite's varint of an integer (how record keys of a rowid table are written)."""
    u = v & (2**64 - 1)
    if u >= 1 << 56:
        head = [((u >> (8 + 7 * i)) & 0x7F) | 0x80 for i in reversed(range(8))]
        return bytes(head) + bytes([u & 0xFF])
    out = [u & 0x7F]
    u >>= 7
    while u:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    return bytes(reversed(out))


def test_store_files_hold_no_hash_of_an_expired_device(make_settings) -> None:
    """Folded and expired devices' hashes leave the files, the WAL included, while the store is
    open; live devices' hashes stay (positive control)."""
    s = make_settings()
    store = SQLiteStore(s)
    rng = np.random.default_rng(21)
    hashes = rng.integers(2**62, 2**63 - 1, 600).tolist()  # 8 bytes on disk, whatever the form
    gone, kept = hashes[:300], hashes[300:]
    rows = [(d, 100 + i % 3, (100 + i % 3) * 60 + i % 7, CELL0 + i % 5) for i, d in enumerate(gone)]
    rows += [(d, 104, 104 * 60 + 5, CELL0) for d in kept]
    with store.transaction():
        store.add_pending(_pending_frame(rows[:200]))
        assert store.fold_pending(101) > 0
    store.after_commit(False)
    with store.transaction():
        store.add_pending(_pending_frame(rows[200:]))
    store.after_commit(False)

    def patterns(ds: list[int]) -> list[bytes]:
        return [
            form
            for d in ds
            for form in (d.to_bytes(8, "big", signed=True), d.to_bytes(8, "little", signed=True))
        ] + [_varint(d) for d in ds]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in Path(s.db).parent.glob("heatmap.db*"))

    before = on_disk()
    assert all(d.to_bytes(8, "big", signed=True) in before for d in hashes)  # the probe sees them
    with store.transaction():  # the second half of `gone` is folded and expired in one unit
        store.fold_pending(105)
        assert store.expire_live(104 * 60) == len(gone)
    store.after_commit(False)
    for when in ("open", "closed"):
        blobs = on_disk()
        assert not [h for h in patterns(gone) if h in blobs], f"expired hash on disk ({when})"
        assert all(d.to_bytes(8, "big", signed=True) in blobs for d in kept)
        store.close()


def fill_old_store(store: Store) -> Callable[[Store], tuple]:
    """Write one closed and one open window with the primitives a 0.3 store had; return a
    reader of what they hold (to compare across the migration)."""
    from heatmap.store.codec import ClosedWindow

    w0, w1 = T0 // 300, T0 // 300 + 1
    cells = np.array([CELL0, BIG_CELL], dtype=np.uint64).view(np.int64)
    closed = ClosedWindow(
        w0,
        arrays_to_blob(cells, np.array([4, 7])),
        arrays_to_blob(np.array([10, 10]), cells, np.array([4.0, 7.0])),
        11,
    )
    state = pl.DataFrame(
        {
            "w": [w1] * 3,
            "device": [-(2**63), 5, 2**63 - 1],
            "ts": [T0 + 301, T0 + 302, T0 + 303],
            "cell": pl.Series([CELL0, BIG_CELL, BIG_CELL], dtype=pl.UInt64),
        }
    )
    with store.transaction():
        store.write_closed([closed])
        store.touch_windows([(w0, T0, T0 + 300)], closed=True)
        store.upsert_state(state)
        store.touch_windows([(w1, T0 + 300, T0 + 600)], closed=False)
        store.set_meta("watermark", str(T0 + 310))

    def read(st: Store) -> tuple:
        pub = st.read_published(w0)
        assert pub is not None
        return (
            st.windows(),
            st.watermark(),
            pub.frame.rows(),
            [a.tolist() for a in st.read_base_counts([w0])[w0]],
            [a.tolist() for a in st.read_open_counts(w1)],
            st.load_state([w1]).sort("device").rows(),
        )

    return read


def test_a_v2_store_migrates_to_release_state(make_settings, monkeypatch) -> None:
    """A store made by 0.3 (schema 2: no release tables, meta schema_version 1) opens with its
    windows intact and gains the release state."""
    import heatmap.store.sqlite as lite

    s = make_settings()
    with monkeypatch.context() as m:
        m.setattr(lite, "MIGRATIONS", {v: lite.MIGRATIONS[v] for v in (1, 2)})
        m.setattr(lite, "SCHEMA_VERSION", 1)  # what 0.3 wrote
        old = SQLiteStore(s)
        read = fill_old_store(old)
        before = read(old)
        old.close()
    sql = _sqlite_sql(s.db)
    assert sql("PRAGMA user_version") == [(2,)]
    assert not sql("SELECT name FROM sqlite_master WHERE name IN ('pending', 'live', 'releases')")
    store = SQLiteStore(s)
    assert sql("PRAGMA user_version") == [(4,)]
    assert {"pending", "live", "releases", "live_ts", "live_cells"} <= {
        r[0] for r in sql("SELECT name FROM sqlite_master")
    }
    assert store.get_meta("schema_version") == "4" and store.get_meta("window_s") == "300"
    assert read(store) == before
    check_release_state(store, sql)
    check_releases(store)
    store.close()


def test_a_v3_store_with_live_rows_gains_the_cell_counter(make_settings, monkeypatch) -> None:
    """A schema-3 store (release state, no live_cells) with live and pending rows migrates: the
    counter starts as a plain count of its live rows and follows the contract from there."""
    import heatmap.store.sqlite as lite

    s = make_settings()
    with monkeypatch.context() as m:
        m.setattr(lite, "MIGRATIONS", {v: lite.MIGRATIONS[v] for v in (1, 2, 3)})
        m.setattr(lite, "SCHEMA_VERSION", 3)
        SQLiteStore(s).close()
    con = sqlite3.connect(s.db)
    with con:
        assert con.execute("PRAGMA user_version").fetchone() == (3,)
        con.executemany("INSERT INTO live(device, ts, cell) VALUES (?, ?, ?)", V3_LIVE)
        con.executemany("INSERT INTO pending(device, k, ts, cell) VALUES (?, ?, ?, ?)", V3_PENDING)
    con.close()
    store = SQLiteStore(s)
    sql = _sqlite_sql(s.db)
    assert sql("PRAGMA user_version") == [(4,)] and store.get_meta("schema_version") == "4"
    assert sorted(sql("SELECT cell, devices FROM live_cells")) == [
        (CELL0, 2),
        (CELL0 + 1, 2),
        (BIG_CELL, 1),
    ]
    check_release_state(store, sql)
    store.close()


def test_every_backend_migrates_to_the_same_schema_version() -> None:
    import heatmap.store.postgres as pg
    import heatmap.store.sqlite as lite
    from heatmap.store.base import SCHEMA_VERSION

    assert max(lite.MIGRATIONS) == max(pg.MIGRATIONS) == SCHEMA_VERSION


def test_a_newer_store_is_refused(make_settings) -> None:
    s = make_settings()
    SQLiteStore(s).close()
    con = sqlite3.connect(s.db)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreUnavailable, match="newer than this heatmap"):
        SQLiteStore(s)
