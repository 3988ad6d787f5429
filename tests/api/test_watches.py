"""Watches and alerts (issue 18): planners' watches over HTTP, the alert lifecycle per release,
audiences, restarts, and the store tables on both backends.

Releases are made through HTTP (``Story``: a crowd at Xintiandi, then nobody); the expected
numbers come from the place's own answer (``/api/v1/places/{id}``) for the same release, never
from the code under test's alert values. ``catch_up`` evaluates the releases made so far at once
(the engine's thread would do it within a moment).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h3
import numpy as np
import orjson
import pytest
import shapely
from alerts_testdata import PLACE, PLACE_LAT, PLACE_LNG, Story, alert_settings, crowd, make_watch
from api_testdata import PLANNER, advance_clock, post

from fastapi.testclient import TestClient

from heatmap.alerts.measure import check
from heatmap.alerts.rules import Rule, parse_rule
from heatmap.api import create_app
from heatmap.config import Settings
from heatmap.errors import BadInput
from heatmap.model import epoch_to_iso
from heatmap.read.places import PlaceBook
from heatmap.store import open_store
from heatmap.store.alert_rows import OutboxRow, WatchRow, WatchStateRow

POLYGON = {  # a square of about 300 m around Xintiandi
    "type": "Polygon",
    "coordinates": [
        [
            [PLACE_LNG - 0.0015, PLACE_LAT - 0.0015],
            [PLACE_LNG + 0.0015, PLACE_LAT - 0.0015],
            [PLACE_LNG + 0.0015, PLACE_LAT + 0.0015],
            [PLACE_LNG - 0.0015, PLACE_LAT + 0.0015],
            [PLACE_LNG - 0.0015, PLACE_LAT - 0.0015],
        ]
    ],
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(alert_settings(tmp_path))) as client:
        yield client


def alerting(client: TestClient) -> Any:
    return client.app.state.services.alerting  # type: ignore[attr-defined]


def alerts(client: TestClient, **headers: str) -> list[dict[str, Any]]:
    alerting(client).catch_up()
    r = client.get("/api/v1/alerts", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["alerts"]  # type: ignore[no-any-return]


# -- the HTTP surface ------------------------------------------------------------------------


def test_watches_are_for_planners_only(app: TestClient) -> None:
    body = {"target": {"place": PLACE}, "rule": {"kind": "band", "band": "red"}}
    assert app.post("/api/v1/watches", json=body).status_code == 401
    assert app.get("/api/v1/watches").status_code == 401
    assert app.delete("/api/v1/watches/x").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert app.post("/api/v1/watches", json=body, headers=wrong).status_code == 401
    assert app.get("/api/v1/alerts", headers=wrong).status_code == 401
    assert app.get("/api/v1/alerts").status_code == 200  # the public's alerts


def test_create_list_get_delete(app: TestClient) -> None:
    made = make_watch(app, name="Evening")
    assert made["target"] == {"place": PLACE} and made["rule"] == {"kind": "band", "band": "red"}
    assert made["name"] == "Evening" and not made["default"] and made["webhook"] is None
    listed = app.get("/api/v1/watches", headers=PLANNER).json()["watches"]
    assert [w["id"] for w in listed] == [made["id"]]  # defaults are off in these settings
    one = app.get(f"/api/v1/watches/{made['id']}", headers=PLANNER).json()
    assert one["id"] == made["id"] and one["state"] == {"streak": 0, "open_alert": None}
    assert app.delete(f"/api/v1/watches/{made['id']}", headers=PLANNER).status_code == 204
    assert app.get(f"/api/v1/watches/{made['id']}", headers=PLANNER).status_code == 404
    assert app.delete(f"/api/v1/watches/{made['id']}", headers=PLANNER).status_code == 404


def test_a_place_is_found_by_name(app: TestClient) -> None:
    made = make_watch(app, target={"place": "新天地"})
    assert made["target"] == {"place": PLACE}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"target": {"place": "nowhere-at-all"}}, "no place"),
        ({"target": {"place": PLACE, "polygon": POLYGON}}, "polygon"),
        ({"rule": {"kind": "band", "band": "purple"}}, "band"),
        ({"rule": {"kind": "soon"}}, "kind"),
        ({"rule": {"kind": "rise", "percent": 50, "minutes": 500}}, "minutes"),
        ({"rule": {"kind": "ratio", "above": -1}}, "above"),
        ({"rule": {"kind": "forecast", "band": "red", "hours": 48}}, "hours"),
        ({"open_after": 0}, "open_after"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_watch_is_a_422_naming_the_problem(app: TestClient, change: dict, why: str) -> None:
    body = {"target": {"place": PLACE}, "rule": {"kind": "band", "band": "red"}, **change}
    r = app.post("/api/v1/watches", json=body, headers=PLANNER)
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"]


def test_a_polygon_must_be_valid_and_inside_the_covered_area(app: TestClient) -> None:
    far = {  # the same square moved to Beijing
        "type": "Polygon",
        "coordinates": [[[x - 5.0, y + 8.7] for x, y in POLYGON["coordinates"][0]]],
    }
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [[121.47, 31.22], [121.48, 31.23], [121.48, 31.22], [121.47, 31.23], [121.47, 31.22]]
        ],
    }
    rule = {"kind": "band", "band": "red"}
    for poly, why in ((far, "inside the covered area"), (bowtie, "invalid")):
        r = app.post(
            "/api/v1/watches", json={"target": {"polygon": poly}, "rule": rule}, headers=PLANNER
        )
        assert r.status_code == 422 and why in r.json()["detail"], r.text
    ok = app.post(
        "/api/v1/watches", json={"target": {"polygon": POLYGON}, "rule": rule}, headers=PLANNER
    )
    assert ok.status_code == 201, ok.text


def test_default_watches_cover_every_key_place_and_cannot_be_deleted(tmp_path: Path) -> None:
    with TestClient(create_app(alert_settings(tmp_path, alert_defaults=True))) as c:
        listed = c.get("/api/v1/watches", headers=PLANNER).json()["watches"]
        book = PlaceBook.load(c.app.state.services.settings)  # type: ignore[attr-defined]
        want = {f"place:{p.id}:red-now" for p in book.places}
        want |= {f"place:{p.id}:forecast-red-2h" for p in book.places}
        assert {w["id"] for w in listed} == want
        red = next(w for w in listed if w["id"] == f"place:{PLACE}:red-now")
        assert red["default"] and red["audience"] == "public"
        soon = next(w for w in listed if w["id"] == f"place:{PLACE}:forecast-red-2h")
        assert soon["rule"] == {"kind": "forecast", "band": "red", "hours": 2.0}
        r = c.delete(f"/api/v1/watches/{red['id']}", headers=PLANNER)
        assert r.status_code == 422 and "HEATMAP_ALERT_DEFAULTS" in r.json()["detail"]


# -- the lifecycle -----------------------------------------------------------------------------


def place_people(client: TestClient, release: str) -> float:
    """The place's exact published people in a release, as its own answer says."""
    r = client.get(f"/api/v1/places/{PLACE}", params={"release": release}, headers=PLANNER)
    assert r.status_code == 200, r.text
    return float(r.json()["now"]["people"])


