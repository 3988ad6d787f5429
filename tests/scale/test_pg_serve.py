"""Two ``heatmap serve`` processes on one PostgreSQL store, each fed half of a stream.

Batches go to the two nodes concurrently (one client thread per node), some twice with the same
batch id, once to each node. The counts must equal a single-process ingest of the whole stream,
and both nodes must serve the same tiles and cells, for open windows and, after a last batch
closes them, for closed windows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pytest

from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.read import Reader
from heatmap.service import Heatmap
from heatmap.simulate import simulate_pings
from tiles.grid import TMS

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TOKEN = "scale-token"
SECRET = "scale-secret"
K_MIN = 3
WINDOW_S = 300
SPAN_S = 30 * 60
LATENESS_S = SPAN_S + 600  # covers the stream: the order batches arrive in cannot matter
N_BATCHES = 12
TWICE = {2, 5, 9}  # these batches are also sent to the other node, same batch id
PEOPLES_SQUARE = (31.2335, 121.4755)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env.update(
        HEATMAP_DB=db,
        HEATMAP_SECRET=SECRET,
        HEATMAP_INGEST_TOKEN=TOKEN,
        HEATMAP_K_MIN=str(K_MIN),
        HEATMAP_ALLOWED_LATENESS_S=str(LATENESS_S),
        HEATMAP_BASEMAP_URL="",
    )
    return env


@pytest.fixture(scope="module")
def stream() -> pl.DataFrame:
    """30 minutes of 1,500 simulated devices, ending well before the watermark flush."""
    now = int(time.time())
    start = (now - 3 * 3600) // WINDOW_S * WINDOW_S
    tables = simulate_pings(
        devices=1500, start=datetime.fromtimestamp(start, UTC), hours=SPAN_S / 3600, seed=21
    )
    frame = pl.from_arrow(pa.concat_tables(list(tables)))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("ts")


def _batches(stream: pl.DataFrame) -> list[pl.DataFrame]:
    lo, hi = int(stream["ts"].min()), int(stream["ts"].max()) + 1  # type: ignore[arg-type]
    edges = [lo + (hi - lo) * i // N_BATCHES for i in range(N_BATCHES + 1)]
    return [
        stream.filter(pl.col("ts").is_between(a, b, closed="left"))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _flush(stream: pl.DataFrame) -> pl.DataFrame:
    # One device, late enough that the watermark passes every window of the stream.
    ts = int(stream["ts"].max()) + LATENESS_S + WINDOW_S  # type: ignore[operator]
    assert ts < time.time()
    return pl.DataFrame({"device_id": ["flush"], "ts": [ts], "lat": [31.0], "lng": [121.0]})


@pytest.fixture(scope="module")
def nodes(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """Start two ``heatmap serve`` processes on a fresh database; yield (db url, base urls)."""
    db = pg_server.create_database("serve")
    root = tmp_path_factory.mktemp("serve")
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(2):
            port = _free_port()
            log = (root / f"node{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "heatmap", "serve", "--host", "127.0.0.1", "--port",
                     str(port)],
                    cwd=root, env=_env(db), stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for i, url in enumerate(urls):
            while True:
                if procs[i].poll() is not None:
                    pytest.fail(f"node {i} exited: {(root / f'node{i}.log').read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code in (200, 404, 503):
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"node {i} did not start: {(root / f'node{i}.log').read_text()}")
                time.sleep(0.2)
        yield db, urls
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _post(client: httpx.Client, url: str, frame: pl.DataFrame, batch_id: str) -> dict:
    r = client.post(
        f"{url}/api/v1/pings",
        content=frame.write_csv().encode(),
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "text/csv",
            "Idempotency-Key": batch_id,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _send_halves(urls: list[str], batches: list[pl.DataFrame]) -> list[dict]:
    """Node k gets batches k, k+2, ... plus a copy of the other node's TWICE batches."""
    answers: list[dict] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with httpx.Client() as client:
                for i in range(N_BATCHES):
                    if i % 2 == k or i in TWICE:
                        answers.append(_post(client, urls[k], batches[i], f"batch-{i}"))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return answers


def _single_process(stream: pl.DataFrame, tmp: Path) -> Heatmap:
    s = Settings(
        db=str(tmp / "single" / "h.db"), secret=SECRET, k_min=K_MIN,
        allowed_lateness_s=LATENESS_S, basemap_url="",
    )  # fmt: skip
    hm = Heatmap(s)
    for i, batch in enumerate(_batches(stream)):
        hm.ingest_frame(batch.with_columns(pl.col("ts").cast(pl.String)), ParseOptions(), f"b{i}")
    return hm


