"""Any input file (CSV, CSV.gz or Parquet, told apart by its first bytes) as tasks or pings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from heatmap.errors import BadInput
from heatmap.ingest.chunks import _READ_ERRORS, ChunkTask, _bad_file, _unreadable
from heatmap.ingest.csv import _csv_tasks
from heatmap.ingest.options import ParseOptions, Rejects
from heatmap.ingest.parquet import _parquet_tasks


def _sniff(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if head == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "csv.gz"
    return "csv"


def ping_tasks(path: Path, opts: ParseOptions, rejects: Rejects) -> Iterator[ChunkTask]:
    """Yield the chunks of a CSV, CSV.gz or Parquet file as tasks to load in any thread.

    Malformed CSV lines are recorded in ``rejects`` as the file is read; a task's own rejected
    rows go to the ``Rejects`` given to its ``load``. Unreadable files and missing columns raise
    ``BadInput`` with a one-line reason, here or from ``load``.
    """
    kind = _sniff(path)
    row = 1
    try:
        tasks = (
            _parquet_tasks(path, opts)
            if kind == "parquet"
            else _csv_tasks(path, kind == "csv.gz", opts, rejects)
        )
        for task in tasks:
            row = task.first_row + task.rows
            yield _guarded(path, task)
    except BadInput:
        raise
    except _READ_ERRORS as exc:
        raise _bad_file(path, row, exc) from exc


def _guarded(path: Path, task: ChunkTask) -> ChunkTask:
    def load(rejects: Rejects) -> pl.DataFrame:
        with _unreadable(path, task.first_row):
            return task.load(rejects)

    return ChunkTask(task.first_row, task.rows, load)


def read_pings(
    path: Path, opts: ParseOptions, rejects: Rejects, progress: Callable[[int], None] | None = None
) -> Iterator[pl.DataFrame]:
    """Yield validated WGS-84 ping chunks from a CSV, CSV.gz or Parquet file, in order.

    ``progress`` receives the number of rows read so far after each chunk. Unreadable files,
    missing columns and (with ``opts.strict``) bad rows raise ``BadInput`` with a one-line reason.
    """
    for task in ping_tasks(path, opts, rejects):
        yield task.load(rejects)
        if progress:
            progress(task.first_row + task.rows - 1)
