"""``GET /api/v1/events`` (issue 18): Server-Sent Events read with ``httpx-sse`` from a real
server: release events in order, alert events by audience, resume by ``Last-Event-ID`` without
loss or duplicates, heartbeats, the connection cap, and streams that end at shutdown.

Expected releases come from the store's own list of kept releases (``/api/v1/windows`` and the
reader), expected alerts from ``/api/v1/alerts``.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alerts_testdata import PLACE, Live, Story, alert_settings, live_app, make_watch, wait_for
from api_testdata import PLANNER, PLANNER_TOKEN
from httpx_sse import ServerSentEvent, connect_sse


class Listener:
    """One event stream read on a thread; events go to a queue in arrival order."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[ServerSentEvent | BaseException] = queue.Queue()
        self.status = 0
        self._opened = threading.Event()
        self._client = httpx.Client(base_url=base, timeout=httpx.Timeout(30, read=60))
        self._thread = threading.Thread(target=self._run, args=(headers or {},), daemon=True)
        self._thread.start()
        assert self._opened.wait(30), "the stream did not open"

    def _run(self, headers: dict[str, str]) -> None:
        try:
            with connect_sse(self._client, "GET", "/api/v1/events", headers=headers) as source:
                self.status = source.response.status_code
                self._opened.set()
                if self.status != 200:
                    return
                for sse in source.iter_sse():
                    self.events.put(sse)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.events.put(exc)
        finally:
            self._opened.set()
            self.events.put(EOFError("stream ended"))

    def next(self, *kinds: str, timeout: float = 30) -> ServerSentEvent:
        """Return the next event of ``kinds`` (any but heartbeats when none given) arriving
        within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(got, BaseException):
                raise AssertionError(f"stream failed: {got!r}")
            if (kinds and got.event in kinds) or (not kinds and got.event != "heartbeat"):
                return got

    def close(self) -> None:
        """Drop the connection."""
        self._client.close()
        self._thread.join(10)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_app(alert_settings(tmp_path, alert_defaults=True, sse_heartbeat_s=0.5)) as app:
        yield app


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for s in made:
        s.close()


def listen(live: Live, made: list[Listener], **headers: str) -> Listener:
    """Open a stream and wait for its ``ready`` event (from then on it holds every event)."""
    s = Listener(live.base, headers)
    made.append(s)
    assert s.status == 200
    s.next("ready")
    return s


def releases(live: Live) -> list[str]:
    """The store's kept releases (ticks, ISO), oldest first."""
    from heatmap.model import epoch_to_iso

    ticks = live.app.state.services.reader.windows().releases.ticks
    return [epoch_to_iso(int(t)) for t in ticks]


def test_release_events_arrive_in_order_with_growing_ids(live: Live, listeners: list) -> None:
    s = listen(live, listeners)
    story = Story(live.client)
    story.crowded(), story.crowded()
    made = releases(live)
    got = [s.next("release") for _ in made]
    assert [json.loads(e.data)["release"] for e in got] == made
    ids = [int(e.id) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    last = json.loads(got[-1].data)
    assert last["window"]["kind"] == "release" and last["window"]["as_of"] == made[-1]
    stats = live.client.get("/api/v1/stats", params={"release": made[-1]}).json()
    assert last["people"] == stats["people"]  # the public's city total of that release
    assert last["previous"]["release"] == made[-2]


def test_alert_events_go_to_the_audiences_allowed(live: Live, listeners: list) -> None:
    mine = make_watch(live.client)
    public = listen(live, listeners)
    planner = listen(live, listeners, Authorization=f"Bearer {PLANNER_TOKEN}")
    story = Story(live.client)
    story.crowded(), story.crowded()
    wait_for("three open alerts", lambda: live.client.get("/api/v1/alerts", headers=PLANNER)
             .json()["open"] == 3)  # fmt: skip
    want_public = {f"place:{PLACE}:red-now", f"place:{PLACE}:forecast-red-2h"}
    seen: dict[str, set[str]] = {"public": set(), "planner": set()}
    for name, s, n in (("public", public, 2), ("planner", planner, 3)):
        for _ in range(n):
            alert = json.loads(s.next("alert").data)
            assert alert["type"] == "opened"
            seen[name].add(alert["alert"]["watch"]["id"])
    assert seen["public"] == want_public
    assert seen["planner"] == want_public | {mine["id"]}
    # The public stream got no planner alert: after a new release, the next events it sees
    # are that release's, never the planner's alert of before.
    story.empty()
    kinds = []
    while "release" not in kinds:
        kinds.append(public.next().event)
    closing = [json.loads(public.next("alert").data) for _ in range(2)]
    assert {c["alert"]["watch"]["id"] for c in closing} == want_public
    assert all(c["type"] == "closed" for c in closing)


def test_resume_by_last_event_id_loses_and_repeats_nothing(live: Live, listeners: list) -> None:
    make_watch(live.client)
    whole = listen(live, listeners, Authorization=f"Bearer {PLANNER_TOKEN}")
    part = listen(live, listeners, Authorization=f"Bearer {PLANNER_TOKEN}")
    story = Story(live.client)
    story.crowded()
    first = part.next("release")
    part.close()  # the connection drops
    story.crowded(), story.crowded(), story.empty()  # releases and alerts meanwhile
    feed = live.alerting.feed
    wait_for("every release evaluated", lambda: live.alerting.engine.done() == story.t)
    wait_for("the feed holding every event", lambda: feed.last == feed.store.last_event_seq())
    expected = [first]
    while int(expected[-1].id) < feed.last:  # what the unbroken stream saw after ``first``
        e = whole.next()
        if int(e.id) > int(first.id):
            expected.append(e)
    again = listen(live, listeners, **{"Authorization": f"Bearer {PLANNER_TOKEN}",
                                        "Last-Event-ID": first.id})  # fmt: skip
    resumed = [first] + [again.next() for _ in expected[1:]]
    assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in expected]
    assert {e.event for e in expected} == {"release", "alert"}
    # ... and nothing more (no duplicate): the next thing on the stream is a heartbeat.
    assert again.next("heartbeat", "release", "alert").event == "heartbeat"


