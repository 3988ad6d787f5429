"""Hypothesis over the HTTP parsers (in process): bbox, ``?window=``, tile paths, query strings and
the request headers the service reads. Anything gives an answer or a 4xx with a JSON reason.

(``test_fuzz_parsers`` covers the bodies and files; ``tests/api`` the schema-driven requests.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hardening_server import SECRET, TOKEN, fill_store, make_batches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.api.caching import accepts_gzip, etag_matches
from heatmap.config import Settings
from heatmap.errors import BadInput
from heatmap.read.answers import parse_bbox
from heatmap.read.ref import when_to_ts

T0 = (int(time.time()) - 3 * 3600) // 300 * 300
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

numberish = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "-0", "1e309", "NaN", "0x10", "١٢", "１２", "12 ", " 1", "1_000", "+5"]),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("fuzz-http")
    db = tmp / "store" / "heatmap.db"
    fill_store(db, make_batches(6, devices=100, t0=T0, span_s=150, seed=2))
    s = Settings(db=str(db), secret=SECRET, basemap_url="", k_min=2, ingest_token=TOKEN)  # type: ignore[call-arg]
    with TestClient(create_app(s)) as c:
        yield c


def _ok(r: object) -> None:
    status = r.status_code  # type: ignore[attr-defined]
    assert status < 500, (r.request.url, status, r.text[:200])  # type: ignore[attr-defined]
    if status >= 400:
        detail = r.json()["detail"]  # type: ignore[attr-defined]
        assert isinstance(detail, str) and detail and "Traceback" not in detail


@FUZZ
@given(st.one_of(st.text(max_size=60), st.lists(numberish, max_size=6).map(",".join)))
def test_bbox_parses_to_a_sane_box_or_bad_input(text: str) -> None:
    try:
        w, s, e, n = parse_bbox(text)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    assert all(math.isfinite(v) for v in (w, s, e, n))
    assert -180 <= w < e <= 180 and -90 <= s < n <= 90


@FUZZ
@given(st.one_of(st.text(max_size=40), numberish))
def test_window_parameter_is_a_bounded_time_or_bad_input(text: str) -> None:
    try:
        ts = when_to_ts(text)
    except BadInput:
        return
    assert -(2**53) < ts < 2**53


@FUZZ
@given(
    z=numberish,
    x=numberish,
    y=numberish,
    suffix=st.one_of(
        st.sampled_from([".png", ".mvt", "@2x.png", "@2x.mvt", ".PNG", ".png.mvt", "", ".json"]),
        st.text(max_size=8),
    ),
    window=st.one_of(st.none(), numberish, st.text(max_size=70)),
)
def test_any_tile_path_is_a_tile_or_a_4xx(
    client: TestClient, z: str, x: str, y: str, suffix: str, window: str | None
) -> None:
    path = "/tiles/" + "/".join(quote(p, safe="") for p in (z, x, y)) + quote(suffix, safe="@.")
    _ok(client.get(path, params=None if window is None else {"window": window}))


ENDPOINTS = {
    "/api/v1/density": ["lat", "lng", "res", "window"],
    "/api/v1/cells": ["bbox", "res", "window"],
    "/api/v1/windows": ["limit", "before"],
    "/api/v1/stats": ["window"],
    "/api/v1/places": ["window"],
    "/tiles.json": ["format", "window"],
    "/api/v1/legend": [],
}


@FUZZ
@given(
    endpoint=st.sampled_from(sorted(ENDPOINTS)),
    data=st.data(),
)
def test_any_query_string_is_an_answer_or_a_4xx(
    client: TestClient, endpoint: str, data: st.DataObject
) -> None:
    names = ENDPOINTS[endpoint] + ["lat", "bbox", "x" * 3, "\u202e", ""]
    params = data.draw(
        st.lists(
            st.tuples(st.sampled_from(names), st.one_of(numberish, st.text(max_size=30))),
            max_size=6,
        )  # fmt: skip
    )
    if endpoint == "/api/v1/density":
        params = [("lat", "31.23"), ("lng", "121.47"), *params]
    _ok(client.get(endpoint, params=params))


header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@FUZZ
@given(inm=header_value, ae=header_value, origin=header_value, tile=st.booleans())
def test_any_caching_or_cors_header_is_read_safely(
    client: TestClient, inm: str, ae: str, origin: str, tile: bool
) -> None:
    url = "/tiles/12/3430/1673.mvt" if tile else "/api/v1/legend"
    headers = {"If-None-Match": inm, "Accept-Encoding": ae, "Origin": origin}
    r = client.get(url, headers=headers)
    _ok(r)
    assert r.status_code in (200, 204, 304)
    # The two header parsers never raise and agree with the answer.
    assert isinstance(accepts_gzip(ae), bool) and isinstance(etag_matches(inm, '"a"'), bool)
    if r.status_code == 200 and r.content and tile:
        assert (r.headers.get("content-encoding") == "gzip") == accepts_gzip(ae)
