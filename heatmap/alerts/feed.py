"""The event stream of one process: the store's events of the kept span, in memory, in order.

Events are written by the engine in the transaction that evaluated a release (a ``release``
event, then its ``alert`` events) and numbered in commit order by the store. Each process tails
the store (``events_after``) into this feed, every :data:`POLL_S` and at once when told that
its own engine committed, and serves its streams from memory: a client resuming with
``Last-Event-ID: n`` gets every event numbered above ``n`` that its audience may see, once, in
order, on whichever node it reconnects to, as long as ``n`` is within the kept span
(``HEATMAP_EVENTS_KEEP_S``); older, it is told to reload (:data:`RESET`).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from heatmap.alerts.loop import PollLoop
from heatmap.alerts.rules import PLANNER, PUBLIC
from heatmap.store import Store

log = logging.getLogger("heatmap.alerts")

POLL_S: Final = 0.25
"""How often the store is read for events other processes wrote."""

RESET: Final = None
"""What :meth:`EventFeed.after` returns when a resume point is outside the kept span."""


@dataclass(frozen=True)
class Event:
    """One event, encoded once as an SSE frame (``id``, ``event``, ``data``)."""

    seq: int
    audience: str
    kind: str
    frame: bytes
    at: int


def sse_frame(seq: int, kind: str, data: str) -> bytes:
    """Return the text/event-stream bytes of one event (``data`` is one line of JSON)."""
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()


def visible(audience: str, private: bool) -> bool:
    """Return True when an event of ``audience`` may go to a stream (planner or public)."""
    return audience == PUBLIC or (private and audience == PLANNER)


class EventFeed:
    """The kept span of the store's events in memory, tailed by a thread."""

    def __init__(self, store: Store, keep_s: int, poll_s: float = POLL_S) -> None:
        self.store = store
        self.keep_s = keep_s
        self.listeners: list[Callable[[], None]] = []
        """Called (from the feed's thread) after new events arrived."""
        self._events: list[Event] = []
        self._seqs: list[int] = []
        self._lock = threading.Lock()
        self._polling = threading.Lock()
        self._loop = PollLoop("event-feed", "event feed: reading the store failed", log, poll_s)
        self.floor = 0
        """Events numbered at or below this may be gone (trimmed before or while kept here)."""
        self.last = 0
        """The newest event number held."""

    def load(self) -> None:
        """Read the kept span from the store (at start)."""
        with self._polling:
            self._load()

    def _load(self) -> None:
        rows = self._read_new(0)
        with self._lock:
            self.floor = rows[0].seq - 1 if rows else self.store.last_event_seq()
            self.last = max(self.floor, rows[-1].seq if rows else 0)
            self._events = rows
            self._seqs = [e.seq for e in rows]

    def _read_new(self, after: int) -> list[Event]:
        out: list[Event] = []
        while True:
            rows = self.store.events_after(after, 1000)
            out += [
                Event(r.seq, r.audience, r.kind, sse_frame(r.seq, r.kind, r.data), r.at)
                for r in rows
            ]
            if len(rows) < 1000:
                return out
            after = rows[-1].seq

    def poll(self) -> int:
        """Take the store's new events and drop those past the kept span; return how many came.

        One poll at a time (the feed's thread, a resuming stream): each event is taken once.
        """
        with self._polling:
            return self._poll()

    def _poll(self) -> int:
        new = self._read_new(self.last)
        cut = int(time.time()) - self.keep_s
        with self._lock:
            new = [e for e in new if e.seq > self.last]
            if new:
                self._events += new
                self._seqs += [e.seq for e in new]
                self.last = new[-1].seq
            k = 0
            while k < len(self._events) and self._events[k].at < cut:
                k += 1
            if k:
                self.floor = max(self.floor, self._events[k - 1].seq)
                del self._events[:k]
                del self._seqs[:k]
        if new:
            for notify in self.listeners:
                notify()
        return len(new)

    def after(self, seq: int, private: bool) -> tuple[int, list[bytes] | None]:
        """Return the newest number held and the frames numbered above ``seq`` the audience
        may see, in order; ``RESET`` instead of frames when ``seq`` is outside the kept span
        (older than it, or a number never given). May read the store."""
        if seq > self.last:
            self.poll()  # another node may be a moment ahead of this feed
            if seq > self.last:
                return self.last, RESET
        with self._lock:
            if seq < self.floor:
                return self.last, RESET
            i = bisect.bisect_right(self._seqs, seq)
            return self.last, [e.frame for e in self._events[i:] if visible(e.audience, private)]

    def newer(self, seq: int, private: bool) -> tuple[int, list[bytes]]:
        """Return the newest number held and the visible frames numbered above ``seq``."""
        with self._lock:
            i = bisect.bisect_right(self._seqs, seq)
            frames = [e.frame for e in self._events[i:] if visible(e.audience, private)]
            return self.last, frames

    def wake(self) -> None:
        """Read the store now (this process committed events)."""
        self._loop.wake()

    def start(self) -> None:
        """Load the kept span, then tail the store on a daemon thread."""
        self.load()
        self._loop.start(self.poll)

    def stop(self) -> None:
        """Stop tailing."""
        self._loop.stop()
