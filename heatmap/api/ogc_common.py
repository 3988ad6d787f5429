"""What the OGC API routes share: collections, ``datetime``, links, and 400 for bad input.

The OGC API standards (Common, Features, Tiles) answer a bad query parameter with ``400``,
where the rest of this service answers ``422``: :class:`OgcRoute` makes every route under
``/ogc`` do so, with the same one-line ``{"detail": reason}`` body.

Time. A collection's items and tiles are those of one published answer: without ``datetime``
the latest release (the live answer), otherwise what :func:`parse_when` and
:func:`when_to_ref` make of it:

- an instant: the closed window containing it; an instant in a window that has not closed yet
  names the release made at or just before it (the live answer then);
- an interval ``start/end`` inside one window: that closed window (``start/end`` of a window
  itself names it);
- an interval that is exactly a release's span (``tick - horizon / tick``) and not inside one
  window: that release.

``release=`` (as everywhere in this service) names a release directly; the paging links use it
so that every page of a listing comes from the same release.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from heatmap.api.caching import json_response
from heatmap.api.dependencies import Audience
from heatmap.api.errors import error_response, validation_detail
from heatmap.errors import BadInput, NotFound
from heatmap.read import LATEST, Reader, Ref
from heatmap.read.ref import when_to_ts
from tiles.errors import TileError, TileOutOfRange

CRS84: Final = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
"""WGS-84 longitude, latitude: the only CRS of the features."""

GREGORIAN: Final = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"
"""Temporal reference system of the extents."""

GEOJSON: Final = "application/geo+json"
JSON: Final = "application/json"
OPENAPI_JSON: Final = "application/vnd.oai.openapi+json;version=3.0"
MVT: Final = "application/vnd.mapbox-vector-tile"
PNG: Final = "image/png"

REL: Final = "http://www.opengis.net/def/rel/ogc/1.0/"
"""Prefix of the OGC link relations (``conformance``, ``tilesets-vector``, ...)."""

DENSITY: Final = "density"
"""The collection of the map layer: its resolution follows the zoom (tiles), or ``res``."""

_PER_RES = re.compile(r"^density-r(\d{1,2})$")


class OgcRoute(APIRoute):
    """A route answering bad input with ``400`` and a one-line reason (OGC API), never 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Return the handler, wrapped to turn invalid parameters into ``400``."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return error_response(400, validation_detail(exc))
            except BadInput as exc:
                return error_response(400, str(exc) or "bad request")
            except TileOutOfRange:
                raise  # 404, as for /tiles
            except TileError as exc:
                return error_response(400, str(exc) or "bad tile request")

        return route


# -- collections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    """One collection: the map layer (``res`` None: chosen by zoom or ``?res=``) or a resolution."""

    id: str
    res: int | None

    def title(self) -> str:
        """Return the human title."""
        if self.res is None:
            return "Crowd density (H3 hexagons)"
        return f"Crowd density, H3 resolution {self.res}"


def collections_of(reader: Reader) -> list[Collection]:
    """Return the service's collections: ``density``, then one per published resolution."""
    out = [Collection(DENSITY, None)]
    out += [Collection(f"density-r{r}", r) for r in reader.settings.resolutions]
    return out


def find_collection(reader: Reader, collection_id: str) -> Collection:
    """Return the collection of an id; ``NotFound`` naming the ones there are."""
    for c in collections_of(reader):
        if c.id == collection_id:
            return c
    known = ", ".join(c.id for c in collections_of(reader))
    hint = ""
    if _PER_RES.match(collection_id):
        hint = " (that resolution is not published)"
    raise NotFound(f"no collection {collection_id!r}{hint}: there are {known}")


CollectionId = Annotated[str, Path(description="Collection id (see /ogc/collections)")]
"""The ``{collectionId}`` of a path."""


# -- time ---------------------------------------------------------------------------------------

DatetimeText = Annotated[
    str | None,
    Query(
        alias="datetime",
        description=(
            "An instant (the closed window containing it; before it has closed, the release "
            "made at or just before it) or an interval `start/end` inside one window (that "
            "closed window) or spanning exactly one release. ISO-8601 (UTC when no offset) or "
            "epoch seconds. Default: the latest release."
        ),
        max_length=120,
        examples=["2026-11-28T09:00:00Z"],
    ),
]
"""``?datetime=`` as written."""

ReleaseText = Annotated[
    str | None,
    Query(
        description=(
            "The tick of a kept release (ISO-8601 or epoch seconds); the paging links use it. "
            "Not together with `datetime`."
        ),
        max_length=64,
        examples=["2026-11-28T09:00:00Z"],
    ),
]
"""``?release=`` as written."""


