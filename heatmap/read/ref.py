"""What a read asks for: the latest answer or a window at a time, parsed once at the edges.

The HTTP layer (a dependency) and the CLI (an option callback) turn ``?window=`` / ``--window``
text into a :class:`Ref`; the core never sees the raw string. Parsing is the one place where a
bad time becomes ``BadInput``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from heatmap.errors import BadInput

_EXAMPLE = "e.g. 2026-11-28T09:00:00Z"
_LATEST = ("", "latest")


class Ref(NamedTuple):
    """A reference to what a read answers: the latest release (``at is None``), the closed
    window containing a time, or the release at a tick.

    >>> Ref.parse("latest").pinned, Ref.parse("2026-11-28T09:00:00Z").at
    (False, 1795856400)
    >>> Ref.parse_release("2026-11-28T09:00:00Z").kind
    'release'
    """

    at: int | None = None
    """Epoch seconds inside the wanted window, or of the wanted release; None = the latest."""

    text: str = "latest"
    """The value as the user wrote it (for messages)."""

    kind: str = "window"
    """``window`` (a closed window) or ``release`` (a kept release)."""

    @classmethod
    def parse(cls, text: str | None) -> Ref:
        """Return the reference of a ``?window=`` value (None, ``""``, ``latest`` or a time)."""
        if text is None or text.strip() in _LATEST:
            return LATEST
        return cls(when_to_ts(text), text)

    @classmethod
    def parse_release(cls, text: str | None) -> Ref:
        """Return the reference of a ``?release=`` value (None, ``""``, ``latest`` or a time)."""
        if text is None or text.strip() in _LATEST:
            return LATEST
        return cls(when_to_ts(text, "release"), text, "release")

    @property
    def pinned(self) -> bool:
        """Return True when the request names its window (its answer may never change)."""
        return self.at is not None


LATEST = Ref()
"""The latest data."""


def parse_when(when: str) -> int:
    """Return epoch seconds from ISO-8601 (``Z`` or offset; naive = UTC) or an epoch number."""
    text = when.strip()
    try:
        return int(float(text))
    except (ValueError, OverflowError):  # not a number, or inf / nan: try ISO-8601
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadInput(f"window {when!r} is not ISO-8601 ({_EXAMPLE})") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def when_to_ts(when: str, what: str = "window") -> int:
    """Return epoch seconds of a ``?window=`` value; ``BadInput`` when it is not a time.

    >>> when_to_ts("2026-11-28T09:00:00Z")
    1795856400
    """
    try:
        ts = parse_when(when)
    except BadInput:
        raise BadInput(f"{what} {when!r} is not ISO-8601 ({_EXAMPLE})") from None
    except (OverflowError, ValueError) as exc:
        raise BadInput(f"{what} {when!r} is not ISO-8601 ({_EXAMPLE})") from exc
    if not -(2**53) < ts < 2**53:
        raise BadInput(f"{what} {when!r} is out of range")
    return ts
