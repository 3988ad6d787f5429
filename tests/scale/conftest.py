"""Fixtures for the scale tests: a real PostgreSQL server and a Dask cluster of 2 processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from heatmap.engines import DaskEngine
from tests.pg import PgServer, PgUnavailable


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on a temp dir and free port, for the whole session.

    Skipped only where it cannot run at all (no binaries, no postgres user) and only outside
    CI: ``make test`` installs the server, so in CI a missing server is a failure.
    """
    try:
        server = PgServer()
    except PgUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and cannot run: {exc}")
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()


@pytest.fixture(scope="session")
def dask_engine() -> Iterator[DaskEngine]:
    """A Dask LocalCluster: 2 worker processes, 1 thread each (shared by the session)."""
    engine = DaskEngine(workers=2)
    assert engine.cluster is not None and len(engine.client.nthreads()) == 2
    try:
        yield engine
    finally:
        engine.close()
