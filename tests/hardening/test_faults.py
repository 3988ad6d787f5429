"""Faults of a real ``heatmap serve``: kill -9 mid-stream, a full disk, a read-only store,
corrupt or foreign files at ``HEATMAP_DB``.

Acknowledged means durable: after a ``kill -9`` every acknowledged batch is in the store,
exactly once, and resending every batch id after the restart counts nothing twice. A store that
cannot be written answers 503 with the reason and stays sound; one that cannot be used at all
makes ``heatmap serve`` exit with a one-line reason, leaving the file untouched.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hardening_server import (
    AUTH,
    HEATMAP,
    OPS,
    Row,
    Server,
    clean_env,
    fill_store,
    integrity,
    make_batches,
    reference_counts,
    rows_to_csv,
    store_counts,
)

from heatmap.api import create_app
from heatmap.config import Settings
from heatmap.errors import StoreUnavailable

pytestmark = pytest.mark.slow
CSV = {**AUTH, "Content-Type": "text/csv"}
T0 = (int(time.time()) - 4 * 3600) // 300 * 300
UP_WAIT_S = 90


def _post(http: httpx.Client, batch_id: str, rows: list[Row]) -> httpx.Response:
    return http.post(
        "/api/v1/pings", content=rows_to_csv(rows), headers=CSV, params={"batch_id": batch_id}
    )


def _sum_counts(batches: list[tuple[str, list[Row]]]) -> dict[tuple[int, int], int]:
    return reference_counts([r for _bid, rows in batches for r in rows])


# -- kill -9 -------------------------------------------------------------------------------------


def test_kill_9_mid_stream_loses_no_acknowledged_ping_and_counts_none_twice(
    tmp_path: Path, servers: Callable[..., Server]
) -> None:
    batches = make_batches(30, devices=60, t0=T0, seed=7)  # 30 x ~150 rows over 20 minutes
    server = servers()
    acked: dict[str, dict[str, object]] = {}  # batch id -> first 200 answer
    rng = random.Random(3)

    def stream(start: int, stop_event: threading.Event) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for bid, rows in batches[start:]:
                if stop_event.is_set():
                    return
                try:
                    r = _post(http, bid, rows)
                except httpx.TransportError:
                    return  # the server died under this batch: not acknowledged
                assert r.status_code == 200, r.text
                acked.setdefault(bid, r.json())

    for kill_after in (6, 17):  # two crashes, each in the middle of the stream
        server.start()
        # Resend everything from the start: acknowledged ids must come back as duplicates.
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for bid, rows in batches[: len(acked)]:
                again = _post(http, bid, rows)
                assert again.status_code == 200 and again.json()["duplicate"] is True, bid
        done = threading.Event()
        poster = threading.Thread(target=stream, args=(len(acked), done))
        poster.start()
        while len(acked) < kill_after and poster.is_alive():
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next batch
        server.kill()
        done.set()
        poster.join(60)
        assert integrity(server.db) == "ok"
        # Every acknowledged batch is in; the one in flight is either wholly in or absent.
        n = len(acked)
        have = store_counts(server.db)
        assert have in (_sum_counts(batches[:n]), _sum_counts(batches[: n + 1]))

    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for bid, rows in batches:
            r = _post(http, bid, rows)
            assert r.status_code == 200, r.text
            acked.setdefault(bid, r.json())
    server.stop()
    assert integrity(server.db) == "ok"
    assert store_counts(server.db) == _sum_counts(batches)  # each ping counted exactly once
    accepted = sum(int(a["accepted"]) for a in acked.values())  # type: ignore[call-overload]
    assert accepted == sum(len(rows) for _bid, rows in batches)
    assert "Traceback" not in server.log()


# -- full disk -----------------------------------------------------------------------------------


def _file_size_limit(limit: int):  # type: ignore[no-untyped-def]
    """Return a preexec hook: files of the child cannot grow past ``limit`` bytes (EFBIG).

    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the
    process: the same path through SQLite as a full disk, without any mount.
    """

    def hook() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return hook


def test_full_disk_answers_503_with_the_reason_and_keeps_the_store_sound(
    tmp_path: Path, servers: Callable[..., Server]
) -> None:
    db = tmp_path / "store" / "heatmap.db"
    first, second = make_batches(2, devices=3000, t0=T0, seed=8)  # > 64 KiB of pages
    big = (
        "batch-big",
        [(f"big-{i}", T0 + 100 + i % 50, 31.2 + i * 1e-5, 121.4) for i in range(80_000)],
    )

    fill_store(db, [first])  # what an earlier run of the server committed
    before = store_counts(db)

    full = servers(db, preexec=_file_size_limit(64 * 1024), name="full").start()
    with httpx.Client(base_url=full.url, timeout=60) as http:
        stats = http.get("/api/v1/stats").json()
        for batch in (second, big):  # a commit that fails, and one that fails mid-transaction
            r = _post(http, *batch)
            assert r.status_code == 503, r.text
            detail = r.json()["detail"]
            assert str(db) in detail and ("disk" in detail or "full" in detail), detail
        # Reads go on, unchanged; the service still says what it can.
        assert http.get("/api/v1/stats").json() == stats
        assert http.get("/healthz").status_code == 200
        metrics = http.get("/metrics", headers=OPS).text
        assert 'heatmap_ingest_batches_total{outcome="failed"} 2.0' in metrics
    full.stop()
    assert integrity(db) == "ok"
    assert store_counts(db) == before  # nothing half-written
    assert "internal error" not in full.log() and "Traceback" not in full.log()

    # Space is back: the same batch ids are applied (they never were), once.
    again = servers(db, name="again").start()
    with httpx.Client(base_url=again.url, timeout=60) as http:
        r = _post(http, *second)
        assert r.status_code == 200 and r.json()["duplicate"] is False
    again.stop()
    assert store_counts(db) == _sum_counts([first, second])


# -- read-only store -----------------------------------------------------------------------------

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def _as_plain_user() -> None:
    """Drop root's power to ignore file permissions (a child that honours chmod like a user)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _permissions_hold(tmp: Path) -> bool:
    """Return True when a child started with :func:`_as_plain_user` cannot write to a 0555 dir."""
    probe = tmp / "probe"
    probe.mkdir(mode=0o555)
    try:
        child = subprocess.run(
            [sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"],
            preexec_fn=_as_plain_user,
            capture_output=True,
            timeout=60,
        )
    except subprocess.SubprocessError:
        return False
    finally:
        probe.chmod(0o755)
    return child.returncode != 0


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines, "no reason given"
    assert "Traceback" not in stderr, stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_only_store_is_refused_with_a_reason_and_left_untouched(
    tmp_path: Path, servers: Callable[..., Server]
) -> None:
    if not _permissions_hold(tmp_path):
        pytest.skip("cannot run a child that honours file permissions here (capabilities)")
    db = tmp_path / "store" / "heatmap.db"
    fill_store(db, make_batches(1, devices=50, t0=T0))
    digest = _sha(db)
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        ro = servers(db, preexec=_as_plain_user, name="ro")
        code = ro.spawn().wait(UP_WAIT_S)
        line = _one_line_error(ro.log())
        assert code == 1 and str(db) in line and "readonly" in line.replace("read-only", "readonly")
        csv = tmp_path / "more.csv"
        csv.write_bytes(rows_to_csv(make_batches(2, devices=5, t0=T0)[1][1]))
        cli = subprocess.run(
            [str(HEATMAP), "ingest", str(csv)],
            env=ro.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=UP_WAIT_S,
            preexec_fn=_as_plain_user,
        )
        assert cli.returncode == 1 and str(db) in _one_line_error(cli.stderr)
        assert sorted(p.name for p in db.parent.iterdir()) == ["heatmap.db"]
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)
    assert _sha(db) == digest and integrity(db) == "ok"


