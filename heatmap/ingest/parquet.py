"""Parquet files as chunk tasks: runs of small row groups merged, large ones split.

Files come from pandas, pyarrow, polars, DuckDB or Spark: columns in any order (others ignored),
ids as plain or dictionary-encoded text or as integers, timestamps as epoch seconds or
milliseconds or as any Parquet timestamp type, with or without a time zone, row groups of any
size. The schema is checked once, from the footer, so a column of a type that cannot be used
fails the file before any row is read (:func:`heatmap.ingest.validate.check_arrow_types`).

Consecutive row groups are read together by one task up to ``chunk_rows`` rows (DuckDB writes
groups of 122,880 rows, Spark and pyarrow up to millions); a group over twice that is read here,
in ``chunk_rows`` batches, and each batch validated on the task's thread. Ids are read as
arrow dictionaries where the column chunk is dictionary-encoded throughout. The plan and the
reads are :mod:`heatmap.ingest.readahead`'s, which may have read a task's groups already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from heatmap._jit import SMALL_ROWS, preload_soon
from heatmap.deviceids import DeviceCodes
from heatmap.ingest.chunks import ChunkTask, _batch_loader, _unreadable
from heatmap.ingest.options import COLUMNS, WORKERS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.readahead import id_dictionary, plan, read_groups, take
from heatmap.ingest.validate import check_arrow_types


def _parquet_tasks(
    path: Path,
    opts: ParseOptions,
    groups: Sequence[int] | None = None,
    first_row: int = 1,
    codes: DeviceCodes | None = None,
) -> Iterator[ChunkTask]:
    """Yield the tasks of row groups ``groups`` (default all) of a Parquet file, chunked as
    :func:`heatmap.ingest.readahead.plan` says.

    ``first_row`` is the data-row number of the first group's first row; ``codes`` the file's
    :class:`DeviceCodes` (see :func:`heatmap.ingest.validate.arrow_to_pings`).
    """
    pf = pq.ParquetFile(path, memory_map=True)
    schema = pf.schema_arrow
    cols = resolve_columns(schema.names)
    check_arrow_types(schema, cols, str(path))
    columns = [cols[c] for c in COLUMNS]
    meta = pf.metadata
    if meta.num_rows >= SMALL_ROWS:
        preload_soon()  # the kernels load on another thread while the first groups are read
    row = first_row
    chosen = range(meta.num_row_groups) if groups is None else groups
    for chunk in plan(meta, chosen, opts.chunk_rows, WORKERS):
        read_dict = id_dictionary(meta, schema, cols["device_id"], chunk.groups)
        if chunk.batch_rows is None:
            load = _groups_loader(path, meta, chunk.groups, columns, read_dict, opts, row, codes)
            yield ChunkTask(row, chunk.rows, load)
            row += chunk.rows
            continue
        big = pq.ParquetFile(path, metadata=meta, read_dictionary=read_dict, memory_map=True)
        for batch in big.iter_batches(
            batch_size=chunk.batch_rows, row_groups=chunk.groups, columns=columns, use_threads=True
        ):
            yield ChunkTask(row, batch.num_rows, _batch_loader(path, batch, opts, row, codes=codes))
            row += batch.num_rows


def _groups_loader(
    path: Path,
    meta: pq.FileMetaData,
    groups: list[int],
    columns: list[str],
    read_dict: list[str] | None,
    opts: ParseOptions,
    row: int,
    codes: DeviceCodes | None,
) -> Callable[[Rejects], pl.DataFrame]:
    def load(rejects: Rejects) -> pl.DataFrame:
        with _unreadable(path, row):
            table = take(path, groups, columns, read_dict)  # read ahead, or now
            if table is None:
                table = read_groups(path, meta, groups, columns, read_dict)
        return _batch_loader(path, table, opts, row, codes=codes)(rejects)

    return load
