"""Parquet files as chunk tasks, by row group."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from heatmap.ingest.chunks import ChunkTask, _batch_loader, _unreadable
from heatmap.ingest.options import ParseOptions, Rejects, resolve_columns


def _parquet_tasks(path: Path, opts: ParseOptions) -> Iterator[ChunkTask]:
    """Row groups up to twice ``chunk_rows`` are read by the task itself (on its thread, so
    reading runs in parallel); larger ones are read here in ``chunk_rows`` batches."""
    meta = pq.ParquetFile(path)
    cols = resolve_columns(meta.schema_arrow.names)
    columns = list(cols.values())
    dictionary = [cols["device_id"]]
    row = 1
    for i in range(meta.num_row_groups):
        n = meta.metadata.row_group(i).num_rows
        if n <= 2 * opts.chunk_rows:
            yield ChunkTask(row, n, _row_group_loader(path, i, columns, dictionary, opts, row))
            row += n
            continue
        batches = pq.ParquetFile(path, read_dictionary=dictionary).iter_batches(
            batch_size=opts.chunk_rows, row_groups=[i], columns=columns, use_threads=False
        )
        for batch in batches:
            yield ChunkTask(row, batch.num_rows, _batch_loader(path, batch, opts, row))
            row += batch.num_rows


def _row_group_loader(
    path: Path, group: int, columns: list[str], dictionary: list[str], opts: ParseOptions, row: int
) -> Callable[[Rejects], pl.DataFrame]:
    def load(rejects: Rejects) -> pl.DataFrame:
        with _unreadable(path, row):
            # Memory-mapped, no pre-buffering: ~20% less CPU per row group than the defaults.
            pf = pq.ParquetFile(path, read_dictionary=dictionary, memory_map=True, pre_buffer=False)
            table = pf.read_row_group(group, columns=columns, use_threads=False)
        return _batch_loader(path, table, opts, row)(rejects)

    return load
