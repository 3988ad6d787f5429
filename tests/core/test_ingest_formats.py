"""Files as other tools write them: every variant counts what a plain h3-py reference counts.

Parquet from pyarrow (plain, dictionary, default pages, integer ids, tiny and huge row groups,
every timestamp type, columns reordered, extra columns), pandas, polars and DuckDB; CSV as
pyarrow writes it (quoted), CSV.gz, NDJSON and NDJSON.gz. Columns of unusable types fail
the file naming the column and the type.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from heatmap.config import Settings
from heatmap.errors import BadInput
from heatmap.ingest import ParseOptions, Rejects, ping_tasks, read_pings
from heatmap.ingest.options import WORKERS
from heatmap.service import Heatmap
from tests.conftest import published_counts

T0 = 1_764_000_000 // 300 * 300
NOW = T0 + 86_400.0
ROWS = 1_500


def _rows() -> list[tuple[str, int, float, float]]:
    """Pings of 60 devices over eight windows around People's Square, sorted by time."""
    rng = np.random.default_rng(16)
    dev = rng.integers(0, 60, ROWS)
    ts = np.sort(rng.integers(T0, T0 + 2400, ROWS))
    lat = 31.23 + rng.normal(0, 0.01, ROWS)
    lng = 121.47 + rng.normal(0, 0.01, ROWS)
    return [
        (f"{1000 + d}", int(t), float(a), float(b))
        for d, t, a, b in zip(dev, ts, lat, lng, strict=True)
    ]


ROWS_DATA = _rows()


def _table() -> pa.Table:
    cols = list(zip(*ROWS_DATA, strict=True))
    return pa.table(
        {
            "device_id": pa.array(cols[0], pa.string()),
            "ts": pa.array(cols[1], pa.int64()),
            "lat": pa.array(cols[2], pa.float64()),
            "lng": pa.array(cols[3], pa.float64()),
        }
    )


def _reference(base_res: int = 10) -> dict[tuple[int, str], int]:
    """Plain h3-py + pandas: distinct devices per (window, cell) at their latest ping, ties
    to the larger cell."""
    df = pd.DataFrame(ROWS_DATA, columns=["device_id", "ts", "lat", "lng"])
    df["cell"] = [
        h3.str_to_int(h3.latlng_to_cell(a, b, base_res))
        for a, b in zip(df["lat"], df["lng"], strict=True)
    ]
    df["w"] = df["ts"] // 300
    last = df.sort_values(["ts", "cell"]).groupby(["w", "device_id"]).tail(1)
    counts = last.groupby(["w", "cell"])["device_id"].nunique()
    return {(int(w), h3.int_to_str(int(c))): int(n) for (w, c), n in counts.items()}


def _published(path: Path, tmp: Path, **opts: object) -> dict[tuple[int, str], int]:
    s = Settings(
        db=str(tmp / "store" / "h.db"),
        secret="t",
        basemap_url="",
        k_min=1,
        allowed_lateness_s=0,
        min_res=10,
    )
    hm = Heatmap(s)
    report = hm.ingest_paths([path], ParseOptions(now=NOW, **opts))  # type: ignore[arg-type]
    assert report.accepted == ROWS and report.rejects.total == 0, report.summary()
    out = published_counts(hm, 10)
    hm.close()
    return out


REFERENCE = _reference()
CLOSED = {w for w, _ in REFERENCE} - {max(w for w, _ in REFERENCE)}


def _closed(counts: dict[tuple[int, str], int]) -> dict[tuple[int, str], int]:
    """The windows every variant closes (the last one stays open: lateness 0, no later ping)."""
    return {k: v for k, v in counts.items() if k[0] in CLOSED}


def _with_ts(table: pa.Table, ts: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index("ts"), "ts", ts)


def _ts_as(unit: str, tz: str | None) -> Callable[[pa.Table], pa.Table]:
    def make(t: pa.Table) -> pa.Table:
        scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        secs = np.asarray(t["ts"].to_numpy(), dtype=np.int64) * scale
        return _with_ts(t, pa.array(secs, pa.timestamp(unit, tz=tz)))

    return make


def _pyarrow(transform: Callable[[pa.Table], pa.Table] = lambda t: t, **kw: object):  # type: ignore[no-untyped-def]
    def write(path: Path) -> None:
        pq.write_table(transform(_table()), path, **kw)  # type: ignore[arg-type]

    return write


def _dictionary_ids(t: pa.Table) -> pa.Table:
    return t.set_column(0, "device_id", t["device_id"].dictionary_encode())


