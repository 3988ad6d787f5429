"""Hostile input to every parser: any bytes give rows or a one-line domain error, never a crash."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heatmap.errors import BadInput, HeatmapError
from heatmap.ingest import ParseOptions, Rejects, body_to_frame, frame_to_pings, read_pings
from heatmap.read.ref import parse_when

NOW = 1_800_000_000.0
TYPES = ["text/csv", "application/x-ndjson", "application/json", "text/plain", ""]
cell_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "9" * 40,
            "0x10",
            "2026-13-45T99:99:99Z",
            "1700000000",
            "31.2",
            "\u202e",
            "null",
            "None",
            "\x00",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.sampled_from(TYPES))
def test_any_body_parses_or_fails_cleanly(body: bytes, ctype: str) -> None:
    try:
        frame = body_to_frame(body, ctype, max_rows=1000)
        frame_to_pings(frame, ParseOptions(now=NOW), Rejects())
    except HeatmapError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(cell_text, cell_text, cell_text, cell_text), min_size=1, max_size=30))
def test_any_values_are_rows_or_reasons(rows: list[tuple[str, str, str, str]]) -> None:
    frame = pl.DataFrame(rows, schema=["device_id", "ts", "lat", "lng"], orient="row")
    rejects = Rejects()
    out = frame_to_pings(frame, ParseOptions(now=NOW), rejects)
    assert out.height + rejects.total == len(rows)
    assert out["lat"].is_between(-90, 90).all() and out["lng"].is_between(-180, 180).all()
    assert (out["ts"] >= 0).all() and (out["ts"] <= NOW + 3600).all()
    assert all(r for _row, r in rejects.rows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(cell_text, cell_text, cell_text, cell_text), min_size=1, max_size=30))
def test_json_records_with_any_values(rows: list[tuple[str, str, str, str]]) -> None:
    import orjson

    body = orjson.dumps(
        [dict(zip(["device_id", "ts", "lat", "lng"], r, strict=True)) for r in rows]
    )
    frame = body_to_frame(body, "application/json", max_rows=100)
    rejects = Rejects()
    out = frame_to_pings(frame, ParseOptions(now=NOW), rejects)
    assert out.height + rejects.total == len(rows)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_window_parameter_parses_or_is_bad_input(text: str) -> None:
    try:
        assert isinstance(parse_when(text), int)
    except BadInput:
        pass


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=1, max_size=3000))
def test_any_file_reads_or_fails_cleanly(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "f.csv"
    p.write_bytes(b"device_id,ts,lat,lng\n" + data)
    try:
        list(read_pings(p, ParseOptions(now=NOW), Rejects()))
    except BadInput as exc:
        assert "\n" not in str(exc)


def test_huge_device_ids_and_unicode_are_handled() -> None:
    frame = pl.DataFrame(
        {
            "device_id": ["x" * 10_000, "设备-🚇-١٢٣", "a\u0000b"],
            "ts": ["1700000000"] * 3,
            "lat": ["31.2"] * 3,
            "lng": ["121.4"] * 3,
        }
    )
    rejects = Rejects()
    out = frame_to_pings(frame, ParseOptions(now=NOW), rejects)
    assert out["device_id"].to_list() == ["设备-🚇-١٢٣", "a\u0000b"]
    assert rejects.rows == [(1, "device_id longer than 256 bytes")]


@pytest.mark.parametrize("n", [1001, 5000])
def test_row_limit(n: int) -> None:
    from heatmap.errors import TooLarge

    body = "device_id,ts,lat,lng\n" + "a,1700000000,31.2,121.4\n" * n
    with pytest.raises(TooLarge):
        body_to_frame(body.encode(), "text/csv", max_rows=1000)
