"""Stores: SQLite (embedded default) and PostgreSQL (several API nodes) behind one interface.

A store persists and reads; the commit rules that drive it are in :mod:`heatmap.commit`, the
blob codec beside it in :mod:`heatmap.store.codec`.
"""

from __future__ import annotations

from heatmap.config import Settings
from heatmap.store.base import Store, WindowInfo

__all__ = ["Store", "WindowInfo", "open_store"]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store that ``settings.db`` names."""
    if settings.is_postgres:
        from heatmap.store.postgres import PostgresStore

        return PostgresStore(settings)
    from heatmap.store.sqlite import SQLiteStore

    return SQLiteStore(settings)
