"""The PostgreSQL store's history upkeep: roll-ups, retention, size.

:class:`PostgresHistory` is a mixin of :class:`heatmap.store.postgres.PostgresStore` (the roll-up
and retention methods of :class:`heatmap.store.base.Store`), run on the store's connections
inside the caller's transaction (compaction holds the commit lock, so two nodes compacting at
once take turns, and the second finds the work done), on the ``rollups`` table of schema 6.

A change of the history moves the change token, so every node reloads its window list. The free
disk of the server is not ours to see: :meth:`size` gives the database's size only, and a full
disk is reported by the server's own error (a 503). Backups are ``pg_dump``'s job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

from heatmap.model import Published, Window
from heatmap.store.base import I64, LEVELS, Rollup, StoreSize
from heatmap.store.codec import blob_to_published


class PostgresHistory:
    """Roll-ups, retention and size on the PostgreSQL store (a mixin of ``PostgresStore``)."""

    if TYPE_CHECKING:

        def _conn(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]: ...

        def _q(
            self, query: str | sql.Composed, params: Sequence[object] = ()
        ) -> list[tuple[Any, ...]]: ...

        def _n(self, query: str, params: Sequence[object] = ()) -> int: ...

        def _changed(self) -> None: ...

        def _where(self) -> str: ...

        def get_meta(self, key: str) -> str | None:
            """Return a metadata value."""

        def set_meta(self, key: str, value: str) -> None:
            """Set a metadata value."""

    def rollup_rows(self) -> I64:
        """Return ``(level, start, end, windows, devices)`` of every roll-up, by start."""
        rows = self._q('SELECT level, start, "end", windows, devices FROM rollups ORDER BY start')
        return np.array(rows, dtype=np.int64).reshape(-1, 5)

    def write_rollups(self, rollups: list[Rollup]) -> None:
        """Store roll-ups (an existing one is kept)."""
        with self._conn() as conn, conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO rollups (level, start, "end", windows, devices, data, sums) '
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (LEVELS[r.level], r.start, r.end, r.windows, r.devices, r.published, r.sums)
                    for r in rollups
                ],
            )

    def read_rollup(self, level: str, start: int, window: Window) -> Published | None:
        """Return the published values of a roll-up, if stored."""
        rows = self._q(
            "SELECT data FROM rollups WHERE level = %s AND start = %s", (LEVELS[level], start)
        )
        return blob_to_published(bytes(rows[0][0]), window) if rows else None

    def read_rollup_sums(self, level: str, starts: list[int]) -> dict[int, tuple[int, bytes]]:
        """Return ``start -> (windows, sums)`` of stored roll-ups."""
        rows = self._q(
            "SELECT start, windows, sums FROM rollups WHERE level = %s AND start = ANY(%s)",
            (LEVELS[level], starts),
        )
        return {int(s): (int(n), bytes(b)) for s, n, b in rows}

    def delete_windows(self, ws: list[int]) -> None:
        """Delete closed windows: rows, published values, raw counts; move the change token."""
        if not ws:
            return
        for table in ("published", "base_counts", "windows"):
            self._q(
                sql.SQL("DELETE FROM {} WHERE w = ANY(%s)").format(sql.Identifier(table)), (ws,)
            )
        self._changed()

    def delete_rollups(self, level: str, starts: list[int]) -> None:
        """Delete roll-ups of a level; move the change token."""
        if starts and self._n(
            "DELETE FROM rollups WHERE level = %s AND start = ANY(%s)", (LEVELS[level], starts)
        ):
            self._changed()

    def forget_batches(self, before_epoch: int) -> int:
        """Forget batch ids recorded before ``before_epoch``."""
        return self._n("DELETE FROM batches WHERE created_at < to_timestamp(%s)", (before_epoch,))

    def size(self) -> StoreSize:
        """Return the database's size (the server's free disk is not visible from here)."""
        rows = self._q("SELECT pg_database_size(current_database())")
        return StoreSize(int(rows[0][0]), None, self._where())

    def mark_history_changed(self) -> None:
        """Move the history counter and the change token (other nodes reload their lists)."""
        v = self.get_meta("history_epoch")
        self.set_meta("history_epoch", str((0 if v is None else int(v)) + 1))
        self._changed()
