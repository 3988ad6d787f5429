"""A Parquet file's plan of chunks, and its first chunks decoded while the process imports.

The plan (:func:`plan`): consecutive row groups read together up to ``chunk_rows`` rows, a large
group alone (read in batches), the file's last chunks in quarter batches; ids read as arrow
dictionaries where their column chunks are dictionary-encoded throughout
(:func:`id_dictionary`).

The read-ahead: ``heatmap ingest`` spends ~0.15 s importing polars and the rest of the
service on one core. :func:`start`, called before those imports, decodes the first chunk of
the plan on a thread meanwhile (pyarrow decodes without the GIL, on the core the imports leave
idle), with the very read a task makes (:func:`read_groups`); the task then takes it
(:func:`take`) rather than reading it again. This module imports only pyarrow, and only for a
large Parquet file. (A second chunk read ahead gained nothing more: the imports are over by
the time it is decoded.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from heatmap.ingest.options import COLUMNS, WORKERS, resolve_columns

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

_DICT_BYTES_PER_ROW = 8  # a dictionary-encoded id chunk is below this (indices + values)
_MIN_BYTES = 8 << 20
"""Smaller files are not read ahead: they take less than the imports anyway."""

_Key = tuple[str, int, int, tuple[int, ...], tuple[str, ...], tuple[str, ...]]
_AHEAD: dict[_Key, Future[pa.Table]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan: row groups ``groups`` (``rows`` rows), read whole, or with
    ``batch_rows`` in batches of that many rows."""

    groups: list[int]
    rows: int
    batch_rows: int | None


def plan(
    meta: pq.FileMetaData, groups: Sequence[int] | range, chunk_rows: int, workers: int
) -> Iterator[Chunk]:
    """The chunks of row groups ``groups``: runs of about ``chunk_rows`` rows read whole; a
    group over twice that in ``chunk_rows`` batches; the last ``2 * workers`` chunks' worth in
    quarter batches, so that the workers finish together (the reading thread is idle by
    then)."""
    left = sum(meta.row_group(g).num_rows for g in groups)
    for run in _runs(meta, groups, chunk_rows):
        rows = sum(meta.row_group(g).num_rows for g in run)
        tail = left <= 2 * workers * chunk_rows and rows > chunk_rows // 4
        left -= rows
        if not tail and (len(run) > 1 or rows <= 2 * chunk_rows):
            yield Chunk(run, rows, None)
        else:
            yield Chunk(run, rows, max(1, chunk_rows // 4) if tail else chunk_rows)


def _runs(
    meta: pq.FileMetaData, groups: Sequence[int] | range, chunk_rows: int
) -> Iterator[list[int]]:
    """Runs of consecutive row groups of about ``chunk_rows`` rows (a large group alone)."""
    run: list[int] = []
    rows = 0
    for g in groups:
        n = meta.row_group(g).num_rows
        if run and rows + n > chunk_rows:
            yield run
            run, rows = [], 0
        run.append(g)
        rows += n
    if run:
        yield run


def id_dictionary(
    meta: pq.FileMetaData, schema: pa.Schema, ids: str, groups: list[int]
) -> list[str] | None:
    """``[ids]`` if the text id column of ``groups`` is to be read as an arrow dictionary: where
    its column chunks are dictionary-encoded throughout (see :func:`_dictionary_pages`). Plain
    pages are read as text and encoded after, which costs half as much as having the Parquet
    reader build the dictionary."""
    import pyarrow as pa

    id_type = schema.field(ids).type
    textual = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    if not textual or ids not in meta.schema.names:
        return None
    return [ids] if _dictionary_pages(meta, groups, meta.schema.names.index(ids)) else None


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


def read_groups(
    path: Path,
    meta: pq.FileMetaData,
    groups: list[int],
    columns: list[str],
    read_dict: list[str] | None,
) -> pa.Table:
    """Read row groups whole: memory-mapped, no pre-buffering, the footer parsed once (~20%
    less CPU per group than the defaults)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(
        path, metadata=meta, read_dictionary=read_dict, memory_map=True, pre_buffer=False
    )
    return pf.read_row_groups(groups, columns=columns, use_threads=False)


def start(path: Path, chunk_rows: int) -> None:
    """Start decoding the first chunk of ``path`` on a thread, if it is a Parquet file of at
    least ``_MIN_BYTES`` whose plan reads that chunk whole. pyarrow is imported here, by the
    caller, so that the thread only decodes (an import on the thread would hold the GIL that
    the caller's own imports need). Any failure is left for the task's own read to report."""
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"PAR1" or path.stat().st_size < _MIN_BYTES:
                return
    except OSError:
        return
    import pyarrow.parquet  # noqa: F401 - see above

    threading.Thread(
        target=_read_ahead, args=(path, chunk_rows), name="heatmap-readahead", daemon=True
    ).start()


def _read_ahead(path: Path, chunk_rows: int) -> None:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, memory_map=True)
        cols = resolve_columns(pf.schema_arrow.names)
        columns = [cols[c] for c in COLUMNS]
        meta = pf.metadata
        first = next(plan(meta, range(meta.num_row_groups), chunk_rows, WORKERS), None)
        if first is None or first.batch_rows is not None:
            return
        read_dict = id_dictionary(meta, pf.schema_arrow, cols["device_id"], first.groups)
        key = _key(path, first.groups, columns, read_dict)
        if key is None:
            return
        future: Future[pa.Table] = Future()
        with _LOCK:
            _AHEAD[key] = future
    except Exception:  # noqa: BLE001 - the task reads the file again and names the problem
        return
    try:
        future.set_result(read_groups(path, meta, first.groups, columns, read_dict))
    except Exception as exc:  # noqa: BLE001 - as above
        future.set_exception(exc)


def take(
    path: Path, groups: list[int], columns: list[str], read_dict: list[str] | None
) -> pa.Table | None:
    """The chunk read ahead for exactly this read (waiting for it if it is under way), or
    None: then the caller reads it."""
    key = _key(path, groups, columns, read_dict)
    if key is None:
        return None
    with _LOCK:
        future = _AHEAD.pop(key, None)
        for stale in [k for k in _AHEAD if k[0] == key[0] and k[1:3] != key[1:3]]:
            del _AHEAD[stale]  # read from the file before it changed
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # noqa: BLE001 - the caller's own read reports it
        return None


def _key(
    path: Path, groups: list[int], columns: list[str], read_dict: list[str] | None
) -> _Key | None:
    """The file (by path, size and change time) and the exact read."""
    try:
        st = path.stat()
        where = str(path.resolve())
    except OSError:
        return None
    read = (tuple(groups), tuple(columns), tuple(read_dict or ()))
    return (where, st.st_size, st.st_mtime_ns, *read)
