"""Domain errors. Core code raises these; only the HTTP layer and the CLI map them to statuses."""

from __future__ import annotations


class HeatmapError(Exception):
    """Base of every error the service reports to a user."""

    status = 500


class BadInput(HeatmapError):
    """The input (file, row, parameter) is invalid; the message says which and why."""

    status = 422


class NotFound(HeatmapError):
    """A requested thing (window, place, tile) does not exist."""

    status = 404


class TooLarge(HeatmapError):
    """A request or file exceeds a documented limit."""

    status = 413


class Unauthorized(HeatmapError):
    """Missing or wrong credentials."""

    status = 401


class StoreUnavailable(HeatmapError):
    """The store cannot be read or written (read-only directory, full disk, foreign file)."""

    status = 503
