"""Session fixtures for the tiles tests: snapshots at the resolutions of z8, z12 and z16."""

from __future__ import annotations

import pytest
from tiles_testdata import make_snapshot

from heatmap.model import Snapshot


@pytest.fixture(scope="session")
def snap7() -> Snapshot:
    return make_snapshot(7, 12)


@pytest.fixture(scope="session")
def snap9() -> Snapshot:
    return make_snapshot(9, 45)


@pytest.fixture(scope="session")
def snap10() -> Snapshot:
    return make_snapshot(10, 60)
