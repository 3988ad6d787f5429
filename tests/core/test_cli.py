"""The ``heatmap`` command: JSON summary, exit codes, one-line errors, exports."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import h3
import polars as pl
import pytest

T0 = 1_764_000_000 // 300 * 300


def run(args: list[str], db: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "HEATMAP_DB": str(db), "HEATMAP_SECRET": "cli-test", **env}
    return subprocess.run(
        [sys.executable, "-m", "heatmap", *args], capture_output=True, text=True, env=e, timeout=300
    )


@pytest.fixture
def sim(tmp_path: Path) -> Path:
    out = tmp_path / "sim.parquet"
    r = run(
        [
            "simulate",
            "--out",
            str(out),
            "--devices",
            "3000",
            "--hours",
            "1",
            "--interval-s",
            "60",
            "--start",
            "2025-11-24T02:00:00Z",
            "--seed",
            "3",
        ],
        tmp_path / "unused.db",
    )
    assert r.returncode == 0, r.stderr
    return out


def test_ingest_prints_the_summary_last(sim: Path, tmp_path: Path) -> None:
    r = run(["ingest", str(sim)], tmp_path / "s" / "h.db", HEATMAP_K_MIN="3")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"accepted", "rejected", "late", "windows_closed", "reasons"}
    assert summary["accepted"] == pl.read_parquet(sim).height
    assert summary["windows_closed"] >= 10


def test_bad_rows_are_counted_by_reason(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text(
        "device_id,ts,lat,lng\n"
        f"a,{T0},31.2,121.4\nb,{T0},NaN,121.4\nc,{T0},91,121.4\nd,yesterday,31.2,121.4\n"
    )
    r = run(["ingest", str(p)], tmp_path / "h.db")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.splitlines()[-1])
    assert s["accepted"] == 1 and s["rejected"] == 3
    assert s["reasons"] == {"lat is NaN": 1, "lat out of range [-90, 90]": 1, "ts unparseable": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"device_id,ts,lat\na,1,2\n", "missing column 'lng'"),
        (b"\x00\x01\x02\x03binary", "not a"),
    ],
)
def test_unusable_files_exit_2_with_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.csv"
    p.write_bytes(content)
    r = run(["ingest", str(p)], tmp_path / "h.db")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("column", "values", "shown"),
    [
        ("device_id", [1.5], "double"),
        ("ts", [True], "bool"),
        ("lat", [[31.2]], "large_list<element: double>"),
    ],
)
def test_a_parquet_column_of_an_unusable_type_exits_2_naming_it(
    tmp_path: Path, column: str, values: list[object], shown: str
) -> None:
    cols: dict[str, list[object]] = {"device_id": ["a"], "ts": [T0], "lat": [31.2], "lng": [121.4]}
    p = tmp_path / "x.parquet"
    pl.DataFrame({**cols, column: values}).write_parquet(p)
    r = run(["ingest", str(p)], tmp_path / "h.db")
    assert r.returncode == 2
    assert f"column '{column}' has type {shown}" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_ndjson_files_are_ingested(tmp_path: Path) -> None:
    p = tmp_path / "x.ndjson"
    p.write_text(
        f'{{"device_id": "a", "ts": {T0}, "lat": 31.2, "lng": 121.4}}\n'
        f'{{"device_id": "b", "ts": "{T0 + 5}", "lat": 31.3, "lng": 121.5, "speed": 3}}\n'
        "not json\n"
    )
    r = run(["ingest", str(p)], tmp_path / "h.db")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 2 and summary["reasons"] == {"not valid JSON": 1}
    assert f"{p}: row 3: not valid JSON" in r.stderr


def test_rejected_rows_are_named_on_stderr(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text(
        f"device_id,ts,lat,lng\na,{T0},31.2,121.4\n\nb,{T0},91,121.4\nc,{T0},31.2\n"
        f"d,{T0},31.3,121.5\n"
    )
    r = run(["ingest", str(p)], tmp_path / "h.db")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-3:] == [
        f"{p}: row 2: empty row",
        f"{p}: row 3: lat out of range [-90, 90]",
        f"{p}: row 4: wrong number of fields",
    ]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 2 and summary["rejected"] == 3


def test_strict_writes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text(f"device_id,ts,lat,lng\na,{T0},31.2,121.4\nb,{T0},91,121.4\n")
    db = tmp_path / "h.db"
    r = run(["ingest", "--strict", str(p)], db)
    assert r.returncode == 2 and "row 2: lat out of range" in r.stderr
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM windows").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM ping_log").fetchone()[0] == 0


def test_missing_file_and_corrupt_store(tmp_path: Path) -> None:
    r = run(["ingest", str(tmp_path / "nope.csv")], tmp_path / "h.db")
    assert r.returncode == 2 and "no such file" in r.stderr
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"garbage" * 100)
    p = tmp_path / "ok.csv"
    p.write_text(f"device_id,ts,lat,lng\na,{T0},31.2,121.4\n")
    r = run(["ingest", str(p)], bad)
    assert r.returncode != 0 and "not a heatmap store" in r.stderr and "Traceback" not in r.stderr


def test_export_cells_in_every_format(sim: Path, tmp_path: Path) -> None:
    db = tmp_path / "e" / "h.db"
    assert run(["ingest", str(sim)], db, HEATMAP_K_MIN="3").returncode == 0
    outs = {}
    for ext in ("csv", "parquet", "geojson", "gpkg"):
        out = tmp_path / f"cells.{ext}"
        r = run(
            ["export", "cells", "--out", str(out), "--res", "8", "--window", "all"],
            db,
            HEATMAP_K_MIN="3",
        )
        assert r.returncode == 0, r.stderr
        outs[ext] = out
    csv = pl.read_csv(outs["csv"])
    assert csv.columns == [
        "window_start",
        "window_end",
        "res",
        "cell",
        "people",
        "density_km2",
        "band",
    ]
    assert csv.height > 0 and (csv["people"] >= 3).all() and (csv["res"] == 8).all()
    assert pl.read_parquet(outs["parquet"]).height == csv.height
    for ext in ("geojson", "gpkg"):
        gdf = gpd.read_file(outs[ext])
        assert len(gdf) == csv.height
        row = gdf.iloc[0]
        centre = h3.cell_to_latlng(row["cell"])
        assert row.geometry.contains(gpd.points_from_xy([centre[1]], [centre[0]])[0])
    r = run(["export", "cells", "--out", str(tmp_path / "x.shp")], db)
    assert r.returncode == 2 and "unknown format" in r.stderr
