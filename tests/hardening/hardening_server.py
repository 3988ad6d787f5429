"""Helpers of the hardening tests: a real ``heatmap serve`` subprocess, raw HTTP, pings.

Imported by name (pytest puts this folder on ``sys.path``), like ``api_testdata``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import h3
import httpx

HEATMAP = Path(sys.executable).parent / "heatmap"
TOKEN = "hardening-token-5678"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "hardening-secret"
BASE_RES = 10
UP_TIMEOUT_S = 90.0

Row = tuple[str, int, float, float]


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


OPS_TOKEN = "ops-token-5678"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
"""Headers of an operations request (``/metrics``)."""


def clean_env(**settings: object) -> dict[str, str]:
    """Return the environment without inherited ``HEATMAP_*`` values, plus ``settings``.

    The operations token is set unless ``settings`` says otherwise.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATMAP_")}
    env["HEATMAP_METRICS_TOKEN"] = OPS_TOKEN
    env.update({f"HEATMAP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Server:
    """``heatmap serve`` on a free port of 127.0.0.1, its output captured in a log file."""

    def __init__(
        self,
        workdir: Path,
        db: Path,
        preexec: Callable[[], None] | None = None,
        name: str = "serve",
        **settings: object,
    ) -> None:
        settings.setdefault("secret", SECRET)
        settings.setdefault("ingest_token", TOKEN)
        settings.setdefault("basemap_url", "")
        settings.setdefault("k_min", 2)
        self.env = clean_env(db=db, **settings)
        self.workdir = workdir
        self.db = db
        self.preexec = preexec
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (without waiting for it to answer)."""
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(HEATMAP), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=log,
                preexec_fn=self.preexec,  # one test drops capabilities
            )
        return self.proc

    def start(self) -> Server:
        """Start and wait until ``/healthz`` answers 200."""
        proc = self.spawn()
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not come up:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), or kill after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """Return everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kb(self) -> int:
        """Return the server's resident memory, KiB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])


def raw_exchange(port: int, request: bytes, timeout: float = 15.0) -> bytes:
    """Send raw bytes, return everything read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            s.settimeout(timeout)
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return head.split(b" ")[1:2] in ([b"204"], [b"304"])


def status_of(response: bytes) -> int:
    """Return the status code of a raw response (0 when there is none)."""
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def make_batches(
    n: int, devices: int, t0: int, span_s: int = 40, seed: int = 1
) -> list[tuple[str, list[Row]]]:
    """Return ``n`` batches ``(batch_id, rows)`` of new devices, in time order.

    Batch ``i`` holds ``devices`` devices seen only in it, each pinging a few times in
    ``[t0 + i * span_s, t0 + (i + 1) * span_s)`` around People's Square.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows: list[Row] = []
        for d in range(devices):
            lat, lng = 31.2335 + rng.gauss(0, 0.01), 121.4755 + rng.gauss(0, 0.01)
            for _ in range(rng.randint(1, 4)):
                ts = t0 + i * span_s + rng.randrange(span_s)
                # Rounded as sent (CSV, 6 decimals), so the reference sees the same point.
                rows.append((f"b{i}-dev{d}", ts, round(lat + rng.gauss(0, 5e-4), 6), round(lng, 6)))
        out.append((f"batch-{i:03d}", rows))
    return out


def rows_to_csv(rows: list[Row]) -> bytes:
    """Return rows as a CSV body."""
    lines = ["device_id,ts,lat,lng", *(f"{d},{t},{a:.6f},{b:.6f}" for d, t, a, b in rows)]
    return ("\n".join(lines) + "\n").encode()


def reference_counts(rows: list[Row], window_s: int = 300) -> dict[tuple[int, int], int]:
    """Plain h3-py: devices per (window, base cell), latest ping per device per window."""
    latest: dict[tuple[int, str], tuple[int, int]] = {}
    for dev, ts, lat, lng in rows:
        key = (ts // window_s, dev)
        cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, BASE_RES))
        cur = latest.get(key)
        if cur is None or (ts, cell) > cur:
            latest[key] = (ts, cell)
    out: dict[tuple[int, int], int] = defaultdict(int)
    for (w, _dev), (_ts, cell) in latest.items():
        out[(w, cell)] += 1
    return dict(out)


def store_counts(db: Path) -> dict[tuple[int, int], int]:
    """Return devices per (window, base cell) as the store holds them (open and closed)."""
    from heatmap.config import Settings
    from heatmap.store.sqlite import SQLiteStore

    store = SQLiteStore(Settings(db=str(db), secret=SECRET))  # type: ignore[call-arg]
    try:
        out: dict[tuple[int, int], int] = {}
        infos = store.windows()
        closed = [i.w for i in infos if i.closed]
        for w, (cells, dev) in store.read_base_counts(closed).items():
            out.update({(w, int(c)): int(n) for c, n in zip(cells, dev, strict=True)})
        for info in infos:
            if not info.closed:
                cells, dev = store.read_open_counts(info.w)
                out.update({(info.w, int(c)): int(n) for c, n in zip(cells, dev, strict=True)})
        return out
    finally:
        store.close()


def integrity(db: Path) -> str:
    """Return SQLite's ``PRAGMA integrity_check`` of a store (``ok`` when sound)."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def fill_store(db: Path, batches: list[tuple[str, list[Row]]], **settings: object) -> None:
    """Commit batches to a store in process (the way a server would), then close it."""
    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions, body_to_frame
    from heatmap.service import Heatmap

    settings.setdefault("k_min", 2)
    hm = Heatmap(Settings(db=str(db), secret=SECRET, basemap_url="", **settings))  # type: ignore[arg-type]
    try:
        for bid, rows in batches:
            frame = body_to_frame(rows_to_csv(rows), "text/csv", len(rows) + 1)
            hm.ingest_frame(frame, ParseOptions(), bid)
    finally:
        hm.close()
