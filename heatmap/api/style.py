"""``GET /style.json``: a MapLibre style (v8) that draws the vector tiles as the pages do.

One fill layer per band (blue, green, yellow, red) filtered on the tiles' ``band`` property,
in the legend's colours and opacity; each layer's id is its text label (English / Chinese, then
the colour) and its metadata holds the labels and thresholds, so a style-aware client (MapLibre
GL, QGIS) shows a readable legend, never colour alone. With a basemap configured
(``HEATMAP_BASEMAP_URL``) the style draws it underneath (``?basemap=false`` leaves it out, for
use as an overlay). ``?window=`` / ``?release=`` pin the tiles to one answer.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from heatmap.api.caching import json_response
from heatmap.api.dependencies import WindowParam, services
from heatmap.config import Settings
from heatmap.policy import PublishPolicy
from heatmap.publish import legend, make_bands
from heatmap.read import Ref
from heatmap.tiling import ATTRIBUTION, city_bounds
from tiles.grid import DATA_MIN_ZOOM, MAX_ZOOM

router = APIRouter(tags=["tiles"])

CENTER = (121.4737, 31.2304)
"""Initial view (People's Square), as in the TileJSON."""

STYLE_MEDIA = "application/json"


def band_layer_id(label_en: str, label_zh: str, name: str) -> str:
    """Return a band layer's id: its text label, then its colour (``Busy / 较拥挤 (yellow)``)."""
    return f"{label_en} / {label_zh} ({name})"


def style_json(
    policy: PublishPolicy, settings: Settings, root: str, ref: Ref, basemap: bool = True
) -> dict[str, Any]:
    """Return the MapLibre style of the density tiles served at ``root``.

    Parameters
    ----------
    policy : PublishPolicy
        Bands (colours, thresholds) and privacy parameters in force.
    settings : Settings
        The basemap template and its attribution.
    root : str
        The service's public root URL (no trailing slash).
    ref : Ref
        The answer the tiles show (pinned with ``?window=`` / ``?release=`` when named).
    basemap : bool
        Draw the configured basemap underneath.
    """
    suffix = ""
    if ref.pinned:
        suffix = "?" + urlencode({"release" if ref.kind == "release" else "window": ref.text})
    w, s, e, n = city_bounds()
    sources: dict[str, Any] = {}
    layers: list[dict[str, Any]] = []
    if basemap and settings.basemap_url:
        sources["basemap"] = {
            "type": "raster",
            "tiles": [settings.basemap_url],
            "tileSize": 256,
            "maxzoom": 19,
            "attribution": settings.basemap_attribution,
        }
        layers.append({"id": "basemap", "type": "raster", "source": "basemap"})
    sources["density"] = {
        "type": "vector",
        "tiles": [f"{root}/tiles/{{z}}/{{x}}/{{y}}.mvt{suffix}"],
        "minzoom": DATA_MIN_ZOOM,
        "maxzoom": MAX_ZOOM,
        "bounds": [round(v, 4) for v in (w, s, e, n)],
        "attribution": ATTRIBUTION,
    }
    bands = make_bands(policy.bands_km2)
    opacity = round(bands[0].alpha / 255, 3)
    for entry, band in zip(legend(policy)["bands"], bands, strict=True):  # type: ignore[call-overload]
        layers.append(
            {
                "id": band_layer_id(band.label_en, band.label_zh, band.name),
                "type": "fill",
                "source": "density",
                "source-layer": "density",
                "filter": ["==", ["get", "band"], band.name],
                "paint": {
                    "fill-color": band.color,
                    "fill-opacity": opacity,
                    "fill-outline-color": band.color,
                },
                "metadata": {
                    "heatmap:band": band.name,
                    "heatmap:label": entry["label"],
                    "heatmap:min_km2": entry["min_km2"],
                    "heatmap:max_km2": entry["max_km2"],
                },
            }
        )
    return {
        "version": 8,
        "name": "Crowd density",
        "metadata": {"heatmap:legend": legend(policy)},
        "center": list(CENTER),
        "zoom": 10,
        "sources": sources,
        "layers": layers,
    }


Basemap = Annotated[
    bool, Query(description="Draw the configured basemap underneath (false: overlay only)")
]


@router.get("/style.json", summary="MapLibre style of the vector tiles")
async def style(request: Request, window: WindowParam, basemap: Basemap = True) -> Response:
    """Return a MapLibre style (v8): one fill layer per band, with colours and text labels."""
    svc = services(request)
    root = str(request.base_url).rstrip("/")
    doc = style_json(svc.reader.policy, svc.settings, root, window, basemap)
    h = request.headers
    return json_response(
        doc,
        if_none_match=h.get("if-none-match"),
        accept_encoding=h.get("accept-encoding"),
        max_age=3600,
    )
