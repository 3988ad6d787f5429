"""Fixtures for the HTTP tests: a simulated stream, apps on temp stores, a loaded app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from api_testdata import BATCHES, WINDOW_S, Loaded, api_settings, post, slices

from fastapi.testclient import TestClient

from heatmap.api import create_app
from heatmap.simulate import simulate_pings


@pytest.fixture(scope="session")
def stream() -> pl.DataFrame:
    """40 minutes of simulated pings of 2,500 devices, ending about 10 minutes ago."""
    now = int(datetime.now(UTC).timestamp())
    start = (now - 50 * 60) // WINDOW_S * WINDOW_S
    tables = simulate_pings(
        devices=2500, start=datetime.fromtimestamp(start, UTC), hours=40 / 60, seed=11
    )
    frame = pl.from_arrow(pa.concat_tables(list(tables)))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("ts")


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Return a factory of TestClients on fresh temp stores (closed at teardown)."""
    made: list[TestClient] = []

    def make(**kw: object) -> TestClient:
        sub = tmp_path / f"app{len(made)}"
        client = TestClient(create_app(api_settings(sub, **kw)))
        client.__enter__()
        made.append(client)
        return client

    yield make
    for c in made:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def loaded(tmp_path_factory: pytest.TempPathFactory, stream: pl.DataFrame) -> Iterator[Loaded]:
    """An app on an empty store, then the stream POSTed in time slices (CSV, NDJSON, JSON)."""
    client = TestClient(create_app(api_settings(tmp_path_factory.mktemp("loaded"))))
    with client:
        assert client.get("/api/v1/stats").status_code == 404  # empty store
        answers = []
        for part, fmt in zip(
            slices(stream, BATCHES), ("csv", "ndjson", "json", "csv"), strict=True
        ):
            r = post(client, part, fmt)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        yield Loaded(client, stream, answers)