def test_a_resume_point_outside_the_kept_span_is_told_to_reload(
    live: Live, listeners: list
) -> None:
    s = listen(live, listeners, **{"Last-Event-ID": "999999"})
    reset = s.next()
    assert reset.event == "reset" and "reload" in json.loads(reset.data)["reason"]
    r = live.client.get("/api/v1/events", headers={"Last-Event-ID": "soon"})
    assert r.status_code == 422


def test_heartbeats_keep_a_quiet_stream_alive(live: Live, listeners: list) -> None:
    s = listen(live, listeners)
    beats = [s.next("heartbeat") for _ in range(2)]
    assert all(json.loads(b.data)["at"].endswith("Z") and not b.id for b in beats)


def test_streams_are_capped_and_do_not_count_as_reads_in_flight(
    tmp_path: Path, listeners: list
) -> None:
    s = alert_settings(tmp_path, sse_max_clients=2, max_inflight=1, sse_heartbeat_s=0.5)
    with live_app(s) as live:
        listen(live, listeners), listen(live, listeners)
        r = live.client.get("/api/v1/events")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "too many open event streams" in r.json()["detail"]
        # Two streams are open and reads still pass the in-flight limit of one.
        assert live.client.get("/api/v1/legend").status_code == 200
        listeners.pop().close()
        wait_for("a free stream slot", lambda: live.app.state.event_hub.clients < 2)
        listen(live, listeners)
        wrong = live.client.get("/api/v1/events", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        for x in listeners:
            x.close()
        listeners.clear()


@pytest.mark.slow
def test_open_streams_end_when_the_server_is_stopped(tmp_path: Path) -> None:
    """SIGTERM with a stream open: the stream ends and ``heatmap serve`` exits cleanly (the
    server waits for open responses before it shuts down: a stream must end by itself)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))
    from hardening_server import Server

    server = Server(tmp_path, tmp_path / "store" / "heatmap.db", planner_tokens=PLANNER_TOKEN)
    server.start()
    try:
        s = Listener(server.url)
        assert s.status == 200
        s.next("ready")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)  # uvicorn re-raises the signal once it has shut down cleanly
        assert "Application shutdown complete" in server.log(), server.log()[-2000:]
        with pytest.raises(AssertionError, match="stream"):
            while True:
                s.next(timeout=10)
    finally:
        server.kill()


def test_without_its_lifespan_a_stream_answers_what_is_stored_and_ends(tmp_path: Path) -> None:
    """An app run without its lifespan has no live feed: each stream gives the stored events
    after Last-Event-ID and ends, and EventSource's reconnects still get them all."""
    from fastapi.testclient import TestClient

    from heatmap.api import create_app

    s = alert_settings(tmp_path)
    with TestClient(create_app(s)) as c:  # with its lifespan: make releases and their events
        Story(c).crowded()
        c.app.state.services.alerting.catch_up()  # type: ignore[attr-defined]
        feed = c.app.state.services.alerting.feed  # type: ignore[attr-defined]
        feed.poll()
        stored = [e.seq for e in feed._events]
    assert len(stored) >= 2
    bare = TestClient(create_app(s))  # no lifespan
    r = bare.get("/api/v1/events", headers={"Last-Event-ID": str(stored[0])})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ids = [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")]
    assert ids == stored[1:]
    assert "event: ready" in r.text and "retry: 3000" in r.text
    assert not [x for x in bare.get("/api/v1/events").text.splitlines() if x.startswith("id: ")]
