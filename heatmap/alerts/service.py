"""Crowd warnings of one process: the watches, the engine, the event feed, the webhook sender.

:class:`Alerting` is what the HTTP layer calls (create, list, delete watches; list alerts; the
feed of the event stream) and what the app's lifespan starts and stops: three daemon threads,
the engine's (a new release is noticed within :data:`CHECK_S` of the window list moving, made
by this process or another), the feed's and the sender's. None of them runs inside an ingest
request: a batch is acknowledged once durable, whatever the receivers do.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from heatmap.alerts.engine import AlertEngine, alert_json
from heatmap.alerts.feed import EventFeed, visible
from heatmap.alerts.loop import PollLoop
from heatmap.alerts.rules import (
    Watch,
    default_watches,
    parse_rule,
    parse_spec,
    place_target,
    polygon_target,
)
from heatmap.alerts.webhooks import AllowList, WebhookSender, check_url, new_secret
from heatmap.config import Settings
from heatmap.errors import BadInput, NotFound
from heatmap.model import epoch_to_iso
from heatmap.read.places import PlaceBook
from heatmap.read.reader import Reader
from heatmap.store import Store
from heatmap.store.alert_rows import WatchRow

log = logging.getLogger("heatmap.alerts")

CHECK_S: Final = 0.1
"""How often the engine's thread looks for a new release (in the in-memory window list)."""

DELIVERIES_SHOWN: Final = 20


