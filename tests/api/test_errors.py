"""Every class of bad request gets the right 4xx and a JSON reason; nothing reaches a 500."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator

import polars as pl
import pytest
from api_testdata import AUTH, PLANNER, TOKEN, Loaded, advance_clock, post

from fastapi.testclient import TestClient

ROWS = pl.DataFrame(
    {
        "device_id": ["a", "b", "c"],
        "ts": [1_795_900_000, 1_795_900_010, 1_795_900_020],
        "lat": [31.23, 31.24, 31.25],
        "lng": [121.47, 121.48, 121.49],
    }
)
MakeClient = Callable[..., TestClient]


def reason(r: object, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    detail = r.json()["detail"]  # type: ignore[attr-defined]
    assert isinstance(detail, str) and detail
    return detail


# -- ingest ------------------------------------------------------------------------------------


def test_ingest_is_404_when_no_token_is_configured(make_client: MakeClient) -> None:
    client = make_client(ingest_token=None)
    assert "disabled" in reason(post(client, ROWS), 404)


def test_wrong_or_missing_token_is_401(make_client: MakeClient) -> None:
    client = make_client()
    body = ROWS.write_csv().encode()
    for headers in (
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {},
    ):
        r = client.post(
            "/api/v1/pings", content=body, headers={**headers, "Content-Type": "text/csv"}
        )
        reason(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/v1/stats").status_code == 404  # nothing was written


def test_wrong_content_type_is_415(make_client: MakeClient) -> None:
    client = make_client()
    for ctype in ("text/plain", "application/xml", ""):
        r = client.post("/api/v1/pings", content=b"x", headers={**AUTH, "Content-Type": ctype})
        reason(r, 415)
    r = client.post(
        "/api/v1/pings",
        content=b"x",
        headers={**AUTH, "Content-Type": "text/csv", "Content-Encoding": "br"},
    )
    reason(r, 415)


def test_huge_body_is_413_by_length_and_by_stream(make_client: MakeClient) -> None:
    client = make_client(max_body_bytes=2048)
    big = b"device_id,ts,lat,lng\n" + b"d,1795900000,31.2,121.4\n" * 200
    r = client.post("/api/v1/pings", content=big, headers={**AUTH, "Content-Type": "text/csv"})
    assert "2,048" in reason(r, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(10):
            yield big[:1000]

    r = client.post("/api/v1/pings", content=chunks(), headers={**AUTH, "Content-Type": "text/csv"})
    reason(r, 413)
    bomb = gzip.compress(big * 10)
    assert len(bomb) < 2048
    r = client.post(
        "/api/v1/pings",
        content=bomb,
        headers={**AUTH, "Content-Type": "text/csv", "Content-Encoding": "gzip"},
    )
    assert "decompressed" in reason(r, 413)


def test_gzip_body_is_accepted(make_client: MakeClient) -> None:
    client = make_client()
    r = client.post(
        "/api/v1/pings",
        content=gzip.compress(ROWS.write_csv().encode()),
        headers={**AUTH, "Content-Type": "text/csv", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 3


def test_too_many_rows_is_413(make_client: MakeClient) -> None:
    client = make_client(max_rows=2)
    for fmt in ("csv", "ndjson", "json"):
        assert "2" in reason(post(client, ROWS, fmt), 413)


def test_unparseable_bodies_are_422(make_client: MakeClient) -> None:
    client = make_client()
    for body, ctype in (
        (b"[{", "application/json"),
        (b'{"device_id": "a"}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"{not json}\n", "application/x-ndjson"),
        (b"\xff\xfe\x00bad", "text/csv"),
        (b"foo,bar\n1,2\n", "text/csv"),  # missing columns
        (b"", "text/csv"),
        (b"[]", "application/json"),
    ):
        r = client.post("/api/v1/pings", content=body, headers={**AUTH, "Content-Type": ctype})
        reason(r, 422)
    assert client.get("/api/v1/stats").status_code == 404


def test_bad_rows_are_reported_one_by_one(make_client: MakeClient) -> None:
    client = make_client()
    body = (
        b"device_id,ts,lat,lng\n"
        b"a,1795900000,31.23,121.47\n"
        b"b,1795900001,95.0,121.47\n"
        b"c,yesterday,31.23,121.47\n"
        b",1795900003,31.23,121.47\n"
    )
    r = client.post("/api/v1/pings", content=body, headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 200
    a = r.json()
    assert a["accepted"] == 1 and a["rejected_total"] == 3
    rows = {x["row"]: x["reason"] for x in a["rejected"]}
    assert set(rows) == {2, 3, 4}
    assert "lat" in rows[2] and "ts" in rows[3] and "device_id" in rows[4]


def test_strict_batch_with_a_bad_row_writes_nothing(make_client: MakeClient) -> None:
    client = make_client()
    bad = pl.concat([ROWS, ROWS.head(1).with_columns(lat=pl.lit(99.0))])
    assert "row 4" in reason(post(client, bad, strict="true"), 422)
    assert client.get("/api/v1/stats").status_code == 404


def test_batch_id_is_idempotent(make_client: MakeClient) -> None:
    client = make_client()
    first = post(client, ROWS, batch_id="b-1").json()
    again = post(client, ROWS, batch_id="b-1").json()
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["accepted"] == first["accepted"] == 3
    body, headers = ROWS.write_csv().encode(), {**AUTH, "Content-Type": "text/csv"}
    r = client.post("/api/v1/pings", content=body, headers={**headers, "Idempotency-Key": "b-1"})
    assert r.json()["duplicate"] is True
    advance_clock(client, int(ROWS["ts"].max()))  # type: ignore[arg-type]
    stats = client.get("/api/v1/stats", headers=PLANNER).json()  # exact values
    assert stats["people"] == 3.0  # counted once
    reason(post(client, ROWS, batch_id="has space"), 422)


# -- reads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "hint"),
    [
        ("/api/v1/cells?bbox=121.5,31.2,121.4,31.3&res=8", 422, "inverted"),
        ("/api/v1/cells?bbox=121.4,31.3,121.5,31.2&res=8", 422, "inverted"),
        ("/api/v1/cells?bbox=-180,-85,180,85&res=10", 422, "20,000"),
        ("/api/v1/cells?bbox=120,30,123,32&res=9", 422, "limit"),
        ("/api/v1/cells?bbox=a,b,c,d&res=8", 422, "bbox"),
        ("/api/v1/cells?bbox=1,2,3&res=8", 422, "bbox"),
        ("/api/v1/cells?bbox=nan,30,121,31&res=8", 422, "finite"),
        ("/api/v1/cells?bbox=121.4,31.2,121.5,31.3&res=12", 422, "res"),
        ("/api/v1/cells?bbox=121.4,31.2,121.5,31.3&res=99", 422, "res"),
        ("/api/v1/cells?bbox=121.4,31.2,121.5,31.3", 422, "res"),
        ("/api/v1/density?lat=91&lng=121", 422, "lat"),
        ("/api/v1/density?lat=31&lng=181", 422, "lng"),
        ("/api/v1/density?lat=31", 422, "lng"),
        ("/api/v1/density?lat=x&lng=121", 422, "lat"),
        ("/api/v1/density?lat=31.2&lng=121.4&res=3", 422, "res"),
        ("/api/v1/density?lat=31.2&lng=121.4&window=1999-01-01T00:00:00Z", 404, "no window"),
        ("/api/v1/density?lat=31.2&lng=121.4&window=yesterday", 422, "ISO"),
        ("/api/v1/density?lat=31.2&lng=121.4&window=inf", 422, "window"),
        ("/api/v1/density?lat=31.2&lng=121.4&window=1e300", 422, "window"),
        ("/api/v1/windows?limit=0", 422, "limit"),
        ("/api/v1/windows?before=soon", 422, "ISO"),
        ("/api/v1/places/atlantis", 404, "atlantis"),
        ("/tiles/19/0/0.mvt", 404, "zoom"),
        ("/tiles/3/8/0.png", 404, "x 8"),
        ("/tiles/3/0/-1.mvt", 404, "y -1"),
        ("/tiles/99999999999999999999/0/0.mvt", 404, "zoom"),
        ("/tiles/a/0/0.mvt", 422, "z"),
        ("/tiles/3/0/0.mvt?window=1999-01-01T00:00:00Z", 404, "no window"),
        ("/tiles.json?format=jpg", 422, "format"),
        ("/nowhere", 404, "Not Found"),
    ],
)
def test_bad_reads_get_the_right_4xx(loaded: Loaded, url: str, status: int, hint: str) -> None:
    assert hint.lower() in reason(loaded.client.get(url), status).lower()


def test_wrong_method_is_405_json(loaded: Loaded) -> None:
    reason(loaded.client.delete("/api/v1/legend"), 405)


def test_reads_on_an_empty_store_are_404(make_client: MakeClient) -> None:
    client = make_client()
    for url in (
        "/api/v1/density?lat=31.2&lng=121.4",
        "/api/v1/stats",
        "/api/v1/places",
        "/api/v1/cells?bbox=121.4,31.2,121.5,31.3&res=8",
        "/tiles/12/3430/1673.mvt",
    ):
        assert "no data" in reason(client.get(url), 404)
    assert client.get("/api/v1/windows").json()["total"] == 0
    assert client.get("/tiles.json").status_code == 200
    assert client.get("/healthz").json()["latest_window"] is None
