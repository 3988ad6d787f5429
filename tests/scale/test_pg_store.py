"""The PostgreSQL store on a real server: migrations, the store contract, concurrency, COPY.

The same unit semantics as the SQLite store (A then B == A and B together, late rows, windows
close and lose their device state, idempotent batch ids), checked against the SQLite store on the
same input, plus what only a shared store needs: commits from several connections serialise.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest

from heatmap.errors import StoreUnavailable
from heatmap.service import Heatmap
from heatmap.store.postgres import (
    NOTIFY_CHANNEL,
    PostgresStore,
    copy_to_int64_columns,
    int64_columns_to_copy,
)

# The same data and helpers as the SQLite store's contract tests: results must match.
from tests.core.test_store import (  # noqa: E402
    BIG_CELL,
    CELL0,
    OPTS,
    SLOT,
    T0,
    V3_LIVE,
    V3_PENDING,
    _logged,
    _pings,
    _published,
    _write,
    check_ping_log,
    check_releases,
    fill_old_store,
)

pytestmark = pytest.mark.postgres


def _sql(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_migrations_run_once_and_record_their_version(pg_url: str, make_settings) -> None:
    Heatmap(make_settings(db=pg_url)).close()
    Heatmap(make_settings(db=pg_url)).close()  # a second node: nothing to do
    versions = _sql(pg_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert versions == [(1,), (2,), (3,), (4,), (5,), (6,), (7,)]
    meta = dict(_sql(pg_url, "SELECT key, value FROM meta"))
    assert meta["schema_version"] == "7" and meta["window_s"] == "300"
    tables = {
        r[0] for r in _sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables >= {"meta", "windows", "base_counts", "published", "batches", "releases"}
    assert tables >= {"ping_log", "rollups"}
    assert not tables & {"device_state", "pending", "live", "live_cells"}


def test_a_newer_schema_is_refused(pg_url: str, make_settings) -> None:
    Heatmap(make_settings(db=pg_url)).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations(version) VALUES (99)")
    with pytest.raises(StoreUnavailable, match="newer than this heatmap"):
        PostgresStore(make_settings(db=pg_url))


def test_window_length_is_fixed_per_store(pg_url: str, make_settings) -> None:
    Heatmap(make_settings(db=pg_url, window_s=300)).close()
    with pytest.raises(StoreUnavailable, match="window_s=300"):
        Heatmap(make_settings(db=pg_url, window_s=600))


def test_a_shared_store_needs_the_shared_secret(pg_url: str, make_settings) -> None:
    with pytest.raises(StoreUnavailable, match="HEATMAP_SECRET"):
        PostgresStore(make_settings(db=pg_url, secret=None))


def test_unreachable_server_is_a_one_line_store_error(make_settings) -> None:
    url = "postgresql://postgres@127.0.0.1:9/nothing"  # port 9 (discard): nobody listens
    with pytest.raises(StoreUnavailable, match="cannot open the store"):
        PostgresStore(make_settings(db=url))


def test_a_then_b_equals_a_and_b_together_and_sqlite(
    pg_url: str, pg_server, make_settings, tmp_path: Path
) -> None:
    a = _pings(40, T0, T0 + 900, seed=1)
    b = _pings(40, T0 + 600, T0 + 1500, seed=2)  # overlaps A's last open window
    pa_, pb = _write(a, tmp_path / "a.csv"), _write(b, tmp_path / "b.csv")
    both = _write(pl.concat([a, b]), tmp_path / "ab.csv")
    kw = {"k_min": 3, "allowed_lateness_s": 400}
    one = Heatmap(make_settings(db=pg_url, **kw))
    two = Heatmap(make_settings(db=pg_server.create_database(), **kw))
    lite = Heatmap(make_settings(db=str(tmp_path / "lite" / "h.db"), **kw))
    r1, r2 = one.ingest_paths([pa_], OPTS), one.ingest_paths([pb], OPTS)
    r3 = two.ingest_paths([both], OPTS)
    lite.ingest_paths([pa_], OPTS)
    lite.ingest_paths([pb], OPTS)
    assert r1.late == r2.late == r3.late == 0
    assert r1.accepted + r2.accepted == r3.accepted == a.height + b.height
    got = _published(one)
    assert got == _published(two) == _published(lite)
    assert any(closed for *_, closed in got.values()) and any(not c for *_, c in got.values())
    for hm in (one, two, lite):
        hm.close()


def test_late_rows_of_a_closed_window_are_rejected(pg_url: str, make_settings, tmp_path) -> None:
    hm = Heatmap(make_settings(db=pg_url, k_min=2, allowed_lateness_s=0))
    hm.ingest_paths([_write(_pings(10, T0, T0 + 1200, seed=3), tmp_path / "a.csv")], OPTS)
    assert [w.w for w in hm.store.windows() if w.closed]
    late = _pings(5, T0, T0 + 100, seed=4)
    report = hm.ingest_paths([_write(late, tmp_path / "late.csv")], OPTS)
    assert report.late == late.height and report.accepted == 0
    hm.close()


def test_closed_windows_leave_the_log_once_no_release_needs_them(
    pg_url: str, make_settings, tmp_path
) -> None:
    hm = Heatmap(make_settings(db=pg_url, k_min=2, allowed_lateness_s=60))
    hm.ingest_paths([_write(_pings(15, T0, T0 + 299, seed=6), tmp_path / "a.csv")], OPTS)
    first = T0 // 300
    assert _logged(hm.store)["device"].n_unique() == 15
    assert hm.store.windows()[0].devices == 15 and not hm.store.windows()[0].closed
    hm.ingest_paths([_write(_pings(15, T0 + 900, T0 + 1200, seed=7), tmp_path / "b.csv")], OPTS)
    assert _logged(hm.store).filter(pl.col("ts") < T0 + 300).height == 0
    info = next(w for w in hm.store.windows() if w.w == first)
    assert info.closed and info.devices == 15
    assert hm.store.read_base_counts([first])[first][1].sum() == 15
    hm.close()


def test_no_table_file_holds_a_hash_of_a_closed_window(
    pg_url: str, pg_server, make_settings, tmp_path
) -> None:
    from heatmap.privacy import DeviceHasher

    hm = Heatmap(make_settings(db=pg_url, k_min=2, allowed_lateness_s=0))
    first = _pings(12, T0, T0 + 299, seed=8)
    hm.ingest_paths([_write(first, tmp_path / "a.csv")], OPTS)
    hasher = DeviceHasher(hm.key)
    hashes = {hasher.hash_one(d).to_bytes(8, "little", signed=True) for d in first["device_id"]}
    # The probe sees them (but for one split across two TOAST chunks of the log's blobs).
    assert _found(hashes, _database_files(pg_server, pg_url)) >= len(hashes) - 1
    later = _pings(3, T0 + 900, T0 + 1000, seed=9).with_columns(device_id=pl.lit("other"))
    hm.ingest_paths([_write(later, tmp_path / "b.csv")], OPTS)  # closes the first window
    files = _database_files(pg_server, pg_url)
    assert not any(h in files for h in hashes)
    assert not any(d.encode() in files for d in first["device_id"].unique())
    hm.close()


def _found(hashes, files: bytes) -> int:
    """How many of the 8-byte patterns occur in the files."""
    return sum(h in files for h in hashes)


def _database_files(server, url: str) -> bytes:
    """Every table and index file of the database, after a checkpoint (WAL not included)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        folder = server.data / "base" / str(oid.fetchone()[0])  # type: ignore[index]
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def test_duplicate_batch_id_is_counted_once_across_nodes(pg_url: str, make_settings) -> None:
    s = make_settings(db=pg_url, k_min=2)
    node1, node2 = Heatmap(s), Heatmap(s)
    frame = _pings(5, T0, T0 + 200, seed=10).with_columns(pl.col("ts").cast(pl.String))
    one = node1.ingest_frame(frame, OPTS, batch_id="b-1")
    two = node2.ingest_frame(frame, OPTS, batch_id="b-1")
    assert two.duplicate and not one.duplicate and one.accepted == two.accepted
    assert node1.store.windows()[-1].devices == node2.store.windows()[-1].devices == 5
    node1.close()
    node2.close()


