"""``POST /api/v1/pings``: a bearer-authenticated batch of pings, durable before the 200.

Checks in order: endpoint enabled (404), token (401, constant-time), content type and coding
(415), size from ``Content-Length`` and from the streamed body (413), rows (413 above
``max_rows``), parse (422). The batch then commits as one unit in a thread, one commit at a
time per process; the reader is told at once, so the live window reflects it on the next read.
"""

from __future__ import annotations

import hmac
import logging
import time
import zlib
from typing import Annotated, cast

import orjson

from fastapi import APIRouter, Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.caching import NO_STORE
from heatmap.api.dependencies import Ingest, IngestParams, Services, Svc
from heatmap.api.errors import IngestDisabled, UnsupportedMediaType
from heatmap.api.schemas import IngestAnswer
from heatmap.errors import BadInput, TooLarge, Unauthorized
from heatmap.ingest import ParseOptions, body_to_frame
from heatmap.service import IngestReport

router = APIRouter(prefix="/api/v1", tags=["ingest"])
log = logging.getLogger("heatmap.api")
bearer = HTTPBearer(auto_error=False, description="HEATMAP_INGEST_TOKEN")

MEDIA_TYPES = {
    "text/csv": "text/csv",
    "application/x-ndjson": "application/x-ndjson",
    "application/ndjson": "application/x-ndjson",
    "application/jsonl": "application/x-ndjson",
    "application/json": "application/json",
}
"""Accepted body types and the parser each maps to."""

_ROW = {
    "type": "object",
    "required": ["device_id", "ts", "lat", "lng"],
    "properties": {
        "device_id": {"type": "string"},
        "ts": {"type": ["number", "string"], "description": "epoch s/ms or ISO-8601"},
        "lat": {"type": "number"},
        "lng": {"type": "number"},
    },
}
_BODY = {
    "required": True,
    "content": {
        "text/csv": {
            "schema": {"type": "string"},
            "example": "device_id,ts,lat,lng\nabc,2026-11-28T09:00:00Z,31.2397,121.4906\n",
        },
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "array", "items": _ROW}},
    },
}


def _check_token(svc: Services, creds: HTTPAuthorizationCredentials | None) -> None:
    token = svc.settings.ingest_token
    if not token:
        raise IngestDisabled("ingest is disabled: set HEATMAP_INGEST_TOKEN to enable it")
    given = creds.credentials if creds is not None else ""
    # Always compare (also for a missing header) so timing does not tell the cases apart.
    ok = hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())
    if creds is None or not ok:
        raise Unauthorized("missing or wrong bearer token")


def _media_type(content_type: str | None, content_encoding: str | None) -> str:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"content type {kind or 'missing'!r}: send text/csv, application/x-ndjson or "
            "application/json"
        )
    coding = (content_encoding or "identity").strip().lower()
    if coding not in ("identity", "gzip"):
        raise UnsupportedMediaType(f"content encoding {coding!r}: send identity or gzip")
    return MEDIA_TYPES[kind]


async def _read_body(request: Request, limit: int, content_length: str | None) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BadInput("Content-Length is not a number") from None
        if declared > limit:
            raise TooLarge(f"body of {declared:,} bytes exceeds the limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip_bounded(body: bytes, limit: int) -> bytes:
    """Return a gzip body decompressed, refusing more than ``limit`` bytes (zip bombs)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadInput(f"body is not valid gzip ({exc})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"decompressed body exceeds the limit of {limit:,} bytes")
    if not d.eof:
        raise BadInput("gzip body is truncated")
    return out


def ingest_body(
    svc: Services, body: bytes, media_type: str, params: IngestParams, batch_id: str | None
) -> IngestReport:
    """Parse a body and commit it as one unit (serialised per process); blocking."""
    s = svc.settings
    frame = body_to_frame(body, media_type, s.max_rows)
    opts = ParseOptions(crs=params.crs, strict=params.strict, max_future_s=s.max_future_s)
    with svc.write_lock:
        report = svc.hm.ingest_frame(frame, opts, batch_id)
    svc.reader.invalidate()
    return report


def report_json(report: IngestReport, batch_id: str | None) -> IngestAnswer:
    """Return the answer body: accepted, rejected rows with reasons, late, and totals."""
    summary = report.summary()
    return {
        "accepted": report.accepted,
        "rejected": [{"row": row, "reason": why} for row, why in report.rejects.rows],
        "rejected_total": report.rejects.total,
        "late": report.late,
        "windows_closed": report.windows_closed,
        "reasons": cast(dict[str, int], summary["reasons"]),
        "release": cast(str | None, summary["release"]),
        "duplicate": report.duplicate,
        "batch_id": batch_id,
    }


@router.post(
    "/pings",
    summary="Ingest a batch of pings",
    openapi_extra={"requestBody": _BODY},
    responses={
        200: {"model": IngestAnswer, "description": "Durable: the batch is in the store"},
        401: {"description": "Missing or wrong bearer token"},
        404: {"description": "Ingest disabled (HEATMAP_INGEST_TOKEN unset)"},
        413: {"description": "Body or row count over the limit"},
        415: {"description": "Unsupported content type or encoding"},
        422: {"description": "Unparseable body, missing column, or bad parameter"},
    },
    response_class=Response,
)
async def post_pings(
    request: Request,
    svc: Svc,
    params: Ingest,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Batch id for idempotent retries (same as ?batch_id=)",
            max_length=128,
            pattern=r"^[\x21-\x7e]+$",
        ),
    ] = None,
) -> Response:
    """Ingest CSV, NDJSON or a JSON array of pings (``device_id, ts, lat, lng``).

    Answers 200 only once the batch is durable, with per-row reasons for rejected rows and the
    number of late pings (for windows already closed). A repeated ``batch_id`` is not applied
    twice (``duplicate: true``).
    """
    t0 = time.perf_counter()
    _check_token(svc, creds)
    media_type = _media_type(content_type, content_encoding)
    limit = svc.settings.max_body_bytes
    body = await _read_body(request, limit, content_length)
    if (content_encoding or "").strip().lower() == "gzip":
        body = gunzip_bounded(body, limit)
    batch_id = params.batch_id or idempotency_key
    m = svc.metrics
    try:
        report = await run_in_threadpool(ingest_body, svc, body, media_type, params, batch_id)
    except Exception:
        m.batches.labels("failed").inc()
        raise
    if report.duplicate:
        m.batches.labels("duplicate").inc()
    else:
        m.batches.labels("committed").inc()
        m.pings_accepted.inc(report.accepted)
        m.pings_late.inc(report.late)
    m.pings_rejected.inc(report.rejects.total)
    answer = report_json(report, batch_id)
    log.info(
        orjson.dumps(
            {
                "event": "ingest",
                "accepted": report.accepted,
                "rejected": report.rejects.total,
                "late": report.late,
                "windows_closed": report.windows_closed,
                "duplicate": report.duplicate,
                "bytes": len(body),
                "seconds": round(time.perf_counter() - t0, 4),
            }
        ).decode()
    )
    return Response(
        orjson.dumps(answer),
        media_type="application/json",
        headers={"Cache-Control": NO_STORE},
    )
