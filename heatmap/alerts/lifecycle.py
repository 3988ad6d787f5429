"""An alert's life: opened after ``N`` releases in a row that hold, closed at the first that
does not, then a cooldown before the watch may open another.

Pure functions on small frozen values; the engine stores the states
(:class:`heatmap.store.alert_rows.WatchStateRow`).

>>> s = State()
>>> s, what = step(s, True, 60, open_after=2, cooldown_s=300); what
>>> s, what = step(s, True, 120, open_after=2, cooldown_s=300); what
'open'
>>> s = s.with_alert(7)
>>> s, what = step(s, False, 180, open_after=2, cooldown_s=300); what, s.quiet_until
('close', 480)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Change = Literal["open", "close"] | None


@dataclass(frozen=True)
class State:
    """Releases in a row the rule held, the open alert (if any), when the cooldown ends."""

    streak: int = 0
    alert_id: int | None = None
    quiet_until: int = 0

    def with_alert(self, alert_id: int | None) -> State:
        """Return the state with its open alert set (after the store numbered it)."""
        return replace(self, alert_id=alert_id)


def step(
    state: State, holds: bool, t: int, open_after: int, cooldown_s: int
) -> tuple[State, Change]:
    """Return the state after release ``t`` and what changed (``open``, ``close`` or None).

    Notes
    -----
    ``streak`` counts the releases in a row on which the rule held. An alert opens when the
    streak reaches ``open_after`` (so one odd release never opens one) and the cooldown is over
    (``t >= quiet_until``); a streak that reaches ``open_after`` during the cooldown opens the
    alert at the first release after it, if it still holds. An open alert closes at the first
    release on which the rule does not hold, and the cooldown runs ``cooldown_s`` from there.
    """
    if holds:
        streak = state.streak + 1
        if state.alert_id is None and streak >= open_after and t >= state.quiet_until:
            return State(streak, None, state.quiet_until), "open"
        return replace(state, streak=streak), None
    if state.alert_id is not None:
        return State(0, None, t + cooldown_s), "close"
    return replace(state, streak=0), None
