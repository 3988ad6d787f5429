"""One chunk of an input file as a task (:class:`ChunkTask`), and the errors reading it raises.

The CSV and Parquet readers cut a file into tasks; ``load`` may run on any thread, so reading and
validating run in parallel while the consumer keeps file order. A reader's failure becomes
``BadInput`` naming the file and the row near it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import polars as pl
import pyarrow as pa
from isal import isal_zlib

from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.options import ParseOptions, Rejects
from heatmap.ingest.validate import arrow_to_pings


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of an input file: ``load(rejects)`` reads (if needed) and validates it.

    ``load`` may run on any thread; each task records its rejected rows in the ``Rejects`` it
    is given, so a consumer running tasks in parallel merges them back in file order.
    """

    first_row: int  # 1-based data-row number of the chunk's first row
    rows: int
    load: Callable[[Rejects], pl.DataFrame]


def _batch_loader(
    path: Path,
    data: pa.RecordBatch | pa.Table,
    opts: ParseOptions,
    row: int,
    skipped: Sequence[int] = (),
    codes: DeviceCodes | None = None,
) -> Callable[[Rejects], pl.DataFrame]:
    return lambda rejects: arrow_to_pings(
        data, opts, rejects, first_row=row, source=str(path), skipped=skipped, codes=codes
    )


@contextlib.contextmanager
def _unreadable(path: Path, row: int) -> Iterator[None]:
    """Turn a reader's failure into ``BadInput`` naming the file and the row near it."""
    try:
        yield
    except BadInput:
        raise
    except _READ_ERRORS as exc:
        raise _bad_file(path, row, exc) from exc


_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)  # corrupt gzip (typed as an instance)
_READ_ERRORS = (pa.ArrowException, OSError, EOFError, ValueError, _INFLATE_ERROR)


def _bad_file(path: Path, row: int, exc: Exception) -> BadInput:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BadInput(f"{path}: unreadable near row {row} ({msg})")
