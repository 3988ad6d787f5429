"""Backups (#19): ``heatmap backup`` of a store that a real ``heatmap serve`` is ingesting into
restores (``heatmap restore``) to a store that answers exactly what the source answered when the
copy was taken: the same batches, the same exports, the same JSON and tile bytes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hardening_server import (
    AUTH,
    HEATMAP,
    SECRET,
    Server,
    clean_env,
    fill_store,
    make_batches,
    rows_to_csv,
)

pytestmark = pytest.mark.slow

T0 = (int(time.time()) - 4 * 3600) // 300 * 300
CSV = {"Content-Type": "text/csv"}


def _cli(*args: str, db: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(db=db, secret=SECRET, k_min=2, basemap_url="")
    return subprocess.run(
        [str(HEATMAP), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _batch_ids(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return sorted(r[0] for r in con.execute("SELECT batch_id FROM batches"))
    finally:
        con.close()


def _answers(url: str) -> dict[str, bytes]:
    """What a reader sees: the window list, stats and cells of every closed window and of the
    latest release, and tiles around the pings (bytes)."""
    out: dict[str, bytes] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        windows = http.get("/api/v1/windows", params={"limit": 1000}).json()
        out["windows"] = http.get("/api/v1/windows", params={"limit": 1000}).content
        refs = [{}] + [{"window": w["start"]} for w in windows["windows"]]
        for i, ref in enumerate(refs):
            out[f"stats{i}"] = http.get("/api/v1/stats", params=ref).content
            cells = http.get(
                "/api/v1/cells", params={"bbox": "121.44,31.21,121.51,31.26", "res": 9, **ref}
            )
            out[f"cells{i}"] = cells.content
            for z, x, y in ((12, 3429, 1672), (13, 6858, 3344)):
                tile = http.get(f"/tiles/{z}/{x}/{y}.mvt", params=ref)
                out[f"tile{i}-{z}"] = tile.content
    return out


def test_a_backup_taken_under_load_restores_to_identical_answers(tmp_path: Path, servers) -> None:
    batches = make_batches(40, devices=150, t0=T0, span_s=60, seed=19)
    db = tmp_path / "store" / "heatmap.db"
    server: Server = servers(db, name="source").start()
    acked: list[str] = []
    done = threading.Event()

    def post_all() -> None:
        with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as http:
            for bid, rows in batches:
                r = http.post(
                    "/api/v1/pings",
                    content=rows_to_csv(rows),
                    headers=CSV,
                    params={"batch_id": bid},
                )
                assert r.status_code == 200, r.text
                acked.append(bid)
        done.set()

    poster = threading.Thread(target=post_all, daemon=True)
    poster.start()
    while len(acked) < 12:
        time.sleep(0.05)
    before = len(acked)
    backup = tmp_path / "backups" / "heatmap-backup.db"
    made = _cli("backup", str(backup), db=db, cwd=tmp_path)
    after = len(acked)
    assert made.returncode == 0, made.stderr
    assert done.wait(120) and len(acked) == len(batches)  # the feed went on meanwhile
    server.stop()
    assert '"out"' in made.stdout.splitlines()[-1]

    # The copy is the store as of one commit: a prefix of the batches, every one acknowledged
    # before the copy began, none half-written.
    restored = tmp_path / "restored" / "heatmap.db"
    back = _cli("restore", str(backup), db=restored, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    ids = _batch_ids(restored)
    k = len(ids)
    assert ids == sorted(bid for bid, _ in batches[:k])
    assert before <= k <= after + 1 and k < len(batches)

    # The source at that point, rebuilt from the same batches, answers exactly the same.
    reference = tmp_path / "reference" / "heatmap.db"
    fill_store(reference, batches[:k])
    exports = []
    for store in (restored, reference):
        out = store.with_suffix(".csv")
        r = _cli("export", "cells", "--out", str(out), "--window", "all", db=store, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        exports.append(out.read_bytes())
    assert exports[0] == exports[1] and exports[0].count(b"\n") > 10

    got = _answers(servers(restored, name="restored").start().url)
    want = _answers(servers(reference, name="reference").start().url)
    assert got.keys() == want.keys() and len(got) > 10
    assert [k for k in got if got[k] != want[k]] == []
    assert any(key.startswith("tile") and len(v) > 0 for key, v in got.items())


def test_restore_refuses_a_foreign_file_and_an_existing_store(tmp_path: Path) -> None:
    db = tmp_path / "store" / "heatmap.db"
    fill_store(db, make_batches(2, devices=20, t0=T0, seed=3))
    stranger = tmp_path / "notes.db"
    sqlite3.connect(stranger).execute("CREATE TABLE t (x)").connection.close()
    r = _cli("restore", str(stranger), db=tmp_path / "new" / "heatmap.db", cwd=tmp_path)
    assert r.returncode == 2 and "not a heatmap store backup" in r.stderr
    backup = tmp_path / "b.db"
    assert _cli("backup", str(backup), db=db, cwd=tmp_path).returncode == 0
    r = _cli("backup", str(backup), db=db, cwd=tmp_path)
    assert r.returncode == 2 and "never overwrites" in r.stderr
    r = _cli("restore", str(backup), db=db, cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr
    r = _cli("restore", str(backup), "--force", db=db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert db.with_name("heatmap.db.before-restore").exists()


def test_a_postgres_store_gets_pg_dump_guidance(tmp_path: Path) -> None:
    env = {**os.environ, "HEATMAP_DB": "postgresql://nobody@127.0.0.1:1/none"}
    r = subprocess.run(
        [str(HEATMAP), "backup", str(tmp_path / "x.dump")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "pg_dump" in r.stderr and "pg_restore" in r.stderr
