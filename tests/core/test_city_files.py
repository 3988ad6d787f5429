"""Where the places and the outline come from: the bundled sample, or a city's own files named
by ``HEATMAP_PLACES_FILE`` / ``HEATMAP_OUTLINE_FILE``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from heatmap.config import Settings
from heatmap.errors import BadInput
from heatmap.places import (
    SHANGHAI,
    city_files,
    load_outline,
    load_places,
    sample_data_dir,
    select_city,
)

ROOT = Path(__file__).resolve().parents[2]
OWN = {"id": "city-hall", "name_zh": "市政府", "name_en": "City Hall", "kind": "civic"}
SQUARE = {
    "type": "Feature",
    "properties": {},
    "geometry": {"type": "Polygon", "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 51]]]},
}


@pytest.fixture(autouse=True)
def back_to_shanghai() -> Iterator[None]:
    yield
    select_city()
    assert city_files() == SHANGHAI


def test_the_checkout_reads_sample_data_beside_the_package() -> None:
    assert sample_data_dir() == ROOT / "sample_data"
    assert SHANGHAI.places.is_file() and SHANGHAI.outline.is_file()


def test_a_citys_own_files_become_the_default(tmp_path: Path) -> None:
    places = tmp_path / "places.json"
    places.write_text(json.dumps([{**OWN, "lat": 50.5, "lng": 10.5, "radius_m": 200}]), "utf-8")
    outline = tmp_path / "outline.geojson"
    outline.write_text(json.dumps(SQUARE), "utf-8")
    select_city(places, outline)
    assert [p.id for p in load_places()] == ["city-hall"]
    assert load_outline().bounds == (10.0, 50.0, 11.0, 51.0)
    assert len(load_places(SHANGHAI.places)) > 20  # the sample stays reachable by path


def test_a_bad_file_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read places file"):
        select_city(tmp_path / "missing.json")
    broken = tmp_path / "outline.geojson"
    broken.write_text("{}", "utf-8")
    with pytest.raises(BadInput, match="outline"):
        select_city(None, broken)
    assert city_files() == SHANGHAI


def test_settings_fields(tmp_path: Path) -> None:
    s = Settings(places_file=str(tmp_path / "p.json"), outline_file="")  # type: ignore[call-arg]
    assert s.places_file == tmp_path / "p.json" and s.outline_file is None


def test_the_planner_draws_the_citys_own_outline(tmp_path: Path) -> None:
    """The planner page links the chosen outline (that one file, not its folder's others)."""
    import re

    from fastapi.testclient import TestClient

    from heatmap.api import create_app

    outline = tmp_path / "mycity.geojson"
    outline.write_text(json.dumps(SQUARE), "utf-8")
    (tmp_path / "secret.geojson").write_text("{}", "utf-8")
    s = Settings(db=str(tmp_path / "h.db"), secret="t", basemap_url="", outline_file=str(outline))  # type: ignore[call-arg]
    with TestClient(create_app(s)) as client:
        page = client.get("/").text
        link = re.search(r'/assets/city/[^"?]+', page)
        assert link is not None and link.group(0) == "/assets/city/mycity.geojson"
        got = client.get(link.group(0))
        assert got.status_code == 200 and got.json() == SQUARE
        assert client.get("/assets/city/secret.geojson").status_code == 404
