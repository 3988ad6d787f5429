"""Helpers of the HTTP tests: settings, posting, a plain h3-py reference (imported by name)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h3
import polars as pl

from fastapi.testclient import TestClient

from heatmap.api.dependencies import Services
from heatmap.config import Settings

TOKEN = "test-token-1234"
OPS_TOKEN = "ops-token-5678"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
"""Headers of an operations request (``/metrics``)."""
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANNER_TOKEN = "planner-token-9012"
PLANNER = {"Authorization": f"Bearer {PLANNER_TOKEN}"}
"""Headers of a planner's read (exact published values)."""
WINDOW_S = 300
BASE_RES = 10
MIN_RES = 5
K_MIN = 2
BATCHES = 4


def api_settings(tmp: Path, **kw: object) -> Settings:
    """Return settings on a temp store with ingest enabled and a small k."""
    kw.setdefault("db", str(tmp / "store" / "heatmap.db"))
    kw.setdefault("basemap_url", "")
    kw.setdefault("secret", "test-secret")
    kw.setdefault("k_min", K_MIN)
    kw.setdefault("ingest_token", TOKEN)
    kw.setdefault("metrics_token", OPS_TOKEN)
    kw.setdefault("planner_tokens", PLANNER_TOKEN)
    return Settings(**kw)  # type: ignore[arg-type]


def services(client: TestClient) -> Services:
    """Return the app's services (to compare with the core's snapshots)."""
    return client.app.state.services  # type: ignore[attr-defined,no-any-return]


def encode(frame: pl.DataFrame, fmt: str) -> tuple[bytes, str]:
    """Return a body and its content type (csv, ndjson or json array)."""
    if fmt == "csv":
        return frame.write_csv().encode(), "text/csv"
    if fmt == "ndjson":
        return frame.write_ndjson().encode(), "application/x-ndjson"
    return frame.write_json().encode(), "application/json"


def post(client: TestClient, frame: pl.DataFrame, fmt: str = "csv", **params: object):  # type: ignore[no-untyped-def]
    """POST a frame of pings with the test token."""
    body, ctype = encode(frame, fmt)
    return client.post(
        "/api/v1/pings", content=body, headers={**AUTH, "Content-Type": ctype}, params=params
    )


RELEASE_S = 60
GRACE_S = 5
_clocks = iter(range(10**9))


def release_after(client: TestClient, frame: pl.DataFrame, fmt: str = "csv") -> dict[str, object]:
    """POST ``frame``, then move the input past the next tick + grace so a release holds it.

    The clock ping comes from a fresh device in the southern ocean (alone in its cells at every
    resolution, so it never adds to a published number). Returns the new release's window.
    """
    r = post(client, frame, fmt)
    assert r.status_code == 200, r.text
    return advance_clock(client, int(frame["ts"].max()))  # type: ignore[arg-type]


def advance_clock(client: TestClient, after_ts: int) -> dict[str, object]:
    """Move the input past the tick after ``after_ts`` + grace (see :func:`release_after`)."""
    tick = (after_ts // RELEASE_S + 1) * RELEASE_S
    i = next(_clocks)
    clock = pl.DataFrame(
        {"device_id": [f"clock-{i}"], "ts": [tick + GRACE_S], "lat": [-60.0 + (i % 40) * 0.5],
         "lng": [-150.0 + (i // 40) * 0.5]}
    )  # fmt: skip
    assert post(client, clock).status_code == 200
    window: dict[str, object] = client.get("/api/v1/windows").json()["latest_release"]
    assert window["as_of"] >= _iso(tick)  # type: ignore[operator]
    return window


def live_ts(client: TestClient) -> int:
    """Return a ping time after the latest release's tick (so the next release holds it)."""
    as_of = client.get("/api/v1/windows").json()["latest_release"]["as_of"]
    return _epoch(as_of) + 1


def _epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def _iso(ts: int) -> str:
    from heatmap.model import epoch_to_iso

    return epoch_to_iso(ts)


def slices(frame: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    """Split a stream into ``n`` consecutive time slices."""
    lo, hi = int(frame["ts"].min()), int(frame["ts"].max()) + 1  # type: ignore[arg-type]
    edges = [lo + (hi - lo) * i // n for i in range(n + 1)]
    return [frame.filter((pl.col("ts") >= a) & (pl.col("ts") < b)) for a, b in pairwise(edges)]


def pairwise(xs: list[int]) -> Iterator[tuple[int, int]]:
    """Yield consecutive pairs."""
    return zip(xs[:-1], xs[1:], strict=True)


def h3_counts(frame: pl.DataFrame, window_s: int, res: int) -> dict[tuple[int, str], int]:
    """Plain h3-py reference: devices per (window, cell at ``res``), latest ping per device."""
    latest: dict[tuple[int, str], tuple[int, int]] = {}
    for dev, ts, lat, lng in frame.iter_rows():
        key = (ts // window_s, dev)
        cur = latest.get(key)
        if cur is not None and cur[0] > ts:
            continue
        cell = h3.str_to_int(h3.latlng_to_cell(lat, lng, BASE_RES))
        if cur is None or (ts, cell) > cur:
            latest[key] = (ts, cell)
    out: dict[tuple[int, str], int] = defaultdict(int)
    for (w, _), (_, cell) in latest.items():
        out[(w, h3.cell_to_parent(h3.int_to_str(cell), res))] += 1
    return dict(out)


@dataclass(repr=False)
class Loaded:
    """An app whose store was filled through HTTP only, and what was posted."""

    client: TestClient
    frame: pl.DataFrame
    answers: list[dict[str, object]]
