"""Privacy attacks through the public API only, as an outsider would run them.

- Differencing across resolutions: every published cell minus its published finer cells.
- Differencing across overlapping bbox queries, and the city total minus any resolution.
- Tiles against JSON: a decoded MVT never shows a cell or a number the JSON withholds.
- DP on: repeated and rephrased queries (JSON and tiles, another process) give identical noise.
- Real data through a real server: no raw device id and no hash of a closed window in the store
  files, the server's log or ``/metrics``; ingest needs its token, reads need none.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import h3
import httpx
import mapbox_vector_tile
import morecantile
import polars as pl
import pyarrow as pa
import pytest
from hardening_server import OPS, SECRET, TOKEN, Server, reference_counts

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.config import Settings
from heatmap.ingest import ParseOptions
from heatmap.privacy import DeviceHasher, load_or_create_secret
from heatmap.service import Heatmap
from heatmap.simulate import simulate_pings
from tiles.grid import zoom_to_res

pytestmark = pytest.mark.slow
K = 10  # the default k_min: the attacks run against the shipped setting
RES = range(5, 11)
TMS = morecantile.tms.get("WebMercatorQuad")
PEOPLES_SQUARE = (31.2335, 121.4755)
CSV = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}


def _simulated(devices: int, seed: int, crowd: int = 1500) -> pl.DataFrame:
    """A simulated city over 21 minutes, plus ``crowd`` devices packed around three hotspots
    (so that street-level cells hold counts on both sides of k: the interesting case)."""
    start = datetime.fromtimestamp((int(time.time()) - 3 * 3600) // 300 * 300, UTC)
    frame = pl.from_arrow(
        pa.concat_tables(list(simulate_pings(devices=devices, start=start, hours=0.35, seed=seed)))
    )
    assert isinstance(frame, pl.DataFrame)
    rng = random.Random(seed)
    t0 = int(start.timestamp())
    spots = [PEOPLES_SQUARE, (31.2397, 121.4998), (31.2200, 121.4450)]
    rows = []
    for d in range(crowd):
        lat, lng = spots[d % 3]
        lat, lng = lat + rng.gauss(0, 0.0025), lng + rng.gauss(0, 0.0025)
        for ts in range(t0 + rng.randrange(60), t0 + 21 * 60, 60):
            rows.append((f"crowd-{d}", ts, round(lat + rng.gauss(0, 2e-4), 6), round(lng, 6)))
    extra = pl.DataFrame(rows, schema=frame.schema, orient="row")
    return pl.concat([frame, extra]).sort("ts")


def _client(tmp: Path, frame: pl.DataFrame, **kw: object) -> TestClient:
    s = Settings(db=str(tmp / "store" / "heatmap.db"), secret=SECRET, basemap_url="", **kw)  # type: ignore[arg-type]
    hm = Heatmap(s)
    try:
        hm.ingest_frame(frame, ParseOptions())
    finally:
        hm.close()
    return TestClient(create_app(s))


@dataclass
class Harvest:
    """Everything ``/api/v1/cells`` publishes for one window: res -> cell -> people."""

    client: TestClient
    window: str
    cells: dict[int, dict[str, float]]
    extent: tuple[float, float, float, float]
    requests: int = 0
    param: str = "window"
    """``window`` (a closed window) or ``release`` (the live answer)."""

    @property
    def ref(self) -> dict[str, str]:
        """The query parameter naming what was harvested."""
        return {self.param: self.window}


def _cells(client: TestClient, bbox: tuple[float, ...], res: int, ref: dict) -> dict | None:
    text = ",".join(f"{v:.6f}" for v in bbox)
    r = client.get("/api/v1/cells", params={"bbox": text, "res": res, **ref})
    if r.status_code == 422 and "limit" in r.json()["detail"]:
        return None
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def harvest(
    client: TestClient, window: str, extent: tuple[float, float, float, float], param: str
) -> Harvest:
    """Fetch every published cell of every resolution, splitting bboxes on the size limit."""
    out = Harvest(client, window, {r: {} for r in RES}, extent, param=param)
    for res in RES:
        pad = 2.5 * h3.average_hexagon_edge_length(res, "km") / 100.0
        w, s, e, n = extent
        todo = [(w - pad, s - pad, e + pad, n + pad)]
        while todo:
            box = todo.pop()
            doc = _cells(client, box, res, out.ref)
            out.requests += 1
            if doc is None:  # over the limit: split in four
                bw, bs, be, bn = box
                mx, my = (bw + be) / 2, (bs + bn) / 2
                todo += [(bw, bs, mx, my), (mx, bs, be, my), (bw, my, mx, bn), (mx, my, be, bn)]
                continue
            for f in doc["features"]:
                p = f["properties"]
                prev = out.cells[res].setdefault(p["cell"], p["people"])
                assert prev == p["people"], "one cell, two values"
    return out


Exact = tuple[pl.DataFrame, Harvest, Harvest]


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exact]:
    """A simulated city (k = 10, no DP): harvests of a closed window and of the live one."""
    frame = _simulated(3000, seed=21)
    client = _client(tmp_path_factory.mktemp("exact"), frame, k_min=K, ingest_token=TOKEN)
    with client:
        listed = client.get("/api/v1/windows").json()
        closed = next(w["start"] for w in listed["windows"] if w["complete"])
        live = listed["latest_release"]["as_of"]
        extent = (
            float(frame["lng"].min()), float(frame["lat"].min()),  # type: ignore[arg-type]
            float(frame["lng"].max()), float(frame["lat"].max()),  # type: ignore[arg-type]
        )  # fmt: skip
        yield (
            frame,
            harvest(client, closed, extent, "window"),
            harvest(client, live, extent, "release"),
        )


def _remainders(h: Harvest) -> list[tuple[int, int, str, float]]:
    """Return (res, finer res, cell, remainder) for every published cell and finer level."""
    out = []
    for r in RES:
        for s in RES:
            if s <= r:
                continue
            inside: dict[str, float] = defaultdict(float)
            for c, p in h.cells[s].items():
                inside[h3.cell_to_parent(c, r)] += p
            out += [(r, s, c, p - inside[c]) for c, p in h.cells[r].items()]
    return out


def test_differencing_across_resolutions_reveals_nothing_below_k(exact: Exact) -> None:
    _frame, *harvests = exact
    for h in harvests:
        assert sum(len(c) for c in h.cells.values()) > 50  # a real attack surface
        for res, cells in h.cells.items():
            assert all(p >= K for p in cells.values()), res  # rule 2
        remainders = _remainders(h)
        leaks = [x for x in remainders if 0 < x[3] < K]
        assert leaks == [], leaks[:5]  # rule 3
        assert any(x[3] >= K for x in remainders)  # coarse cells do count the withheld ones


def test_city_total_minus_any_resolution_reveals_nothing_below_k(exact: Exact) -> None:
    _frame, *harvests = exact
    for h in harvests:
        stats = h.client.get("/api/v1/stats", params=h.ref).json()
        for res in RES:
            left = stats["people"] - sum(h.cells[res].values())
            assert left == 0 or left >= K, (res, left)


def test_overlapping_bbox_queries_only_ever_show_published_cells(exact: Exact) -> None:
    _frame, h, _live = exact
    rng = random.Random(4)
    lat0, lng0 = PEOPLES_SQUARE
    for _ in range(12):
        res = rng.choice([8, 9, 10])
        # Two boxes sharing their north and south edges, overlapping in the middle.
        s, n = lat0 + rng.uniform(-0.06, 0.0), lat0 + rng.uniform(0.005, 0.06)
        w1 = lng0 + rng.uniform(-0.08, -0.01)
        e2 = lng0 + rng.uniform(0.01, 0.08)
        e1, w2 = w1 + (e2 - w1) * rng.uniform(0.55, 0.9), w1 + (e2 - w1) * rng.uniform(0.1, 0.45)
        boxes = {
            "a": (w1, s, e1, n),
            "b": (w2, s, e2, n),
            "ab": (w2, s, e1, n),
            "u": (w1, s, e2, n),
        }
        got = {}
        for name, box in boxes.items():
            doc = _cells(h.client, box, res, h.ref)
            assert doc is not None
            got[name] = {
                f["properties"]["cell"]: f["properties"]["people"] for f in doc["features"]
            }
            # The same value as in any other query, and only published cells.
            for c, p in got[name].items():
                assert h.cells[res][c] == p
        total = {k: sum(v.values()) for k, v in got.items()}
        assert total["a"] + total["b"] - total["ab"] == total["u"]
        for diff in (total["a"] - total["ab"], total["b"] - total["ab"], total["u"] - total["a"]):
            assert diff == 0 or diff >= K


def _tile_cells(client: TestClient, z: int, x: int, y: int, ref: dict) -> dict[str, float]:
    r = client.get(f"/tiles/{z}/{x}/{y}.mvt", params=ref)
    assert r.status_code in (200, 204), r.text
    if r.status_code == 204:
        return {}
    layer = mapbox_vector_tile.decode(r.content).get("density", {"features": []})
    return {h3.int_to_str(f["id"]): f["properties"]["people"] for f in layer["features"]}


def test_tiles_never_show_what_the_json_withholds(exact: Exact) -> None:
    _frame, *harvests = exact
    for h in harvests:
        shown = 0
        for z in (7, 9, 11, 13, 15):
            res = zoom_to_res(z)
            c = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for cell, people in _tile_cells(h.client, z, c.x + dx, c.y + dy, h.ref).items():
                        # A withheld cell of ``res`` shows its published parent (the fill).
                        got = h3.get_resolution(cell)
                        assert got <= res
                        assert h.cells[got].get(cell) == people, (z, cell, people)
                        assert people >= K
                        shown += 1
        assert shown > 20


def test_a_withheld_cell_answers_null_at_its_own_resolution(exact: Exact) -> None:
    frame, h, _live = exact
    counts: dict[str, int] = defaultdict(int)
    w = int(datetime.fromisoformat(h.window.replace("Z", "+00:00")).timestamp())
    latest = frame.filter((pl.col("ts") >= w) & (pl.col("ts") < w + 300)).sort("ts")
    latest = latest.group_by("device_id").last()
    for lat, lng in latest.select("lat", "lng").rows():
        counts[h3.latlng_to_cell(lat, lng, 10)] += 1
    small = [c for c, n in counts.items() if 0 < n < K][:25]
    assert small
    for cell in small:
        lat, lng = h3.cell_to_latlng(cell)
        d = h.client.get(
            "/api/v1/density", params={"lat": lat, "lng": lng, "res": 10, **h.ref}
        ).json()
        # Its own value is never answered: a published parent's is, or nothing.
        assert d["coverage"] in ("parent", "withheld") and d["drawn_res"] == 10
        if d["coverage"] == "parent":
            assert d["cell"] == h3.cell_to_parent(cell, d["res"]) and d["people"] >= K
        else:
            assert d["people"] is None and d["suppressed"] is True
            assert d["trend"]["change"] is None
        coarse = h.client.get("/api/v1/density", params={"lat": lat, "lng": lng, **h.ref}).json()
        assert coarse["people"] is None or coarse["people"] >= K


def test_places_publish_nothing_below_k(exact: Exact) -> None:
    _frame, h, _live = exact
    places = h.client.get("/api/v1/places", params=h.ref).json()["places"]
    assert places
    for p in places:
        assert p["people"] is None or p["people"] >= K, p["id"]


# -- DP: the noise cannot be averaged away ---------------------------------------------------------


def test_dp_noise_is_drawn_once_whatever_the_query(tmp_path: Path) -> None:
    frame = _simulated(2000, seed=22)
    # eps 2: the noisy threshold (k plus a margin for delta 1e-6) leaves a few dozen cells.
    client = _client(tmp_path, frame, k_min=K, dp_epsilon=2.0)
    res, z = 7, 8
    exact_counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (w, cell), n in reference_counts(frame.rows()).items():  # type: ignore[arg-type]
        exact_counts[w][h3.cell_to_parent(h3.int_to_str(cell), res)] += n
    assert zoom_to_res(z) == res
    c = TMS.tile(PEOPLES_SQUARE[1], PEOPLES_SQUARE[0], z)
    with client:
        wins = client.get("/api/v1/windows").json()["windows"]
        windows = [w["start"] for w in wins if w["complete"]][:2]  # listed: closed only
        assert len(windows) == 2
        assert client.get("/api/v1/legend").json()["dp_epsilon"] == 2.0
        assert client.get("/tiles.json").json()["dp_epsilon"] == 2.0
        first = {}
        for when in windows:
            epoch = str(int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()) + 7)
            answers = []
            for i, phrasing in enumerate([when, epoch, when.replace("Z", "+00:00")] * 4):
                bbox = f"{120.9 - i * 1e-4:.4f},30.7,122.0,31.9"  # each a new URL: no cache
                params = {"bbox": bbox, "res": res, "window": phrasing}
                doc = client.get("/api/v1/cells", params=params).json()
                answers.append({f["id"]: f["properties"]["people"] for f in doc["features"]})
            assert all(a == answers[0] for a in answers)
            noisy = answers[0]
            assert len(noisy) >= 3  # few clear the noisy threshold at this scale
            w = int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()) // 300
            true = exact_counts.get(w, {})
            moved = [cell for cell, p in noisy.items() if p != true.get(cell)]
            assert len(moved) > len(noisy) / 3  # the noise is there (Laplace, rounded)
            first[when] = noisy
            for _ in range(3):
                tile = _tile_cells(client, z, c.x, c.y, {"window": when})
                # Cells of ``res``; coarser ones fill where ``res`` is withheld.
                own = {k: v for k, v in tile.items() if h3.get_resolution(k) == res}
                assert own and all(noisy[cell] == people for cell, people in own.items())
            cell = max(noisy, key=lambda k: noisy[k])
            lat, lng = h3.cell_to_latlng(cell)
            point = {"lat": lat, "lng": lng, "res": res}
            seen = {
                client.get("/api/v1/density", params={**point, "window": w}).json()["people"]
                for w in (when, epoch) * 3
            }
            assert seen == {noisy[cell]}
        s = client.app.state.services.settings  # type: ignore[attr-defined]
    # Another process on the same store (a restart, or a second API node) draws nothing new.
    with TestClient(create_app(s)) as again:
        for when, noisy in first.items():
            params = {"bbox": "120.9,30.7,122.0,31.9", "res": res, "window": when}
            doc = again.get("/api/v1/cells", params=params).json()
            assert {f["id"]: f["properties"]["people"] for f in doc["features"]} == noisy


# -- real data through a real server ---------------------------------------------------------------


def _geolife_batches(path: Path) -> list[pl.DataFrame]:
    """Five busy days of GeoLife (2009-02), time-sorted, ids relabelled to be greppable."""
    frame = pl.read_csv(path, schema_overrides={"device_id": pl.String})
    day = pl.col("ts") // 86400
    frame = frame.filter((day >= 14292) & (day <= 14296)).sort("ts")
    frame = frame.with_columns(device_id=pl.lit("geolife-") + pl.col("device_id"))
    n = frame.height
    return [frame.slice(i * n // 5, (i + 1) * n // 5 - i * n // 5) for i in range(5)]


def _hash_forms(h: int) -> list[bytes]:
    """Return how a 64-bit hash can sit in a file: SQLite (big-endian), raw (little), text."""
    forms = [h.to_bytes(8, "big", signed=True), h.to_bytes(8, "little", signed=True)]
    if -(2**47) <= h < 2**47:  # SQLite stores such an integer in 6 bytes
        forms.append(h.to_bytes(6, "big", signed=True))
    forms += [str(h).encode(), f"{h & (2**64 - 1):016x}".encode()]
    return forms


def test_no_raw_id_or_closed_hash_in_store_logs_or_metrics(geolife: Path, tmp_path: Path) -> None:
    batches = _geolife_batches(geolife)
    db = tmp_path / "store" / "heatmap.db"
    server = Server(tmp_path, db, k_min=K).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for i, batch in enumerate(batches):
                body = batch.write_csv().encode()
                params = {"batch_id": f"real-batch-{i}"}
                r = http.post("/api/v1/pings", content=body, params=params, headers=CSV)
                assert r.status_code == 200 and r.json()["late"] == 0, r.text
            # A bad batch too: the error path must not echo ids into the log either.
            bad = batches[0].head(3).with_columns(lat=pl.lit("north")).write_csv().encode()
            http.post("/api/v1/pings", content=bad, params={"strict": "true"}, headers=CSV)
            wins = http.get("/api/v1/windows", params={"limit": 1000}).json()
            answers = [http.get(p).text for p in ("/api/v1/stats", "/api/v1/places", "/healthz")]
            answers.append(
                http.get("/api/v1/cells", params={"bbox": "116.2,39.8,116.5,40.1", "res": 8}).text
            )
            metrics = http.get("/metrics", headers=OPS).text
    finally:
        server.stop()
    log = server.log()
    assert "ingest" in log  # the log was captured

    # Hashes still needed: devices of windows still open (after the last closed one) and of
    # the release state (pings since the latest release's horizon began, and pending ones).
    def epoch(iso: str) -> int:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())

    closed_end = max(epoch(w["end"]) for w in wins["windows"] if w["complete"])
    release = wins["latest_release"]
    needed_from = min(closed_end, epoch(release["as_of"]) - release["horizon_s"])
    frame = pl.concat(batches)
    in_open = set(frame.filter(pl.col("ts") >= needed_from)["device_id"].unique().to_list())
    closed_only = set(frame["device_id"].unique().to_list()) - in_open
    assert len(closed_only) > 20 and in_open
    hasher = DeviceHasher(load_or_create_secret(SECRET, tmp_path))
    files = b"".join(p.read_bytes() for p in db.parent.glob("heatmap.db*"))
    texts = {"log": log, "metrics": metrics, "answers": "".join(answers) + str(wins)}
    assert b"geolife-" not in files
    for name, text in texts.items():
        assert "geolife-" not in text, name
        assert TOKEN not in text, name
    for dev in closed_only:
        h = hasher.hash_one(dev)
        for form in _hash_forms(h):
            assert form not in files, dev
        for name, text in texts.items():
            assert str(h) not in text and f"{h & (2**64 - 1):016x}" not in text, (name, dev)
    # Positive control: the search does find the hashes that must still be on disk (in the
    # ping log's blobs, little-endian).
    found = [d for d in in_open if hasher.hash_one(d).to_bytes(8, "little", signed=True) in files]
    assert found, "the search would not see a hash on disk"


# -- tokens --------------------------------------------------------------------------------------


def test_ingest_needs_its_token_and_reads_need_none(exact: Exact) -> None:
    _frame, h, _live = exact
    client = h.client
    spec = client.get("/openapi.json").json()
    secured = [
        (m.upper(), path) for path, ops in spec["paths"].items() for m, op in ops.items()
        if op.get("security")
    ]  # fmt: skip
    assert secured == [("POST", "/api/v1/pings")]
    place = client.get("/api/v1/places").json()["places"][0]["id"]
    items = client.get("/ogc/collections/density/items", params={"limit": 1}).json()
    fill = {
        "z": "12", "x": "3430", "y": "1673", "place_id": place, "id": place,
        "collectionId": "density", "featureId": str(items["features"][0]["id"]),
        "tileMatrixSetId": "WebMercatorQuad", "tileMatrix": "12", "tileRow": "1673",
        "tileCol": "3430",
    }  # fmt: skip
    query = {"lat": "31.23", "lng": "121.47", "bbox": "121.45,31.22,121.50,31.25", "res": "8"}
    for path, ops in spec["paths"].items():
        if "get" not in ops or path.startswith(("/api/v1/export/", "/api/v1/watches")):
            continue  # planners only (401)
        if path == "/api/v1/events":  # never ends: tests/api/test_events.py reads it, tokenless
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], path)
        params = {
            p["name"]: query[p["name"]]
            for p in ops["get"].get("parameters", [])
            if p.get("in") == "query" and p.get("required")
        }
        r = client.get(url, params=params)
        assert r.status_code in (200, 204), (url, r.status_code, r.text[:200])
    body = b"device_id,ts,lat,lng\na,1795900000,31.2,121.4\n"
    for headers, params, cookies in (
        ({}, {}, {}),
        ({}, {"access_token": TOKEN, "token": TOKEN}, {}),
        ({}, {}, {"token": TOKEN, "Authorization": f"Bearer {TOKEN}"}),
        ({"Authorization": TOKEN}, {}, {}),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, {}, {}),
        ({"X-Api-Key": TOKEN}, {}, {}),
    ):
        client.cookies.clear()
        client.cookies.update(cookies)
        r = client.post(
            "/api/v1/pings", content=body, params=params,
            headers={**headers, "Content-Type": "text/csv"},
        )  # fmt: skip
        assert r.status_code == 401, (headers, params, cookies, r.status_code)
    client.cookies.clear()


def test_token_is_disabled_not_empty(tmp_path: Path) -> None:
    """An empty ``HEATMAP_INGEST_TOKEN`` disables ingest: it never matches an empty bearer."""
    s = Settings(db=str(tmp_path / "s" / "h.db"), basemap_url="", ingest_token="")  # type: ignore[call-arg]
    with TestClient(create_app(s)) as client:
        headers = {"Authorization": "Bearer ", "Content-Type": "text/csv"}
        r = client.post("/api/v1/pings", content=b"device_id,ts,lat,lng\n", headers=headers)
        assert r.status_code == 404
