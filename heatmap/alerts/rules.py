"""Watches: a target (a named place or a polygon inside the covered area) and a rule.

Four rules, each read on one release's published values (:mod:`heatmap.alerts.measure`):

- ``band``: the target's band now is at least ``band`` (e.g. ``red``);
- ``ratio``: people now are more than ``above`` times the usual level at this hour;
- ``rise``: people now are more than ``percent`` % above the newest kept release at least
  ``minutes`` earlier;
- ``forecast``: the expected level reaches ``band`` within ``hours`` (the one forecast the
  place pages show, :func:`heatmap.read.popular.expected`).

A watch made by a planner is seen by planners only (the planner audience, exact values); the
default watches of the key places (:func:`default_watches`) are public and read the values the
public sees. Everything here is pure: parsing and validation raise
:class:`heatmap.errors.BadInput` (a 422 at the HTTP edge).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

import shapely
from shapely.geometry import Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from heatmap.errors import BadInput
from heatmap.model import Band
from heatmap.places import Place, load_outline

RULE_KINDS: Final = ("band", "ratio", "rise", "forecast")
BAND_NAMES: Final = ("blue", "green", "yellow", "red")
MAX_VERTICES: Final = 2000
MAX_FORECAST_H: Final = 24.0
DEFAULT_FORECAST_H: Final = 2.0
FORECAST_STEP_S: Final = 900
"""The forecast is read every 15 minutes up to its horizon."""

PUBLIC: Final = "public"
PLANNER: Final = "planner"


@dataclass(frozen=True)
class Rule:
    """When a watch's target is worth an alert (see the module doc for the four kinds)."""

    kind: str
    band: str | None = None
    above: float | None = None
    percent: float | None = None
    minutes: int | None = None
    hours: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the rule as the API writes it (only the fields of its kind)."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("band", "above", "percent", "minutes", "hours"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def words(self, bands: Sequence[Band]) -> dict[str, str]:
        """Return what the rule says, in English and Chinese."""
        label = {b.name: (b.label_en, b.label_zh) for b in bands}
        if self.kind == "band":
            en, zh = label[self.band or "red"]
            return {"en": f"{en} now", "zh": f"现在{zh}"}
        if self.kind == "forecast":
            en, zh = label[self.band or "red"]
            h = _num(self.hours or 0)
            return {"en": f"{en} expected within {h} h", "zh": f"预计{h}小时内{zh}"}
        if self.kind == "ratio":
            r = _num(self.above or 0)
            return {"en": f"more than {r}× the usual level", "zh": f"超过平时的{r}倍"}
        p, m = _num(self.percent or 0), self.minutes
        return {"en": f"up more than {p}% in {m} min", "zh": f"{m}分钟内增加超过{p}%"}


def _num(x: float) -> str:
    return f"{x:g}"


def _field(raw: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"rule.{key}: a number is required")
    if not lo < value <= hi:
        raise BadInput(f"rule.{key}: must be above {lo:g} and at most {hi:g}, got {value:g}")
    return float(value)


def _band(raw: dict[str, Any]) -> str:
    band = raw.get("band")
    if band not in BAND_NAMES:
        raise BadInput(f"rule.band: one of {', '.join(BAND_NAMES)}, got {band!r}")
    return str(band)