def test_concurrent_commits_from_many_connections_serialise(
    pg_url: str, make_settings, tmp_path: Path
) -> None:
    # Lateness covers the whole stream, so the arrival order cannot change the result.
    kw = {"k_min": 2, "allowed_lateness_s": 7200}
    stream = _pings(60, T0, T0 + 1800, seed=11, step=20).sample(fraction=1.0, seed=1, shuffle=True)
    batches = [stream[i::12].with_columns(pl.col("ts").cast(pl.String)) for i in range(12)]
    nodes = [Heatmap(make_settings(db=pg_url, **kw)) for _ in range(3)]
    errors: list[BaseException] = []

    def send(node: Heatmap, mine: list[int]) -> None:
        try:
            for i in mine:
                node.ingest_frame(batches[i], OPTS, batch_id=f"batch-{i}")
                node.ingest_frame(batches[i], OPTS, batch_id=f"batch-{i}")  # a retry
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(nodes[k % 3], list(range(k, 12, 4)))) for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    flush = _pings(1, T0 + 20_000, T0 + 20_050, seed=12).with_columns(pl.col("ts").cast(pl.String))
    nodes[0].ingest_frame(flush, OPTS, batch_id="flush")
    single = Heatmap(make_settings(db=str(tmp_path / "single" / "h.db"), **kw))
    for i, batch in enumerate(batches):
        single.ingest_frame(batch, OPTS, batch_id=f"batch-{i}")
    single.ingest_frame(flush, OPTS, batch_id="flush")
    assert _published(nodes[1]) == _published(single)
    assert _sql(pg_url, "SELECT count(*) FROM batches") == [(13,)]
    for hm in (*nodes, single):
        hm.close()