class Alerting:
    """Watches, alerts, the event feed and webhook delivery over one store.

    Parameters
    ----------
    store : Store
        The service's store.
    exact, public : Reader
        The planners' and the public's readers.
    settings : Settings
        The service settings (``alert_*``, ``events_keep_s``, ``webhook_*``).
    places : callable
        Returns the key places' book.
    """

    def __init__(
        self,
        store: Store,
        exact: Reader,
        public: Reader,
        settings: Settings,
        places: Callable[[], PlaceBook],
    ) -> None:
        self.store = store
        self.settings = settings
        self.places = places
        self.allow = AllowList.parse(settings.webhook_allow)
        self.engine = AlertEngine(store, exact, public, settings, places, self.watches)
        self.feed = EventFeed(store, settings.events_keep_s)
        self.sender = WebhookSender(store, settings)
        self.engine.on_commit += [self.feed.wake, self.sender.wake]
        self._parsed: dict[str, Watch] = {}
        self._defaults: list[Watch] | None = None
        self._loop = PollLoop(
            "alert-engine", "evaluating watches failed", log, CHECK_S, retry_s=2.0, join_s=30.0
        )

    # -- watches -----------------------------------------------------------------------------
    def defaults(self) -> list[Watch]:
        """Return the default watches of the key places (none when turned off)."""
        if not self.settings.alert_defaults:
            return []
        if self._defaults is None:
            self._defaults = default_watches(self.places().places)
        return self._defaults

    def _from_row(self, row: WatchRow) -> Watch:
        hit = self._parsed.get(row.id)
        if hit is None:
            spec = orjson.loads(row.spec)
            raw = spec["target"]
            if "place" in raw:
                target = place_target(raw["place"])
            else:
                target = polygon_target(raw["polygon"])
            hit = Watch(
                id=row.id,
                target=target,
                rule=parse_rule(spec["rule"], 10**9),
                name=spec.get("name"),
                created=row.created,
                open_after=spec.get("open_after"),
                cooldown_s=spec.get("cooldown_s"),
                webhook_url=row.webhook_url,
                webhook_secret=row.webhook_secret,
            )
            self._parsed[row.id] = hit
        return hit

    def watches(self) -> list[Watch]:
        """Return every watch in force: the defaults, then the stored ones, oldest first."""
        return [*self.defaults(), *(self._from_row(r) for r in self.store.watch_rows())]

    def _find_place(self, query: str) -> str:
        book = self.places()
        try:
            return book.places[book.find(query)].id
        except NotFound:
            raise BadInput(f"target.place: no place {query!r} (see /api/v1/places)") from None

    def create(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Validate and store a planner's watch; return it with its webhook secret (shown once).

        ``BadInput`` for a bad target, rule or webhook URL (one outside
        ``HEATMAP_WEBHOOK_ALLOW``, or whose host resolves to an address it does not allow).
        """
        s = self.settings
        name, target, rule, open_after, cooldown = parse_spec(
            raw, self._find_place, s.release_keep_s
        )
        hook = raw.get("webhook")
        url = None
        if hook is not None:
            if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
                raise BadInput('webhook: {"url": "https://..."} is required')
            url = check_url(hook["url"].strip(), self.allow).url
        if len(self.store.watch_rows()) >= s.max_watches:
            raise BadInput(f"at most {s.max_watches} watches (HEATMAP_MAX_WATCHES): delete one")
        w = Watch(
            id="w_" + secrets.token_hex(8),
            target=target,
            rule=rule,
            name=name,
            created=int(time.time()),
            open_after=open_after,
            cooldown_s=cooldown,
            webhook_url=url,
            webhook_secret=None if url is None else new_secret(),
        )
        row = WatchRow(w.id, w.created, orjson.dumps(w.spec_json()).decode(), url, w.webhook_secret)
        with self.store.transaction():
            self.store.insert_watch(row)
        out = self.describe(w)
        if url is not None:
            out["webhook"] = {"url": url, "secret": w.webhook_secret}
        return out

    def get(self, watch_id: str) -> Watch:
        """Return a watch by id (``NotFound``)."""
        for w in self.watches():
            if w.id == watch_id:
                return w
        raise NotFound(f"no watch {watch_id!r}")

    def describe(self, w: Watch) -> dict[str, Any]:
        """Return a watch, its state (releases held in a row, open alert) and its deliveries."""
        out = self.engine.watch_json(w)
        state = next((r for r in self.store.watch_states() if r.watch_id == w.id), None)
        out["state"] = {
            "streak": 0 if state is None else state.streak,
            "open_alert": None if state is None else state.alert_id,
        }
        if w.webhook_url is not None:
            out["deliveries"] = [
                {
                    "id": m.msg_id,
                    "state": m.state,
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                    "created": epoch_to_iso(int(m.created)),
                    "done": None if m.done_at is None else epoch_to_iso(int(m.done_at)),
                }
                for m in self.store.webhook_rows(w.id, DELIVERIES_SHOWN)
            ]
        return out

    def list(self) -> list[dict[str, Any]]:
        """Return every watch in force with its state."""
        states = {r.watch_id: r for r in self.store.watch_states()}
        out = []
        for w in self.watches():
            item = self.engine.watch_json(w)
            st = states.get(w.id)
            item["state"] = {
                "streak": 0 if st is None else st.streak,
                "open_alert": None if st is None else st.alert_id,
            }
            out.append(item)
        return out

    def delete(self, watch_id: str) -> None:
        """Delete a planner's watch, closing its open alert (the defaults are turned off with
        ``HEATMAP_ALERT_DEFAULTS=false``, not deleted)."""
        w = self.get(watch_id)
        if w.default:
            raise BadInput("a default watch cannot be deleted: set HEATMAP_ALERT_DEFAULTS=false")
        with self.store.transaction():
            state = next((r for r in self.store.watch_states() if r.watch_id == w.id), None)
            if not self.store.delete_watch(w.id):
                raise NotFound(f"no watch {watch_id!r}")
            if state is not None and state.alert_id is not None:
                self.engine.close_for_deleted(w, state.alert_id)
        self._parsed.pop(w.id, None)
        self.feed.wake()

    # -- alerts ------------------------------------------------------------------------------
    def alerts(self, private: bool) -> dict[str, Any]:
        """Return the open alerts and those closed within ``HEATMAP_ALERT_RECENT_S`` that an
        audience may see (the public: those of the public watches), open ones first."""
        done = self.engine.done()
        since = (done or 0) - self.settings.alert_recent_s
        rows = self.store.alert_rows(closed_since=since)
        rows = [r for r in rows if visible(r.audience, private)]
        items = [
            alert_json(
                r.id, orjson.loads(r.opened), None if r.closed is None else orjson.loads(r.closed)
            )
            for r in rows
        ]
        items.sort(key=lambda a: (a["state"] != "open", -a["id"]))
        return {
            "evaluated": None if done is None else epoch_to_iso(done),
            "open": sum(1 for a in items if a["state"] == "open"),
            "alerts": items,
        }

    # -- threads -----------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Evaluate the releases not evaluated yet, now (the engine's thread does it anyway)."""
        return self.engine.run_pending()

    def start(self) -> None:
        """Start the feed, the sender and the engine's thread."""
        self.engine.begin()
        self.feed.start()
        self.sender.start()
        self._loop.start(self.engine.run_pending)  # a failed release is tried again

    def stop(self) -> None:
        """Stop the threads (an evaluation in progress finishes first)."""
        self._loop.stop()
        self.sender.stop()
        self.feed.stop()
