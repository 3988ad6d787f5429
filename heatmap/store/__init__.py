"""Stores: SQLite (embedded default) and PostgreSQL (several API nodes) behind one interface."""

from __future__ import annotations

from heatmap.config import Settings
from heatmap.store.base import CommitResult, Precomputed, Store, WindowInfo

__all__ = ["CommitResult", "Precomputed", "Store", "WindowInfo", "open_store"]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store that ``settings.db`` names."""
    if settings.is_postgres:
        from heatmap.store.postgres import PostgresStore

        return PostgresStore(settings)
    from heatmap.store.sqlite import SQLiteStore

    return SQLiteStore(settings)
