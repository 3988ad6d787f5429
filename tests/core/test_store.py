"""Store semantics: units, watermark, late rows, closing, durability and what stays on disk."""

from __future__ import annotations

import sqlite3
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


def _logged(store: Store) -> pl.DataFrame:
    """Every ping the store's log holds (device, ts, cell)."""
    parts = [pl.DataFrame({"device": d, "ts": t, "cell": c}) for _, (d, t, c) in store.read_log(0)]
    return pl.concat(parts) if parts else pl.DataFrame({"device": [], "ts": [], "cell": []})


def test_closed_windows_leave_the_log_once_no_release_needs_them(make_settings, tmp_path) -> None:
    s = make_settings(k_min=2, allowed_lateness_s=60)
    hm = Heatmap(s)
    hm.ingest_paths([_write(_pings(15, T0, T0 + 299, seed=6), tmp_path / "a.csv")], OPTS)
    assert _logged(hm.store)["device"].n_unique() == 15
    hm.ingest_paths([_write(_pings(15, T0 + 900, T0 + 1200, seed=7), tmp_path / "b.csv")], OPTS)
    first = T0 // 300
    assert [w.closed for w in hm.store.windows() if w.w == first] == [True]
    # The release at the newest tick looks back one horizon (300 s): nothing of the first window.
    assert _logged(hm.store).filter(pl.col("ts") < T0 + 300).height == 0
    assert _logged(hm.store)["device"].n_unique() == 15  # positive control: b's devices are kept


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
    # Positive control: open, on disk (in one byte order; a few may straddle two pages).
    assert sum(h in before for h in hashes) >= 0.8 * len(hashes) // 2
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


# -- the ping log: one contract, checked on both backends (tests/scale/test_pg_store.py) -------
CELL0 = 0x8A2A1072B407FFF  # a res-10 cell around Shanghai
BIG_CELL = 0x8AFFFFFFFFFFFFF  # bit 63 clear, like every H3 index
SLOT = 60


def _entry_rows(rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, ...]:
    """``n`` pings of slot ``k``: extreme and random device hashes, two cells."""
    dev = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    dev[:2] = [-(2**63), 2**63 - 1]
    ts = k * SLOT + rng.integers(0, SLOT, n)
    cell = np.where(rng.random(n) < 0.5, CELL0, BIG_CELL).astype(np.uint64)
    return dev, ts, cell


