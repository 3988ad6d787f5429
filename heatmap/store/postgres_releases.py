"""The PostgreSQL store's ping log and releases: ``ping_log`` and ``releases``.

:class:`PostgresReleases` is a mixin of :class:`heatmap.store.postgres.PostgresStore` (the ping-log
and release methods of :class:`heatmap.store.base.Store`): it runs on the store's connections,
inside the caller's transaction (under the commit lock), on the tables of schemas 3 and 5
(:mod:`heatmap.store.postgres_schema`).

``ping_log`` (schema 5) holds one row per entry (a unit's pings of one release slot, one blob),
numbered by a sequence: entries are appended under the commit lock, so numbers grow in commit
order (a rolled-back unit leaves a gap, never a reordering). The table is partitioned by slot
``k = lo_ts // live_bucket_s`` (``release_s`` when the store was made): trimming drops whole
partitions whose entries are all no longer needed, so their hashes leave the table files at once
(a DELETE would leave them in the pages' free space).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

from heatmap.model import Published, Window
from heatmap.store.base import I64, U64
from heatmap.store.codec import blob_to_pings, blob_to_published, ping_entries
from heatmap.store.postgres_schema import part

_READ_ENTRIES = 64
_ROW_STATE = ("device_state", "pending", "live")


def insert_entries(
    conn: psycopg.Connection[Any], entries: list[tuple[int, int, bytes]], bucket: int
) -> int:
    """Insert ping-log entries on ``conn`` (creating their partitions); return the last number."""
    seq = 0
    for k in sorted({lo // bucket for lo, _, _ in entries}):
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF ping_log FOR VALUES IN ({})"
            ).format(part("ping_log", k), sql.Literal(k))
        )
    for lo, hi, blob in entries:
        row = conn.execute(
            "INSERT INTO ping_log (k, lo_ts, hi_ts, data) VALUES (%s, %s, %s, %s) RETURNING seq",
            (lo // bucket, lo, hi, blob),
        ).fetchone()
        seq = int(row[0])  # type: ignore[index]
    return seq


def absorb_rows(conn: psycopg.Connection[Any], bucket: int) -> None:
    """Move the rows of a schema 1-4 store's state tables into the ping log (schema 5), then
    drop those tables (their partitions with them). Inside the migration's transaction."""
    have = {
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    }
    parts = [np.zeros((0, 3), dtype=np.int64)]
    for table in [t for t in _ROW_STATE if t in have]:
        rows = conn.execute(f"SELECT device, ts, cell FROM {table}").fetchall()  # noqa: S608 - fixed names
        parts.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
    every = np.concatenate(parts)
    entries = ping_entries(every[:, 0], every[:, 1], every[:, 2].view(np.uint64), bucket)
    insert_entries(conn, entries, bucket)
    for table in ("device_state", "pending", "live", "live_cells"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


class PostgresReleases:
    """Ping log and releases on the PostgreSQL store's connections (mixin of ``PostgresStore``)."""

    # Provided by PostgresStore.
    _bucket: int  # live_bucket_s: the span of lo_ts of one partition of ping_log

    if TYPE_CHECKING:

        def _conn(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]: ...

        def _q(
            self, query: str | sql.Composed, params: Sequence[object] = ()
        ) -> list[tuple[Any, ...]]: ...

        def _n(self, query: str, params: Sequence[object] = ()) -> int: ...

        def _copy_out(
            self, query: str, params: Sequence[object], ncols: int
        ) -> list[np.ndarray]: ...

        def _changed(self) -> None: ...

    def append_log(self, entries: list[tuple[int, int, bytes]]) -> int:
        """Append entries ``(lo_ts, hi_ts, blob)``; return the last one's number."""
        with self._conn() as conn:
            return insert_entries(conn, entries, self._bucket)

    def read_log(self, after: int) -> Iterator[tuple[int, tuple[I64, I64, U64]]]:
        """Yield the entries numbered above ``after``, in order, a few blobs in memory at once."""
        while True:
            rows = self._q(
                "SELECT seq, data FROM ping_log WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, _READ_ENTRIES),
            )
            for seq, blob in rows:
                after = int(seq)
                yield after, blob_to_pings(bytes(blob))
            if len(rows) < _READ_ENTRIES:
                return

    def trim_log(self, before_ts: int) -> int:
        """Drop the partitions whose entries are all before ``before_ts``; return how many
        entries went. A partition with some entries still needed stays whole."""
        rows = self._q(
            "SELECT k, max(hi_ts), count(*) FROM ping_log WHERE k < %s GROUP BY k",
            (before_ts // self._bucket + 1,),
        )
        n = 0
        for k, hi, count in rows:
            if int(hi) < before_ts:
                self._q(sql.SQL("DROP TABLE {}").format(part("ping_log", int(k))))
                n += int(count)
        return n

    def write_release(self, t: int, blob: bytes, devices: int) -> None:
        """Store release ``t`` once (an existing one is kept); move the change token."""
        if self._n(
            "INSERT INTO releases (t, devices, data) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (t, devices, blob),
        ):
            self._changed()

    def read_release(self, t: int, window: Window) -> Published | None:
        """Return the published values of release ``t``, if stored."""
        rows = self._q("SELECT data FROM releases WHERE t = %s", (t,))
        return blob_to_published(bytes(rows[0][0]), window) if rows else None

    def release_rows(self) -> I64:
        """Return ``(t, devices)`` of every stored release, ascending ``t``."""
        t, devices = self._copy_out("SELECT t, devices FROM releases ORDER BY t", (), 2)
        return np.stack([t, devices], axis=1)

    def delete_releases_before(self, t: int) -> None:
        """Delete releases older than ``t``; move the change token if any went."""
        if self._n("DELETE FROM releases WHERE t < %s", (t,)):
            self._changed()
