"""TileJSON 3.0.0 documents, validated against the JSON schema written from the spec."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from tiles_testdata import BANDS

from heatmap.model import Snapshot
from tiles.tilejson import FIELDS, data_bounds, legend_text, round_bounds, tilejson

SCHEMA = json.loads((Path(__file__).parent / "tilejson-3.0.0.schema.json").read_text())
URL = "https://heatmap.example/tiles/{z}/{x}/{y}"


def validate(doc: dict) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA, cls=jsonschema.Draft7Validator)


def test_mvt_tilejson_validates_and_describes_the_layer(snap9: Snapshot) -> None:
    bounds = round_bounds(data_bounds(snap9))
    doc = tilejson(
        "mvt", URL + ".mvt", bounds=bounds, minzoom=5, maxzoom=18,
        attribution="© Shanghai open data", legend=legend_text(BANDS),
        name="Shanghai crowd density", description="People per H3 hexagon, 5-minute windows",
        version="1.2.0", extra={"dp_epsilon": None},
    )  # fmt: skip
    validate(doc)
    assert doc["tilejson"] == "3.0.0"
    assert doc["tiles"] == [URL + ".mvt"]
    (layer,) = doc["vector_layers"]
    assert layer["id"] == "density"
    assert set(layer["fields"]) == {"cell", "people", "density_km2", "band", "res"}
    assert all(isinstance(v, str) and v for v in layer["fields"].values())
    w, s, e, n = doc["bounds"]
    assert w < doc["center"][0] < e and s < doc["center"][1] < n
    assert 5 <= doc["center"][2] <= 18
    assert "red" in doc["legend"] and "#d7191c" in doc["legend"]


def test_png_tilejson_validates_without_vector_layers() -> None:
    doc = tilejson(
        "png", URL + ".png", bounds=(120.8, 30.6, 122.1, 31.9), center=(121.47, 31.23, 11)
    )
    validate(doc)
    assert "vector_layers" not in doc
    assert doc["center"] == [121.47, 31.23, 11]
    assert doc["format"] == "png"


def test_schema_rejects_what_the_spec_forbids() -> None:
    good = tilejson("mvt", URL, bounds=(120.8, 30.6, 122.1, 31.9))
    for bad in (
        {**good, "tiles": []},
        {**good, "minzoom": 31},
        {**good, "bounds": [-200, 0, 0, 0]},
        {**good, "vector_layers": [{"id": "density"}]},
        {k: v for k, v in good.items() if k != "tilejson"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "jpeg"},
        {"tiles_url": "https://x/{z}/{x}.png"},
        {"minzoom": 9, "maxzoom": 8},
        {"bounds": (10, 0, 0, 1)},
        {"center": (0, 0, 30)},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    args = {"fmt": "png", "tiles_url": URL, **kwargs}
    with pytest.raises(ValueError):
        tilejson(args.pop("fmt"), args.pop("tiles_url"), **args)


def test_legend_lists_every_band_and_epsilon() -> None:
    text = legend_text(BANDS, dp_epsilon=0.5)
    for b in BANDS:
        assert b.name in text and b.color in text and b.label_en in text
    assert "< 5,000" in text and ">= 30,000" in text and "5,000-15,000" in text
    assert "epsilon = 0.5" in text
    zh = legend_text(BANDS, lang="zh")
    assert "拥挤" in zh and "epsilon" not in zh


def test_data_bounds_cover_the_cells(snap9: Snapshot) -> None:
    import h3

    w, s, e, n = data_bounds(snap9)
    for c in snap9.cells[:: max(1, len(snap9) // 200)]:
        for lat, lng in h3.cell_to_boundary(h3.int_to_str(int(c))):
            assert w - 1e-9 <= lng <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
    assert set(FIELDS) == {"cell", "people", "density_km2", "band", "res"}
