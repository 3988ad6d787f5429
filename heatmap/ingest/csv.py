"""CSV and CSV.gz files as chunk tasks: blocks of whole lines, parsed in parallel.

The reading thread only cuts the file (decompressed, for CSV.gz) into blocks of whole lines
(:func:`line_blocks`) and counts their lines, so every row keeps its number; each block is
parsed by its own task with arrow, first with numeric column types, then, if a value does not
convert, as text, which the validation reads row by row and gives each bad row its reason.
Lines with the wrong number of fields, which arrow skips, become rejected rows; blank lines
stay rows (rejected as "empty row"). Only the four columns are converted; others are skipped.

A quoted value may not hold a line break: blocks are cut at line ends. A block whose parsed
rows do not match its lines fails the file with that reason rather than misnumber its rows.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.chunks import _READ_ERRORS, ChunkTask, _unreadable
from heatmap.ingest.options import COLUMNS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import _NUMBER_TYPES, arrow_to_pings

_MIN_BLOCK = 64
_PARSE_BLOCK = 4 << 20  # arrow parses a block in pieces of this size: 2x faster than whole
_BYTES_PER_ROW = 16  # the block size before the first lines show how long a row is


def _open(path: Path, compressed: bool) -> io.RawIOBase | io.BufferedIOBase:
    """A plain file unbuffered, or a gzip file inflated by ISA-L on its own thread (~2.5x
    zlib's speed; the reading thread then only cuts lines)."""
    if not compressed:
        return path.open("rb", buffering=0)
    from isal import igzip_threaded

    return igzip_threaded.open(path, "rb", threads=1)  # type: ignore[no-any-return]


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


@dataclass(frozen=True)
class Block:
    """Whole lines of a text file: ``[start, end)`` of its (decompressed) bytes."""

    data: bytes | None  # the bytes, for a compressed file; else read again by the task
    start: int
    end: int
    first_row: int  # 1-based data-row number of the first line (a skipped header is row 0)
    lines: int  # a last line without a line end included

    def read(self, path: Path) -> pa.Buffer:
        """Return the block's bytes. A plain file's are read into this thread's buffer, valid
        until its next ``read``: reused, its pages are not faulted in again for every block
        (a fresh or memory-mapped one costs a page fault per 4 KiB)."""
        if self.data is not None:
            return pa.py_buffer(self.data)
        n = self.end - self.start
        buf = getattr(_LOCAL, "buf", None)
        if buf is None or len(buf) < n:
            buf = _LOCAL.buf = bytearray(n)
        with path.open("rb", buffering=0) as fh:
            fh.seek(self.start)
            got = fh.readinto(memoryview(buf)[:n])
        if got != n:
            raise OSError(f"file changed while read (short read at byte {self.start + got})")
        return pa.py_buffer(buf)[:n]


_LOCAL = threading.local()


def line_blocks(path: Path, compressed: bool, rows: int, skip_header: bool) -> Iterator[Block]:
    """Cut a text file into blocks of whole lines, about ``rows`` lines each.

    The block size follows from the first block's line length; a line longer than a block
    makes its block larger. The reading thread only reads into one reused buffer and counts
    line ends with numpy (both without the GIL), so the tasks parsing blocks run meanwhile;
    a plain file's block is read again by its task, a compressed file's is handed over.
    """
    step = max(_MIN_BLOCK, rows * _BYTES_PER_ROW)
    win = bytearray(step)
    newline = np.empty(step, dtype=bool)  # reused: a fresh array would fault in every page
    have = base = 0
    row, sized, eof, header = 1, False, False, skip_header
    with _open(path, compressed) as fh:
        while True:
            while have < len(win) and not eof:
                with memoryview(win) as mv:
                    n = fh.readinto(mv[have:])
                eof = not n
                have += n or 0
            if header:  # drop the header line
                cut = win.find(b"\n", 0, have) + 1
                if cut == 0 and not eof:
                    win.extend(bytes(len(win)))
                    continue
                cut = cut or have
                win[: have - cut] = win[cut:have]
                have -= cut
                base += cut
                header = False
                continue
            end = have if eof else win.rfind(b"\n", 0, have) + 1
            if end == 0 and not eof:  # a line longer than the buffer: make it larger
                win.extend(bytes(len(win)))
                continue
            if end:
                view = np.frombuffer(win, dtype=np.uint8, count=end)
                if len(newline) < end:
                    newline = np.empty(len(win), dtype=bool)
                lines = int(np.count_nonzero(np.equal(view, 10, out=newline[:end])))
                lines += int(view[-1] != 10)
                data = bytes(view) if compressed else None
                del view  # no export of the buffer may outlive this (it is resized)
                yield Block(data, base, base + end, row, lines)
                row += lines
            if eof:
                return
            win[: have - end] = win[end:have]
            have -= end
            base += end
            if not sized and end:
                sized = True  # from now on, about ``rows`` lines a block
                size = max(_MIN_BLOCK, rows * (end // max(1, lines)))
                if size > len(win):
                    win.extend(bytes(size - len(win)))


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

    def load(rejects: Rejects) -> pl.DataFrame:
        with _unreadable(path, row):
            data = block.read(path)
        for i, column_types in enumerate(types):
            wrong = _WrongFields(path, opts.strict, offset=row - 1)
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
                break
            except BadInput:
                if i == len(types) - 1:
                    raise
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
