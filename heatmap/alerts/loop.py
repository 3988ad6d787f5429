"""A daemon thread that runs one step again and again: the event feed, the webhook sender and
the watch engine are each one of these.

The step runs every ``poll_s`` seconds, or at once when woken. A step that fails is logged in
one line (the store unavailable: a warning; anything else: with its traceback) and retried
after a pause, so a disk that fills or a database that restarts never ends the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from heatmap.errors import HeatmapError

STORE_RETRY_S = 5.0
"""Pause after the store failed a step."""


class PollLoop:
    """Run ``step`` on a named daemon thread until :meth:`stop` (see the module doc).

    ``wait_first``: wait before each step (a feed loaded at start) or after it (a sender that
    may have work at once). ``retry_s``: the pause after an unexpected error. ``join_s``: how
    long :meth:`stop` waits for a step in progress.
    """

    def __init__(
        self,
        name: str,
        failure: str,
        log: logging.Logger,
        poll_s: float,
        *,
        wait_first: bool = True,
        retry_s: float = 1.0,
        join_s: float = 5.0,
    ) -> None:
        self.name = name
        self.failure = failure
        self.log = log
        self.poll_s = poll_s
        self.wait_first = wait_first
        self.retry_s = retry_s
        self.join_s = join_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, step: Callable[[], object]) -> None:
        """Start calling ``step`` on the thread."""
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                if self.wait_first:
                    self._pause()
                    if self._stop.is_set():
                        return
                try:
                    step()
                except HeatmapError as exc:  # the store is unavailable: one line, retried
                    self.log.warning("%s: %s", self.failure, exc)
                    self._stop.wait(STORE_RETRY_S)
                except Exception:  # noqa: BLE001 - logged, retried
                    self.log.exception(self.failure)
                    self._stop.wait(self.retry_s)
                if not self.wait_first:
                    self._pause()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def _pause(self) -> None:
        self._wake.wait(self.poll_s)
        self._wake.clear()

    def wake(self) -> None:
        """Run the step now (or as soon as the one in progress ends)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread, waiting up to ``join_s`` for a step in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.join_s)
            self._thread = None