# -- corrupt or foreign files --------------------------------------------------------------------


def _store_bytes(tmp_path: Path) -> bytes:
    db = tmp_path / "good" / "heatmap.db"
    fill_store(db, make_batches(12, devices=80, t0=T0, span_s=100, seed=9))
    return db.read_bytes()


def _bad_stores(tmp_path: Path) -> dict[str, tuple[Path, bytes | None, str, Settings]]:
    """Return name -> (HEATMAP_DB, its bytes or None for a directory, reason, settings)."""
    good = _store_bytes(tmp_path)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    con.execute("INSERT INTO contacts VALUES ('a', '123')")
    con.commit()
    con.close()
    rnd = random.Random(5)
    cases: dict[str, tuple[bytes | None, str]] = {
        "text": (b"device_id,ts,lat,lng\n" * 50, "not a heatmap store"),
        "foreign-sqlite": (other.read_bytes(), "another application"),
        "truncated": (good[: len(good) // 2], "malformed"),
        "garbage-pages": (good[:4096] + rnd.randbytes(len(good) - 4096), "malformed"),
        "zeroed-pages": (good[:4096] + bytes(len(good) - 4096), "malformed"),
        "directory": (None, "is a directory"),
        "other-window-length": (good, "window_s=300, settings say 600"),
    }
    out = {}
    for name, (data, why) in cases.items():
        db = tmp_path / name / "heatmap.db"
        if data is None:
            db.mkdir(parents=True)
        else:
            db.parent.mkdir()
            db.write_bytes(data)
        window_s = 600 if name == "other-window-length" else 300
        settings = Settings(db=str(db), secret="x", basemap_url="", window_s=window_s)  # type: ignore[call-arg]
        out[name] = (db, data, why, settings)
    return out


def test_corrupt_or_foreign_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    for name, (db, data, why, settings) in _bad_stores(tmp_path).items():
        with pytest.raises(StoreUnavailable) as err:
            create_app(settings)
        assert why in str(err.value), (name, str(err.value))
        assert "\n" not in str(err.value)
        if data is not None:  # untouched (SQLite may leave an empty -wal/-shm beside it)
            assert db.read_bytes() == data, f"{name}: the file was modified"
            for extra in db.parent.glob("heatmap.db-*"):
                assert extra.name in ("heatmap.db-wal", "heatmap.db-shm"), name


def test_serve_and_the_cli_exit_with_one_line_on_a_bad_store(
    tmp_path: Path, servers: Callable[..., Server]
) -> None:
    bad = _bad_stores(tmp_path)
    spawned = {
        name: servers(bad[name][0], name=name) for name in ("foreign-sqlite", "garbage-pages")
    }
    for server in spawned.values():
        server.spawn()  # at once: a start is mostly imports
    out = tmp_path / "cells.csv"
    db, data, why, _settings = bad["truncated"]
    cli = subprocess.run(
        [str(HEATMAP), "export", "cells", "--out", str(out)],
        env=clean_env(db=db, secret="x"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=UP_WAIT_S,
    )
    line = _one_line_error(cli.stderr)
    assert cli.returncode == 1 and str(db) in line and why in line, line
    assert db.read_bytes() == data and not out.exists()
    for name, server in spawned.items():
        assert server.proc is not None
        code = server.proc.wait(UP_WAIT_S)
        line = _one_line_error(server.log())
        assert code == 1 and str(server.db) in line and bad[name][2] in line, (name, line)
        assert server.db.read_bytes() == bad[name][1], f"{name}: the file was modified"
