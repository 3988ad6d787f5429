"""Watches and alerts over HTTP: ``/api/v1/watches`` (planners) and ``/api/v1/alerts``.

A planner (a bearer token of ``HEATMAP_PLANNER_TOKENS``) creates, lists and deletes watches; a
request without a planner token is a 401. ``GET /api/v1/alerts`` answers every audience: the
public sees the alerts of the public watches (the key places' defaults), in the public's
numbers; planners see every alert. The rules, the lifecycle and delivery are
:mod:`heatmap.alerts`; here requests are parsed (the body's shape, documented in OpenAPI) and
answered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from heatmap.api.caching import NO_STORE, json_response
from heatmap.api.dependencies import Services, services
from heatmap.errors import Unauthorized

router = APIRouter(prefix="/api/v1", tags=["alerts"])

BandName = Literal["blue", "green", "yellow", "red"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BandRule(_In):
    """The target's band now is at least ``band``."""

    kind: Literal["band"]
    band: BandName


class RatioRule(_In):
    """People now are more than ``above`` times the usual level at this hour."""

    kind: Literal["ratio"]
    above: float = Field(gt=0, le=1000)


class RiseRule(_In):
    """People now are more than ``percent`` % above the release ``minutes`` earlier."""

    kind: Literal["rise"]
    percent: float = Field(gt=0, le=100_000)
    minutes: int = Field(ge=1, description="at most HEATMAP_RELEASE_KEEP_S / 60")


class ForecastRule(_In):
    """The forecast reaches ``band`` within ``hours``."""

    kind: Literal["forecast"]
    band: BandName
    hours: float = Field(2.0, gt=0, le=24)


class PlaceTarget(_In):
    """A named place: id, name, alias or pinyin (see ``/api/v1/places``)."""

    place: str = Field(min_length=1, max_length=100, examples=["the-bund"])


class PolygonTarget(_In):
    """A GeoJSON Polygon (WGS-84) inside the covered area."""

    polygon: dict[str, Any] = Field(
        examples=[
            {
                "type": "Polygon",
                "coordinates": [
                    [[121.484, 31.236], [121.492, 31.236], [121.492, 31.243], [121.484, 31.236]]
                ],
            }
        ]
    )


class WebhookIn(_In):
    """Where alerts of this watch are POSTed (a URL allowed by ``HEATMAP_WEBHOOK_ALLOW``)."""

    url: str = Field(max_length=2000, examples=["https://ops.example.gov.cn/hooks/crowd"])


class WatchIn(_In):
    """A new watch: a target and a rule, optionally a name, a webhook and its own timing."""

    name: str | None = Field(None, max_length=200)
    target: PlaceTarget | PolygonTarget
    rule: Annotated[BandRule | RatioRule | RiseRule | ForecastRule, Field(discriminator="kind")]
    webhook: WebhookIn | None = None
    open_after: int | None = Field(
        None, ge=1, le=60, description="releases in a row (default HEATMAP_ALERT_OPEN_AFTER)"
    )
    cooldown_s: int | None = Field(
        None, ge=0, le=86400, description="seconds (default HEATMAP_ALERT_COOLDOWN_S)"
    )


def planner(request: Request) -> Services:
    """Return the services for a planner's request; ``Unauthorized`` for anyone else."""
    svc = services(request)
    if not svc.audience(request.headers.get("authorization")).private:
        raise Unauthorized("watches are for planners: send a token of HEATMAP_PLANNER_TOKENS")
    return svc


Planner = Annotated[Services, Depends(planner)]
WatchId = Annotated[str, PathParam(description="Watch id", max_length=200)]


def _json(payload: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "private, no-store"},
    )


_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Watches are for planners: send a planner token"}
}


@router.post(
    "/watches",
    status_code=201,
    summary="Create a watch (planners)",
    response_class=Response,
    responses={
        201: {"description": "The watch, with its webhook's signing secret (shown only here)"},
        422: {
            "description": "Bad target, rule or webhook URL (not allowed, or resolving to an "
            "address HEATMAP_WEBHOOK_ALLOW does not allow)"
        },
        **_AUTH,
    },  # fmt: skip
)
async def create_watch(svc: Planner, body: WatchIn) -> Response:
    """Create a watch on a place or a polygon. Its alerts open after the rule held on
    ``open_after`` releases in a row, close when it stops holding, and are POSTed to its
    webhook (signed as Standard Webhooks says) if it has one."""
    raw = body.model_dump(exclude_none=True)
    made = await run_in_threadpool(svc.alerting.create, raw)  # resolves the webhook's host
    return _json(made, 201)


@router.get("/watches", summary="List the watches (planners)", response_class=Response,
            responses=_AUTH)  # fmt: skip
async def list_watches(svc: Planner) -> Response:
    """Return every watch in force (the key places' defaults first) with its state."""
    return _json({"watches": await run_in_threadpool(svc.alerting.list)})


@router.get(
    "/watches/{watch_id}",
    summary="One watch, its state and its deliveries (planners)",
    response_class=Response,
    responses={404: {"description": "No such watch"}, **_AUTH},
)
async def get_watch(svc: Planner, watch_id: WatchId) -> Response:
    """Return a watch, its state and its latest webhook deliveries (pending, delivered, dead)."""
    alerting = svc.alerting
    return _json(await run_in_threadpool(lambda: alerting.describe(alerting.get(watch_id))))


@router.delete(
    "/watches/{watch_id}",
    status_code=204,
    summary="Delete a watch (planners)",
    response_class=Response,
    responses={
        404: {"description": "No such watch"},
        422: {"description": "A default watch (turned off with HEATMAP_ALERT_DEFAULTS=false)"},
        **_AUTH,
    },
)
async def delete_watch(svc: Planner, watch_id: WatchId) -> Response:
    """Delete a watch; its open alert closes (messages already queued are still delivered)."""
    await run_in_threadpool(svc.alerting.delete, watch_id)
    return Response(status_code=204, headers={"Cache-Control": NO_STORE})


@router.get(
    "/alerts",
    summary="Open and recent alerts",
    response_class=Response,
    responses={401: {"description": "A credential that is not a planner token"}},
)
async def alerts(request: Request) -> Response:
    """Return the open alerts and those closed within ``HEATMAP_ALERT_RECENT_S``, open ones
    first: without a token those of the public watches (the key places), with a planner token
    all of them. Each carries its watch, its target and the values that opened (and closed) it.
    """
    svc = services(request)
    who = svc.audience(request.headers.get("authorization"))
    payload = await run_in_threadpool(svc.alerting.alerts, who.private)
    h = request.headers
    # Revalidated on every use (a 304 while nothing changed), gzipped: every page asks.
    return json_response(
        payload,
        if_none_match=h.get("if-none-match"),
        accept_encoding=h.get("accept-encoding"),
        max_age=0,
        private=who.private,
    )
