"""The PostgreSQL store's tables: numbered migrations, staging tables and partition names.

:class:`heatmap.store.postgres.PostgresStore` applies the ``MIGRATIONS`` missing from its
``schema_migrations`` table in order, in one transaction (DDL is transactional) under an advisory
lock, so two nodes starting together migrate once. Version numbers match the SQLite store's
(:data:`heatmap.store.base.SCHEMA_VERSION`); version 2 adds nothing here.

The table of keyed hashes is partitioned (``ping_log`` by slot; schemas 1-4 partitioned their
row state likewise) so that deleting many hashes is dropping a partition; a partition of
``parent`` for ``key`` is the table ``parent_key`` (:func:`part`). Blob writes go through a
per-connection temporary table (``STAGING``), filled by binary COPY.
"""

from __future__ import annotations

from psycopg import sql

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE windows (
            w bigint PRIMARY KEY, start bigint NOT NULL, "end" bigint NOT NULL,
            closed boolean NOT NULL DEFAULT false, version bigint NOT NULL DEFAULT 0,
            devices bigint NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX windows_open ON windows (w) WHERE NOT closed",
        """CREATE TABLE device_state (
            w bigint NOT NULL, device bigint NOT NULL, ts bigint NOT NULL, cell bigint NOT NULL,
            PRIMARY KEY (w, device)
        ) PARTITION BY LIST (w)""",
        "CREATE TABLE base_counts (w bigint PRIMARY KEY, data bytea NOT NULL)",
        "CREATE TABLE published (w bigint PRIMARY KEY, data bytea NOT NULL)",
        """CREATE TABLE batches (
            batch_id text PRIMARY KEY, result text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        # Unused since the change token moved to meta('window_changes'); kept for old stores.
        "CREATE SEQUENCE window_changes",
    ),
    2: (),  # SQLite's open_counts; here open counts group device_state. Versions match SQLite's.
    3: (
        """CREATE TABLE pending (
            k bigint NOT NULL, device bigint NOT NULL, ts bigint NOT NULL, cell bigint NOT NULL,
            PRIMARY KEY (k, device)
        ) PARTITION BY LIST (k)""",
        # One row per device, kept so by fold_pending (a partitioned table's unique key would
        # have to include ts, which moves).
        """CREATE TABLE live (
            device bigint NOT NULL, ts bigint NOT NULL, cell bigint NOT NULL
        ) PARTITION BY RANGE (ts)""",
        "CREATE INDEX live_device ON live (device)",
        "CREATE TABLE releases ("
        "t bigint PRIMARY KEY, devices bigint NOT NULL, data bytea NOT NULL)",
    ),
    # Devices per cell of live, moved by fold_pending and expire_live by the rows they change
    # (_ADD_CELLS in postgres_releases), so a release reads the cells instead of grouping every
    # live device.
    # Half-full pages: an update finds room for the new row version on its page (a HOT update,
    # no index entry), about half the cost of a full page's.
    4: (
        "CREATE TABLE live_cells (cell bigint PRIMARY KEY, devices bigint NOT NULL) "
        "WITH (fillfactor = 50)",
        "INSERT INTO live_cells (cell, devices) SELECT cell, count(*) FROM live GROUP BY cell",
    ),
    # The ping log (heatmap.store.base) replaces the per-row state of schemas 1-4: their rows
    # move into it (absorb_rows in postgres_releases, a step in Python), then those tables go.
    5: (
        """CREATE TABLE ping_log (
            seq bigserial, k bigint NOT NULL, lo_ts bigint NOT NULL, hi_ts bigint NOT NULL,
            data bytea NOT NULL, PRIMARY KEY (k, seq)
        ) PARTITION BY LIST (k)""",
        "CREATE INDEX ping_log_seq ON ping_log (seq)",
    ),
    # Roll-ups of closed windows past their full-detail retention (heatmap.maintenance); batch
    # ids already carry created_at, by which compaction forgets them.
    6: (
        """CREATE TABLE rollups (
            level smallint NOT NULL, start bigint NOT NULL, "end" bigint NOT NULL,
            windows bigint NOT NULL, devices bigint NOT NULL, data bytea NOT NULL,
            sums bytea NOT NULL, PRIMARY KEY (level, start)
        )""",
        "CREATE INDEX batches_created ON batches (created_at)",
    ),
    # Crowd warnings (heatmap.alerts): watches, their state, alerts, the event stream (numbered
    # under the commit lock, so in commit order) and the webhook outbox.
    7: (
        """CREATE TABLE watches (
            id text PRIMARY KEY, created bigint NOT NULL, spec text NOT NULL,
            webhook_url text, webhook_secret text
        )""",
        """CREATE TABLE watch_state (
            watch_id text PRIMARY KEY, streak bigint NOT NULL, alert_id bigint,
            quiet_until bigint NOT NULL
        )""",
        """CREATE TABLE alerts (
            id bigserial PRIMARY KEY, watch_id text NOT NULL, audience text NOT NULL,
            opened_t bigint NOT NULL, closed_t bigint, opened text NOT NULL, closed text
        )""",
        "CREATE INDEX alerts_closed ON alerts (closed_t)",
        """CREATE TABLE events (
            seq bigserial PRIMARY KEY, audience text NOT NULL, kind text NOT NULL,
            data text NOT NULL, at bigint NOT NULL
        )""",
        "CREATE INDEX events_at ON events (at)",
        """CREATE TABLE outbox (
            id bigserial PRIMARY KEY, watch_id text NOT NULL, msg_id text NOT NULL,
            url text NOT NULL, secret text NOT NULL, body text NOT NULL,
            state text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
            next_at double precision NOT NULL, lease_until double precision NOT NULL DEFAULT 0,
            last_error text, created double precision NOT NULL, done_at double precision
        )""",
        "CREATE INDEX outbox_pending ON outbox (watch_id, id) WHERE state = 'pending'",
        "CREATE INDEX outbox_watch ON outbox (watch_id, id)",
    ),
}

# Per-connection staging tables for COPY; emptied at every commit.
STAGING = ("CREATE TEMP TABLE IF NOT EXISTS blob_in (w bigint, data bytea) ON COMMIT DELETE ROWS",)


def part(parent: str, key: int) -> sql.Identifier:
    """Return the name of the partition of ``parent`` for ``key`` (a window, tick or bucket)."""
    return sql.Identifier(f"{parent}_{int(key)}")