def parse_rule(raw: object, release_keep_s: int) -> Rule:
    """Return the rule a JSON object describes; ``BadInput`` naming what is wrong.

    ``rise`` compares with a kept release, so its ``minutes`` are at most the release
    retention (``HEATMAP_RELEASE_KEEP_S``).
    """
    if not isinstance(raw, dict):
        raise BadInput("rule: an object is required")
    kind = raw.get("kind")
    if kind == "band":
        return Rule("band", band=_band(raw))
    if kind == "ratio":
        return Rule("ratio", above=_field(raw, "above", 0, 1000))
    if kind == "rise":
        keep_min = max(1, release_keep_s // 60)
        minutes = _field(raw, "minutes", 0, keep_min)
        if minutes != int(minutes):
            raise BadInput("rule.minutes: whole minutes")
        return Rule("rise", percent=_field(raw, "percent", 0, 100_000), minutes=int(minutes))
    if kind == "forecast":
        hours = _field(raw, "hours", 0, MAX_FORECAST_H) if "hours" in raw else DEFAULT_FORECAST_H
        return Rule("forecast", band=_band(raw), hours=hours)
    raise BadInput(f"rule.kind: one of {', '.join(RULE_KINDS)}, got {kind!r}")


@cache
def covered_area() -> BaseGeometry:
    """Return the covered area (the served city's outline), prepared for containment tests."""
    geom = load_outline()
    shapely.prepare(geom)
    return geom


@dataclass(frozen=True)
class Target:
    """What a watch looks at: a named place (its id) or a polygon (GeoJSON, WGS-84)."""

    place: str | None = None
    polygon: dict[str, Any] | None = field(default=None, compare=False)
    key: str = ""
    """A stable name of the target (``place:<id>`` or ``polygon:<wkb hex digest>``)."""

    def to_json(self) -> dict[str, Any]:
        """Return the target as the API writes it."""
        return {"place": self.place} if self.place is not None else {"polygon": self.polygon}

    def geometry(self) -> Polygon:
        """Return the polygon of a polygon target."""
        assert self.polygon is not None
        return shape(self.polygon)  # type: ignore[return-value]


def parse_polygon(raw: object) -> Polygon:
    """Return a GeoJSON Polygon (WGS-84) checked to be valid and inside the covered area."""
    if not isinstance(raw, dict) or raw.get("type") != "Polygon":
        raise BadInput('target.polygon: a GeoJSON geometry of type "Polygon" is required')
    try:
        geom = shape(raw)
    except (ValueError, TypeError, KeyError, IndexError, shapely.errors.ShapelyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"target.polygon: not a GeoJSON polygon ({reason})") from None
    if not isinstance(geom, Polygon) or geom.is_empty:
        raise BadInput("target.polygon: empty polygon")
    if shapely.get_num_coordinates(geom) > MAX_VERTICES:
        raise BadInput(f"target.polygon: more than {MAX_VERTICES} vertices")
    if not geom.is_valid:
        raise BadInput(f"target.polygon: invalid ({shapely.is_valid_reason(geom)})")
    # A few metres of slack: a polygon drawn along the outline is still inside.
    if not covered_area().buffer(1e-4).covers(geom):
        raise BadInput("target.polygon: must lie inside the covered area (the city outline)")
    return geom


def parse_target(raw: object, find_place: Callable[[str], str]) -> Target:
    """Return the target a JSON object names: ``{"place": id}`` or ``{"polygon": GeoJSON}``.

    ``find_place`` returns a place's id from an id, name or alias (``BadInput`` if none).
    """
    if not isinstance(raw, dict) or ("place" in raw) == ("polygon" in raw):
        raise BadInput('target: give either {"place": id} or {"polygon": GeoJSON Polygon}')
    if "place" in raw:
        if not isinstance(raw["place"], str) or not raw["place"].strip():
            raise BadInput("target.place: a place id is required")
        return place_target(find_place(raw["place"].strip()))
    geom = parse_polygon(raw["polygon"])
    doc = mapping(geom)
    ring = [[round(x, 7), round(y, 7)] for x, y in doc["coordinates"][0]]
    holes = [[[round(x, 7), round(y, 7)] for x, y in h] for h in doc["coordinates"][1:]]
    return polygon_target({"type": "Polygon", "coordinates": [ring, *holes]})


def polygon_target(polygon: dict[str, Any]) -> Target:
    """Return the target of a (checked) GeoJSON polygon, keyed by a digest of its geometry."""
    wkb = shapely.to_wkb(shape(polygon), hex=True)
    digest = hashlib.blake2b(wkb.encode(), digest_size=8).hexdigest()
    return Target(polygon=polygon, key="polygon:" + digest)


def place_target(place_id: str) -> Target:
    """Return the target of a named place."""
    return Target(place=place_id, key=f"place:{place_id}")


def target_place(target: Target, name: str | None) -> Place:
    """Return a polygon target as a :class:`~heatmap.places.Place` (read like a named place)."""
    geom = target.geometry()
    inside = geom.representative_point()
    label = name or "area"
    return Place(
        id=target.key,
        name_zh=label,
        name_en=label,
        lat=inside.y,
        lng=inside.x,
        radius_m=1.0,
        kind="watch",
        polygon=geom,
    )


@dataclass(frozen=True)
class Watch:
    """A target, a rule, who sees its alerts, and how it opens, cools down and is delivered."""

    id: str
    target: Target
    rule: Rule
    audience: str = PLANNER
    default: bool = False
    name: str | None = None
    created: int = 0
    open_after: int | None = None
    cooldown_s: int | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def spec_json(self) -> dict[str, Any]:
        """Return what is stored of the watch (its webhook is kept beside it)."""
        out: dict[str, Any] = {
            "name": self.name,
            "target": self.target.to_json(),
            "rule": self.rule.to_json(),
        }
        if self.open_after is not None:
            out["open_after"] = self.open_after
        if self.cooldown_s is not None:
            out["cooldown_s"] = self.cooldown_s
        return out


def parse_spec(
    raw: object, find_place: Callable[[str], str], release_keep_s: int
) -> tuple[str | None, Target, Rule, int | None, int | None]:
    """Return ``(name, target, rule, open_after, cooldown_s)`` of a watch's JSON."""
    if not isinstance(raw, dict):
        raise BadInput("a watch is a JSON object")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise BadInput("name: text of at most 200 characters")
    target = parse_target(raw.get("target"), find_place)
    rule = parse_rule(raw.get("rule"), release_keep_s)
    open_after = raw.get("open_after")
    if open_after is not None and (
        isinstance(open_after, bool) or not isinstance(open_after, int) or not 1 <= open_after <= 60
    ):
        raise BadInput("open_after: releases in a row, 1 to 60")
    cooldown = raw.get("cooldown_s")
    if cooldown is not None and (
        isinstance(cooldown, bool) or not isinstance(cooldown, int) or not 0 <= cooldown <= 86400
    ):
        raise BadInput("cooldown_s: seconds, 0 to 86400")
    return name, target, rule, open_after, cooldown


def default_watches(places: Sequence[Place]) -> list[Watch]:
    """Return the default watches: every key place "red now" and "forecast red within 2 h".

    They are public (the widget shows their alerts) and read the public's values.
    """
    out = []
    for p in places:
        target = place_target(p.id)
        out.append(Watch(f"place:{p.id}:red-now", target, Rule("band", band="red"), PUBLIC, True))
        out.append(
            Watch(
                f"place:{p.id}:forecast-red-2h",
                target,
                Rule("forecast", band="red", hours=DEFAULT_FORECAST_H),
                PUBLIC,
                True,
            )
        )
    return out
