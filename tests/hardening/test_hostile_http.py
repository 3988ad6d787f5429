"""Hostile clients against the real ``heatmap serve`` (uvicorn over TCP): slow and idle clients,
huge heads and bodies, path tricks, odd numbers and unicode. Never a 500, never a hang, memory
bounded. (``tests/api`` covers the 4xx of ordinary bad requests in process.)
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import schemathesis
from hardening_server import (
    AUTH,
    OPS,
    TOKEN,
    Server,
    fill_store,
    make_batches,
    raw_exchange,
    status_of,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.slow
TIMEOUT_S = 1.5  # HEATMAP_REQUEST_TIMEOUT_S of the server under test
T0 = (int(time.time()) - 3 * 3600) // 300 * 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A served store with a few windows; short request deadline, 64 KiB body limit."""
    tmp = tmp_path_factory.mktemp("hostile")
    db = tmp / "store" / "heatmap.db"
    fill_store(db, make_batches(8, devices=120, t0=T0, span_s=150, seed=4))
    srv = Server(
        tmp, db, request_timeout_s=TIMEOUT_S, max_body_bytes=64 * 1024, max_rows=1000
    ).start()
    yield srv
    srv.kill()


def _head(port: int, method: str, target: str, extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    """Read until the server closes the connection, or the (monotonic) deadline passes."""
    chunks = []
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _no_server_error(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics", headers=OPS).text
    assert 'status="500"' not in text and "Traceback" not in server.log()


# -- slow and idle clients ----------------------------------------------------------------------


def test_slow_and_idle_clients_are_cut_off_while_others_are_served(server: Server) -> None:
    port = server.port
    idle = socket.create_connection(("127.0.0.1", port))
    slow_head = socket.create_connection(("127.0.0.1", port))
    slow_head.sendall(b"GET /api/v1/legend HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    post = _head(port, "POST", "/api/v1/pings", f"Authorization: Bearer {TOKEN}\r\n"
                 "Content-Type: text/csv\r\nContent-Length: 5000\r\n")  # fmt: skip
    slow_bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]
    for s in slow_bodies:
        s.sendall(post + b"device_id,ts,lat,lng\n")
    stop = threading.Event()

    def drip() -> None:  # one byte every 0.2 s: each read resets any idle timer
        while not stop.wait(0.2):
            for s in (slow_head, *slow_bodies):
                try:
                    s.send(b"a")
                except OSError:
                    pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        # While 26 clients trickle, everyone else is served.
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/api/v1/legend").status_code == 200
            assert http.get("/api/v1/windows").status_code == 200
        deadline = time.monotonic() + 20 * TIMEOUT_S  # generous: not a timing assertion
        answers = [_read_all(s, deadline) for s in (idle, slow_head, *slow_bodies)]
    finally:
        stop.set()
        dripper.join(5)
        for s in (idle, slow_head, *slow_bodies):
            s.close()
    assert answers[0] == b""  # an idle connection is closed without a word
    assert status_of(answers[1]) == 408 and b"headers not received" in answers[1]
    # The first batches in are cut off at the deadline; those beyond the ingest limit are shed
    # at once; either way the connection is closed, not left to the trickle.
    statuses = [status_of(a) for a in answers[2:]]
    assert set(statuses) <= {408, 503} and statuses.count(408) >= 4, statuses
    for a in answers[2:]:
        assert b"connection: close" in a.lower()
        assert b"request body not received" in a or b"retry-after: 1" in a.lower()
    metrics = httpx.get(f"{server.url}/metrics", headers=OPS).text
    assert "heatmap_http_inflight 0.0" in metrics
    assert 'route="/api/v1/pings",status="408"' in metrics
    _no_server_error(server)


def test_an_aborted_upload_is_not_a_server_error(server: Server) -> None:
    port = server.port
    post = _head(port, "POST", "/api/v1/pings", f"Authorization: Bearer {TOKEN}\r\n"
                 "Content-Type: text/csv\r\nContent-Length: 5000\r\n")  # fmt: skip
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(post + b"device_id,ts,lat,lng\n")
    deadline = time.monotonic() + 20
    while (
        'route="/api/v1/pings",status="499"} 3.0'
        not in httpx.get(f"{server.url}/metrics", headers=OPS).text
    ):
        assert time.monotonic() < deadline, "the aborted uploads were never accounted for"
        time.sleep(0.05)
    _no_server_error(server)


# -- huge heads and bodies -----------------------------------------------------------------------


def test_huge_heads_are_431_and_memory_stays_bounded(server: Server) -> None:
    port = server.port
    before = server.rss_kb()
    cases = {
        "one 100 KB header": _head(port, "GET", "/healthz", "X-Big: " + "a" * 100_000 + "\r\n"),
        "10,000 headers": _head(
            port, "GET", "/healthz", "".join(f"X-{i}: v\r\n" for i in range(10_000))
        ),
        "a 200 KB URL": _head(port, "GET", "/api/v1/legend?q=" + "b" * 200_000),
    }  # fmt: skip
    for name, request in cases.items():
        answer = raw_exchange(port, request)
        assert status_of(answer) == 431, (name, answer[:120])
    # 40 MB of header, streamed: answered 431 (or reset) long before the end; never stored.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        sent = 0
        try:
            while sent < 40 << 20:
                s.sendall(b"z" * 65536)
                sent += 65536
        except OSError:
            pass
        assert sent < 40 << 20  # the server hung up
        s.settimeout(10)
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert answer == b"" or status_of(answer) == 431
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert server.rss_kb() - before < 64 * 1024  # KiB
    _no_server_error(server)


def test_huge_bodies_are_413_and_the_connection_is_closed(server: Server) -> None:
    port = server.port
    before = server.rss_kb()
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\n"
    declared = _head(port, "POST", "/api/v1/pings", auth + "Content-Length: 10000000000\r\n")
    answer = raw_exchange(port, declared)
    assert status_of(answer) == 413 and b"connection: close" in answer.lower()
    assert b"exceeds the limit" in answer
    # Chunked, no length: cut off once past the limit, while still sending.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_head(port, "POST", "/api/v1/pings", auth + "Transfer-Encoding: chunked\r\n"))
        chunk = b"a,1,31.2,121.4\n" * 4000
        try:
            for _ in range(200):  # up to 12 MB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass
        answer = _read_all(s, time.monotonic() + 10)
    assert status_of(answer) == 413
    # A gzip bomb: 64 KiB on the wire, 64 MiB inflated.
    bomb = gzip.compress(b"0" * (64 << 20), compresslevel=9)
    r = httpx.post(
        f"{server.url}/api/v1/pings",
        content=bomb,
        headers={**AUTH, "Content-Type": "text/csv", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 413 and "decompressed" in r.json()["detail"]
    # A body where none is expected is read past or ignored, never a 500.
    big_get = _head(port, "GET", "/api/v1/legend", "Content-Length: 3000000\r\n")
    answer = raw_exchange(port, big_get + b"x" * 3_000_000)
    assert 200 <= status_of(answer) < 500
    assert server.rss_kb() - before < 64 * 1024
    _no_server_error(server)


# -- path tricks, numbers, unicode ---------------------------------------------------------------

TILE_TRICKS = [
    "/tiles/../../etc/passwd",
    "/tiles/%2e%2e/%2e%2e/etc/passwd",
    "/tiles/..%2f..%2f..%2fetc%2fpasswd",
    "/tiles/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
    "/tiles/3/0/..%2f..%2f..%2fetc%2fpasswd.png",
    "/tiles/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/tiles/-1/0/0.png",
    "/tiles/3/-1/0.mvt",
    "/tiles/99999999999999999999999/0/0.mvt",
    "/tiles/3/0/99999999999999999999999999999999.png",
    "/tiles/" + "9" * 5000 + "/0/0.png",
    "/tiles/3/0/0.mvt.png",
    "/tiles/3/0/0.png.mvt",
    "/tiles/3/0/0.MVT",
    "/tiles/3/0/0@3x.png",
    "/tiles/3/0/0@2x.mvt",
    "/tiles/3/0/0%00.png",
    "/tiles/3/0/0.png%00.mvt",
    "/tiles/%EF%BC%93/0/0.png",
    "/tiles/%D9%A3/6/3.png",
    "/tiles/%F0%9F%99%82/0/0.png",
    "/tiles/1e3/0/0.png",
    "/tiles/0x3/0/0.png",
    "/tiles/3.0/0/0.png",
    "/tiles/3/0/0.png?window=../../etc/passwd",
    "/tiles/3/0/0.png?window=%00",
    "/tiles/3/0/0.png?window=%ff%fe",
    "/tiles/3/0/0.png?window=" + "9" * 60,
    "/tiles/3/0/0.png?window=1e308",
    "/tiles/3/0/0.png?window=-99999999999999",
    "/tiles/3/0/0.mvt?" + "window=1&" * 500,
    "//tiles/3/0/0.png",
    "/tiles//3/0/0.png",
    "/tiles/3/0/0.png/",
    "/tiles/3/0/0.png;.mvt",
    "/TILES/3/0/0.png",
    "/tiles/3/0/0.png#fragment",
    "/tiles/3/0/0.png%0d%0aSet-Cookie:%20pwned=1",
    "/tiles.json?format=mvt%00",
    "/tiles.json?format=../../etc/passwd",
    "http://evil.example/tiles/3/0/0.png",
    "*",
]


def test_path_tricks_in_tile_urls_get_a_4xx_or_a_tile(server: Server) -> None:
    port = server.port
    bad = []
    for target in TILE_TRICKS:
        answer = raw_exchange(port, _head(port, "GET", target))
        status = status_of(answer)
        head = answer.partition(b"\r\n\r\n")[0].lower()
        if not 200 <= status < 500 or b"root:" in answer or b"set-cookie" in head:
            bad.append((target[:80], status, answer[:120]))
    assert bad == []
    _no_server_error(server)


QUERY_TRICKS = [
    "/api/v1/density?lat=1e309&lng=121.4",
    "/api/v1/density?lat=NaN&lng=121.4",
    "/api/v1/density?lat=-inf&lng=121.4",
    "/api/v1/density?lat=%D9%A3%D9%A1&lng=121.4",  # Arabic-Indic digits
    "/api/v1/density?lat=%EF%BC%93%EF%BC%91&lng=121.4",  # full-width digits
    "/api/v1/density?lat=" + "9" * 5000 + "&lng=121.4",
    "/api/v1/density?lat=31.2&lng=121.4&res=" + "9" * 400,
    "/api/v1/density?lat=31.2&lng=121.4&res=-0",
    "/api/v1/density?lat=31.2&lng=121.4&lat=95",
    "/api/v1/density?lat=31.2&lng=121.4&window=%E2%80%AE2026",
    "/api/v1/density?lat=31.2&lng=121.4&window=" + "1" * 64,
    "/api/v1/cells?bbox=" + ",".join(["1"] * 60) + "&res=8",
    "/api/v1/cells?bbox=121.4,31.2,121.5,31.3&res=1e1",
    "/api/v1/cells?bbox=1e308,-1e308,1e308,1e308&res=8",
    "/api/v1/cells?bbox=121.4%2C31.2%2C121.5%2C31.3&res=8",
    "/api/v1/cells?bbox=%EF%BC%91%EF%BC%92%EF%BC%91,31.2,121.5,31.3&res=8",
    "/api/v1/cells?bbox=121.4,31.2,121.5,31.3&res=8&window=latest%00",
    "/api/v1/windows?limit=" + "9" * 300,
    "/api/v1/windows?limit=-1&before=%F0%9F%99%82",
    "/api/v1/windows?before=9999-12-31T23:59:59%2B14:00",
    "/api/v1/windows?before=-9999999999999999999999",
    "/api/v1/places/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/v1/places/" + "%E4%BA%BA" * 300,
    "/api/v1/places/%00",
    "/api/v1/stats?window=0",
    "/api/v1/legend?" + "&".join(f"p{i}={i}" for i in range(2000)),
]


def test_hostile_query_strings_get_a_4xx_or_an_answer(server: Server) -> None:
    port = server.port
    bad = []
    for target in QUERY_TRICKS:
        answer = raw_exchange(port, _head(port, "GET", target))
        status = status_of(answer)
        if not 200 <= status < 500:
            bad.append((target[:80], status, answer[:160]))
        elif status >= 400 and status != 431:
            body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
            if not isinstance(body.get("detail"), str):
                bad.append((target[:80], status, body))
    assert bad == []
    _no_server_error(server)


def test_hostile_device_ids_and_values_in_batches(server: Server) -> None:
    ts = T0 + 2000
    ids = [
        "x" * 10_000, "设备-🚇-١٢٣", "a\u0000b", "\u202eevil", "e\u0301\u0301\u0301",
        "'; DROP TABLE", "../../etc/passwd", " ", "\ufeffbom", "\ud7ff", "9" * 300,
    ]  # fmt: skip
    csv = "device_id,ts,lat,lng\n" + "".join(f'"{i}",{ts},31.23,121.47\n' for i in ids)
    records = [
        {"device_id": "ok", "ts": "9" * 400, "lat": 31.2, "lng": 121.4},
        {"device_id": "ok", "ts": ts, "lat": "1e309", "lng": 121.4},
        {"device_id": "ok", "ts": ts, "lat": -0.0, "lng": -0.0},
        {"device_id": ["a"], "ts": {"b": 1}, "lat": True, "lng": None},
        {"device_id": "ok", "ts": ts, "lat": 31.2, "lng": 121.4, "extra": "x" * 1000},
    ]
    bodies = [
        (csv.encode(), "text/csv"),
        (orjson.dumps(records), "application/json"),
        (b'[{"device_id": 1' + b"0" * 400 + b', "ts": 1, "lat": 1, "lng": 1}]', "application/json"),
        (b'[{"device_id": "a", "ts": NaN, "lat": 1, "lng": 1}]', "application/json"),
        (b"\n".join(orjson.dumps(r, default=str) for r in records), "application/x-ndjson"),
        (b'{"device_id": "a", "device_id": "b", "ts": 1, "lat": 1, "lng": 1}\n',
         "application/x-ndjson"),
        (b"[" + b"[" * 5000 + b"]" * 5000 + b"]", "application/json"),
    ]  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body, ctype in bodies:
            r = http.post("/api/v1/pings", content=body, headers={**AUTH, "Content-Type": ctype})
            assert r.status_code in (200, 413, 415, 422), (r.status_code, r.text[:200])
            assert isinstance(r.json(), dict)
        r = http.post(
            "/api/v1/pings", content=csv.encode(), headers={**AUTH, "Content-Type": "text/csv"}
        )
        reasons = {x["row"]: x["reason"] for x in r.json()["rejected"]}
        assert "256 bytes" in reasons[1]  # the 10 KB id, by row number, not echoed
        assert "x" * 300 not in r.text
    _no_server_error(server)


# -- schemathesis over TCP -----------------------------------------------------------------------


def test_no_generated_request_reaches_a_500_over_tcp(server: Server) -> None:
    """Schemathesis over TCP: the whole stack (httptools, the bounded protocol, every
    middleware), not only the app as ``tests/api`` does. Positive and negative cases, 6 per
    operation and mode (the lazy ``from_fixture`` loader does not run under pytest 9)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=6,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.generate],
            )
            def run(case: schemathesis.Case) -> None:
                headers = AUTH if case.method == "POST" else None
                response = case.call(headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

            try:
                run()
            except Unsatisfiable:  # nothing invalid to send (an operation without inputs)
                assert mode == GenerationMode.NEGATIVE
                continue
            tried += 1
    assert failures == [] and tried > 15


def test_the_server_survived(server: Server) -> None:
    assert server.proc is not None and server.proc.poll() is None
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    _no_server_error(server)
