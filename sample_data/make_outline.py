"""Regenerate ``shanghai_outline.geojson`` (WGS-84) from the GCJ-02 AMap/DataV outline.

Usage::

    .venv/bin/python sample_data/make_outline.py [SOURCE_GEOJSON]

The source defaults to ``../shared/data/boundaries/shanghai.json`` next to the work tree. The
output is written next to this script. Coordinates are rounded to 7 decimals (~1 cm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping, shape

from heatmap.crs import gcj02_to_wgs84

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "data" / "boundaries" / "shanghai.json"
OUT = HERE / "shanghai_outline.geojson"


def gcj02_xy_to_wgs84_xy(xy: np.ndarray) -> np.ndarray:
    """Convert an (N, 2) array of GCJ-02 (lng, lat) to WGS-84 (lng, lat), rounded to 1e-7."""
    lat, lng = gcj02_to_wgs84(xy[:, 1], xy[:, 0])
    return np.round(np.column_stack([lng, lat]), 7)


def main(source: Path) -> None:
    """Read the GCJ-02 outline, convert every vertex, write the WGS-84 GeoJSON."""
    src = json.loads(source.read_text(encoding="utf-8"))
    (feature,) = src["features"]
    geom = shapely.transform(shape(feature["geometry"]), gcj02_xy_to_wgs84_xy)
    if not geom.is_valid:  # rounding could in principle pinch a ring; repair rather than ship it
        geom = shapely.make_valid(geom)
    props = feature["properties"]
    out = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {
                    "name": props.get("name", "上海市"),
                    "name_en": "Shanghai",
                    "adcode": props.get("adcode", "310000"),
                    "crs": "WGS-84 (EPSG:4326), converted from GCJ-02",
                    "source": "AMap/DataV outline via ni1o1/transbigdata (BSD-3-Clause)",
                },
                "geometry": mapping(geom),
            }
        ],
    }
    OUT.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(f"wrote {OUT} ({shapely.get_num_coordinates(geom)} vertices, bounds {geom.bounds})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
