"""Evaluate every watch once per release, on its published values, and record what changed.

The engine reads a release's values for every target (:mod:`heatmap.alerts.measure`), then, in
one store transaction: checks that no process evaluated this release yet (the store's
``alerts_release`` mark, so several API nodes on one PostgreSQL store evaluate each release
once), steps each watch's state (:mod:`heatmap.alerts.lifecycle`), opens and closes alerts, and
appends the release's events (one ``release`` event, then one ``alert`` event per change) and
the webhook messages of the watches that have a URL (the durable outbox). Nothing is sent from
here: the event feed and the webhook sender read what was committed, so a crash between the
alert and its delivery loses nothing, and ingest never waits for a receiver.

Releases are evaluated in order, each once; after a pause (a restart, a node that fell behind)
the kept releases not yet evaluated are caught up, at most :data:`CATCH_UP` of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from heatmap.alerts.lifecycle import State, step
from heatmap.alerts.measure import Reading, check
from heatmap.alerts.rules import PUBLIC, Watch, target_place
from heatmap.config import Settings
from heatmap.model import epoch_to_iso
from heatmap.read.answers import window_json
from heatmap.read.catalog import WindowList
from heatmap.read.places import PlaceBook
from heatmap.read.reader import Reader
from heatmap.store import Store, WindowInfo
from heatmap.store.alert_rows import OutboxRow, WatchStateRow

log = logging.getLogger("heatmap.alerts")

CATCH_UP = 30
"""Most releases evaluated in one go after a pause (the newest ones)."""

DONE_KEY = "alerts_release"
"""Store metadata: the tick of the last release whose watches were evaluated."""


def dumps(obj: object) -> str:
    """Return compact JSON text (NaN-free values only)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class AlertEngine:
    """Evaluate watches per release and write alerts, events and webhook messages.

    Parameters
    ----------
    store : Store
        Where watches, states, alerts, events and the outbox live.
    exact, public : Reader
        The planners' reader (exact published values) and the public's (rounded).
    settings : Settings
        Open-after, cooldown, retention of events and alerts.
    places : callable
        Returns the key places' book (shared with the place pages, so history is read once).
    watches : callable
        Returns every watch in force (defaults and stored).
    """

    def __init__(
        self,
        store: Store,
        exact: Reader,
        public: Reader,
        settings: Settings,
        places: Callable[[], PlaceBook],
        watches: Callable[[], list[Watch]],
    ) -> None:
        self.store = store
        self.exact = exact
        self.public = public
        self.settings = settings
        self.places = places
        self.watches = watches
        self.on_commit: list[Callable[[], None]] = []
        """Called after a commit that added events or webhook messages (wake the readers)."""
        self._lock = threading.Lock()
        self._done: int | None = None
        self._start: int | None = None
        self._loaded = False
        self._areas: tuple[tuple[str, ...], PlaceBook] | None = None

    # -- which releases ------------------------------------------------------------------------
    def done(self) -> int | None:
        """Return the tick of the last release evaluated (by any process), as known here
        (None before the first evaluation)."""
        if not self._loaded:
            v = self.store.get_meta(DONE_KEY)
            self._done = None if v is None else int(v)
            self._loaded = True
        return self._done

    def begin(self) -> None:
        """Mark where a store never evaluated starts: its latest release now (at start-up, so
        that every release made from then on is evaluated, however late the thread looks)."""
        if self._start is None:
            latest = self.exact.catalog.cached().releases.latest()
            self._start = -1 if latest is None else latest.w - 1

    def pending(self, wl: WindowList | None = None) -> list[WindowInfo]:
        """Return the kept releases not evaluated yet, oldest first (the latest on first use)."""
        rel = (wl or self.exact.catalog.cached()).releases
        done = self.done()
        if done is None:
            # Never evaluated: start from the latest release there is now (every later one
            # is evaluated, in order); none yet: from the first.
            self.begin()
            assert self._start is not None
            done = self._start
        if not len(rel):
            return []
        latest = rel.latest()
        assert latest is not None
        if latest.w <= done:
            return []
        first = int(np.searchsorted(rel.ticks, done, side="right"))
        return [rel.info(i) for i in range(max(first, len(rel) - CATCH_UP), len(rel))]

    def run_pending(self) -> int:
        """Evaluate every pending release in order; return how many this process recorded."""
        with self._lock:
            if not self.pending():
                return 0
            wl = self.exact.catalog.current()
            made = 0
            for info in self.pending(wl):
                made += self.evaluate(info, wl)
            return made

    # -- one release -------------------------------------------------------------------------
    def _books(self, watches: list[Watch]) -> tuple[PlaceBook, PlaceBook | None]:
        """Return the key places' book and a book of the polygon targets (remade on change)."""
        areas = {w.target.key: w for w in watches if w.target.polygon is not None}
        keys = tuple(sorted(areas))
        if not keys:
            return self.places(), None
        if self._areas is None or self._areas[0] != keys:
            targets = [target_place(areas[k].target, areas[k].name) for k in keys]
            self._areas = (keys, PlaceBook(targets, self.settings))
        return self.places(), self._areas[1]

    def _results(
        self, watches: list[Watch], info: WindowInfo, wl: WindowList
    ) -> list[tuple[Watch, bool, dict[str, Any]]]:
        places, areas = self._books(watches)
        readings: dict[tuple[int, bool], Reading] = {}
        out = []
        for w in watches:
            book = places if w.target.place is not None else areas
            assert book is not None
            i = book.index.get(w.target.place or w.target.key)
            if i is None:  # a place that left the city's file: it never holds
                out.append((w, False, {"release": epoch_to_iso(info.window.end)}))
                continue
            public = w.audience == PUBLIC
            key = (id(book), public)
            if key not in readings:
                readings[key] = Reading(book, self.public if public else self.exact, info, wl)
            holds, values = check(w.rule, readings[key], i)
            out.append((w, holds, values))
        return out

    def target_json(self, w: Watch) -> dict[str, Any]:
        """Return where a watch looks: the place (names, centre) or the polygon (and a point)."""
        if w.target.place is not None:
            book = self.places()
            i = book.index.get(w.target.place)
            if i is None:
                return {"kind": "place", "place": w.target.place}
            p = book.places[i]
            return {
                "kind": "place",
                "place": p.id,
                "name": {"zh": p.name_zh, "en": p.name_en},
                "lat": p.lat,
                "lng": p.lng,
            }
        inside = w.target.geometry().representative_point()
        return {
            "kind": "polygon",
            "polygon": w.target.polygon,
            "name": {"zh": w.name or "", "en": w.name or ""},
            "lat": round(inside.y, 6),
            "lng": round(inside.x, 6),
        }

    def watch_json(self, w: Watch) -> dict[str, Any]:
        """Return a watch as the API and the alerts show it (never its webhook secret)."""
        s = self.settings
        bands = self.places().bands
        return {
            "id": w.id,
            "name": w.name,
            "default": w.default,
            "audience": w.audience,
            "target": w.target.to_json(),
            "rule": w.rule.to_json(),
            "says": w.rule.words(bands),
            "open_after": w.open_after or s.alert_open_after,
            "cooldown_s": s.alert_cooldown_s if w.cooldown_s is None else w.cooldown_s,
            "webhook": None if w.webhook_url is None else {"url": w.webhook_url},
            "created": None if not w.created else epoch_to_iso(w.created),
        }

    def release_json(self, info: WindowInfo, wl: WindowList) -> dict[str, Any]:
        """Return the ``release`` event: the new release and what changed at city level
        (the public's figures: people counted, and published cells by band per resolution)."""
        s = self.settings
        snaps = self.public.snapshots(info)
        by_res = []
        for r in s.resolutions:
            snap = snaps[r]
            names = [b.name for b in snap.bands]
            counts = np.bincount(snap.band, minlength=len(names)) if len(snap) else [0] * 4
            by_res.append(
                {
                    "res": r,
                    "cells": len(snap),
                    "cells_by_band": {n: int(c) for n, c in zip(names, counts, strict=True)},
                }
            )
        people = float(snaps[s.min_res].people.sum())
        out: dict[str, Any] = {
            "release": epoch_to_iso(info.window.end),
            "window": dict(window_json(info)),
            "people": people,
            "previous": None,
            "by_res": by_res,
        }
        prev = wl.releases.at_or_before(info.window.end - 1)
        if prev is not None:
            before = float(self.public.snapshots(prev)[s.min_res].people.sum())
            out["previous"] = {
                "release": epoch_to_iso(prev.window.end),
                "people": before,
                "change": people - before,
            }
        return out

    def evaluate(self, info: WindowInfo, wl: WindowList) -> bool:
        """Evaluate every watch on release ``info``; return False when it was done already."""
        t = info.window.end
        done = self.store.get_meta(DONE_KEY)
        if done is not None and int(done) >= t:  # another process did it: skip the reading
            self._done, self._loaded = int(done), True
            return False
        watches = self.watches()
        results = self._results(watches, info, wl)
        release = self.release_json(info, wl)
        now = time.time()
        s = self.settings
        with self.store.transaction():
            done = self.store.get_meta(DONE_KEY)
            if done is not None and int(done) >= t:
                self._done, self._loaded = int(done), True
                return False
            states = {
                r.watch_id: State(r.streak, r.alert_id, r.quiet_until)
                for r in self.store.watch_states()
            }
            open_rows = {a.id: a for a in self.store.alert_rows(closed_since=2**62)}
            stored = {r.id for r in self.store.watch_rows()}
            events: list[tuple[str, str, str, int]] = [("public", "release", dumps(release), 0)]
            outbox: list[OutboxRow] = []
            new_states = []
            for w, holds, values in results:
                if not w.default and w.id not in stored:
                    continue  # deleted meanwhile
                before = states.get(w.id, State())
                after, change = step(
                    before,
                    holds,
                    t,
                    w.open_after or s.alert_open_after,
                    s.alert_cooldown_s if w.cooldown_s is None else w.cooldown_s,
                )
                alert = None
                if change == "open":
                    alert = self._open(w, t, values)
                    after = after.with_alert(alert["id"])
                elif change == "close" and before.alert_id is not None:
                    row = open_rows.get(before.alert_id)
                    alert = self._close(before.alert_id, row, t, values, "rule no longer holds")
                if alert is not None:
                    kind = "opened" if change == "open" else "closed"
                    payload = {"type": kind, "alert": alert}
                    events.append((w.audience, "alert", dumps(payload), 0))
                    if w.webhook_url is not None:
                        outbox.append(self._message(w, alert, kind, now))
                if after != before or w.id not in states:
                    new_states.append(
                        WatchStateRow(w.id, after.streak, after.alert_id, after.quiet_until)
                    )
            self.store.put_watch_states(new_states)
            self.store.append_events([(a, k, d, int(now)) for a, k, d, _ in events])
            self.store.enqueue_webhooks(outbox)
            self.store.set_meta(DONE_KEY, str(t))
            self.store.delete_events_before(int(now) - s.events_keep_s)
            self.store.delete_alerts_closed_before(t - s.alert_recent_s)
            self.store.delete_webhooks_before(now - max(s.alert_recent_s, s.events_keep_s))
        self._done, self._loaded = t, True
        for wake in self.on_commit:
            wake()
        return True

    def _open(self, w: Watch, t: int, values: dict[str, Any]) -> dict[str, Any]:
        """Store a new alert (inside the transaction); return it as the API shows it."""
        head = {"watch": self.watch_json(w), "target": self.target_json(w), "values": values}
        head["watch"].pop("webhook", None)
        alert_id = self.store.open_alert(w.id, w.audience, t, dumps(head))
        return alert_json(alert_id, head, None)

    def _close(
        self, alert_id: int, row: Any, t: int, values: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        """Close an alert (inside the transaction); return it as the API shows it."""
        closed = {"values": values, "reason": reason}
        self.store.close_alert(alert_id, t, dumps(closed))
        head = orjson.loads(row.opened) if row is not None else {}
        return alert_json(alert_id, head, closed)

    def _message(self, w: Watch, alert: dict[str, Any], kind: str, now: float) -> OutboxRow:
        """Return the webhook message of an alert change (signed when sent)."""
        body = {"type": f"alert.{kind}", "timestamp": epoch_to_iso(int(now)), "data": alert}
        return OutboxRow(
            id=0,
            watch_id=w.id,
            msg_id=f"msg_alert_{alert['id']}_{kind}",
            url=w.webhook_url or "",
            secret=w.webhook_secret or "",
            body=dumps(body),
            next_at=now,
            created=now,
        )

    def close_for_deleted(self, w: Watch, alert_id: int) -> None:
        """Close the open alert of a watch being deleted (inside the caller's transaction)."""
        row = next((a for a in self.store.alert_rows(closed_since=2**62) if a.id == alert_id), None)
        t = self.done() or (row.opened_t if row is not None else 0)
        alert = self._close(alert_id, row, t, {}, "watch deleted")
        payload = {"type": "closed", "alert": alert}
        self.store.append_events([(w.audience, "alert", dumps(payload), int(time.time()))])


def alert_json(
    alert_id: int, head: dict[str, Any], closed: dict[str, Any] | None
) -> dict[str, Any]:
    """Return an alert as the API, the event stream and webhooks show it."""
    return {
        "id": alert_id,
        "state": "open" if closed is None else "closed",
        "watch": head.get("watch"),
        "target": head.get("target"),
        "opened": head.get("values"),
        "closed": closed,
    }