def check_ping_log(store: Store, sql: Callable[[str], list[tuple]]) -> None:
    """Entries go in and come back in order, bit for bit, numbered upwards across trims (never
    reused); trimming deletes exactly the slots wholly before the bound, whole entries only;
    ``sql`` reads the store's table directly (the same SQL on both backends)."""
    from heatmap.store.codec import ping_entries

    rng = np.random.default_rng(13)
    base = 28_000_000  # slot number of a time in 2023
    have = {seq for seq, _ in store.read_log(0)}
    start = max(have, default=0)
    written: dict[int, tuple[np.ndarray, ...]] = {}
    for ks in ([base, base + 1], [base + 2], [base + 1, base + 3, base + 4]):
        rows = [_entry_rows(rng, k, 50) for k in ks]
        dev, ts, cell = (np.concatenate([r[i] for r in rows]) for i in range(3))
        entries = ping_entries(dev, ts, cell, SLOT)
        assert len(entries) == len(set(ks))
        with store.transaction():
            last = store.append_log(entries)
        for i, (lo, hi, _) in enumerate(entries):
            assert lo // SLOT == hi // SLOT  # an entry never spans slots
            written[last - len(entries) + 1 + i] = (lo, hi)
    got = list(store.read_log(start))
    assert [seq for seq, _ in got] == sorted(written)  # numbered in commit order, none lost
    assert sorted(written) == list(range(start + 1, start + 1 + len(written)))
    mid = sorted(written)[3]
    assert [seq for seq, _ in store.read_log(mid)] == [q for q in sorted(written) if q > mid]
    ts_all = np.concatenate([t for _, (_, t, _) in got])
    assert ts_all.min() >= base * SLOT and ts_all.max() < (base + 5) * SLOT
    for _, (dev, ts, cell) in got:
        assert dev.dtype == np.int64 and ts.dtype == np.int64 and cell.dtype == np.uint64
        assert set(cell.tolist()) <= {CELL0, BIG_CELL}
    bound = (base + 2) * SLOT  # slots base and base + 1 go (three entries), and older ones
    older = sum(1 for _, (_, t, _) in store.read_log(0) if t.max() < bound)
    assert older >= 3
    with store.transaction():
        assert store.trim_log(bound) == older
    left = sorted(int(t.min()) // SLOT for q, (_, t, _) in store.read_log(0) if q in written)
    assert left == [base + 2, base + 3, base + 4]
    assert sql(f"SELECT count(*) FROM ping_log WHERE hi_ts < {bound}") == [(0,)]
    with store.transaction():
        nxt = store.append_log(ping_entries(*_entry_rows(rng, base + 1, 5), SLOT))
    assert nxt == max(written) + 1  # never a number used before, even after a trim
    with store.transaction():
        store.trim_log(2**62)
    assert list(store.read_log(0)) == []


# Release state as a schema 3-4 store holds it: rows of live (device, ts, cell) and pending.
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


def test_the_ping_log_follows_the_contract(make_settings) -> None:
    s = make_settings()
    store = SQLiteStore(s)
    check_ping_log(store, _sqlite_sql(s.db))
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


def test_store_files_hold_no_hash_of_a_trimmed_entry(make_settings) -> None:
    """Trimmed entries' hashes leave the files, the WAL included, while the store is open;
    kept entries' hashes stay (positive control: the probe finds them in the blobs)."""
    from heatmap.store.codec import ping_entries

    s = make_settings()
    store = SQLiteStore(s)
    rng = np.random.default_rng(21)
    hashes = rng.integers(2**62, 2**63 - 1, 600).tolist()
    gone, kept = hashes[:300], hashes[300:]
    base = 28_000_000
    ts = np.array([base * SLOT + i % 50 for i in range(300)] + [(base + 3) * SLOT] * 300)
    cell = np.full(600, CELL0, dtype=np.uint64)
    with store.transaction():
        store.append_log(ping_entries(np.array(hashes[:200]), ts[:200], cell[:200], SLOT))
    store.after_commit()
    with store.transaction():
        store.append_log(ping_entries(np.array(hashes[200:]), ts[200:], cell[200:], SLOT))
    store.after_commit()

    def patterns(ds: list[int]) -> list[bytes]:
        return [
            form
            for d in ds
            for form in (d.to_bytes(8, "big", signed=True), d.to_bytes(8, "little", signed=True))
        ]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in Path(s.db).parent.glob("heatmap.db*"))

    def found(ds: list[int], blobs: bytes) -> int:
        return sum(d.to_bytes(8, "little", signed=True) in blobs for d in ds)

    # The probe sees them, but for the few split across two overflow pages of a blob.
    before = on_disk()
    assert found(hashes, before) >= 0.95 * len(hashes)
    with store.transaction():
        assert store.trim_log((base + 1) * SLOT) == 2
    store.after_commit()
    for when in ("open", "closed"):
        blobs = on_disk()
        assert not [h for h in patterns(gone) if h in blobs], f"trimmed hash on disk ({when})"
        assert found(kept, blobs) >= 0.95 * len(kept)
        store.close()