def test_an_alert_opens_after_two_releases_carries_its_values_and_closes(app: TestClient) -> None:
    watch = make_watch(app)
    story = Story(app)
    first = story.crowded()
    assert alerts(app, **PLANNER) == []  # one release is not enough (open_after = 2)
    second = story.crowded()
    got = alerts(app, **PLANNER)
    assert len(got) == 1
    alert = got[0]
    assert alert["state"] == "open" and alert["watch"]["id"] == watch["id"]
    assert alert["opened"]["release"] == second["as_of"] != first["as_of"]
    assert alert["opened"]["people"] == place_people(app, str(second["as_of"])) >= 40
    assert alert["opened"]["band"] == "red"
    assert alert["target"]["place"] == PLACE and alert["target"]["name"]["en"] == "Xintiandi"
    state = app.get(f"/api/v1/watches/{watch['id']}", headers=PLANNER).json()["state"]
    assert state == {"streak": 2, "open_alert": alert["id"]}

    story.crowded()  # still red: the same alert stays open, no second one
    assert [a["id"] for a in alerts(app, **PLANNER)] == [alert["id"]]

    gone = story.empty()
    got = alerts(app, **PLANNER)
    assert len(got) == 1 and got[0]["state"] == "closed"
    assert got[0]["closed"]["values"]["release"] == gone["as_of"]
    assert got[0]["closed"]["reason"] == "rule no longer holds"
    assert got[0]["opened"] == alert["opened"]
    # Revalidated with an ETag: unchanged until the next release changes something.
    first = app.get("/api/v1/alerts", headers=PLANNER)
    again = app.get("/api/v1/alerts", headers={**PLANNER, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and first.headers["cache-control"].startswith("private")


def test_the_cooldown_stops_an_alert_from_reopening_at_once(app: TestClient) -> None:
    cool = make_watch(app)  # default cooldown: 900 s
    quick = make_watch(app, cooldown_s=0)
    story = Story(app)
    story.crowded(), story.crowded(), story.empty()
    assert {a["watch"]["id"] for a in alerts(app, **PLANNER)} == {cool["id"], quick["id"]}
    story.crowded(), story.crowded()  # back within 15 minutes
    opened = [a for a in alerts(app, **PLANNER) if a["state"] == "open"]
    assert [a["watch"]["id"] for a in opened] == [quick["id"]]


def test_a_polygon_watch_reads_the_published_cells_inside_it(app: TestClient) -> None:
    poly = app.post(
        "/api/v1/watches",
        json={"name": "square", "target": {"polygon": POLYGON}, "rule": {"kind": "band",
              "band": "red"}, "open_after": 1},
        headers=PLANNER,
    )  # fmt: skip
    assert poly.status_code == 201, poly.text
    story = Story(app)
    window = story.crowded()
    got = alerts(app, **PLANNER)
    assert len(got) == 1 and got[0]["target"]["kind"] == "polygon"
    drawn = got[0]["target"]["polygon"]
    assert drawn["type"] == "Polygon"
    assert np.allclose(drawn["coordinates"], POLYGON["coordinates"], atol=1e-7)
    assert got[0]["opened"]["people"] == pytest.approx(
        polygon_people(app, str(window["as_of"])), abs=0.05
    )


def polygon_people(client: TestClient, release: str) -> float:
    """Reference: the polygon's people as the map draws them, from h3-py and the point API.

    The polygon is read at the finest resolution covering it with at most 7 cells (cells whose
    centre is inside, plus the cell of a point inside); each cell counts what the map paints
    there: its own published people, or its published parent's density times its area.
    """
    ring = [(lat, lng) for lng, lat in POLYGON["coordinates"][0]]
    inside = shapely.geometry.shape(POLYGON).representative_point()
    for res in range(10, 4, -1):
        cells = set(h3.polygon_to_cells(h3.LatLngPoly(ring), res))
        cells.add(h3.latlng_to_cell(inside.y, inside.x, res))
        if len(cells) <= 7:
            break
    total = 0.0
    for cell in cells:
        lat, lng = h3.cell_to_latlng(cell)
        params = {"lat": lat, "lng": lng, "res": res, "release": release}
        d = client.get("/api/v1/density", params=params, headers=PLANNER).json()
        if d["coverage"] == "published":
            total += d["people"]
        elif d["coverage"] == "parent":
            total += d["density_km2"] * h3.cell_area(cell, "km^2")
    return total


def test_the_public_sees_its_own_alerts_in_its_own_numbers(tmp_path: Path) -> None:
    with TestClient(create_app(alert_settings(tmp_path, alert_defaults=True))) as c:
        mine = make_watch(c)
        story = Story(c)
        for _ in range(2):
            r = post(c, crowd(story.t + 10, n=63))  # not a multiple of k_min = 2
            assert r.status_code == 200
            window = advance_clock(c, story.t + 10)
            story.t += 60
        public = alerts(c)
        planner = alerts(c, **PLANNER)
        shown = c.get(f"/api/v1/places/{PLACE}", params={"release": window["as_of"]}).json()
        exact = place_people(c, str(window["as_of"]))
    ids = {a["watch"]["id"] for a in public}
    assert ids == {f"place:{PLACE}:red-now", f"place:{PLACE}:forecast-red-2h"}
    assert {a["watch"]["id"] for a in planner} == ids | {mine["id"]}
    red_public = next(a for a in public if a["watch"]["id"].endswith("red-now"))
    # The public's alert says what the public's place page says (rounded), not the exact 63.
    assert red_public["opened"]["people"] == shown["now"]["people"] != exact == 63
    mine_alert = next(a for a in planner if a["watch"]["id"] == mine["id"])
    assert mine_alert["opened"]["people"] == exact


def test_watches_and_open_alerts_survive_a_restart(tmp_path: Path) -> None:
    s = alert_settings(tmp_path)
    with TestClient(create_app(s)) as c:
        watch = make_watch(c)
        story = Story(c)
        story.crowded(), story.crowded()
        before = alerts(c, **PLANNER)
        t = story.t
    assert len(before) == 1 and before[0]["state"] == "open"
    with TestClient(create_app(s)) as c:
        assert [w["id"] for w in c.get("/api/v1/watches", headers=PLANNER).json()["watches"]] == [
            watch["id"]
        ]
        assert alerts(c, **PLANNER) == before
        story = Story(c, t)
        story.crowded()
        assert [a["id"] for a in alerts(c, **PLANNER)] == [before[0]["id"]]  # not reopened
        story.empty()
        assert [a["state"] for a in alerts(c, **PLANNER)] == ["closed"]


def test_each_release_is_evaluated_once_by_two_nodes_on_one_store(
    store_settings: Settings,
) -> None:
    s = store_settings
    with TestClient(create_app(s)) as one, TestClient(create_app(s)) as two:
        make_watch(one)
        story = Story(one)
        story.crowded(), story.crowded()
        for c in (one, two, one, two):
            c.app.state.services.reader.invalidate()  # type: ignore[attr-defined]
            alerting(c).catch_up()
        feed = alerting(two).feed
        feed.poll()
        releases = [int(t) for t in one.app.state.services.reader.windows().releases.ticks]  # type: ignore[attr-defined]
        said = [orjson.loads(e.frame.split(b"data: ")[1]) for e in feed._events]
        told = [
            d["release"] for e, d in zip(feed._events, said, strict=True) if e.kind == "release"
        ]
        assert told == [epoch_to_iso(t) for t in releases]  # each release once, in order
        assert [e.kind for e in feed._events].count("alert") == 1
        assert len(alerts(two, **PLANNER)) == 1


# -- the rules, on a reading made by hand ------------------------------------------------------


class FakeReading:
    """A reading of one place with chosen values (the rules' arithmetic, without a store)."""

    def __init__(self, book: PlaceBook, now: float, usual: float = math.nan, **kw: Any) -> None:
        self.book = book
        self.t0 = 1_800_000_000
        self.now = np.array([now])
        self.band = book.band_index(self.now)
        self.usual = np.array([usual])
        self._earlier = kw.get("earlier")
        self._forecast = kw.get("forecast")

    def earlier(self, minutes: int) -> Any:
        return self._earlier

    def forecast(self, hours: float) -> Any:
        return self._forecast


@pytest.fixture(scope="module")
def book() -> PlaceBook:
    s = Settings(db="unused.db", bands_km2=[50, 200, 500], secret="x")  # type: ignore[arg-type]
    full = PlaceBook.load(s)
    return PlaceBook([full.places[full.index[PLACE]]], s)


def test_rules_on_chosen_values(book: PlaceBook) -> None:
    area = float(book.area[0])
    red = 500 * area + 1  # just red
    assert check(Rule("band", band="red"), FakeReading(book, red), 0)[0]  # type: ignore[arg-type]
    assert not check(Rule("band", band="red"), FakeReading(book, red - 2), 0)[0]  # type: ignore[arg-type]
    assert check(Rule("band", band="yellow"), FakeReading(book, red), 0)[0]  # type: ignore[arg-type]
    assert not check(Rule("band", band="blue"), FakeReading(book, math.nan), 0)[0]  # type: ignore[arg-type]
    ratio = Rule("ratio", above=1.5)
    holds, values = check(ratio, FakeReading(book, 31, usual=20), 0)  # type: ignore[arg-type]
    assert holds and values["ratio"] == 1.55 and values["usual"] == 20
    assert not check(ratio, FakeReading(book, 30, usual=20), 0)[0]  # type: ignore[arg-type]
    assert not check(ratio, FakeReading(book, 30), 0)[0]  # type: ignore[arg-type]  # no usual
    rise = Rule("rise", percent=50, minutes=10)
    then = (None, np.array([20.0]))
    holds, values = check(rise, FakeReading(book, 31, earlier=then), 0)  # type: ignore[arg-type]
    assert holds and values["rise_percent"] == 55.0 and values["previous_people"] == 20
    assert not check(rise, FakeReading(book, 30, earlier=then), 0)[0]  # type: ignore[arg-type]
    assert not check(rise, FakeReading(book, 30, earlier=(None, None)), 0)[0]  # type: ignore[arg-type]
    times = np.array([1_800_000_900.0, 1_800_001_800.0])
    levels = np.array([[10.0], [red]])
    fc = (np.vstack([book.band_index(v) for v in levels]), times, levels)
    holds, values = check(
        Rule("forecast", band="red", hours=2), FakeReading(book, 10, forecast=fc), 0
    )  # type: ignore[arg-type]  # noqa: E501
    assert holds and values["forecast_at"] == "2027-01-15T08:30:00Z"
    low = (fc[0][:1], times[:1], levels[:1])
    assert not check(
        Rule("forecast", band="red", hours=0.25), FakeReading(book, 10, forecast=low), 0
    )[0]  # type: ignore[arg-type]  # noqa: E501


def test_rule_limits() -> None:
    with pytest.raises(BadInput, match="minutes"):
        parse_rule({"kind": "rise", "percent": 10, "minutes": 121}, release_keep_s=7200)
    assert parse_rule({"kind": "rise", "percent": 10, "minutes": 120}, 7200).minutes == 120
    assert parse_rule({"kind": "forecast", "band": "red"}, 7200).hours == 2.0


# -- the store tables on both backends -----------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return alert_settings(tmp_path)
    server = request.getfixturevalue("pg_server")
    return alert_settings(tmp_path, db=server.create_database())


def test_the_tables_keep_what_they_are_given_on_both_backends(store_settings: Settings) -> None:
    store = open_store(store_settings)
    try:
        with store.transaction():
            store.insert_watch(WatchRow("w1", 100, '{"a": 1}', "http://127.0.0.1/h", "whsec_x"))
            store.insert_watch(WatchRow("w2", 200, '{"b": 2}'))
            store.put_watch_states([WatchStateRow("w1", 2, None, 0)])
        assert [r.id for r in store.watch_rows()] == ["w1", "w2"]
        assert store.watch_rows()[0].webhook_secret == "whsec_x"
        with store.transaction():
            a = store.open_alert("w1", "planner", 600, '{"v": 1}')
            b = store.open_alert("w2", "public", 600, '{"v": 2}')
            store.put_watch_states([WatchStateRow("w1", 3, a, 0)])
            seqs = store.append_events([("public", "release", "{}", int(time.time()))] * 3)
        assert b > a and seqs == sorted(seqs) and len(set(seqs)) == 3
        assert store.last_event_seq() == seqs[-1]
        assert [e.seq for e in store.events_after(seqs[0], 10)] == seqs[1:]
        assert {s.watch_id: s.alert_id for s in store.watch_states()} == {"w1": a}
        with store.transaction():
            store.close_alert(a, 660, '{"why": 1}')
        assert [(r.id, r.closed_t) for r in store.alert_rows(0)] == [(a, 660), (b, None)]
        assert [r.id for r in store.alert_rows(700)] == [b]
        now = time.time()
        with store.transaction():
            store.enqueue_webhooks(
                [OutboxRow(0, "w1", f"m{i}", "http://x", "s", "{}", next_at=now) for i in (1, 2)]
            )
        due = store.due_webhooks(now + 1, 10)
        assert [m.msg_id for m in due] == ["m1"]  # one at a time per watch, oldest first
        assert store.lease_webhook(due[0].id, now, now + 30)
        assert not store.lease_webhook(due[0].id, now, now + 30)  # taken
        assert store.due_webhooks(now + 1, 10) == []
        store.finish_webhook(due[0].id, "delivered", 1, now, None, now)
        assert [m.msg_id for m in store.due_webhooks(now + 1, 10)] == ["m2"]
        assert [(m.msg_id, m.state) for m in store.webhook_rows("w1", 5)] == [
            ("m2", "pending"),
            ("m1", "delivered"),
        ]
        assert store.delete_watch("w2") and not store.delete_watch("w2")
        assert store.delete_events_before(int(time.time()) + 10) == 3
    finally:
        store.close()
