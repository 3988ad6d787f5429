"""The OGC API's definition (``/ogc/api``): the ``/ogc`` part of the app's OpenAPI, as 3.0.

OGC API clients and the standards' ``oas30`` conformance classes expect OpenAPI 3.0, while
FastAPI writes 3.1 (JSON Schema 2020-12). The routes stay the one source: this module takes the
app's document, keeps the ``/ogc`` paths and the schemas they use, and rewrites the few 3.1
forms FastAPI emits into their 3.0 equivalents (``anyOf`` with ``null`` -> ``nullable``,
``examples`` -> ``example``, ``const`` -> ``enum``, numeric exclusive bounds -> boolean). The
``422`` FastAPI documents never happens under ``/ogc`` (bad input is a ``400``), so it is
replaced by the ``400`` and ``404`` bodies the routes send.
"""

from __future__ import annotations

import copy
from typing import Any, Final

OPENAPI_VERSION: Final = "3.0.3"

EXCEPTION_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "what is wrong, in one line"}},
}
"""Body of every error answer: ``{"detail": reason}``."""

_LINK: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["href", "rel"],
    "properties": {
        "href": {"type": "string"},
        "rel": {"type": "string"},
        "type": {"type": "string"},
        "title": {"type": "string"},
        "templated": {"type": "boolean"},
    },
}

_FEATURE: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["type", "id", "geometry", "properties"],
    "properties": {
        "type": {"type": "string", "enum": ["Feature"]},
        "id": {"type": "string", "description": "H3 cell index"},
        "geometry": {"type": "object", "description": "GeoJSON Polygon (CRS84)"},
        "properties": {
            "type": "object",
            "properties": {
                "cell": {"type": "string"},
                "res": {"type": "integer"},
                "people": {"type": "number"},
                "density_km2": {"type": "number"},
                "band": {"type": "string", "enum": ["blue", "green", "yellow", "red"]},
                "label_en": {"type": "string"},
                "label_zh": {"type": "string"},
                "window_start": {"type": "string", "format": "date-time"},
                "window_end": {"type": "string", "format": "date-time"},
            },
        },
        "links": {"type": "array", "items": {"$ref": "#/components/schemas/Link"}},
    },
}

_FEATURE_COLLECTION: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["type", "features", "links", "numberMatched", "numberReturned"],
    "properties": {
        "type": {"type": "string", "enum": ["FeatureCollection"]},
        "features": {"type": "array", "items": {"$ref": "#/components/schemas/Feature"}},
        "links": {"type": "array", "items": {"$ref": "#/components/schemas/Link"}},
        "timeStamp": {"type": "string", "format": "date-time"},
        "numberMatched": {"type": "integer", "minimum": 0},
        "numberReturned": {"type": "integer", "minimum": 0},
    },
}

_BODIES: Final[dict[str, str]] = {
    "/ogc/collections/{collectionId}/items": "FeatureCollection",
    "/ogc/collections/{collectionId}/items/{featureId}": "Feature",
}
"""Paths whose GeoJSON answer has a schema of its own."""


def to_openapi30(
    doc: dict[str, Any], prefix: str, *, title: str, description: str
) -> dict[str, Any]:
    """Return the OpenAPI 3.0 document of the paths under ``prefix`` of a 3.1 document.

    Parameters
    ----------
    doc : dict
        The app's OpenAPI 3.1 document (not modified).
    prefix : str
        Keep the paths starting with it (``/ogc``).
    title, description : str
        Of the new document.
    """
    paths = {k: copy.deepcopy(v) for k, v in doc.get("paths", {}).items() if k.startswith(prefix)}
    for path, item in paths.items():
        for op in item.values():
            _fix_responses(path, op)
    out: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {**doc.get("info", {}), "title": title, "description": description},
        "paths": _downgrade(paths),
    }
    schemas = dict(doc.get("components", {}).get("schemas", {}))
    schemas.update(
        Exception=EXCEPTION_SCHEMA,
        Link=_LINK,
        Feature=_FEATURE,
        FeatureCollection=_FEATURE_COLLECTION,
    )
    used = _referenced(out["paths"], schemas)
    out["components"] = {"schemas": {k: _downgrade(schemas[k]) for k in sorted(used)}}
    return out


def _fix_responses(path: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    responses.pop("422", None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Exception"}}}
    responses.setdefault("400", {"description": "Invalid parameter (the reason says which)"})
    responses.setdefault("404", {"description": "Not found"})
    for code in ("400", "404"):
        responses[code]["content"] = error
    ok = responses.get("200")
    if ok is None:
        return
    for media, body in ok.get("content", {}).items():
        if media == "application/geo+json" and path in _BODIES:
            body["schema"] = {"$ref": f"#/components/schemas/{_BODIES[path]}"}
        elif media in ("application/vnd.mapbox-vector-tile", "image/png"):
            body["schema"] = {"type": "string", "format": "binary"}
        elif not body.get("schema"):
            body["schema"] = {"type": "object"}


def _referenced(node: Any, schemas: dict[str, Any]) -> set[str]:
    """Return the component schemas ``node`` refers to, directly or through other schemas."""
    seen: set[str] = set()
    todo = [node]
    while todo:
        cur = todo.pop()
        if isinstance(cur, dict):
            ref = cur.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen and name in schemas:
                    seen.add(name)
                    todo.append(schemas[name])
            todo.extend(cur.values())
        elif isinstance(cur, list):
            todo.extend(cur)
    return seen


def _downgrade(node: Any) -> Any:
    """Return ``node`` with the JSON Schema 2020-12 forms rewritten for OpenAPI 3.0."""
    if isinstance(node, list):
        return [_downgrade(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _downgrade(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[key]
            if len(rest) == 1:
                out.update({k: v for k, v in rest[0].items() if k not in out})
            else:
                out[key] = rest
            out["nullable"] = True
    kind = out.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        out["type"] = kinds[0] if len(kinds) == 1 else kinds
        if "null" in kind:
            out["nullable"] = True
        if isinstance(out["type"], list):  # 3.0 has no type arrays: any of them
            out["anyOf"] = [{"type": k} for k in out.pop("type")]
    examples = out.get("examples")
    if isinstance(examples, list) and _is_schema(out):
        del out["examples"]
        if examples:
            out["example"] = examples[0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[plain] = value
            out[bound] = True
    return out


def _is_schema(node: dict[str, Any]) -> bool:
    """Return True for a schema object (``examples`` is a map elsewhere in OpenAPI)."""
    return any(k in node for k in ("type", "anyOf", "oneOf", "allOf", "$ref", "title", "enum"))
