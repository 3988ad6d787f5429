"""CSV and CSV.gz files as chunk tasks: line-aligned byte ranges parsed in parallel, or a stream.

A plain CSV file without quotes is cut into ranges of whole lines (:func:`_csv_ranges`), each
parsed by its own task, first with numeric column types, then as text if a value does not
convert. A compressed file, or one that cannot be cut so, is read in order, in blocks. Lines
with the wrong number of fields, which arrow skips, become rejected rows; every later row keeps
its own number.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from heatmap._jit import kernel, readonly, warms
from heatmap.errors import BadInput
from heatmap.ingest.chunks import ChunkTask, _batch_loader, _unreadable
from heatmap.ingest.options import ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import _NUMBER_TYPES, _row_numbers, arrow_to_pings


def _csv_header(path: Path, compressed: bool) -> list[str]:
    try:
        opener: Callable[..., io.BufferedIOBase] = gzip.open if compressed else open  # type: ignore[assignment]
        with opener(path, "rb") as fh:
            line = fh.readline(1 << 16)
    except (OSError, EOFError) as exc:
        raise BadInput(f"{path}: unreadable ({exc})") from exc
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not a UTF-8 CSV file (header is binary)") from exc
    if not text or "\x00" in text:
        raise BadInput(f"{path}: not a CSV file (empty or binary header)")
    return [c.strip().strip('"') for c in text.split(",")]


def _csv_tasks(
    path: Path, compressed: bool, opts: ParseOptions, rejects: Rejects
) -> Iterator[ChunkTask]:
    names = _csv_header(path, compressed)
    cols = resolve_columns(names)
    # Every column as text: the validation finds each bad value's reason. Ranges first try
    # typed numbers (a bad value fails the range, which is then read as text).
    types = {n: pa.string() for n in names}
    if not compressed:
        ranges = _csv_ranges(path, opts.chunk_rows * _CSV_BYTES_PER_ROW)
        if ranges is not None:
            typed = {**types, **{cols[c]: t for c, t in _NUMBER_TYPES.items()}}
            yield from _csv_range_tasks(path, ranges, names, (typed, types), opts)
            return
    wrong = _WrongFields(path, opts.strict, offset=-1)  # arrow counts the header as line 1
    stream = pa.input_stream(str(path), compression="gzip" if compressed else None)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(
            block_size=max(1 << 10, opts.chunk_rows * _CSV_BYTES_PER_ROW), use_threads=False
        ),
        parse_options=_csv_parse(wrong),
        convert_options=_csv_convert(types),
    )
    row = 1
    pending: list[int] = []  # skipped lines from ``row`` on (the reader may have read ahead)
    for batch in reader:
        pending += wrong.rows
        wrong.flush(rejects)
        last = int(_row_numbers(row, np.array([batch.num_rows - 1]), pending)[0])
        here = [s for s in pending if s <= last]
        yield ChunkTask(row, last - row + 1, _batch_loader(path, batch, opts, row, skipped=here))
        row, pending = last + 1, [s for s in pending if s > last]
    wrong.flush(rejects)


class _WrongFields:
    """Lines with the wrong number of fields, which arrow skips: each becomes a rejected row
    (or, with ``strict``, the reason the whole input fails). ``offset`` turns arrow's line
    number into the data-row number."""

    def __init__(self, path: Path, strict: bool, offset: int) -> None:
        self.path, self.strict, self.offset = path, strict, offset
        self.rows: list[int] = []

    def __call__(self, bad: pacsv.InvalidRow) -> str:
        self.rows.append(self.offset + (bad.number or 1))
        return "skip"

    def flush(self, rejects: Rejects) -> None:
        if self.rows:
            if self.strict:
                raise BadInput(
                    f"{self.path}: row {self.rows[0]}: wrong number of fields (--strict)"
                )
            rejects.add(self.rows, ["wrong number of fields"] * len(self.rows))
            self.rows = []


def _csv_parse(wrong: _WrongFields) -> pacsv.ParseOptions:
    """Lines with the wrong number of fields go to ``wrong``; blank lines stay rows (all
    empty, rejected as "empty row"), so that every line keeps its own row number."""
    return pacsv.ParseOptions(invalid_row_handler=wrong, ignore_empty_lines=False)


def _csv_convert(types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
    """Column types as given; an empty field is null (the validation names it missing)."""
    return pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""])


_CSV_BYTES_PER_ROW = 16  # a chunk of ``chunk_rows`` rows spans about this many bytes per row


def _csv_ranges(path: Path, step: int) -> list[tuple[int, int, int]] | None:
    """Cut a plain CSV file into ranges of whole lines, to be parsed in parallel.

    Returns ``(start, end, first_row)`` per range, or ``None`` when the file must be read in
    order: a single range, a line longer than a range, or a quote anywhere (a quoted field may
    hold a newline, so line ends would not be row ends). Reads the file once, a range at a
    time (each range's task reads its bytes again), so memory stays near a few ranges.
    """
    size = path.stat().st_size
    if size <= step:
        return None
    ranges, row = [], 1
    block = bytearray(step)  # reused: no fresh pages per range
    with path.open("rb") as fh:
        start = len(fh.readline())  # after the header line
        while start < size:
            fh.seek(start)
            cut = got = fh.readinto(block)
            if block.find(b'"', 0, got) != -1:
                return None
            if start + got < size:
                cut = block.rfind(b"\n", 0, got) + 1  # the range ends with its last whole line
                if cut == 0:
                    return None
            lines = _newlines(readonly(np.frombuffer(block, dtype=np.uint8, count=cut))[0])
            ranges.append((start, start + cut, row))
            row += lines + (block[cut - 1] != 0x0A)
            start += cut
    return ranges


@kernel
def _newlines(data: npt.NDArray[np.uint8]) -> int:
    """Count the newline bytes of a buffer (no temporary array)."""
    n = 0
    for b in data:
        n += b == 10
    return n


@warms
def _warm() -> None:
    _newlines(*readonly(np.zeros(1, dtype=np.uint8)))


def _csv_range_tasks(
    path: Path,
    ranges: list[tuple[int, int, int]],
    names: list[str],
    types: tuple[dict[str, pa.DataType], ...],
    opts: ParseOptions,
) -> Iterator[ChunkTask]:
    for i, (start, end, row) in enumerate(ranges):
        rows = (ranges[i + 1][2] if i + 1 < len(ranges) else row + 1) - row
        yield ChunkTask(row, rows, _range_loader(path, (start, end), row, names, types, opts))


def _range_loader(
    path: Path,
    span: tuple[int, int],
    row: int,
    names: list[str],
    types: tuple[dict[str, pa.DataType], ...],
    opts: ParseOptions,
) -> Callable[[Rejects], pl.DataFrame]:
    """Parse one range with the first column types that convert every value (the last ones,
    all text, always do)."""

    def load(rejects: Rejects) -> pl.DataFrame:
        with _unreadable(path, row), path.open("rb") as fh:
            fh.seek(span[0])
            data = fh.read(span[1] - span[0])
        for i, column_types in enumerate(types):
            wrong = _WrongFields(path, opts.strict, offset=row - 1)
            try:
                table = pacsv.read_csv(
                    pa.BufferReader(data),
                    read_options=pacsv.ReadOptions(
                        column_names=names, use_threads=False, block_size=4 << 20
                    ),
                    parse_options=_csv_parse(wrong),
                    convert_options=_csv_convert(column_types),
                )
                break
            except pa.ArrowInvalid:
                if i == len(types) - 1:
                    raise
        skipped = list(wrong.rows)
        wrong.flush(rejects)
        return arrow_to_pings(
            table, opts, rejects, first_row=row, source=str(path), skipped=skipped
        )

    return load