def _integer_ids(t: pa.Table) -> pa.Table:
    return t.set_column(0, "device_id", pa.compute.cast(t["device_id"], pa.int64()))


def _binary_ids_int96(t: pa.Table) -> pa.Table:
    """Spark's legacy layout: strings as BINARY (no UTF-8 annotation), times as INT96."""
    t = _ts_as("ns", None)(t)
    return t.set_column(0, "device_id", t["device_id"].cast(pa.binary()))


def _reordered_with_extras(t: pa.Table) -> pa.Table:
    n = t.num_rows
    return pa.table(
        {
            "accuracy_m": pa.array(np.full(n, 5.0)),
            "Longitude": t["lng"],
            "timestamp": t["ts"],
            "note": pa.array(["x"] * n),
            "Latitude": t["lat"],
            "uid": t["device_id"],
        }
    )


def _float32_coords_ms(t: pa.Table) -> pa.Table:
    t = _with_ts(t, pa.compute.multiply(t["ts"], 1000))
    return t.set_column(2, "lat", t["lat"]).set_column(3, "lng", t["lng"])


def _pandas(path: Path) -> None:
    df = _table().to_pandas()
    df["device_id"] = df["device_id"].astype("category")
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True).dt.tz_convert("Asia/Shanghai")
    df.index = df.index + 7  # pandas stores a non-default index as an extra column
    df.to_parquet(path)


def _polars(path: Path) -> None:
    pl.from_arrow(_table()).write_parquet(path, row_group_size=256)  # type: ignore[union-attr]


def _duckdb(path: Path) -> None:
    import duckdb  # a dev dependency: make installs it

    con = duckdb.connect()
    con.register("pings", _table())
    con.execute(
        "COPY (SELECT lng, lat, device_id, to_timestamp(ts) AS ts FROM pings) "
        f"TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 100)"
    )
    con.close()


PARQUET_WRITERS = {
    "pyarrow default pages": _pyarrow(),
    "pyarrow plain pages": _pyarrow(use_dictionary=False),
    "pyarrow dictionary ids": _pyarrow(_dictionary_ids),
    "pyarrow integer ids": _pyarrow(_integer_ids),
    "pyarrow 7-row groups": _pyarrow(row_group_size=7),
    "pyarrow dictionary ids, 7-row groups": _pyarrow(_dictionary_ids, row_group_size=7),
    "pyarrow integer ids, one huge group": _pyarrow(_integer_ids, row_group_size=1 << 20),
    "pyarrow one huge group": _pyarrow(row_group_size=1 << 20),
    "timestamp[s]": _pyarrow(_ts_as("s", None)),
    "timestamp[ms, UTC]": _pyarrow(_ts_as("ms", "UTC")),
    "timestamp[us, Asia/Shanghai]": _pyarrow(_ts_as("us", "Asia/Shanghai")),
    "timestamp[ns], INT96 (Spark)": _pyarrow(
        _ts_as("ns", None), use_deprecated_int96_timestamps=True
    ),
    "binary ids, INT96 (Spark, legacy)": _pyarrow(
        _binary_ids_int96, use_deprecated_int96_timestamps=True
    ),
    "epoch milliseconds, float32": _pyarrow(_float32_coords_ms),
    "columns reordered, aliases, extra columns": _pyarrow(_reordered_with_extras),
    "pandas (category ids, tz-aware datetimes, index)": _pandas,
    "polars": _polars,
    "duckdb (TIMESTAMP WITH TIME ZONE, 100-row groups)": _duckdb,
}


@pytest.mark.parametrize("writer", list(PARQUET_WRITERS))
def test_parquet_as_written_by_each_tool_counts_the_reference(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "p.parquet"
    PARQUET_WRITERS[writer](path)
    # Small chunks: the huge group is split, the tiny ones merged, into several tasks.
    assert _closed(_published(path, tmp_path, chunk_rows=200)) == _closed(REFERENCE)


def _csv_quoted(path: Path) -> None:
    pacsv.write_csv(_table(), path)  # pyarrow quotes every text value


def _csv_gz(path: Path) -> None:
    buf = pa.BufferOutputStream()
    pacsv.write_csv(_table(), buf)
    path.write_bytes(gzip.compress(buf.getvalue().to_pybytes()))


def _ndjson_lines() -> bytes:
    out = []
    for i, (d, t, a, b) in enumerate(ROWS_DATA):
        ts: object = t if i % 3 else f"{pd.Timestamp(t, unit='s').isoformat()}Z"
        out.append(json.dumps({"device_id": d, "ts": ts, "lat": a, "lng": b, "extra": [1]}))
    return ("\n".join(out) + "\n").encode()


TEXT_WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "CSV, quoted (pyarrow)": ("p.csv", _csv_quoted),
    "CSV.gz": ("p.csv.gz", _csv_gz),
    "NDJSON": ("p.ndjson", lambda p: p.write_bytes(_ndjson_lines())),
    "NDJSON.gz": ("p.jsonl.gz", lambda p: p.write_bytes(gzip.compress(_ndjson_lines()))),
}