@dataclass(frozen=True)
class When:
    """A parsed ``datetime`` / ``release``: what to read, before looking at the store.

    ``start`` and ``end`` are epoch seconds (``end`` None for an instant); ``release`` marks a
    ``?release=`` tick (in ``start``). All None: the latest release. ``text`` is the value as
    written (for messages).
    """

    start: int | None = None
    end: int | None = None
    release: bool = False
    text: str = "latest"

    @property
    def pinned(self) -> bool:
        """Return True when the request names its time (its answer is final once made)."""
        return self.start is not None


LATEST_WHEN: Final = When()


def parse_when(datetime_text: str | None, release_text: str | None) -> When:
    """Return the time a request names; ``BadInput`` with the reason otherwise.

    >>> parse_when("2026-11-28T09:00:00Z/2026-11-28T09:05:00Z", None).end
    1795856700
    """
    if datetime_text is not None and release_text is not None:
        raise BadInput("use datetime or release, not both")
    if release_text is not None:
        ref = Ref.parse_release(release_text)
        return LATEST_WHEN if ref.at is None else When(ref.at, None, True, release_text)
    if datetime_text is None or not datetime_text.strip():
        return LATEST_WHEN
    text = datetime_text.strip()
    if "/" not in text:
        return When(when_to_ts(text, "datetime"), None, False, text)
    lo, _, hi = text.partition("/")
    if lo.strip() in ("", "..") or hi.strip() in ("", ".."):
        raise BadInput(
            f"datetime {text!r}: open intervals are not served; name one window (start/end) "
            "or an instant"
        )
    start, end = when_to_ts(lo, "datetime"), when_to_ts(hi, "datetime")
    if end <= start:
        raise BadInput(f"datetime {text!r}: the interval ends before it starts")
    return When(start, end, False, text)


def when_to_ref(reader: Reader, when: When) -> Ref:
    """Return the reference (closed window or release) a parsed time names.

    May read the window list (the store): call it off the event loop. ``BadInput`` for an
    interval that is neither inside one window nor one release's span.
    """
    if when.start is None:
        return LATEST
    s = reader.settings
    if when.release:
        return Ref(when.start, when.text, "release")
    if when.end is None:
        latest = reader.windows().latest_closed()
        if latest is not None and when.start < latest.window.end:
            return Ref(when.start, when.text)
        # After the last closed window: the live answer at that time is the release made then.
        return Ref(when.start // s.release_s * s.release_s, when.text, "release")
    if when.start // s.window_s == (when.end - 1) // s.window_s:
        return Ref(when.start, when.text)
    rolled = reader.windows().closed().find(when.start)  # an hourly or daily roll-up's span
    if rolled is not None and rolled.is_rollup and tuple(rolled.window) == (when.start, when.end):
        return Ref(when.start, when.text)
    if when.end % s.release_s == 0 and when.end - when.start == s.horizon:
        return Ref(when.end, when.text, "release")
    n = (when.end - 1) // s.window_s - when.start // s.window_s + 1
    raise BadInput(
        f"datetime spans {n} windows of {s.window_s} s: name one closed window (an instant, or "
        f"its start/end) or one release (tick - {s.horizon} s / tick)"
    )


def time_params(info_kind: str, start: str, end: str) -> dict[str, str]:
    """Return the query parameters that pin an answer to what it was read from."""
    if info_kind == "release":
        return {"release": end}
    return {"datetime": f"{start}/{end}"}


# -- links and answers --------------------------------------------------------------------------


def root_url(request: Request) -> str:
    """Return the service's public root (no trailing slash)."""
    return str(request.base_url).rstrip("/")


def link(
    href: str, rel: str, type_: str = JSON, title: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Return one link object."""
    out: dict[str, Any] = {"href": href, "rel": rel, "type": type_}
    if title is not None:
        out["title"] = title
    out.update(extra)
    return out


def ogc_json(
    request: Request,
    payload: Any,
    who: Audience | None = None,
    *,
    media_type: str = JSON,
    immutable: bool = False,
    max_age: int | None = None,
) -> Response:
    """Return JSON with ETag, ``304``, gzip and Cache-Control (``private`` for planners)."""
    h = request.headers
    return json_response(
        payload,
        if_none_match=h.get("if-none-match"),
        accept_encoding=h.get("accept-encoding"),
        immutable=immutable,
        max_age=max_age,
        extra={"Content-Type": media_type},
        private=who is not None and who.private,
    )
