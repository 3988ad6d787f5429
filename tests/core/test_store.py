"""Store semantics: units, watermark, late rows, closing, durability and what stays on disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.errors import StoreUnavailable
from heatmap.ingest import ParseOptions
from heatmap.read import Reader
from heatmap.service import Heatmap

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
