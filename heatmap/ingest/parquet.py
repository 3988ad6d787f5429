"""Parquet files as chunk tasks: runs of small row groups merged, large ones split.

Files come from pandas, pyarrow, polars, DuckDB or Spark: columns in any order (others ignored),
ids as plain or dictionary-encoded text or as integers, timestamps as epoch seconds or
milliseconds or as any Parquet timestamp type, with or without a time zone, row groups of any
size. The schema is checked once, from the footer, so a column of a type that cannot be used
fails the file before any row is read (:func:`heatmap.ingest.validate.check_arrow_types`).

Consecutive row groups are read together by one task up to ``chunk_rows`` rows (DuckDB writes
groups of 122,880 rows, Spark and pyarrow up to millions); a group over twice that is read here,
in ``chunk_rows`` batches, and each batch validated on the task's thread. Ids are read as
arrow dictionaries where the column chunk is dictionary-encoded throughout (small enough
that its values cannot have fallen back to plain pages, see :func:`_dictionary_pages`); plain
pages are read as text and encoded after, which costs half as much as having the Parquet
reader build the dictionary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from heatmap._jit import SMALL_ROWS, preload_soon
from heatmap.deviceids import DeviceCodes
from heatmap.ingest.chunks import WORKERS, ChunkTask, _batch_loader, _unreadable
from heatmap.ingest.options import COLUMNS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import check_arrow_types

_DICT_BYTES_PER_ROW = 8  # a dictionary-encoded id chunk is below this (indices + values)


def _parquet_tasks(
    path: Path,
    opts: ParseOptions,
    groups: Sequence[int] | None = None,
    first_row: int = 1,
    codes: DeviceCodes | None = None,
) -> Iterator[ChunkTask]:
    """Yield the tasks of row groups ``groups`` (default all) of a Parquet file.

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
    ids = cols["device_id"]
    id_type = schema.field(ids).type
    id_leaf = meta.schema.names.index(ids) if ids in meta.schema.names else None
    textual = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    row = first_row
    chosen = range(meta.num_row_groups) if groups is None else groups
    left = sum(meta.row_group(g).num_rows for g in chosen)
    for piece in _pieces(meta, chosen, opts):
        rows = sum(meta.row_group(g).num_rows for g in piece)
        as_dict = textual and id_leaf is not None and _dictionary_pages(meta, piece, id_leaf)
        read_dict = [ids] if as_dict else None
        # The file's last ``2 * WORKERS`` chunks' worth is read here in quarter batches, so
        # that the workers finish together (the reading thread is idle by then).
        tail = left <= 2 * WORKERS * opts.chunk_rows and rows > opts.chunk_rows // 4
        left -= rows
        if not tail and (len(piece) > 1 or rows <= 2 * opts.chunk_rows):
            load = _groups_loader(path, meta, piece, columns, read_dict, opts, row, codes)
            yield ChunkTask(row, rows, load)
            row += rows
            continue
        batch_rows = max(1, opts.chunk_rows // 4) if tail else opts.chunk_rows
        big = pq.ParquetFile(path, metadata=meta, read_dictionary=read_dict, memory_map=True)
        for batch in big.iter_batches(
            batch_size=batch_rows, row_groups=piece, columns=columns, use_threads=True
        ):
            yield ChunkTask(row, batch.num_rows, _batch_loader(path, batch, opts, row, codes=codes))
            row += batch.num_rows


def _pieces(
    meta: pq.FileMetaData, groups: Sequence[int] | range, opts: ParseOptions
) -> Iterator[list[int]]:
    """Runs of consecutive row groups of about ``chunk_rows`` rows (a large group alone)."""
    run: list[int] = []
    rows = 0
    for g in groups:
        n = meta.row_group(g).num_rows
        if run and rows + n > opts.chunk_rows:
            yield run
            run, rows = [], 0
        run.append(g)
        rows += n
    if run:
        yield run


def _dictionary_pages(meta: pq.FileMetaData, groups: list[int], leaf: int) -> bool:
    """Whether the id column chunks of ``groups`` look dictionary-encoded throughout.

    A writer falls back to plain pages once a chunk's dictionary grows past its limit (1 MiB
    for pyarrow): then the chunk is as large as plain text. Indices take at most 4 bytes a
    row, so a chunk below ``_DICT_BYTES_PER_ROW`` bytes a row has (nearly) no plain page.
    """
    for g in groups:
        col = meta.row_group(g).column(leaf)
        if not col.has_dictionary_page:
            return False
        if col.total_uncompressed_size > _DICT_BYTES_PER_ROW * max(1, col.num_values):
            return False
    return True


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
            # Memory-mapped, no pre-buffering, the footer parsed once: ~20% less CPU per group.
            pf = pq.ParquetFile(
                path, metadata=meta, read_dictionary=read_dict, memory_map=True, pre_buffer=False
            )
            table = pf.read_row_groups(groups, columns=columns, use_threads=False)
        return _batch_loader(path, table, opts, row, codes=codes)(rejects)

    return load
