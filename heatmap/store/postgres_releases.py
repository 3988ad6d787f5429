"""The PostgreSQL store's release state: ``pending``, ``live``, ``live_cells`` and ``releases``.

:class:`PostgresReleases` is a mixin of :class:`heatmap.store.postgres.PostgresStore` (the methods
of the release-state part of :class:`heatmap.store.base.Store`): it runs on the store's
connections, inside the caller's transaction (under the commit lock), on the tables of schemas 3
and 4 (:mod:`heatmap.store.postgres_schema`).

Release state (schema 3, as in SQLite) is partitioned like device state, so its hashes leave the
table files when a partition is dropped. ``pending`` has one partition per tick ``k``: folding
drops the partitions it read. ``live`` (one row per device) has one partition per
``live_bucket_s`` seconds of ``ts`` (``release_s`` when the store was made): a device whose
position moves to a newer bucket leaves a dead row behind in the older one, which is dropped,
dead rows and all, when the live rows expire past it. Expiry at a bucket boundary
(``t - horizon``: both multiples of ``release_s``) deletes no row at all; otherwise the boundary
bucket's expired rows are deleted and their space goes when that bucket is dropped in turn.
``live_cells`` (schema 4) counts live devices per cell: the fold statement moves it by the devices
it inserts or moves, and expiry counts the expiring rows out (from the buckets about to go, before
they are dropped), so a release never groups the whole live table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from heatmap.model import Published, Window
from heatmap.store.base import I64, U64
from heatmap.store.codec import blob_to_published
from heatmap.store.postgres_copy import int64_columns_to_copy
from heatmap.store.postgres_schema import part

# The tail of a statement whose CTE ``delta`` yields (cell, d): ``up`` adds d to the cells'
# devices, then the statement returns the total of d and the cells left at zero (removed next: a
# statement does not see its own writes). Only the changed cells are touched, never the table.
_CELLS_LEFT = """
SELECT (SELECT coalesce(sum(d), 0) FROM delta)::bigint,
    ARRAY(SELECT cell FROM up WHERE devices = 0)
"""
_ADD_CELLS = (
    """
up AS (
    INSERT INTO live_cells AS x (cell, devices) SELECT cell, d FROM delta WHERE d <> 0
    ON CONFLICT (cell) DO UPDATE SET devices = x.devices + excluded.devices
    RETURNING cell, devices
)"""
    + _CELLS_LEFT
)
# Folding: per device its latest folded row; where it beats the live row (or there is none),
# the live row is deleted and the new one inserted (into its ts bucket): one row per device. A
# device that enters a cell or moves to another one counts +1 there and -1 on its old cell.
_FOLD = (
    """
WITH cand AS (
    SELECT DISTINCT ON (device) device, ts, cell FROM pending WHERE k < %s
    ORDER BY device, ts DESC, cell DESC
), win AS (
    SELECT c.device, c.ts, c.cell, l.cell AS old FROM cand c LEFT JOIN live l ON l.device = c.device
    WHERE l.device IS NULL OR (c.ts, c.cell) > (l.ts, l.cell)
), gone AS (
    DELETE FROM live l USING win WHERE l.device = win.device
), moved AS (
    INSERT INTO live (device, ts, cell) SELECT device, ts, cell FROM win
), delta AS (
    SELECT cell, sum(d)::bigint AS d FROM (
        SELECT cell, 1 AS d FROM win WHERE old IS DISTINCT FROM cell
        UNION ALL
        SELECT old, -1 FROM win WHERE old <> cell
    ) m GROUP BY cell
),"""
    + _ADD_CELLS
)
# Expiry: -1 per expiring row on its cell, grouped over the expiring rows only (partition
# pruning reads just the buckets below the bound), before those buckets are dropped. Every such
# cell is counted already: a plain update (about a third cheaper than an upsert).
_EXPIRE = (
    """
