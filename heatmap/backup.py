"""Backups of the embedded store while it serves, and restores (``heatmap backup`` / ``restore``).

A backup is one SQLite file: a consistent copy taken with SQLite's online backup API while the
service goes on ingesting and serving (``SQLiteHistory.backup_to``): the store as of one commit,
every batch acknowledged before it and none after, checked with ``PRAGMA integrity_check``.

When the hashing key is the generated ``secret.key`` beside the store (no ``HEATMAP_SECRET``),
it is copied beside the backup as ``OUT.key`` (mode 0600): a restored store needs the same key,
or the devices of its open windows and releases would be counted again under new hashes. Keep
it as safe as the key itself.

A PostgreSQL store is backed up by the server's own tools (``pg_dump`` takes a consistent
snapshot while the nodes serve); :func:`postgres_guidance` says how.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from heatmap.config import Settings
from heatmap.errors import BadInput, StoreUnavailable
from heatmap.privacy import SECRET_FILE
from heatmap.store.sqlite_schema import APPLICATION_ID

KEY_SUFFIX = ".key"


@dataclass(frozen=True)
class BackupReport:
    """What a backup or a restore wrote."""

    path: Path
    bytes: int
    windows: int
    rollups: int
    key: Path | None

    def summary(self) -> dict[str, object]:
        """Return the JSON summary (the CLI's last line)."""
        return {
            "out": str(self.path),
            "bytes": self.bytes,
            "closed_windows": self.windows,
            "rollups": self.rollups,
            "key": None if self.key is None else str(self.key),
        }


def postgres_guidance(settings: Settings) -> str:
    """Return how to back up and restore a PostgreSQL store with its own tools."""
    return (
        "a PostgreSQL store is backed up with PostgreSQL's tools, while the nodes serve:\n"
        '  pg_dump --format=custom --file heatmap.dump "$HEATMAP_DB"\n'
        "and restored into an empty database, with every node stopped:\n"
        '  pg_restore --no-owner --dbname "$HEATMAP_DB" heatmap.dump\n'
        "(pg_dump reads one snapshot, so the dump is consistent; keep HEATMAP_SECRET with it)"
    )


def _counts(path: Path) -> tuple[int, int]:
    """Return the closed windows and roll-ups of a store file (an older schema has none)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        windows = con.execute("SELECT count(*) FROM windows WHERE closed = 1").fetchone()[0]
        rollups = 0
        if "rollups" in tables:
            rollups = con.execute("SELECT count(*) FROM rollups").fetchone()[0]
    finally:
        con.close()
    return int(windows), int(rollups)


def backup(settings: Settings, out: Path) -> BackupReport:
    """Write a consistent copy of the embedded store to ``out`` (a new file) while it serves."""
    if settings.is_postgres:
        raise BadInput(postgres_guidance(settings))
    from heatmap.store.sqlite import SQLiteStore

    out = Path(out)
    if out.exists():
        raise BadInput(f"{out}: exists; a backup never overwrites a file")
    if out.resolve() == Path(settings.db).resolve():
        raise BadInput(f"{out}: is the store itself")
    if not Path(settings.db).exists():
        raise BadInput(f"{settings.db}: no store to back up")
    out.parent.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(settings)  # opens (and checks) the store; migrations run if due
    try:
        store.backup_to(out)
    finally:
        store.close()
    key = None
    if not settings.secret and (settings.store_dir / SECRET_FILE).exists():
        key = out.with_name(out.name + KEY_SUFFIX)
        _copy_private(settings.store_dir / SECRET_FILE, key)
    windows, rollups = _counts(out)
    return BackupReport(out, out.stat().st_size, windows, rollups, key)


def _copy_private(src: Path, dst: Path) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(src.read_bytes())


def _check_backup(path: Path) -> None:
    """Refuse anything but a sound heatmap store file."""
    if not path.is_file():
        raise BadInput(f"{path}: no such backup file")
    with path.open("rb") as fh:
        head = fh.read(100)
    if not head.startswith(b"SQLite format 3\x00") or int.from_bytes(head[68:72], "big") != (
        APPLICATION_ID
    ):
        raise BadInput(f"{path}: not a heatmap store backup")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise BadInput(f"{path}: unreadable backup ({exc})") from exc
    finally:
        con.close()
    if check != "ok":
        raise BadInput(f"{path}: the backup is damaged ({check})")


def restore(settings: Settings, source: Path, force: bool = False) -> BackupReport:
    """Put a backup in place as the store ``HEATMAP_DB`` names (the service must be stopped).

    The backup is checked first, copied beside the target, then moved over it in one rename;
    an existing store is refused unless ``force``, and then kept as ``<db>.before-restore``.
    The store opens with the backup's schema and migrates as usual (an older backup is
    upgraded on first open).
    """
    if settings.is_postgres:
        raise BadInput(postgres_guidance(settings))
    source = Path(source)
    _check_backup(source)
    target = Path(settings.db)
    if target.exists() and target.stat().st_size > 0:
        if not force:
            raise BadInput(f"{target}: a store is there; stop the service and use --force")
        keep = target.with_name(target.name + ".before-restore")
        target.replace(keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restoring")
    try:
        shutil.copyfile(source, tmp)
        for suffix in ("-wal", "-shm"):  # the old store's, if any: never mixed with the copy
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreUnavailable(f"{target}: cannot restore ({exc.strerror})") from exc
    key = None
    src_key = source.with_name(source.name + KEY_SUFFIX)
    if src_key.exists() and not settings.secret:
        key = settings.store_dir / SECRET_FILE
        if key.exists() and key.read_bytes() != src_key.read_bytes():
            key.replace(key.with_name(key.name + ".before-restore"))
        _copy_private(src_key, key)
    windows, rollups = _counts(target)
    return BackupReport(target, target.stat().st_size, windows, rollups, key)
