"""Any input file (CSV, NDJSON, either gzipped, or Parquet), told apart by its first bytes,
as chunk tasks or pings. Each format's reader is imported only when a file of it comes."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from heatmap._jit import SMALL_ROWS, preload_soon
from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.chunks import _READ_ERRORS, ChunkTask, _bad_file, _unreadable
from heatmap.ingest.options import ParseOptions, Rejects

_BIG_TEXT_BYTES = SMALL_ROWS * 32  # a text file this large will load the compiled kernels


def _sniff(path: Path) -> tuple[str, bool]:
    """Return the file's format (``parquet``, ``ndjson`` or ``csv``) and whether it is gzip."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            compressed = head[:2] == b"\x1f\x8b"
            if head == b"PAR1":
                return "parquet", False
            if compressed:
                fh.seek(0)
                try:
                    with gzip.open(fh) as inner:
                        head = inner.read(64)
                except (OSError, EOFError):
                    return "csv", True  # unreadable: the CSV reader names the problem
            else:
                fh.seek(0)
                head = fh.read(64)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror or exc})") from exc
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    return ("ndjson" if first == b"{" else "csv"), compressed


def ping_tasks(
    path: Path, opts: ParseOptions, rejects: Rejects, codes: DeviceCodes | None = None
) -> Iterator[ChunkTask]:
    """Yield the chunks of a CSV, NDJSON (either gzipped) or Parquet file as tasks to load in
    any thread.

    Malformed CSV lines are recorded in ``rejects`` as the file is read; a task's own rejected
    rows go to the ``Rejects`` given to its ``load``. Unreadable files, missing columns and
    columns of unusable types raise ``BadInput`` with a one-line reason, here or from ``load``.
    With ``codes`` (the file's :class:`DeviceCodes`) the chunks carry integer ``device_code``
    columns in place of ``device_id``.
    """
    kind, compressed = _sniff(path)
    row = 1
    try:
        if kind == "parquet":
            from heatmap.ingest.parquet import _parquet_tasks

            tasks = _parquet_tasks(path, opts, codes=codes)
        else:
            if path.stat().st_size * (4 if compressed else 1) >= _BIG_TEXT_BYTES:
                preload_soon()
            if kind == "ndjson":
                from heatmap.ingest.ndjson import _ndjson_tasks

                tasks = _ndjson_tasks(path, compressed, opts, codes)
            else:
                from heatmap.ingest.csv import _csv_tasks

                tasks = _csv_tasks(path, compressed, opts, rejects, codes)
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
    """Yield validated WGS-84 ping chunks from a CSV, NDJSON or Parquet file, in order.

    ``progress`` receives the number of rows read so far after each chunk. Unreadable files,
    missing columns and (with ``opts.strict``) bad rows raise ``BadInput`` with a one-line reason.
    """
    for task in ping_tasks(path, opts, rejects):
        yield task.load(rejects)
        if progress:
            progress(task.first_row + task.rows - 1)