@pytest.mark.parametrize("writer", list(TEXT_WRITERS))
def test_text_files_count_the_reference(tmp_path: Path, writer: str) -> None:
    name, write = TEXT_WRITERS[writer]
    path = tmp_path / name
    write(path)
    assert _closed(_published(path, tmp_path, chunk_rows=100)) == _closed(REFERENCE)


def test_large_row_groups_are_split_and_small_ones_merged(tmp_path: Path) -> None:
    big, small = tmp_path / "big.parquet", tmp_path / "small.parquet"
    pq.write_table(_table(), big, row_group_size=ROWS)
    pq.write_table(_table(), small, row_group_size=10)
    opts = ParseOptions(now=NOW, chunk_rows=100)
    split = list(ping_tasks(big, opts, Rejects()))
    merged = list(ping_tasks(small, opts, Rejects()))
    assert len(split) == 15  # 100 rows a task, not 1
    assert [t.rows for t in split] == [100] * 15
    # 100 rows a task, not 150 tasks of 10; the file's last 2 * WORKERS tasks' worth is read
    # in quarter batches, so that the workers finish together.
    tail = 2 * WORKERS * 100
    starts = list(range(1, ROWS - tail, 100)) + list(range(ROWS - tail + 1, ROWS, 25))
    assert [t.first_row for t in merged] == starts


def test_ids_are_read_as_dictionaries_only_where_the_pages_are(tmp_path: Path) -> None:
    from heatmap.ingest.readahead import _dictionary_pages

    many = pa.table({"device_id": [f"device-{i:08d}" for i in range(200_000)]})
    pq.write_table(many, tmp_path / "plain.parquet", use_dictionary=False)
    pq.write_table(many.slice(0, 1000), tmp_path / "few.parquet")
    repeated = pa.table({"device_id": [f"d{i % 50}" for i in range(200_000)]})
    pq.write_table(repeated, tmp_path / "dict.parquet")
    pq.write_table(many, tmp_path / "fallback.parquet")  # dictionary > 1 MiB: plain pages

    def pages(name: str) -> bool:
        meta = pq.ParquetFile(tmp_path / name).metadata
        return _dictionary_pages(meta, list(range(meta.num_row_groups)), 0)

    assert pages("dict.parquet") and not pages("plain.parquet")
    assert not pages("fallback.parquet")


@pytest.mark.parametrize(
    ("column", "array", "shown"),
    [
        ("device_id", pa.array(np.arange(ROWS) * 0.5), "double"),
        ("device_id", pa.array([True] * ROWS), "bool"),
        ("ts", pa.array(np.full(ROWS, 19_000, dtype=np.int32)).cast(pa.date32()), "date32[day]"),
        ("ts", pa.array([True] * ROWS), "bool"),
        ("lat", pa.array([[1.0]] * ROWS), "list<element: double>"),
        ("lng", pa.array([{"x": 1.0}] * ROWS), "struct<x: double>"),
    ],
)
def test_a_column_of_an_unusable_type_fails_the_file_naming_it(
    tmp_path: Path, column: str, array: pa.Array, shown: str
) -> None:
    t = _table()
    t = t.set_column(t.schema.get_field_index(column), column, array)
    path = tmp_path / "bad.parquet"
    pq.write_table(t, path)
    with pytest.raises(BadInput, match=re.escape(f"column '{column}' has type {shown};")):
        list(read_pings(path, ParseOptions(now=NOW), Rejects()))


def test_aliased_column_of_an_unusable_type_names_both(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"uid": [1.5], "ts": [T0], "lat": [31.2], "lng": [121.4]}), path)
    with pytest.raises(BadInput, match=r"column 'uid \(device_id\)' has type double"):
        list(read_pings(path, ParseOptions(now=NOW), Rejects()))


