"""Fixtures for the scale tests: a Dask cluster of 2 processes (PostgreSQL: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heatmap.engines import DaskEngine


@pytest.fixture(scope="session")
def dask_engine() -> Iterator[DaskEngine]:
    """A Dask LocalCluster: 2 worker processes, 1 thread each (shared by the session)."""
    engine = DaskEngine(workers=2)
    assert engine.cluster is not None and len(engine.client.nthreads()) == 2
    try:
        yield engine
    finally:
        engine.close()
