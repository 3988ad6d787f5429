"""Webhooks (issue 18): where they may go (no SSRF), Standard Webhooks signatures checked with
the ``standardwebhooks`` package, at-least-once delivery from the outbox to a real receiver on
127.0.0.1: once per alert change, retries with backoff, in order per watch, a dead letter, and a
``kill -9`` between the alert and its delivery.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alerts_testdata import (
    PLACE,
    Receiver,
    Story,
    alert_settings,
    make_watch,
    wait_for,
)
from api_testdata import PLANNER, PLANNER_TOKEN, TOKEN
from standardwebhooks import Webhook

from fastapi.testclient import TestClient

from heatmap.alerts.webhooks import AllowList, check_url, new_secret, sign
from heatmap.api import create_app
from heatmap.errors import BadInput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))
from hardening_server import Server  # noqa: E402


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def receiver(made: list[Receiver], **kw: Any) -> Receiver:
    r = Receiver(**kw).start()
    made.append(r)
    return r


def verified(secret: str, hit: Any) -> dict[str, Any]:
    """Return the payload of a received webhook, verified as Standard Webhooks says."""
    return Webhook(secret).verify(hit.body, hit.headers)  # type: ignore[no-any-return]


def deliveries(client: Any, watch_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/watches/{watch_id}", headers=PLANNER)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]  # type: ignore[no-any-return]


# -- signing and the allow-list ------------------------------------------------------------------


def test_a_signature_verifies_with_standardwebhooks_and_only_for_its_bytes() -> None:
    secret = new_secret()
    body = b'{"type":"alert.opened","data":{"id":1}}'
    import time

    ts = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
               "webhook-signature": sign(secret, "msg_1", ts, body)}  # fmt: skip
    assert Webhook(secret).verify(body, headers) == {"type": "alert.opened", "data": {"id": 1}}
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def resolver(table: dict[str, list[str]]) -> Any:
    return lambda host, port: table[host]


@pytest.mark.parametrize(
    ("allow", "url", "dns", "why"),
    [
        ([], "https://hooks.example.org/x", {}, "disabled"),
        (["hooks.example.org"], "https://evil.example.net/x", {}, "not in HEATMAP_WEBHOOK_ALLOW"),
        (["hooks.example.org"], "ftp://hooks.example.org/x", {}, "http"),
        (["hooks.example.org"], "https://u:p@hooks.example.org/x", {}, "credentials"),
        (["hooks.example.org:8443"], "https://hooks.example.org/x", {}, "not in"),
        # A listed name whose DNS points inside the network (or at a metadata service).
        (
            ["hooks.example.org"],
            "https://hooks.example.org/x",
            {"hooks.example.org": ["10.1.2.3"]},
            "resolves to 10.1.2.3",
        ),  # fmt: skip
        (
            ["hooks.example.org"],
            "http://hooks.example.org/x",
            {"hooks.example.org": ["93.184.216.34", "169.254.169.254"]},
            "169.254.169.254",
        ),  # fmt: skip
        (["localhost"], "http://localhost:9000/x", {"localhost": ["127.0.0.1"]}, "127.0.0.1"),
        (["*.example.org"], "http://10.0.0.1/x", {}, "not in"),
        (["10.0.0.0/8"], "http://10.0.0.1:0/x", {}, "port"),
    ],
)
def test_urls_outside_the_allow_list_are_refused(
    allow: list[str], url: str, dns: dict[str, list[str]], why: str
) -> None:
    with pytest.raises(BadInput, match=why):
        check_url(url, AllowList.parse(allow), resolver(dns))


@pytest.mark.parametrize(
    ("allow", "url", "dns", "address"),
    [
        (
            ["hooks.example.org"],
            "https://hooks.example.org/x",
            {"hooks.example.org": ["93.184.216.34"]},
            "93.184.216.34",
        ),  # fmt: skip
        (
            ["*.example.org"],
            "https://a.example.org/x",
            {"a.example.org": ["93.184.216.34"]},
            "93.184.216.34",
        ),  # fmt: skip
        # An operator may allow the city's own network explicitly.
        (
            ["hooks.city.internal", "10.20.0.0/16"],
            "http://hooks.city.internal:8080/x",
            {"hooks.city.internal": ["10.20.3.4"]},
            "10.20.3.4",
        ),  # fmt: skip
        (["127.0.0.1"], "http://127.0.0.1:9000/hook", {}, "127.0.0.1"),
        (["10.0.0.0/8"], "http://10.9.8.7/x", {}, "10.9.8.7"),
    ],
)
def test_urls_inside_the_allow_list_connect_to_the_address_checked(
    allow: list[str], url: str, dns: dict[str, list[str]], address: str
) -> None:
    dest = check_url(url, AllowList.parse(allow), resolver(dns))
    assert dest.address == address
    assert httpx.URL(dest.request_url()).host == address  # the request names the address
    assert dest.host_header().split(":")[0] == httpx.URL(url).host


def test_a_watch_with_a_url_outside_the_allow_list_is_refused_at_creation(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(alert_settings(tmp_path))) as c:
        for url, why in (
            ("http://192.0.2.10/hook", "not in HEATMAP_WEBHOOK_ALLOW"),
            ("http://127.0.0.1.nip.example/hook", "not in"),
            ("file:///etc/passwd", "http"),
        ):
            body = {"target": {"place": PLACE}, "rule": {"kind": "band", "band": "red"},
                    "webhook": {"url": url}}  # fmt: skip
            r = c.post("/api/v1/watches", json=body, headers=PLANNER)
            assert r.status_code == 422 and why in r.json()["detail"], r.text
        assert c.get("/api/v1/watches", headers=PLANNER).json()["watches"] == []


# -- delivery to a real receiver -------------------------------------------------------------------


def test_a_crowd_opens_one_alert_delivered_once_signed_then_closed(
    tmp_path: Path, receivers: list
) -> None:
    hook = receiver(receivers)
    with TestClient(create_app(alert_settings(tmp_path))) as c:
        watch = make_watch(c, hook.url)
        secret = watch["webhook"]["secret"]
        assert secret.startswith("whsec_")
        assert "secret" not in json.dumps(c.get("/api/v1/watches", headers=PLANNER).json())
        story = Story(c)
        story.crowded(), story.crowded(), story.crowded()
        first = wait_for("the alert's webhook", lambda: hook.delivered())
        opened = verified(secret, first[0])
        assert opened["type"] == "alert.opened"
        alert = opened["data"]
        assert alert["state"] == "open" and alert["watch"]["id"] == watch["id"]
        listed = c.get("/api/v1/alerts", headers=PLANNER).json()["alerts"]
        assert [a["id"] for a in listed] == [alert["id"]] and listed[0]["opened"] == alert["opened"]
        story.empty()
        wait_for("the closing webhook", lambda: len(hook.delivered()) == 2)
        closed = verified(secret, hook.delivered()[1])
        assert closed["type"] == "alert.closed" and closed["data"]["id"] == alert["id"]
        assert closed["data"]["closed"]["reason"] == "rule no longer holds"
        # Exactly once each: two messages, two distinct ids, nothing else arrived.
        assert [h.headers["webhook-id"] for h in hook.hits] == [
            f"msg_alert_{alert['id']}_opened",
            f"msg_alert_{alert['id']}_closed",
        ]
        assert [d["state"] for d in deliveries(c, watch["id"])] == ["delivered", "delivered"]


def test_a_receiver_that_fails_three_times_gets_it_on_the_fourth_try(
    tmp_path: Path, receivers: list
) -> None:
    hook = receiver(receivers, script=[500, 503, 502])
    with TestClient(create_app(alert_settings(tmp_path))) as c:
        watch = make_watch(c, hook.url)
        story = Story(c)
        story.crowded(), story.crowded()
        wait_for("a delivery", lambda: hook.delivered(), timeout=30)
        assert [h.status for h in hook.hits] == [500, 503, 502, 200]
        ids = {h.headers["webhook-id"] for h in hook.hits}
        assert len(ids) == 1  # one message, four attempts
        for h in hook.hits:
            verified(watch["webhook"]["secret"], h)  # each attempt signed afresh
        (d,) = deliveries(c, watch["id"])
        assert d["state"] == "delivered" and d["attempts"] == 4 and d["last_error"] is None


def test_messages_go_in_order_per_watch_and_a_dead_one_does_not_block(
    tmp_path: Path, receivers: list
) -> None:
    # Three failures: the first message dies after its two attempts, the second needs two.
    hook = receiver(receivers, script=[503] * 3)
    s = alert_settings(tmp_path, webhook_max_attempts=2, alert_cooldown_s=0)
    with TestClient(create_app(s)) as c:
        watch = make_watch(c, hook.url)
        story = Story(c)
        # Open, close, open, close, made faster than the failing receiver takes them.
        story.crowded(), story.crowded(), story.empty()
        story.crowded(), story.crowded(), story.empty()
        wait_for("four messages settled", lambda: [d["state"] for d in deliveries(c, watch["id"])]
                 == ["delivered", "delivered", "delivered", "dead"], timeout=30)  # fmt: skip
        assert "HTTP 503" in deliveries(c, watch["id"])[-1]["last_error"]
    sent = [h.headers["webhook-id"] for h in hook.hits]
    order = list(dict.fromkeys(sent))  # messages in the order first attempted
    assert [m.rsplit("_", 1)[1] for m in order] == ["opened", "closed", "opened", "closed"]
    # One message at a time: every attempt of a message before any of the next one's.
    assert sent == sorted(sent, key=order.index)
    assert [h.status for h in hook.hits] == [503, 503, 503, 200, 200, 200]
    kinds = [json.loads(h.body)["type"] for h in hook.delivered()]
    assert kinds == ["alert.closed", "alert.opened", "alert.closed"]


def test_a_kill_between_the_alert_and_its_delivery_still_delivers_it(
    tmp_path: Path, receivers: list
) -> None:
    """``kill -9`` while the first attempt is in flight: after a restart, it is delivered."""
    hold = threading.Event()
    hook = receiver(receivers, stall=hold)
    db = tmp_path / "store" / "heatmap.db"
    env: dict[str, object] = {
        "planner_tokens": PLANNER_TOKEN,
        "ingest_token": TOKEN,
        "bands_km2": "50,200,500",
        "alert_defaults": "false",
        "webhook_allow": "127.0.0.1",
        "webhook_timeout_s": 2,
        "webhook_backoff_s": 0.2,
    }
    server = Server(tmp_path, db, **env)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            watch = make_watch(c, hook.url)
            story = Story(c)
            story.crowded(), story.crowded()
            wait_for("the first attempt to arrive", lambda: hook.hits, timeout=30)
            server.kill()  # kill -9 while the receiver holds the request
        hold.set()  # the held request is answered to a dead connection: not delivered
        server.start()
        first_id = hook.hits[0].headers["webhook-id"]
        with httpx.Client(base_url=server.url, timeout=30) as c:
            wait_for("the delivery after the restart",
                     lambda: [d["state"] for d in deliveries(c, watch["id"])] == ["delivered"],
                     timeout=60)  # fmt: skip
        again = [h for h in hook.hits[1:] if h.headers["webhook-id"] == first_id]
        assert again, "the message was not sent again after the restart"
        payload = verified(watch["webhook"]["secret"], again[-1])
        assert payload["type"] == "alert.opened"
    finally:
        hold.set()
        server.kill()
