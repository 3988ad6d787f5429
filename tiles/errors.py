"""Errors raised by the tiles package; the HTTP layer maps them to statuses (404/422)."""

from __future__ import annotations


class TileError(ValueError):
    """Base of every error the tiles package reports about a request."""


class TileOutOfRange(TileError):
    """A z/x/y tile address outside the tile matrix or the served zoom range."""
