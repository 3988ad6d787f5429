"""CSV and CSV.gz files as chunk tasks: blocks of whole lines, parsed in parallel.

The reading thread only cuts the file (decompressed, for CSV.gz) into blocks of whole lines
and counts their lines (:func:`heatmap.ingest.lines.line_blocks`), so every row keeps its
number; each block is parsed by its own task with arrow, first with numeric column types,
then, if a value does not convert, as text, which the validation reads row by row and gives
each bad row its reason. Lines with the wrong number of fields, which arrow skips, become
rejected rows; blank lines stay rows (rejected as "empty row"). Only the four columns are
converted; others are skipped.

A quoted value may not hold a line break: blocks are cut at line ends. A block whose parsed
rows do not match its lines fails the file with that reason rather than misnumber its rows.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.chunks import _READ_ERRORS, ChunkTask, _unreadable
from heatmap.ingest.lines import Block, _open, line_blocks
from heatmap.ingest.options import COLUMNS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import _NUMBER_TYPES, arrow_to_pings

T = TypeVar("T")

_PARSE_BLOCK = 4 << 20  # arrow parses a block in pieces of this size: 2x faster than whole


def _csv_header(path: Path, compressed: bool) -> list[str]:
    try:
        with _open(path, compressed) as fh:
            head = fh.read(1 << 16)
    except _READ_ERRORS as exc:
        raise BadInput(f"{path}: unreadable ({str(exc).splitlines()[0]})") from exc
    line = bytes(head).split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not a UTF-8 CSV file (header is binary)") from exc
    if not text or "\x00" in text:
        raise BadInput(f"{path}: not a CSV file (empty or binary header)")
    return [c.strip().strip('"') for c in text.split(",")]


def _csv_tasks(
    path: Path,
    compressed: bool,
    opts: ParseOptions,
    rejects: Rejects,
    codes: DeviceCodes | None = None,
) -> Iterator[ChunkTask]:
    names = _csv_header(path, compressed)
    cols = resolve_columns(names)
    keep = [cols[c] for c in COLUMNS]
    text = {n: pa.string() for n in keep}
    typed = {**text, **{cols[c]: t for c, t in _NUMBER_TYPES.items()}}
    for block in line_blocks(path, compressed, opts.chunk_rows, skip_header=True):
        load = _block_loader(path, block, names, keep, (typed, text), opts, codes)
        yield ChunkTask(block.first_row, block.lines, load)


class _WrongFields:
    """Lines with the wrong number of fields, which arrow skips: each becomes a rejected row
    (or, with ``strict``, the reason the whole input fails). ``offset`` turns arrow's line
    number into the data-row number; ``not_text`` are the rows of lines that were not UTF-8,
    which :func:`_without_non_utf8` gave too many fields so that arrow skips them too."""

    def __init__(self, path: Path, strict: bool, offset: int, not_text: set[int]) -> None:
        self.path, self.strict, self.offset, self.not_text = path, strict, offset, not_text
        self.rows: list[int] = []

    def __call__(self, bad: pacsv.InvalidRow) -> str:
        self.rows.append(self.offset + (bad.number or 1))
        return "skip"

    def flush(self, rejects: Rejects) -> None:
        if self.rows:
            reasons = [
                "not UTF-8 text" if r in self.not_text else "wrong number of fields"
                for r in self.rows
            ]
            if self.strict:
                raise BadInput(f"{self.path}: row {self.rows[0]}: {reasons[0]} (--strict)")
            rejects.add(self.rows, reasons)
            self.rows = []


def _quiet_undecodable_rows() -> None:
    """Arrow cannot hand a line that is not UTF-8 to the invalid-row handler: it reports the
    handler's decode error as "unraisable" (printed to stderr) and fails the parse, which
    :func:`_without_non_utf8` then mends. Keep that report off the user's terminal."""
    previous = sys.unraisablehook
    if getattr(previous, "_heatmap_csv", False):
        return

    def hook(info: Any) -> None:
        if isinstance(info.object, _WrongFields) and isinstance(info.exc_value, UnicodeDecodeError):
            return
        previous(info)

    hook._heatmap_csv = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_NON_UTF8_LINE = re.compile("^[^\n]*[\udc80-\udcff][^\n]*$", re.MULTILINE)


def _without_non_utf8(data: pa.Buffer, first_row: int, fields: int) -> tuple[bytes, set[int]]:
    """Return the block with every line that is not UTF-8 replaced by one of ``fields + 1``
    empty fields (skipped by arrow as a wrong line, so rows keep their numbers), and those
    lines' row numbers. Runs only on a block that failed to parse, one step per bad line."""
    text = data.to_pybytes().decode("utf-8", "surrogateescape")  # bad bytes -> U+DC80..DCFF
    parts, rows, pos, row = [], set(), 0, first_row
    for bad in _NON_UTF8_LINE.finditer(text):
        row += text.count("\n", pos, bad.start())
        rows.add(row)
        parts += [text[pos : bad.start()], "," * fields]
        pos = bad.end()
    parts.append(text[pos:])
    return "".join(parts).encode("utf-8", "surrogateescape"), rows


def _block_loader(
    path: Path,
    block: Block,
    names: list[str],
    keep: list[str],
    types: tuple[dict[str, pa.DataType], ...],
    opts: ParseOptions,
    codes: DeviceCodes | None,
) -> Callable[[Rejects], pl.DataFrame]:
    """Parse one block with the first column types that convert every value (the last ones,
    all text, always do)."""

    row, lines = block.first_row, block.lines

    def parse(data: pa.Buffer | bytes, not_text: set[int]) -> tuple[pa.Table, _WrongFields]:
        for i, column_types in enumerate(types):
            wrong = _WrongFields(path, opts.strict, row - 1, not_text)
            try:
                with _unreadable(path, row):
                    table = pacsv.read_csv(
                        pa.BufferReader(data),
                        read_options=pacsv.ReadOptions(
                            column_names=names, use_threads=False, block_size=_PARSE_BLOCK
                        ),
                        # Blank lines stay rows (all empty, rejected as "empty row"), so that
                        # every line keeps its own row number.
                        parse_options=pacsv.ParseOptions(
                            invalid_row_handler=wrong, ignore_empty_lines=False
                        ),
                        convert_options=pacsv.ConvertOptions(
                            column_types=column_types,
                            include_columns=keep,
                            strings_can_be_null=True,
                            null_values=[""],
                        ),
                    )
                return table, wrong
            except BadInput:
                if i == len(types) - 1:
                    raise
        raise AssertionError("the last column types are text, which always convert")

    def parse_block(data: pa.Buffer) -> tuple[pa.Table, _WrongFields]:
        _quiet_undecodable_rows()
        try:
            return parse(data, set())
        except BadInput:
            # A line that is not UTF-8 fails the block: reject that line, keep the others.
            mended, not_text = _without_non_utf8(data, row, len(names))
            if not not_text:
                raise
            return parse(mended, not_text)

    def load(rejects: Rejects) -> pl.DataFrame:
        table, wrong = block.parsed(parse_block)
        if table.num_rows + len(wrong.rows) != lines:
            raise BadInput(
                f"{path}: a quoted value holds a line break near row {row} (a ping file has "
                "one row per line)"
            )
        skipped = list(wrong.rows)
        wrong.flush(rejects)
        return arrow_to_pings(
            table,
            opts,
            rejects,
            first_row=row,
            source=str(path),
            skipped=skipped,
            codes=codes,
        )

    return load