def fill_old_store(
    store: Store, write_state: Callable[[pl.DataFrame], None]
) -> tuple[Callable[[Store], tuple], pl.DataFrame]:
    """Write one closed and one open window as a 0.3 store had them (``write_state`` puts the
    open window's device rows into its table); return a reader of what they hold (to compare
    across the migration) and those rows."""
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
    write_state(state)
    with store.transaction():
        store.write_closed([closed])
        store.touch_windows([(w0, T0, T0 + 300)], closed=True)
        store.touch_windows([(w1, T0 + 300, T0 + 600)], closed=False)
        store.set_meta("watermark", str(T0 + 310))

    def read(st: Store) -> tuple:
        pub = st.read_published(w0)
        assert pub is not None
        return (
            [(i.w, i.window, i.closed) for i in st.windows()],
            st.watermark(),
            pub.frame.rows(),
            [a.tolist() for a in st.read_base_counts([w0])[w0]],
        )

    return read, state


def _sqlite_rows(db: str, table: str) -> Callable[[pl.DataFrame], None]:
    def write(frame: pl.DataFrame) -> None:
        con = sqlite3.connect(db)
        with con:
            cols = [c for c in ("w", "k", "device", "ts", "cell") if c in frame.columns]
            rows = frame.select(cols).with_columns(pl.col("cell").cast(pl.Int64)).rows()
            marks = ", ".join("?" * len(cols))
            con.executemany(f"INSERT INTO {table}({', '.join(cols)}) VALUES ({marks})", rows)
        con.close()

    return write


def test_a_v2_store_moves_its_device_state_into_the_log(make_settings, monkeypatch) -> None:
    """A store made by 0.3 (schema 2, meta schema_version 1) opens with its windows intact; the
    open window's device rows become log entries, counted as before, and the row tables go."""
    import heatmap.store.sqlite as lite

    s = make_settings()
    with monkeypatch.context() as m:
        m.setattr(lite, "MIGRATIONS", {v: lite.MIGRATIONS[v] for v in (1, 2)})
        m.setattr(lite, "SCHEMA_VERSION", 1)  # what 0.3 wrote
        old = SQLiteStore(s)
        read, rows = fill_old_store(old, _sqlite_rows(s.db, "device_state"))
        before = read(old)
        old.close()
    sql = _sqlite_sql(s.db)
    assert sql("PRAGMA user_version") == [(2,)]
    store = SQLiteStore(s)
    assert sql("PRAGMA user_version") == [(7,)]
    names = {r[0] for r in sql("SELECT name FROM sqlite_master")}
    assert {"ping_log", "releases"} <= names
    assert not names & {"device_state", "open_counts", "pending", "live", "live_cells"}
    assert store.get_meta("schema_version") == "7" and store.get_meta("window_s") == "300"
    assert read(store) == before
    logged = _logged(store).sort("device")
    assert logged.rows() == rows.select("device", "ts", "cell").sort("device").rows()
    w1 = T0 // 300 + 1
    assert [a.tolist() for a in store.read_open_counts(w1)] == [[CELL0, BIG_CELL], [1, 2]]
    check_ping_log(store, sql)
    check_releases(store)
    store.close()


def test_a_v4_store_moves_its_release_state_into_the_log(make_settings, monkeypatch) -> None:
    """A schema-4 store with live and pending rows migrates: every row becomes a logged ping,
    and the next release counts them as the old tables would have."""
    import heatmap.store.sqlite as lite

    s = make_settings()
    with monkeypatch.context() as m:
        m.setattr(lite, "MIGRATIONS", {v: lite.MIGRATIONS[v] for v in (1, 2, 3, 4)})
        m.setattr(lite, "SCHEMA_VERSION", 4)
        SQLiteStore(s).close()
    con = sqlite3.connect(s.db)
    with con:
        con.executemany("INSERT INTO live(device, ts, cell) VALUES (?, ?, ?)", V3_LIVE)
        con.executemany("INSERT INTO pending(device, k, ts, cell) VALUES (?, ?, ?, ?)", V3_PENDING)
    con.close()
    store = SQLiteStore(s)
    assert _sqlite_sql(s.db)("PRAGMA user_version") == [(7,)]
    want = sorted([*V3_LIVE, *[(d, ts, c) for d, _, ts, c in V3_PENDING]])
    assert sorted(_logged(store).rows()) == want
    check_ping_log(store, _sqlite_sql(s.db))
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