WITH delta AS (
    SELECT cell, -count(*) AS d FROM live WHERE ts < %s GROUP BY cell
), up AS (
    UPDATE live_cells AS x SET devices = x.devices + delta.d FROM delta WHERE x.cell = delta.cell
    RETURNING x.cell, x.devices
)"""
    + _CELLS_LEFT
)


class PostgresReleases:
    """Release state on the PostgreSQL store's connections (a mixin of ``PostgresStore``)."""

    # Provided by PostgresStore.
    _bucket: int  # live_bucket_s: the span of ts of one partition of live

    if TYPE_CHECKING:

        def _conn(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]: ...

        def _q(
            self, query: str | sql.Composed, params: Sequence[object] = ()
        ) -> list[tuple[Any, ...]]: ...

        def _n(self, query: str, params: Sequence[object] = ()) -> int: ...

        def _copy_out(
            self, query: str, params: Sequence[object], ncols: int
        ) -> list[np.ndarray]: ...

        def _add_part(self, parent: str, key: int, bounds: str, *values: int) -> None: ...

        def _changed(self) -> None: ...

        def _merge_latest(self, table: str, staging: str, key: str, data: bytes) -> None: ...

    def add_pending(self, rows: pl.DataFrame) -> None:
        """Merge pings into pending: per (device, k) the larger (ts, cell) stays."""
        if not rows.height:
            return
        # One row per (k, device) first: an upsert may not touch a row twice in one statement.
        last = (
            rows.select("k", "device", "ts", pl.col("cell").cast(pl.Int64))
            .sort("k", "device", "ts", "cell")
            .unique(["k", "device"], keep="last", maintain_order=True)
        )
        data = int64_columns_to_copy([last[c].to_numpy() for c in last.columns])
        for k in last["k"].unique().to_list():
            self._add_part("pending", k, "IN ({})", k)
        self._merge_latest("pending", "pending_in", "k", data)

    def fold_pending(self, below_k: int) -> int:
        """Move pending rows with ``k < below_k`` into live (per device the larger (ts, cell))
        and ``live_cells`` with them, then drop their partitions."""
        ks = [k for k in self._parts("pending") if k < below_k]
        if not ks:
            return 0
        n = int(self._q("SELECT count(*) FROM pending WHERE k < %s", (below_k,))[0][0])
        step = self._bucket
        for (lo,) in self._q(
            "SELECT DISTINCT ts - (ts %% %s + %s) %% %s FROM pending WHERE k < %s",
            (step, step, step, below_k),
        ):
            self._add_part("live", lo, "FROM ({}) TO ({})", lo, lo + step)
        self._add_cells(_FOLD, below_k)
        for k in ks:
            self._q(sql.SQL("DROP TABLE {}").format(part("pending", k)))
        return n

    def expire_live(self, min_ts: int) -> int:
        """Delete live rows with ``ts < min_ts`` (whole buckets are dropped); return how many.
        ``live_cells`` loses each one on its cell first."""
        n = -self._add_cells(_EXPIRE, min_ts)
        for lo in self._parts("live"):
            if lo + self._bucket <= min_ts:
                self._q(sql.SQL("DROP TABLE {}").format(part("live", lo)))
            elif lo < min_ts:
                query = sql.SQL("DELETE FROM {} WHERE ts < %s").format(part("live", lo))
                self._q(query, (min_ts,))
        return n

    def _add_cells(self, statement: str, bound: int) -> int:
        """Run a statement ending in ``_CELLS_LEFT``; drop the cells it left at zero. Return the
        total change."""
        ((total, empty),) = self._q(statement, (bound,))
        if empty:
            self._q(
                "DELETE FROM live_cells WHERE cell = ANY(%s::bigint[]) AND devices = 0", (empty,)
            )
        return int(total)

    def _parts(self, parent: str) -> list[int]:
        """The partitions of ``pending`` (their k) or ``live`` (their lowest ts)."""
        rows = self._q(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            (parent,),
        )
        return sorted(int(r[0].rsplit("_", 1)[1]) for r in rows)

    def live_counts(self) -> tuple[U64, I64]:
        """Return (cells ascending, devices per cell) over every live row, from ``live_cells``
        (binary COPY out)."""
        cells, dev = self._copy_out(
            "SELECT cell, devices FROM live_cells WHERE devices > 0 ORDER BY cell", (), 2
        )
        return cells.view(np.uint64), dev

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
