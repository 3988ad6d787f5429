"""Property-based run of every operation in ``/openapi.json``: no input reaches a 500.

Bounded: 25 examples per operation (a few hundred requests, well under a minute). The app is
made at collection time (schemathesis reads its schema then) on a temporary store that a
module fixture fills with a few hundred pings.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import polars as pl
import pytest
import schemathesis
from api_testdata import AUTH, api_settings, post, slices
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from heatmap.api import create_app

EXAMPLES = 25
_TMP = Path(tempfile.mkdtemp(prefix="heatmap-fuzz-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
APP = create_app(api_settings(_TMP, max_body_bytes=64 * 1024, max_rows=500))


async def without_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """The app, minus its lifespan: schemathesis' clients must not close its store."""
    if scope["type"] != "lifespan":
        await APP(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan)


@pytest.fixture(scope="module", autouse=True)
def some_data(stream: pl.DataFrame) -> None:
    client = TestClient(APP)  # no lifespan: the app stays open for schemathesis
    assert post(client, slices(stream, 8)[-1].head(400)).status_code == 200


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_reaches_a_500(case: schemathesis.Case) -> None:
    headers = AUTH if case.method == "POST" else None
    response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
    assert response.status_code != 503, response.text