def test_binary_copy_round_trip() -> None:
    rng = np.random.default_rng(0)
    cols = [rng.integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64) for _ in range(3)]
    data = int64_columns_to_copy(cols)
    back = copy_to_int64_columns(data, 3)
    for a, b in zip(cols, back, strict=True):
        assert np.array_equal(a, b)
    assert [len(c) for c in copy_to_int64_columns(int64_columns_to_copy([[], []]), 2)] == [0, 0]


def test_commits_notify_listeners_and_move_the_change_token(pg_url: str, make_settings) -> None:
    hm = Heatmap(make_settings(db=pg_url, k_min=2))
    other = PostgresStore(make_settings(db=pg_url))  # another node's view
    before = other.change_token()
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        hm.ingest_frame(_pings(3, T0, T0 + 100, seed=13), OPTS)
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == [NOTIFY_CHANNEL]
    assert other.change_token() > before
    assert [w.version for w in other.windows()] == [1]
    hm.close()
    other.close()


def test_the_change_token_moves_only_when_the_commit_is_visible(pg_url: str, make_settings) -> None:
    """A node polling mid-commit must not see a new token with the old windows: it would cache
    them under that token and never reload (what a sequence-based token allowed)."""
    writer = PostgresStore(make_settings(db=pg_url))
    other = PostgresStore(make_settings(db=pg_url))
    before = other.change_token()
    with writer.transaction():
        writer.touch_windows([(T0 // 300, T0, T0 + 300)], closed=False)
        assert other.change_token() == before  # in flight: nothing visible yet
        assert other.windows() == []
    assert other.change_token() != before
    assert [w.w for w in other.windows()] == [T0 // 300]
    writer.close()
    other.close()


def test_the_ping_log_follows_the_contract(pg_url: str, make_settings) -> None:
    store = PostgresStore(make_settings(db=pg_url))
    check_ping_log(store, lambda query: _sql(pg_url, query))
    store.close()


def test_releases_are_kept_once_listed_and_announced(pg_url: str, make_settings) -> None:
    store = PostgresStore(make_settings(db=pg_url))
    check_releases(store)
    other = PostgresStore(make_settings(db=pg_url))  # another node's view
    before = other.change_token()
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        with store.transaction():
            store.write_release(T0 + 600, b"", 0)
            assert other.change_token() == before  # in flight: nothing visible yet
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == [NOTIFY_CHANNEL]
    assert other.change_token() > before
    assert other.release_rows()[-1].tolist() == [T0 + 600, 0]
    store.close()
    other.close()


def _pg_state_rows(url: str) -> object:
    def write(frame: pl.DataFrame) -> None:
        with psycopg.connect(url) as conn:
            for w in frame["w"].unique().to_list():
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS device_state_{w} PARTITION OF device_state "
                    f"FOR VALUES IN ({w})"
                )
            rows = frame.select("w", "device", "ts", pl.col("cell").cast(pl.Int64)).rows()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO device_state (w, device, ts, cell) VALUES (%s, %s, %s, %s)", rows
                )

    return write


def test_a_v1_store_moves_its_device_state_into_the_log(
    pg_url: str, make_settings, monkeypatch
) -> None:
    """A store made by 0.3 (schema_migrations 1 only) opens with its windows intact; the open
    window's device rows become log entries, counted as before; versions 2 to 6 are recorded."""
    import heatmap.store.postgres as pg

    s = make_settings(db=pg_url)
    with monkeypatch.context() as m:
        m.setattr(pg, "MIGRATIONS", {1: pg.MIGRATIONS[1]})
        old = PostgresStore(s)
        read, rows = fill_old_store(old, _pg_state_rows(pg_url))  # type: ignore[arg-type]
        before = read(old)
        old.close()
    assert _sql(pg_url, "SELECT version FROM schema_migrations") == [(1,)]
    store = PostgresStore(s)
    versions = _sql(pg_url, "SELECT version FROM schema_migrations ORDER BY 1")
    assert versions == [(1,), (2,), (3,), (4,), (5,), (6,), (7,)]
    assert store.get_meta("schema_version") == "7"
    assert not _sql(pg_url, "SELECT 1 FROM pg_tables WHERE tablename LIKE 'device_state%'")
    assert read(store) == before
    logged = _logged(store).sort("device")
    assert logged.rows() == rows.select("device", "ts", "cell").sort("device").rows()
    assert [a.tolist() for a in store.read_open_counts(T0 // 300 + 1)] == [
        [CELL0, BIG_CELL],
        [1, 2],
    ]
    check_ping_log(store, lambda query: _sql(pg_url, query))
    check_releases(store)
    store.close()


def test_a_v4_store_moves_its_release_state_into_the_log(
    pg_url: str, make_settings, monkeypatch
) -> None:
    """A schema-4 store with live rows in their ts buckets and pending rows migrates: every row
    becomes a logged ping and the row tables go, partitions and all."""
    import heatmap.store.postgres as pg

    s = make_settings(db=pg_url)
    with monkeypatch.context() as m:
        m.setattr(pg, "MIGRATIONS", {v: pg.MIGRATIONS[v] for v in (1, 2, 3, 4)})
        PostgresStore(s).close()
    with psycopg.connect(pg_url) as conn:  # one transaction, as a schema-4 store wrote them
        for lo in sorted({ts // 60 * 60 for _, ts, _ in V3_LIVE}):
            conn.execute(
                f"CREATE TABLE live_{lo} PARTITION OF live FOR VALUES FROM ({lo}) TO ({lo + 60})"
            )
        for k in sorted({k for _, k, _, _ in V3_PENDING}):
            conn.execute(f"CREATE TABLE pending_{k} PARTITION OF pending FOR VALUES IN ({k})")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO live (device, ts, cell) VALUES (%s, %s, %s)", V3_LIVE)
            cur.executemany(
                "INSERT INTO pending (device, k, ts, cell) VALUES (%s, %s, %s, %s)", V3_PENDING
            )
    store = PostgresStore(s)
    assert _sql(pg_url, "SELECT max(version) FROM schema_migrations") == [(7,)]
    want = sorted([*V3_LIVE, *[(d, ts, c) for d, _, ts, c in V3_PENDING]])
    assert sorted(_logged(store).rows()) == want
    left = _sql(pg_url, "SELECT tablename FROM pg_tables WHERE tablename ~ '^(live|pending)'")
    assert left == []
    check_ping_log(store, lambda query: _sql(pg_url, query))
    store.close()


def test_no_table_file_holds_a_hash_of_a_trimmed_entry(
    pg_url: str, pg_server, make_settings
) -> None:
    """Trimming drops the log's partitions of slots no longer needed, so their hashes leave the
    table files; entries of later slots keep theirs (positive control)."""
    from heatmap.store.codec import ping_entries

    store = PostgresStore(make_settings(db=pg_url))
    rng = np.random.default_rng(22)
    hashes = np.array(rng.integers(2**62, 2**63 - 1, 600), dtype=np.int64)
    base = 28_000_000
    ts = np.array([base * SLOT + i % 50 for i in range(300)] + [(base + 3) * SLOT + 1] * 300)
    cell = np.full(600, CELL0, dtype=np.uint64)
    with store.transaction():
        store.append_log(ping_entries(hashes, ts, cell, SLOT))
    before = _database_files(pg_server, pg_url)
    little = [int(d).to_bytes(8, "little", signed=True) for d in hashes]
    # The probe sees them, but for the few split across two TOAST chunks (~2 KB each).
    assert _found(little, before) >= 0.95 * len(little)
    with store.transaction():
        assert store.trim_log((base + 1) * SLOT) == 1
    files = _database_files(pg_server, pg_url)
    assert _found(little[:300], files) == 0
    assert _found(little[300:], files) >= 0.95 * 300
    store.close()
