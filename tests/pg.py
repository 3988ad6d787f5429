"""A real, throw-away PostgreSQL server for tests: Debian's binaries, a temp dir, a free port.

``make test`` installs the ``postgresql`` package. As root the server runs as the ``postgres`` OS
user (``initdb`` refuses root) through ``runuser``. Outside CI a machine without the binaries
skips the PostgreSQL tests with the reason; in CI (``CI`` set) that is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


class PgUnavailable(RuntimeError):
    """The server cannot be started here (binaries or the postgres user missing)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temp directory, listening on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        if not bins:
            raise PgUnavailable("PostgreSQL binaries missing (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent
        self.as_root = os.geteuid() == 0
        if self.as_root and (shutil.which("runuser") is None or not _user_exists("postgres")):
            raise PgUnavailable("running as root but no runuser / postgres OS user")
        self.root = Path(tempfile.mkdtemp(prefix="heatmap-pg-"))
        self.port = _free_port()
        self.data = self.root / "data"
        self.started = False

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        proc = subprocess.run(
            prefix + list(cmd), capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.strip()}\n{tail}")

    def start(self) -> PgServer:
        """initdb (trust auth) and start; return self."""
        os.chmod(self.root, 0o777)  # the postgres user creates its data dir and socket here
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        # Durability settings off: the tests check semantics, not crash safety, on 2 cores.
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c jit=off "
            "-c shared_buffers=128MB -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip
        self.started = True
        return self

    def url(self, dbname: str = "postgres") -> str:
        """Return the ``postgresql://`` URL of a database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh, empty database and return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.started:
            with contextlib.suppress(Exception):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
