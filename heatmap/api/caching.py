"""HTTP caching: strong ETags, ``304`` on ``If-None-Match``, ``Cache-Control``, ``Vary``, gzip.

Closed windows named in the URL never change: ``public, max-age=86400, immutable``. Anything
that follows the live window gets a short ``max-age`` with ``must-revalidate`` (then a cheap
``304``). Different encodings of one resource carry different strong ETags.
"""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import orjson

from starlette.responses import Response

IMMUTABLE = "public, max-age=86400, immutable"
"""Cache-Control of resources of a closed, named window."""

LIVE_MAX_AGE = 5
"""Seconds a client may reuse a live resource before revalidating."""

LIVE = f"public, max-age={LIVE_MAX_AGE}, must-revalidate"
"""Cache-Control of resources that follow the live window."""

NO_STORE = "no-store"
"""Cache-Control of answers that must not be cached (ingest, health, metrics)."""

GZIP_MIN_BYTES = 1024
"""JSON bodies smaller than this are sent as they are."""


def cache_control(immutable: bool, max_age: int | None = None, private: bool = False) -> str:
    """Return the Cache-Control value of a resource (``private`` behind authentication)."""
    if immutable:
        value = IMMUTABLE
    elif max_age is not None:
        value = f"public, max-age={max_age}, must-revalidate"
    else:
        value = LIVE
    return value.replace("public", "private", 1) if private else value


def body_etag(body: bytes) -> str:
    """Return a strong ETag of a body (BLAKE2b, 96 bits)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def gzip_etag(tag: str) -> str:
    """Return the strong ETag of the gzip-encoded variant of a representation."""
    return tag[:-1] + '-gz"'


def etag_matches(if_none_match: str | None, *tags: str) -> bool:
    """Return True when ``If-None-Match`` names any of ``tags`` (weak comparison, or ``*``).

    >>> etag_matches('W/"a", "b"', '"b"')
    True
    """
    if not if_none_match:
        return False
    for raw in if_none_match.split(","):
        tag = raw.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag in tags:
            return True
    return False


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Return True when ``Accept-Encoding`` allows gzip (``gzip`` or ``*`` with q > 0).

    >>> accepts_gzip("br, gzip;q=0.5"), accepts_gzip("gzip;q=0"), accepts_gzip(None)
    (True, False, False)
    """
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def not_modified(tag: str, cache: str, extra: dict[str, str] | None = None) -> Response:
    """Return the ``304`` answer for a matched ETag (same validators, no body)."""
    headers = {"ETag": tag, "Cache-Control": cache, "Vary": "Accept-Encoding", **(extra or {})}
    return Response(status_code=304, headers=headers)


def json_response(
    payload: Any,
    *,
    if_none_match: str | None,
    accept_encoding: str | None,
    immutable: bool = False,
    max_age: int | None = None,
    status_code: int = 200,
    extra: dict[str, str] | None = None,
    private: bool = False,
) -> Response:
    """Return JSON with a strong ETag, ``304`` when the client has it, gzip when large.

    Parameters
    ----------
    payload : Any
        Serialised with orjson (floats at full precision, so numbers equal the snapshot).
    if_none_match, accept_encoding : str or None
        The request's headers.
    immutable : bool
        True for answers about a closed window named in the URL.
    max_age : int, optional
        Overrides the live ``max-age``.
    """
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    tag = body_etag(body)
    cache = cache_control(immutable, max_age, private)
    use_gzip = len(body) >= GZIP_MIN_BYTES and accepts_gzip(accept_encoding)
    sent_tag = gzip_etag(tag) if use_gzip else tag
    if status_code == 200 and etag_matches(if_none_match, tag, gzip_etag(tag)):
        return not_modified(sent_tag, cache, extra)
    headers = {"ETag": sent_tag, "Cache-Control": cache, "Vary": "Accept-Encoding", **(extra or {})}
    if use_gzip:
        body = gzip.compress(body, compresslevel=5, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")
