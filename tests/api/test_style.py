"""``GET /style.json``: a MapLibre style that passes MapLibre's own validator
(``gl-style-validate`` from ``@maplibre/maplibre-gl-style-spec``, installed by ``make`` from npm)
and draws each band in the legend's colour, with its text label."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from api_testdata import api_settings

from fastapi.testclient import TestClient

from heatmap.api import create_app

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "node_modules" / ".bin" / "gl-style-validate"


def validate(style: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not VALIDATOR.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VALIDATOR} missing: `make` installs the npm dev dependencies")
        pytest.skip("gl-style-validate not installed (npm ci)")
    path = tmp_path / "style.json"
    path.write_text(json.dumps(style), encoding="utf-8")
    return subprocess.run(
        [str(VALIDATOR), "--json", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def make(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[TestClient] = []

    def _make(**kw: object) -> TestClient:
        c = TestClient(create_app(api_settings(tmp_path / f"app{len(made)}", **kw)))
        c.__enter__()
        made.append(c)
        return c

    yield _make
    for c in made:
        c.__exit__(None, None, None)


@pytest.mark.parametrize("basemap", ["", "https://tile.openstreetmap.org/{z}/{x}/{y}.png"])
def test_style_passes_maplibre_validation(make, tmp_path: Path, basemap: str) -> None:  # type: ignore[no-untyped-def]
    style = make(basemap_url=basemap).get("/style.json").json()
    done = validate(style, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout or "[]") == []
    assert ("basemap" in style["sources"]) == bool(basemap)


def test_the_validator_rejects_a_broken_style(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The control: the same style with one wrong colour and a missing source does not pass.
    style = make().get("/style.json").json()
    style["layers"][0]["paint"]["fill-color"] = "not-a-colour"
    style["layers"][1]["source"] = "nowhere"
    done = validate(style, tmp_path)
    assert done.returncode != 0
    assert len(json.loads(done.stdout)) == 2


def test_one_layer_per_band_with_colour_and_label(make) -> None:  # type: ignore[no-untyped-def]
    client = make(bands_km2="1000,2000,3000")
    style = client.get("/style.json").json()
    legend = client.get("/api/v1/legend").json()["bands"]
    fills = [layer for layer in style["layers"] if layer["type"] == "fill"]
    assert len(fills) == len(legend) == 4
    for layer, band in zip(fills, legend, strict=True):
        assert layer["filter"] == ["==", ["get", "band"], band["band"]]
        assert layer["paint"]["fill-color"] == band["color"]
        assert layer["source-layer"] == "density"
        assert band["label"]["en"] in layer["id"] and band["label"]["zh"] in layer["id"]
        assert layer["metadata"]["heatmap:min_km2"] == band["min_km2"]
    assert fills[3]["metadata"]["heatmap:min_km2"] == 3000.0  # the thresholds in force


def test_tiles_url_follows_the_request(make) -> None:  # type: ignore[no-untyped-def]
    client = make()
    src = client.get("/style.json").json()["sources"]["density"]
    assert src["tiles"] == ["http://testserver/tiles/{z}/{x}/{y}.mvt"]
    pinned = client.get("/style.json", params={"window": "2026-11-28T09:00:00Z"}).json()
    assert pinned["sources"]["density"]["tiles"][0].endswith(".mvt?window=2026-11-28T09%3A00%3A00Z")
    assert client.get("/style.json", params={"window": "soon"}).status_code == 422
