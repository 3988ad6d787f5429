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
import queue
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from heatmap.deviceids import DeviceCodes
from heatmap.errors import BadInput
from heatmap.ingest.chunks import _READ_ERRORS, ChunkTask, _unreadable
from heatmap.ingest.lines import count_newlines
from heatmap.ingest.options import COLUMNS, WORKERS, ParseOptions, Rejects, resolve_columns
from heatmap.ingest.validate import _NUMBER_TYPES, arrow_to_pings

T = TypeVar("T")

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


class BlockBuffers:
    """The buffers blocks are read into, handed by the reading thread to the tasks that parse
    them and back when parsed: every byte is read from the file once, and the few buffers of
    a file are reused (a fresh one would be faulted in and zeroed by the kernel again)."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def take(self, size: int) -> bytearray:
        """A free buffer of at least ``size`` bytes (a new one if none is free)."""
        while True:
            try:
                buf = self._free.get_nowait()
            except queue.Empty:
                return bytearray(size)
            if len(buf) >= size:
                return buf  # a smaller one is dropped: never resized, it may still be read

    def give(self, buf: bytearray) -> None:
        """Return a buffer that nothing reads any more."""
        self._free.put(buf)


@dataclass(frozen=True)
class Block:
    """Whole lines of a text file: ``[start, end)`` of its (decompressed) bytes, held at the
    start of ``data`` (a buffer of ``buffers``, returned by :meth:`release`)."""

    data: bytearray
    start: int
    end: int
    first_row: int  # 1-based data-row number of the first line (a skipped header is row 0)
    lines: int  # a last line without a line end included
    buffers: BlockBuffers

    def read(self) -> pa.Buffer:
        """Return the block's bytes (no copy; valid until :meth:`release`)."""
        return pa.py_buffer(self.data)[: self.end - self.start]

    def release(self) -> None:
        """Hand the buffer back once the block is parsed (nothing may read it after)."""
        self.buffers.give(self.data)

    def parsed(self, parse: Callable[[pa.Buffer], T]) -> T:
        """Return ``parse(bytes)``, then hand the buffer back, whatever happened. ``parse``
        must keep no reference to the bytes (arrow's readers copy what they keep)."""
        try:
            return parse(self.read())
        finally:
            self.release()


def line_blocks(
    path: Path, compressed: bool, rows: int, skip_header: bool, workers: int = WORKERS
) -> Iterator[Block]:
    """Cut a text file into blocks of whole lines, about ``rows`` lines each.

    The block size follows from the first block's line length; a line longer than a block
    makes its block larger. The reading thread only reads into buffers and counts line ends
    with numpy (both without the GIL), so the tasks parsing blocks run meanwhile; each block's
    buffer goes to its task, which hands it back when parsed.

    The last ``2 * workers`` blocks' worth of the file is cut into blocks a quarter of the
    size, so that the ``workers`` parsing tasks finish together rather than one idling while
    another parses a whole last block (a gzip file's size is its trailer's; see
    :func:`_text_size`).
    """
    buffers = BlockBuffers()
    total = _text_size(path, compressed)
    step = max(_MIN_BLOCK, rows * _BYTES_PER_ROW)
    if total is not None:  # a small file: no larger buffer than it (zeroing 64 MB takes 12 ms)
        step = min(step, max(_MIN_BLOCK, total + 1))
    win = buffers.take(step)
    fill = step
    newline = np.empty(step, dtype=bool)  # reused: a fresh array would fault in every page
    have = base = 0
    row, sized, eof, header = 1, False, False, skip_header
    with _open(path, compressed) as fh:
        while True:
            while have < fill and not eof:
                with memoryview(win) as mv:
                    n = fh.readinto(mv[have:fill])
                eof = not n
                have += n or 0
            if header:  # drop the header line
                cut = win.find(b"\n", 0, have) + 1
                if cut == 0 and not eof:
                    win, fill = _larger(win, have, 2 * len(win), buffers)
                    continue
                cut = cut or have
                win[: have - cut] = win[cut:have]
                have -= cut
                base += cut
                header = False
                continue
            end = have if eof else win.rfind(b"\n", 0, have) + 1
            if end == 0 and not eof:  # a line longer than the buffer: make it larger
                win, fill = _larger(win, have, 2 * len(win), buffers)
                continue
            if end:
                view = np.frombuffer(win, dtype=np.uint8, count=end)
                if len(newline) < end:
                    newline = np.empty(len(win), dtype=bool)
                lines = count_newlines(view, newline)
                lines += int(view[-1] != 10)
                del view  # no export of the buffer may outlive this (it is handed on)
                block = Block(win, base, base + end, row, lines, buffers)
                row += lines
            if eof:
                if end:
                    yield block
                return
            if not sized and end:
                sized = True  # from now on, about ``rows`` lines a block
                step = max(_MIN_BLOCK, rows * (end // max(1, lines)))
            fill = step
            if total is not None and 0 <= total - (base + end) <= 2 * workers * step:
                fill = max(_MIN_BLOCK, step // 4)  # the file's last blocks: smaller
            rest = have - end  # a line's start, carried to the next buffer
            fill = max(fill, rest + _MIN_BLOCK)
            nxt = buffers.take(fill)
            nxt[:rest] = win[end:have]
            win, have, base = nxt, rest, base + end
            if end:
                yield block


def _text_size(path: Path, compressed: bool) -> int | None:
    """The file's size as text: a plain file's, or the size a gzip file's trailer states (the
    last member's size modulo 4 GiB, so only where the file is too small to inflate past 4
    GiB at a ratio of 1:16; None otherwise). Only the last blocks' sizes depend on it."""
    size = path.stat().st_size
    if not compressed:
        return size
    if size < 18 or size * 16 >= 1 << 32:
        return None
    with path.open("rb") as fh:
        fh.seek(-4, io.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _larger(win: bytearray, have: int, size: int, buffers: BlockBuffers) -> tuple[bytearray, int]:
    """A buffer of ``size`` bytes holding the first ``have`` bytes of ``win`` (and its fill)."""
    bigger = buffers.take(size)
    bigger[:have] = win[:have]
    buffers.give(win)
    return bigger, size


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
