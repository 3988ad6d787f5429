"""Fixtures of the hardening tests: real servers that are always stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hardening_server import Server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Return a factory of :class:`Server` (not started) whose processes are killed at teardown."""
    made: list[Server] = []

    def make(db: Path | None = None, **kw: object) -> Server:
        server = Server(tmp_path, db or tmp_path / "store" / "heatmap.db", **kw)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()