def _published(hm: Heatmap) -> dict:
    out = {}
    reader = Reader.of(hm)
    for info in hm.store.windows():
        for res, snap in reader.snapshots(info).items():
            out[(info.w, res)] = (snap.cells.tolist(), snap.people.tolist(), info.closed)
    return out


def _tiles() -> list[tuple[int, int, int]]:
    lat, lng = PEOPLES_SQUARE
    out = []
    for z in (9, 11, 13):
        t = TMS.tile(lng, lat, z)
        out += [(z, t.x, t.y), (z, t.x + 1, t.y)]
    return out


def _same_everywhere(urls: list[str], windows: list[dict[str, str]]) -> int:
    """Assert both nodes answer the same tiles and cells for each window or release (query
    parameters; ``{}`` is the latest release); return the tiles with data."""
    non_empty = 0
    with httpx.Client(timeout=30) as client:
        for win in windows:
            for z, x, y in _tiles():
                for fmt in ("mvt", "png"):
                    got = [client.get(f"{u}/tiles/{z}/{x}/{y}.{fmt}", params=win) for u in urls]
                    assert [r.status_code for r in got] in ([200, 200], [204, 204]), win
                    assert got[0].content == got[1].content, (win, z, x, y, fmt)
                    assert got[0].headers.get("etag") == got[1].headers.get("etag")
                    non_empty += bool(got[0].content)
            cells = [
                client.get(
                    f"{u}/api/v1/cells",
                    params={"bbox": "121.40,31.15,121.55,31.30", "res": 8, **win},
                ).json()
                for u in urls
            ]
            assert cells[0] == cells[1]
    return non_empty


def _wait_for_versions(urls: list[str], expected: list[dict]) -> None:
    # Nodes poll the shared windows table (cheap); give the other node's cache a moment.
    deadline = time.monotonic() + 10
    while True:
        seen = [httpx.get(f"{u}/api/v1/windows", params={"limit": 1000}).json() for u in urls]
        if all(s == expected[0] for s in seen) or time.monotonic() > deadline:
            assert seen[0] == seen[1]
            return
        time.sleep(0.3)


def test_two_nodes_count_like_one_process(nodes, stream: pl.DataFrame, tmp_path: Path) -> None:
    db, urls = nodes
    batches = _batches(stream)
    answers = _send_halves(urls, batches)
    assert len(answers) == N_BATCHES + len(TWICE)
    assert sum(a["duplicate"] for a in answers) == len(TWICE)
    assert sum(a["accepted"] for a in answers if not a["duplicate"]) == stream.height
    assert all(a["late"] == 0 for a in answers)

    single = _single_process(stream, tmp_path)
    shared = Heatmap(Settings(db=db, secret=SECRET, k_min=K_MIN,
                              allowed_lateness_s=LATENESS_S, basemap_url=""))  # fmt: skip
    # Open windows: both nodes' commits merged in the shared device state.
    want = _published(single)
    assert want and not any(closed for *_, closed in want.values())
    assert _published(shared) == want
    expected = httpx.get(f"{urls[0]}/api/v1/windows", params={"limit": 1000}).json()
    _wait_for_versions(urls, [expected])
    # "Now": both nodes serve the same latest release (one node made it, the other reads it).
    release = expected["latest_release"]
    assert release is not None and release["kind"] == "release"
    assert _same_everywhere(urls, [{}, {"release": release["as_of"]}]) > 0

    # A last batch moves the watermark past the stream: every window closes, on both sides.
    flush = _flush(stream).with_columns(pl.col("ts").cast(pl.String))
    with httpx.Client() as client:
        closing = _post(client, urls[1], flush, "flush")
    assert closing["windows_closed"] >= SPAN_S // WINDOW_S
    single.ingest_frame(flush, ParseOptions(), "flush")
    want = _published(single)
    assert sum(closed for *_, closed in want.values()) >= SPAN_S // WINDOW_S
    assert _published(shared) == want
    expected = httpx.get(f"{urls[1]}/api/v1/windows", params={"limit": 1000}).json()
    _wait_for_versions(urls, [expected])
    closed = [{"window": datetime.fromtimestamp(w.window.start, UTC).isoformat()} for w in
              single.store.windows() if w.closed][::2]  # fmt: skip
    assert _same_everywhere(urls, closed) > 0
    single.close()
    shared.close()
