"""Parsing and validation: aliases, timestamp forms, CRS, per-row reasons, unreadable files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.crs import wgs84_to_gcj02
from heatmap.errors import BadInput
from heatmap.ingest import (
    ParseOptions,
    Rejects,
    body_to_frame,
    frame_to_pings,
    ping_tasks,
    read_pings,
)

NOW = 1_800_000_000.0


def _read(path: Path, **kw: object) -> tuple[pl.DataFrame, Rejects]:
    rejects = Rejects()
    opts = ParseOptions(now=NOW, **kw)  # type: ignore[arg-type]
    chunks = list(read_pings(path, opts, rejects))
    return pl.concat(chunks) if chunks else pl.DataFrame(), rejects


def test_aliases_and_timestamp_forms(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(
        "Latitude,LON,timestamp,Device\n"
        "31.23,121.47,1700000000,a\n"
        "31.23,121.47,1700000000123,b\n"
        "31.23,121.47,2023-11-14T22:13:20Z,c\n"
        "31.23,121.47,2023-11-15 06:13:20+08:00,d\n"
        "31.23,121.47,2023-11-14T22:13:20,e\n"
    )
    df, rejects = _read(p)
    assert rejects.total == 0
    assert df["ts"].to_list() == [1_700_000_000] * 5
    assert df["device_id"].to_list() == list("abcde")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (",1700000000,31.2,121.4", "device_id empty"),
        ("a,,31.2,121.4", "ts missing"),
        ("a,yesterday,31.2,121.4", "ts unparseable"),
        ("a,1900000000,31.2,121.4", "ts more than 3600 s in the future"),
        ("a,1700000000,91,121.4", "lat out of range [-90, 90]"),
        ("a,1700000000,NaN,121.4", "lat is NaN"),
        ("a,1700000000,north,121.4", "lat not a number"),
        ("a,1700000000,31.2,", "lng missing"),
        ("a,1700000000,31.2,181", "lng out of range [-180, 180]"),
        ("a,1700000000,31.2", "wrong number of fields"),
    ],
)
def test_bad_rows_are_rejected_with_their_reason(tmp_path: Path, line: str, reason: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(f"device_id,ts,lat,lng\nok,1700000000,31.2,121.4\n{line}\nok2,1700000001,31,121\n")
    df, rejects = _read(p)
    assert dict(rejects.counts) == {reason: 1}
    assert df["device_id"].to_list() == ["ok", "ok2"]
    assert rejects.rows == [(2, reason)]


def test_strict_fails_on_the_first_bad_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("device_id,ts,lat,lng\nok,1700000000,31.2,121.4\nb,1700000000,91,121\n")
    with pytest.raises(BadInput, match=r"row 2: lat out of range"):
        _read(p, strict=True)


def test_missing_column_names_it(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("device_id,ts,lat\na,1,2\n")
    with pytest.raises(BadInput, match="missing column 'lng'"):
        _read(p)


def test_truncated_gzip_is_bad_input(tmp_path: Path) -> None:
    rows = "".join(f"d{i},{1700000000 + i},31.2,121.4\n" for i in range(20000))
    data = gzip.compress(("device_id,ts,lat,lng\n" + rows).encode())
    p = tmp_path / "t.csv.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="unreadable"):
        _read(p)


def test_binary_file_is_not_a_csv(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(BadInput, match="CSV"):
        _read(p)


def test_parquet_and_gzip_read_like_csv(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "device_id": ["a", "b"],
            "ts": [1700000000, 1700000100],
            "lat": [31.2, 31.3],
            "lng": [121.4, 121.5],
        }
    )
    frame.write_parquet(tmp_path / "p.parquet")
    (tmp_path / "g.csv.gz").write_bytes(gzip.compress(frame.write_csv().encode()))
    a, _ = _read(tmp_path / "p.parquet")
    b, _ = _read(tmp_path / "g.csv.gz")
    assert a.equals(frame) and b.equals(frame)


def test_gcj02_input_is_converted_to_wgs84() -> None:
    lat, lng = wgs84_to_gcj02([31.2335], [121.4755])
    frame = pl.DataFrame(
        {"device_id": ["a"], "ts": ["1700000000"], "lat": [lat[0]], "lng": [lng[0]]}
    )
    out = frame_to_pings(frame, ParseOptions(crs="gcj02", now=NOW), Rejects())
    assert out["lat"][0] == pytest.approx(31.2335, abs=1e-6)
    assert out["lng"][0] == pytest.approx(121.4755, abs=1e-6)


def test_unknown_crs_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown --crs"):
        ParseOptions(crs="mars")


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"device_id,ts,lat,lng\na,1700000000,31.2,121.4\n", "text/csv"),
        (b'{"device_id":"a","ts":1700000000,"lat":31.2,"lng":121.4}\n', "application/x-ndjson"),
        (b'[{"device_id":"a","ts":"1700000000","lat":31.2,"lng":121.4}]', "application/json"),
    ],
)
def test_request_bodies_parse(body: bytes, ctype: str) -> None:
    frame = body_to_frame(body, ctype, max_rows=10)
    out = frame_to_pings(frame, ParseOptions(now=NOW), Rejects())
    assert out.rows() == [("a", 1700000000, 31.2, 121.4)]


def test_body_errors() -> None:
    with pytest.raises(BadInput, match="unsupported content type"):
        body_to_frame(b"x", "image/png", 10)
    with pytest.raises(BadInput, match="not valid"):
        body_to_frame(b"[{", "application/json", 10)


def _lines_file(path: Path, quoted: bool = False, crlf: bool = False) -> list[str]:
    lines = ["device_id,ts,lat,lng"]
    for i in range(1, 61):
        if i == 7:
            lines.append("x,1700000000,31.2")  # wrong number of fields
        elif i == 41:
            lines.append("y,1700000000,95,121.4")  # lat out of range
        else:
            dev = f'"d{i % 5}"' if quoted and i == 3 else f"d{i % 5}"
            lines.append(f"{dev},{1_700_000_000 + i},31.2{i % 10},121.4{i % 7}")
    path.write_text(("\r\n" if crlf else "\n").join(lines) + "\n")
    return lines


@pytest.mark.parametrize("crlf", [False, True])
def test_csv_cut_into_ranges_reads_like_one_pass(tmp_path: Path, crlf: bool) -> None:
    """A plain CSV is parsed in line-aligned ranges on several threads: the same rows, the
    same reasons, and each rejected row named by its line in the file."""
    p = tmp_path / "many.csv"
    _lines_file(p, crlf=crlf)
    one, r1 = _read(p)  # one range: the file is smaller than a chunk
    cut, r2 = _read(p, chunk_rows=4)  # ~64-byte ranges: a dozen tasks
    assert cut.rows() == one.rows() and cut.height == 58
    assert (
        dict(r2.counts)
        == dict(r1.counts)
        == {
            "wrong number of fields": 1,
            "lat out of range [-90, 90]": 1,
        }
    )
    assert r2.rows == [(7, "wrong number of fields"), (41, "lat out of range [-90, 90]")]
    with pytest.raises(BadInput, match=r"row 7: wrong number of fields"):
        _read(p, chunk_rows=4, strict=True)


@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_lines_that_are_not_utf8_are_rejected_by_row(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], chunk_rows: int | None
) -> None:
    """A Latin-1 line (a tool that wrote another encoding) is one rejected row, with or
    without the right number of fields; the other rows, before and after, are read."""
    lines = _lines_file(tmp_path / "many.csv")
    body = [line.encode() for line in lines]
    body[12] = "caf\u00e9,1700000012,31.2,121.4".encode("latin-1")  # right fields, not UTF-8
    body[30] = "z\u00fc,1700000030,31.2,121.4,\u00fc".encode("latin-1")  # and one field too many
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"\n".join(body) + b"\n")
    kw = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    got, rejects = _read(p, **kw)
    reference, _ = _read(tmp_path / "many.csv")
    assert got.height == reference.height - 2
    gone = {reference.row(10), reference.row(28)}  # rows 12 and 30 (row 7 is rejected too)
    assert set(got.rows()) == set(reference.rows()) - gone
    assert rejects.rows == [
        (7, "wrong number of fields"),
        (12, "not UTF-8 text"),
        (30, "not UTF-8 text"),
        (41, "lat out of range [-90, 90]"),
    ]
    assert capfd.readouterr().err == ""  # arrow's decode failure is not printed
    p.write_bytes(b"\n".join([body[0], body[1], body[12], body[13]]) + b"\n")
    with pytest.raises(BadInput, match=r"row 2: not UTF-8 text \(--strict\)"):
        _read(p, strict=True)


@pytest.mark.parametrize("compressed", [False, True])
def test_line_blocks_cover_the_file_and_shrink_at_its_end(tmp_path: Path, compressed: bool) -> None:
    """Blocks of whole lines, in order, every line once with its row number; the last blocks
    are smaller (the parsing tasks finish together; a gzip's size is read from its trailer)."""
    from heatmap.ingest.lines import line_blocks
    from heatmap.ingest.options import WORKERS

    lines = [f"d{i % 7},{1_700_000_000 + i},31.{i % 97:02d},121.{i % 89:02d}" for i in range(5000)]
    raw = ("device_id,ts,lat,lng\n" + "\n".join(lines) + "\n").encode()
    p = tmp_path / ("b.csv.gz" if compressed else "b.csv")
    p.write_bytes(gzip.compress(raw) if compressed else raw)
    header = raw.index(b"\n") + 1
    got, sizes, row = b"", [], 1
    for block in line_blocks(p, compressed, rows=400, skip_header=True):
        data = block.read().to_pybytes()
        block.release()  # its buffer is reused for a later block
        assert block.start == header + len(got) and block.end - block.start == len(data)
        assert block.first_row == row and block.lines == data.count(b"\n")
        assert data.endswith(b"\n")
        got += data
        sizes.append(len(data))
        row += block.lines
    assert got == raw[header:] and row == 5001
    full = sizes[1]  # the first block is sized before the row length is known
    # The last 2 * WORKERS blocks' worth comes in quarter blocks, all of it and only it.
    k = next(i for i, size in enumerate(sizes) if i and size < full // 2)
    assert all(size <= full // 4 for size in sizes[k:])
    assert (2 * WORKERS - 1) * full <= sum(sizes[k:]) <= (2 * WORKERS + 1) * full


def test_a_gzip_of_two_members_reads_whole(tmp_path: Path) -> None:
    """Concatenated gzip members (``cat a.gz b.gz``): the trailer states the last member's
    size only; blocks are still whole lines, every row once."""
    rows = [f"d{i % 9},{1_700_000_000 + i},31.2,121.4" for i in range(3000)]
    first = ("device_id,ts,lat,lng\n" + "\n".join(rows[:2900]) + "\n").encode()
    second = ("\n".join(rows[2900:]) + "\n").encode()
    p = tmp_path / "two.csv.gz"
    p.write_bytes(gzip.compress(first) + gzip.compress(second))
    got, rejects = _read(p, chunk_rows=200)
    assert rejects.total == 0
    assert got["ts"].to_list() == [1_700_000_000 + i for i in range(3000)]


def test_parquet_tasks_cover_the_file_and_shrink_at_its_end(tmp_path: Path) -> None:
    """Row groups are tasks in order; the file's last ``2 * WORKERS`` chunks' worth is cut
    into quarter-chunk batches (the workers finish together), every row once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from heatmap.ingest.options import WORKERS

    n = 12_000
    table = pa.table(
        {
            "device_id": [f"d{i % 50}" for i in range(n)],
            "ts": list(range(1_700_000_000, 1_700_000_000 + n)),
            "lat": [31.2] * n,
            "lng": [121.4] * n,
        }
    )
    p = tmp_path / "groups.parquet"
    pq.write_table(table, p, row_group_size=1000)  # 12 groups
    opts = ParseOptions(now=NOW, chunk_rows=1000)
    tasks = list(ping_tasks(p, opts, Rejects()))
    spans = [(t.first_row, t.rows) for t in tasks]
    assert spans[0] == (1, 1000)
    assert all(a + r == b for (a, r), (b, _) in zip(spans, spans[1:], strict=False))
    assert sum(r for _, r in spans) == n
    small = [r for _, r in spans if r <= 250]
    assert len(small) == 4 * 2 * WORKERS  # the last 2 * WORKERS groups, in quarters
    assert all(r == 1000 for _, r in spans[: len(spans) - len(small)])
    frames = [t.load(Rejects()) for t in tasks]
    assert pl.concat(frames)["ts"].to_list() == table["ts"].to_pylist()


def test_csv_with_quotes_is_read_in_one_pass(tmp_path: Path) -> None:
    p = tmp_path / "quoted.csv"
    _lines_file(p, quoted=True)
    got, rejects = _read(p, chunk_rows=4)
    assert got.height == 58 and rejects.total == 2
    assert got["device_id"].to_list()[2] == "d3"


@pytest.mark.parametrize(
    ("ts", "lat", "lng", "reason"),
    [
        (1_700_000_000_123, 31.2, 121.4, None),  # milliseconds
        (-1, 31.2, 121.4, "ts before 1970"),
        (1_900_000_000, 31.2, 121.4, "ts more than 3600 s in the future"),
        (1_700_000_000, 90.5, 121.4, "lat out of range [-90, 90]"),
        (1_700_000_000, float("nan"), 121.4, "lat is NaN"),
        (1_700_000_000, 31.2, -180.5, "lng out of range [-180, 180]"),
    ],
)
def test_numeric_parquet_rows_are_checked_one_by_one(
    tmp_path: Path, ts: int, lat: float, lng: float, reason: str | None
) -> None:
    """Typed Parquet takes a compiled one-pass check; a bad row still gets its own reason."""
    frame = pl.DataFrame(
        {
            "device_id": ["a", "b", "c"],
            "ts": [1_700_000_000, ts, 1_700_000_002],
            "lat": [31.0, lat, 31.1],
            "lng": [121.0, lng, 121.1],
        }
    )
    frame.write_parquet(tmp_path / "n.parquet")
    df, rejects = _read(tmp_path / "n.parquet")
    if reason is None:
        assert rejects.total == 0
        assert df["ts"].to_list() == [1_700_000_000, 1_700_000_000, 1_700_000_002]
    else:
        assert rejects.rows == [(2, reason)]
        assert df["device_id"].to_list() == ["a", "c"]


@pytest.mark.parametrize("mode", ["ranges", "one pass", "gzip", "quoted"])
def test_rejected_rows_are_named_by_their_line_whatever_precedes_them(
    tmp_path: Path, mode: str
) -> None:
    """Blank lines and lines with the wrong number of fields do not shift the row numbers of
    later rejected rows: row N is line N + 1 of the file, in every reading mode."""
    rng = np.random.default_rng(5)
    lines, want = ["device_id,ts,lat,lng"], []
    for row in range(1, 401):
        kind = rng.choice(["ok", "blank", "fields", "lat"], p=[0.85, 0.05, 0.05, 0.05])
        dev = '"q"' if mode == "quoted" and row == 1 else f"d{row % 9}"
        if kind == "ok" or row == 1:
            lines.append(f"{dev},{1_700_000_000 + row},31.2,121.4")
            continue
        lines.append({"blank": "", "fields": "x,1700000000,31.2", "lat": "y,1,95,121.4"}[kind])
        want.append(
            (
                row,
                {
                    "blank": "empty row",
                    "fields": "wrong number of fields",
                    "lat": "lat out of range [-90, 90]",
                }[kind],
            )
        )
    text = "\n".join(lines) + "\n"
    path = tmp_path / ("p.csv.gz" if mode == "gzip" else "p.csv")
    path.write_bytes(gzip.compress(text.encode()) if mode == "gzip" else text.encode())
    rejects = Rejects()
    opts = ParseOptions(now=NOW, chunk_rows=1 << 20 if mode == "one pass" else 8)
    tasks = list(ping_tasks(path, opts, rejects))
    assert (len(tasks) > 1) == (mode != "one pass")
    for task in tasks:  # in file order, as the pipeline merges them
        part = Rejects()
        task.load(part)
        rejects.merge(part)
    assert sorted(rejects.rows) == want[: len(rejects.rows)]
    assert rejects.total == len(want)


def test_small_chunk_check_agrees_with_the_compiled_one() -> None:
    """Small chunks are checked in numpy while numba is not loaded: the same seconds and the
    same verdict as the kernel, milliseconds, NaN and both range ends included."""
    from heatmap._jit import readonly
    from heatmap.ingest.validate import _seconds_if_valid, _seconds_if_valid_np

    rng = np.random.default_rng(3)
    ts = rng.choice([-1, 0, 1_700_000_000, 1_700_000_000_123, 10**11, 1_800_003_600], 64)
    lat = rng.choice([-90.0, 90.0, 31.2, 90.5, float("nan")], 64)
    lng = rng.choice([-180.0, 180.0, 121.4, -180.5], 64)
    for n in range(1, 65):
        a = _seconds_if_valid(*readonly(ts[:n], lat[:n], lng[:n]), 1_800_003_600)
        b = _seconds_if_valid_np(ts[:n], lat[:n], lng[:n], 1_800_003_600)
        assert a[1] == b[1] and a[0].tolist() == b[0].tolist()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 7))
def test_line_ends_are_counted_like_bytes_count(data: bytes, skip: int) -> None:
    """The compiled eight-bytes-at-a-time count (any start offset, any tail) and the numpy
    one both count ``\\n`` bytes exactly, next to every other byte value."""
    from heatmap import _jit
    from heatmap.ingest.lines import _newlines, count_newlines

    raw = bytes(range(256)) + data + b"\n\n\x0a\x8a\x0b\x09" * 3
    view = np.frombuffer(raw, dtype=np.uint8)[skip:]
    want = raw[skip:].count(b"\n")
    assert int(_newlines(*_jit.readonly(view))) == want
    assert count_newlines(view, np.empty(len(view), dtype=bool)) == want
