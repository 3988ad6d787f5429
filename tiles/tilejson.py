"""TileJSON 3.0.0 documents for the density tiles, and the legend string they carry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tiles.grid import DATA_MIN_ZOOM, MAX_ZOOM, mercator_to_lnglat
from tiles.index import get_index
from tiles.source import BandLike, CellLayer
from tiles.vector import LAYER_NAME

TILEJSON_VERSION = "3.0.0"
"""The TileJSON specification version produced."""

WORLD_BOUNDS = (-180.0, -85.05112877980659, 180.0, 85.0511287798066)
"""TileJSON's default bounds (the whole XYZ pyramid)."""

FIELDS: dict[str, str] = {
    "cell": "H3 cell index (hexadecimal string); the feature id is the same index as uint64",
    "people": "People in the cell during the window (distinct devices x expansion), as published",
    "density_km2": "People per km2 of the cell's true area",
    "band": "Density band: blue, green, yellow or red (see legend)",
    "res": (
        "H3 resolution of the cell. Where the zoom's resolution is withheld, the published "
        "parent (or a coarser ancestor) fills the gap: its pieces form one feature with its id, "
        "values and resolution"
    ),
}
"""Descriptions of the MVT properties, for ``vector_layers``."""


def tilejson(
    fmt: Literal["mvt", "png"],
    tiles_url: str,
    *,
    bounds: Sequence[float] = WORLD_BOUNDS,
    center: Sequence[float] | None = None,
    minzoom: int = DATA_MIN_ZOOM,
    maxzoom: int = MAX_ZOOM,
    attribution: str | None = None,
    legend: str | None = None,
    name: str | None = None,
    description: str | None = None,
    version: str = "1.0.0",
    fields: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a TileJSON 3.0.0 document for the density tiles.

    Parameters
    ----------
    fmt : {"mvt", "png"}
        Tile format; ``mvt`` adds ``vector_layers`` (layer ``density`` with ``fields``).
    tiles_url : str
        Absolute URL template containing ``{z}``, ``{x}`` and ``{y}``.
    bounds : sequence of 4 floats
        ``[west, south, east, north]`` in degrees (see :func:`data_bounds`).
    center : sequence of 3 numbers, optional
        ``[lng, lat, zoom]``; default: the middle of ``bounds`` at ``min(minzoom + 6, maxzoom)``.
    minzoom, maxzoom : int
        Zoom range, ``0 <= minzoom <= maxzoom <= 30``.
    attribution, legend, name, description : str, optional
        Free text (``legend``: see :func:`legend_text`).
    version : str
        Semver of the tileset; bump the minor version when tiles change across tiles.
    fields : mapping, optional
        Property descriptions for ``vector_layers`` (default :data:`FIELDS`).
    extra : mapping, optional
        Additional keys (TileJSON allows unknown keys), e.g. ``{"dp_epsilon": 1.0}``.

    Returns
    -------
    dict
        JSON-serialisable TileJSON.

    Raises
    ------
    ValueError
        On an invalid template, bounds, center or zoom range.
    """
    if fmt not in ("mvt", "png"):
        raise ValueError(f"format must be mvt or png, not {fmt!r}")
    if not all(t in tiles_url for t in ("{z}", "{x}", "{y}")):
        raise ValueError("tiles_url must contain {z}, {x} and {y}")
    if not 0 <= minzoom <= maxzoom <= 30:
        raise ValueError(f"zoom range {minzoom}..{maxzoom} not within 0..30")
    w, s, e, n = (float(v) for v in bounds)
    if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
        raise ValueError(f"invalid bounds {list(bounds)}")
    if center is None:
        c = [(w + e) / 2.0, (s + n) / 2.0, min(minzoom + 6, maxzoom)]
    else:
        c = [float(center[0]), float(center[1]), int(center[2])]
        if not (w <= c[0] <= e and s <= c[1] <= n and minzoom <= c[2] <= maxzoom):
            raise ValueError(f"center {c} outside bounds or zoom range")
    doc: dict[str, Any] = {
        "tilejson": TILEJSON_VERSION,
        "tiles": [tiles_url],
        "name": name,
        "description": description,
        "version": version,
        "attribution": attribution,
        "legend": legend,
        "scheme": "xyz",
        "format": "pbf" if fmt == "mvt" else "png",
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": [w, s, e, n],
        "center": [c[0], c[1], int(c[2])],
    }
    if fmt == "mvt":
        doc["vector_layers"] = [
            {
                "id": LAYER_NAME,
                "description": "Published people counts per H3 hexagon",
                "minzoom": minzoom,
                "maxzoom": maxzoom,
                "fields": dict(fields if fields is not None else FIELDS),
            }
        ]
    if extra:
        doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def legend_text(
    bands: Sequence[BandLike],
    *,
    dp_epsilon: float | None = None,
    lang: Literal["en", "zh"] = "en",
    unit: str = "people/km²",
) -> str:
    """Return the one-line legend: each band's colour, label and density range, and epsilon.

    >>> from collections import namedtuple
    >>> B = namedtuple("B", "name color alpha lower_km2 label_en label_zh")
    >>> legend_text([B("blue", "#3b6fd4", 180, 0, "Quiet", "宽松"),
    ...              B("red", "#d7191c", 180, 5000, "Crowded", "拥挤")], dp_epsilon=1.0)
    'Crowd density (people/km²): blue #3b6fd4 Quiet < 5,000; red #d7191c Crowded >= 5,000. \
Differential privacy: epsilon = 1.0.'
    """
    parts = []
    for i, b in enumerate(bands):
        label = b.label_zh if lang == "zh" else b.label_en
        hi = bands[i + 1].lower_km2 if i + 1 < len(bands) else None
        if hi is None:
            rng = f">= {b.lower_km2:,.0f}"
        elif i == 0 and b.lower_km2 <= 0:
            rng = f"< {hi:,.0f}"
        else:
            rng = f"{b.lower_km2:,.0f}-{hi:,.0f}"
        parts.append(f"{b.name} {b.color} {label} {rng}")
    head = f"人群密度 ({unit})" if lang == "zh" else f"Crowd density ({unit})"
    text = f"{head}: " + "; ".join(parts) + "."
    if dp_epsilon is not None:
        text += (
            f" 差分隐私: epsilon = {dp_epsilon:g}。"
            if lang == "zh"
            else f" Differential privacy: epsilon = {dp_epsilon:g}."
        )
    return text


def data_bounds(layer: CellLayer, pad_deg: float = 0.0) -> tuple[float, float, float, float]:
    """Return ``(west, south, east, north)`` degrees covering every cell of a layer.

    An empty layer gives :data:`WORLD_BOUNDS`.
    """
    idx = get_index(layer)
    if len(idx) == 0:
        return WORLD_BOUNDS
    bb = idx.bbox
    w, s = mercator_to_lnglat(bb[:, 0].min(), bb[:, 1].min())
    e, n = mercator_to_lnglat(bb[:, 2].max(), bb[:, 3].max())
    return (
        max(-180.0, float(w) - pad_deg),
        max(-90.0, float(s) - pad_deg),
        min(180.0, float(e) + pad_deg),
        min(90.0, float(n) + pad_deg),
    )


def round_bounds(bounds: Sequence[float], digits: int = 6) -> list[float]:
    """Return bounds rounded outwards to ``digits`` decimals (stable, compact TileJSON)."""
    f = 10.0**digits
    w, s, e, n = bounds
    return [
        math.floor(w * f) / f,
        math.floor(s * f) / f,
        math.ceil(e * f) / f,
        math.ceil(n * f) / f,
    ]
