"""Operations commands of the ``heatmap`` CLI: ``compact``, ``backup``, ``restore``.

Registered on the main app by :func:`register` (``heatmap.cli`` passes its error wrapper and
settings loader, so this module never imports it back). Heavy modules load inside the commands:
``heatmap --help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from heatmap.config import Settings


def register(
    app: typer.Typer,
    reports_errors: Callable[[Any], Any],
    settings: Callable[[], Settings],
) -> None:
    """Add the operations commands to ``app``."""

    @app.command()
    @reports_errors
    def compact(
        vacuum: Annotated[
            bool, typer.Option(help="then give free pages back to the disk (SQLite VACUUM)")
        ] = False,
    ) -> None:
        """Roll up and delete history past the retention settings (HEATMAP_KEEP_*_DAYS).

        Safe while the service runs. The last line printed is a JSON summary.
        """
        from heatmap.maintenance import compact as run
        from heatmap.maintenance import history_summary
        from heatmap.store import open_store

        s = settings()
        store = open_store(s)
        try:
            before = store.size().bytes
            report = run(store, s)
            out = report.summary()
            if vacuum and hasattr(store, "vacuum"):
                store.vacuum()
            out.update(history_summary(store), bytes_before=before, bytes=store.size().bytes)
        finally:
            store.close()
        typer.echo(json.dumps(out))

    @app.command()
    @reports_errors
    def backup(
        out: Annotated[Path, typer.Argument(help="backup file to write (must not exist)")],
    ) -> None:
        """Write a consistent copy of the store while the service runs (SQLite).

        For a PostgreSQL store this prints how to use pg_dump instead (exit 2).
        """
        from heatmap.backup import backup as run

        typer.echo(json.dumps(run(settings(), out).summary()))

    @app.command()
    @reports_errors
    def restore(
        source: Annotated[Path, typer.Argument(help="a file written by `heatmap backup`")],
        force: Annotated[
            bool, typer.Option(help="replace an existing store (kept as <db>.before-restore)")
        ] = False,
    ) -> None:
        """Put a backup in place as the store HEATMAP_DB names (stop the service first)."""
        from heatmap.backup import restore as run

        typer.echo(json.dumps(run(settings(), source, force).summary()))