def test_ndjson_bad_lines_are_rejected_with_their_rows(tmp_path: Path) -> None:
    lines = [
        '{"device_id": "a", "ts": 1700000000, "lat": 31.2, "lng": 121.4}',
        "{not json",
        "",
        '["a", 1700000000, 31.2, 121.4]',
        '{"device_id": "b", "ts": "2023-11-14T22:13:20Z", "lat": "31.3", "lng": 121.5}',
        '{"device_id": "c", "ts": 1700000000, "lat": 95, "lng": 121.5}',
        '{"device_id": "d", "ts": 1700000001, "lat": 31.2}',
    ]
    path = tmp_path / "p.ndjson"
    path.write_text("\n".join(lines))
    rejects = Rejects()
    got = pl.concat(list(read_pings(path, ParseOptions(now=NOW), rejects)))
    assert got.select("device_id", "ts").rows() == [("a", 1_700_000_000), ("b", 1_700_000_000)]
    assert sorted(rejects.rows) == [
        (2, "not valid JSON"),
        (3, "empty row"),
        (4, "not a JSON object"),
        (6, "lat out of range [-90, 90]"),
        (7, "lng missing"),
    ]


def test_ndjson_without_a_column_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.ndjson"
    path.write_text('{"device_id": "a", "ts": 1700000000, "lat": 31.2}\n')
    with pytest.raises(BadInput, match="missing column 'lng'"):
        list(read_pings(path, ParseOptions(now=NOW), Rejects()))


def test_csv_blocks_keep_row_numbers_with_quotes_and_crlf(tmp_path: Path) -> None:
    lines = ['"device_id","ts","lat","lng"']
    for i in range(1, 301):
        lat = "95" if i in (7, 150, 299) else "31.2"
        lines.append(f'"d{i % 7}",{1_700_000_000 + i},{lat},121.4')
    path = tmp_path / "q.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    rejects = Rejects()
    tasks = list(ping_tasks(path, ParseOptions(now=NOW, chunk_rows=16), rejects))
    assert len(tasks) > 5
    for task in tasks:
        task.load(rejects)
    assert [r for r, _ in sorted(rejects.rows)] == [7, 150, 299]


def test_a_quoted_line_break_fails_the_file_instead_of_shifting_rows(tmp_path: Path) -> None:
    path = tmp_path / "nl.csv"
    path.write_text('device_id,ts,lat,lng\n"a\nb",1700000000,31.2,121.4\nc,1700000000,31.2,121.4\n')
    with pytest.raises(BadInput, match="quoted value holds a line break"):
        list(read_pings(path, ParseOptions(now=NOW), Rejects()))


_NO_HEAVY_IMPORTS = """
import sys
import heatmap.cli
heavy = ("numba", "polars", "pyarrow", "pandas", "heatmap.cellindex")
print([m for m in heavy if m in sys.modules])
"""

_SMALL_INPUT_NO_NUMBA = """
import sys
from pathlib import Path
from heatmap.aggregate import pings_to_positions
from heatmap.ingest import ParseOptions, Rejects, read_pings
path = Path(sys.argv[1])
path.write_text("device_id,ts,lat,lng\\na,1700000000,31.2,121.4\\nb,1700000100,31.3,121.5\\n")
for chunk in read_pings(path, ParseOptions(now=1.8e9), Rejects()):
    pos = pings_to_positions(chunk, 300, 10)
print(pos.height, "numba" in sys.modules)
"""


def test_importing_the_cli_loads_no_heavy_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_HEAVY_IMPORTS], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_small_file_is_read_and_indexed_without_loading_numba(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SMALL_INPUT_NO_NUMBA, str(tmp_path / "s.csv")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["2", "False"]


@pytest.mark.realdata
def test_geolife_reads_the_same_from_every_format(geolife: Path, tmp_path: Path) -> None:
    """The real GeoLife file as CSV.gz, Parquet (plain pages, pyarrow) and NDJSON.gz: the
    same rows, ids and times."""
    table = pacsv.read_csv(
        geolife, convert_options=pacsv.ConvertOptions(column_types={"device_id": pa.string()})
    )
    pq.write_table(table, tmp_path / "g.parquet", use_dictionary=False, row_group_size=500_000)
    lines = pl.from_arrow(table).write_ndjson().encode()  # type: ignore[union-attr]
    (tmp_path / "g.ndjson.gz").write_bytes(gzip.compress(lines, compresslevel=1))
    opts = ParseOptions(now=2e9)

    def rows(path: Path) -> pl.DataFrame:
        rejects = Rejects()
        got = pl.concat(list(read_pings(path, opts, rejects)))
        assert rejects.total == 0
        return got.with_columns(pl.col("device_id").cast(pl.String))

    ref = rows(geolife)
    assert ref.height == table.num_rows
    assert rows(tmp_path / "g.parquet").equals(ref)
    assert rows(tmp_path / "g.ndjson.gz").equals(ref)
